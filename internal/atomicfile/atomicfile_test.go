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
