package lab

import (
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"
)

func TestUploadPackRepo(t *testing.T) {
	root := t.TempDir()
	os.MkdirAll(filepath.Join(root, "cluster.git"), 0o755)
	os.WriteFile(filepath.Join(root, "cluster.git", "HEAD"), []byte("ref: refs/heads/main\n"), 0o644)
	for _, tt := range []struct {
		command, want string
	}{
		{"git-upload-pack '/cluster.git'", filepath.Join(root, "cluster.git")},
		{"git-upload-pack 'cluster.git'", filepath.Join(root, "cluster.git")},
		{"git-receive-pack '/cluster.git'", ""},
		{"git-upload-pack '/../etc'", ""},
		{"git-upload-pack '/'", ""},
		{"git-upload-pack '/other.git'", ""},
		{"sh -c 'id'", ""},
		{"git-upload-pack", ""},
	} {
		got, err := uploadPackRepo(tt.command, root)
		if got != tt.want || (tt.want == "") != (err != nil) {
			t.Errorf("%q: got %q, %v; want %q", tt.command, got, err, tt.want)
		}
	}
}

func TestHTTPSGitWantsTheToken(t *testing.T) {
	backend := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "refs") })
	h := httpsGit("s3cret", backend, slog.New(slog.DiscardHandler))
	for _, tt := range []struct {
		name, pw, path string
		want           int
	}{
		{"the token", "s3cret", "/cluster.git/info/refs?service=git-upload-pack", 200},
		{"no token", "", "/cluster.git/info/refs?service=git-upload-pack", 401},
		{"a wrong token", "s3cre", "/cluster.git/info/refs?service=git-upload-pack", 401},
		{"a push", "s3cret", "/cluster.git/info/refs?service=git-receive-pack", 403},
		{"a push's pack", "s3cret", "/cluster.git/git-receive-pack", 403},
	} {
		r := httptest.NewRequest("GET", tt.path, nil)
		if tt.pw != "" {
			r.SetBasicAuth("mqha", tt.pw)
		}
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		if w.Code != tt.want {
			t.Errorf("%s: %d, want %d", tt.name, w.Code, tt.want)
		}
	}
}
