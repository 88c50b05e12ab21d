package source_test

import (
	"bytes"
	"context"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ProtonMail/go-crypto/openpgp"
	"github.com/ProtonMail/go-crypto/openpgp/armor"
	gogit "github.com/go-git/go-git/v5"
	"github.com/go-git/go-git/v5/plumbing"
	"github.com/go-git/go-git/v5/plumbing/object"

	"github.com/mqha/mqha/internal/source"
	"github.com/mqha/mqha/schema"
)

func git(t *testing.T, dir string, args ...string) string {
	t.Helper()
	cmd := exec.Command("git", append([]string{"-C", dir}, args...)...)
	cmd.Env = append(os.Environ(), "GIT_AUTHOR_NAME=t", "GIT_AUTHOR_EMAIL=t@t", "GIT_COMMITTER_NAME=t", "GIT_COMMITTER_EMAIL=t@t")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("git %v: %v\n%s", args, err, out)
	}
	return strings.TrimSpace(string(out))
}

func TestPullAndRead(t *testing.T) {
	up := t.TempDir()
	git(t, up, "init", "-q", "-b", "main")
	os.MkdirAll(filepath.Join(up, "cluster"), 0o755)
	example, _ := os.ReadFile("../../cluster-repo-example/cluster.cue")
	os.WriteFile(filepath.Join(up, "cluster", "cluster.cue"), example, 0o644)
	os.WriteFile(filepath.Join(up, "README"), []byte("not cue\n"), 0o644)
	git(t, up, "add", ".")
	git(t, up, "commit", "-qm", "first")
	first := git(t, up, "rev-parse", "HEAD")

	r, err := source.Open(filepath.Join(t.TempDir(), "mirror.git"), "file://"+up, "main", nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	head, err := r.Head(ctx)
	if err != nil || head != first {
		t.Fatalf("head %s, %v; want %s", head, err, first)
	}
	if err := r.Fetch(ctx, head); err != nil {
		t.Fatal(err)
	}
	c, err := r.Read(head, "cluster", 0)
	if err != nil {
		t.Fatal(err)
	}
	if c.Subject != "first" {
		t.Errorf("subject %q", c.Subject)
	}
	if _, err := fs.Stat(c.Files, "README"); err == nil {
		t.Error("files outside the path were read")
	}
	cl, err := schema.Load(c.Files, ".")
	if err != nil {
		t.Fatal(err)
	}
	if len(cl.Nodes) != 5 {
		t.Errorf("%d nodes", len(cl.Nodes))
	}

	// A second commit is seen by Head, fetched shallow, and errors in it
	// point at the file in the repository.
	os.WriteFile(filepath.Join(up, "cluster", "bad.cue"), []byte("package cluster\n\nnodes: x: {address: \"nope\", roles: [\"broker\"]}\n"), 0o644)
	git(t, up, "add", ".")
	git(t, up, "commit", "-qm", "bad")
	second, _ := r.Head(ctx)
	if second == first {
		t.Fatal("head did not move")
	}
	if err := r.Fetch(ctx, second); err != nil {
		t.Fatal(err)
	}
	c2, _ := r.Read(second, "cluster", 0)
	if _, err := schema.Load(c2.Files, "."); err == nil || !strings.Contains(err.Error(), "bad.cue:3:") {
		t.Errorf("want an error at bad.cue:3, got %v", err)
	}
	if _, err := r.Read(second, "nope", 0); err == nil {
		t.Error("reading a missing directory worked")
	}
}

func TestMissingBranch(t *testing.T) {
	up := t.TempDir()
	git(t, up, "init", "-q", "-b", "main")
	git(t, up, "commit", "-q", "--allow-empty", "-m", "x")
	r, err := source.Open(filepath.Join(t.TempDir(), "m.git"), "file://"+up, "prod", nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Head(context.Background()); err == nil || !strings.Contains(err.Error(), `no branch "prod"`) {
		t.Errorf("got %v", err)
	}
}

func TestDescendsDeepensShallowMirror(t *testing.T) {
	up := t.TempDir()
	git(t, up, "init", "-q", "-b", "main")
	var hashes []string
	for i := range 30 {
		os.WriteFile(filepath.Join(up, "f"), []byte(strings.Repeat("x", i)), 0o644)
		git(t, up, "add", ".")
		git(t, up, "commit", "-qm", "c")
		hashes = append(hashes, git(t, up, "rev-parse", "HEAD"))
	}
	r, err := source.Open(filepath.Join(t.TempDir(), "m.git"), "file://"+up, "main", nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	head, _ := r.Head(ctx)
	if err := r.Fetch(ctx, head); err != nil {
		t.Fatal(err)
	}
	if ok, err := r.Descends(ctx, head, hashes[0]); err != nil || !ok {
		t.Fatalf("head should descend from the first commit: %v %v", ok, err)
	}
	// A rewrite: the branch now points at a commit with unrelated history.
	git(t, up, "checkout", "-q", "--orphan", "other")
	git(t, up, "commit", "-qm", "rewritten")
	git(t, up, "branch", "-f", "main", "other")
	newHead, _ := r.Head(ctx)
	if err := r.Fetch(ctx, newHead); err != nil {
		t.Fatal(err)
	}
	if ok, err := r.Descends(ctx, newHead, head); err != nil || ok {
		t.Fatalf("a rewritten branch must not descend from the applied commit: %v %v", ok, err)
	}
}

func TestSignatures(t *testing.T) {
	dir := t.TempDir()
	key := filepath.Join(dir, "id")
	if out, err := exec.Command("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key).CombinedOutput(); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	other := filepath.Join(dir, "other")
	exec.Command("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", other).Run()
	trusted := filepath.Join(dir, "trusted-keys")
	pub, _ := os.ReadFile(key + ".pub")
	os.WriteFile(trusted, append([]byte("# ops\n"), pub...), 0o644)
	trust, err := source.LoadTrust(trusted)
	if err != nil {
		t.Fatal(err)
	}
	up := t.TempDir()
	git(t, up, "init", "-q", "-b", "main")
	git(t, up, "config", "gpg.format", "ssh")
	r, _ := source.Open(filepath.Join(t.TempDir(), "m.git"), "file://"+up, "main", nil)
	ctx := context.Background()
	tests := []struct {
		name, signWith, want string
	}{
		{"unsigned", "", "not signed"},
		{"signed by a trusted key", key, ""},
		{"signed by another key", other, "not a trusted key"},
	}
	for _, tt := range tests {
		args := []string{"commit", "-q", "--allow-empty", "-m", tt.name}
		if tt.signWith != "" {
			git(t, up, "config", "user.signingkey", tt.signWith)
			args = append(args, "-S")
		}
		git(t, up, args...)
		head, _ := r.Head(ctx)
		if err := r.Fetch(ctx, head); err != nil {
			t.Fatal(err)
		}
		who, err := r.Verify(head, trust)
		switch {
		case tt.want == "" && (err != nil || !strings.HasPrefix(who, "ssh SHA256:")):
			t.Errorf("%s: %q %v", tt.name, who, err)
		case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
			t.Errorf("%s: want %q, got %v", tt.name, tt.want, err)
		}
	}
	os.WriteFile(trusted, []byte("ssh-ed25519 garbage\n"), 0o644)
	if _, err := source.LoadTrust(trusted); err == nil || !strings.Contains(err.Error(), "trusted-keys:1") {
		t.Errorf("a bad key file must fail with its line: %v", err)
	}
}

func TestPGPSignatures(t *testing.T) {
	signer, err := openpgp.NewEntity("ops", "", "ops@mqha.invalid", nil)
	if err != nil {
		t.Fatal(err)
	}
	stranger, _ := openpgp.NewEntity("stranger", "", "x@mqha.invalid", nil)
	var armored bytes.Buffer
	w, _ := armor.Encode(&armored, openpgp.PublicKeyType, nil)
	signer.Serialize(w)
	w.Close()
	trusted := filepath.Join(t.TempDir(), "trusted-keys")
	os.WriteFile(trusted, armored.Bytes(), 0o644)
	trust, err := source.LoadTrust(trusted)
	if err != nil {
		t.Fatal(err)
	}

	up := t.TempDir()
	repo, err := gogit.PlainInitWithOptions(up, &gogit.PlainInitOptions{InitOptions: gogit.InitOptions{DefaultBranch: plumbing.Main}})
	if err != nil {
		t.Fatal(err)
	}
	wt, _ := repo.Worktree()
	r, _ := source.Open(filepath.Join(t.TempDir(), "m.git"), "file://"+up, "main", nil)
	ctx := context.Background()
	for _, tt := range []struct {
		name string
		key  *openpgp.Entity
		want string
	}{{"trusted key", signer, ""}, {"untrusted key", stranger, "not trusted"}} {
		_, err := wt.Commit(tt.name, &gogit.CommitOptions{AllowEmptyCommits: true, SignKey: tt.key,
			Author: &object.Signature{Name: "t", Email: "t@t", When: time.Now()}})
		if err != nil {
			t.Fatal(err)
		}
		head, _ := r.Head(ctx)
		if err := r.Fetch(ctx, head); err != nil {
			t.Fatal(err)
		}
		who, err := r.Verify(head, trust)
		switch {
		case tt.want == "" && (err != nil || !strings.HasPrefix(who, "pgp ")):
			t.Errorf("%s: %q %v", tt.name, who, err)
		case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
			t.Errorf("%s: want %q, got %v", tt.name, tt.want, err)
		}
	}
}

// Only .cue files are read, within the caps, checked from the tree before
// any content: a big blob next to the definition costs nothing, a
// definition over max-definition-size is refused with the limit named.
func TestReadBounded(t *testing.T) {
	up := t.TempDir()
	git(t, up, "init", "-q", "-b", "main")
	example, _ := os.ReadFile("../../cluster-repo-example/cluster.cue")
	os.WriteFile(filepath.Join(up, "cluster.cue"), example, 0o644)
	big := make([]byte, 32<<20)
	os.WriteFile(filepath.Join(up, "firmware.bin"), big, 0o644)
	git(t, up, "add", ".")
	git(t, up, "commit", "-qm", "a blob next to the definition")
	r, err := source.Open(filepath.Join(t.TempDir(), "mirror.git"), "file://"+up, "main", nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	head, _ := r.Head(ctx)
	if err := r.Fetch(ctx, head); err != nil {
		t.Fatal(err)
	}
	c, err := r.Read(head, ".", 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := fs.Stat(c.Files, "firmware.bin"); err == nil {
		t.Error("a file that is not .cue was read")
	}
	if _, err := schema.Load(c.Files, "."); err != nil {
		t.Fatal(err)
	}

	os.WriteFile(filepath.Join(up, "huge.cue"), bytes.Repeat([]byte("// padding\n"), 1<<20), 0o644)
	git(t, up, "add", ".")
	git(t, up, "commit", "-qm", "an 11 MiB .cue file")
	head, _ = r.Head(ctx)
	if err := r.Fetch(ctx, head); err != nil {
		t.Fatal(err)
	}
	_, err = r.Read(head, ".", 0)
	if err == nil || !strings.Contains(err.Error(), "max-definition-size") || !strings.Contains(err.Error(), "huge.cue") {
		t.Errorf("an 11 MiB definition: %v, want a refusal naming the file and max-definition-size", err)
	}
	if _, err := r.Read(head, ".", 16<<20); err != nil {
		t.Errorf("with max-definition-size raised: %v", err)
	}
}
