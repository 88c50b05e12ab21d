package atomicfile

import (
	"os"
	"path/filepath"
	"testing"
)

func TestWrite(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "sub", "f")
	for _, c := range []struct {
		content string
		mode    os.FileMode
	}{{"one", 0o600}, {"two", 0o644}} {
		if err := Write(p, []byte(c.content), c.mode); err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(p)
		if err != nil || string(b) != c.content {
			t.Fatalf("read %q, %v; want %q", b, err, c.content)
		}
		st, _ := os.Stat(p)
		if st.Mode().Perm() != c.mode {
			t.Errorf("mode %v, want %v", st.Mode().Perm(), c.mode)
		}
	}
	left, _ := os.ReadDir(filepath.Join(dir, "sub"))
	if len(left) != 1 {
		t.Errorf("temporary files left behind: %v", left)
	}
}

// WriteLike keeps the replaced file's mode (and owner: the same here, as a
// test cannot chown to another user unless root).
func TestWriteLike(t *testing.T) {
	p := filepath.Join(t.TempDir(), "db")
	os.WriteFile(p, []byte("old"), 0o600)
	fi, _ := os.Stat(p)
	if err := WriteLike(p, []byte("new"), fi); err != nil {
		t.Fatal(err)
	}
	after, _ := os.Stat(p)
	if b, _ := os.ReadFile(p); string(b) != "new" || after.Mode().Perm() != 0o600 {
		t.Errorf("content %q, mode %v", b, after.Mode())
	}
}
