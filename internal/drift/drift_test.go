package drift_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/mqha/mqha/internal/drift"
)

func TestWatch(t *testing.T) {
	dir := t.TempDir()
	managed := filepath.Join(dir, "nginx.conf")
	os.WriteFile(managed, []byte("a"), 0o644)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ch, err := drift.Watch(ctx, []string{managed, filepath.Join(dir, "missing", "x.conf")}, 50*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		change func()
		want   string // "" means no report
	}{
		{"unmanaged file", func() { os.WriteFile(filepath.Join(dir, "other"), []byte("x"), 0o644) }, ""},
		{"agent temp file", func() { os.WriteFile(filepath.Join(dir, ".nginx.conf.mqha-123"), []byte("x"), 0o644) }, ""},
		{"edit in place", func() { os.WriteFile(managed, []byte("b"), 0o644) }, managed},
		{"rename over (editors)", func() {
			tmp := filepath.Join(dir, "nginx.conf.swp")
			os.WriteFile(tmp, []byte("c"), 0o644)
			os.Rename(tmp, managed)
		}, managed},
		{"removal", func() { os.Remove(managed) }, managed},
	}
	for _, tt := range tests {
		tt.change()
		select {
		case got := <-ch:
			if tt.want == "" {
				t.Errorf("%s: reported %q", tt.name, got)
			} else if got != tt.want {
				t.Errorf("%s: reported %q, want %q", tt.name, got, tt.want)
			}
		case <-time.After(500 * time.Millisecond):
			if tt.want != "" {
				t.Errorf("%s: not reported", tt.name)
			}
		}
	}
}
