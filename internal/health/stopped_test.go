package health

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"
)

// A unit whose main process turns stopped is reported once, within a tick
// or two; systemd's events pass through; a process that is not stopped is
// never reported.
func TestWithStopped(t *testing.T) {
	root := t.TempDir()
	stat := func(pid int, state string) {
		dir := filepath.Join(root, itoa(pid))
		os.MkdirAll(dir, 0o755)
		os.WriteFile(filepath.Join(dir, "stat"), []byte(itoa(pid)+" (nginx) "+state+" 1 1 1 0 -1 4194560 0 0 0 0 5 3 0 0 20 0 1 0 100 0 0"), 0o644)
	}
	stat(10, "S")
	stat(20, "S")
	pids := map[string]int{"nginx.service": 10, "keepalived.service": 20}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	events := make(chan string)
	out := WithStopped(ctx, events, func() []string { return []string{"nginx.service", "keepalived.service"} },
		func(_ context.Context, u string) (int, error) { return pids[u], nil }, root, 10*time.Millisecond)
	expect := func(want string, within time.Duration) {
		t.Helper()
		select {
		case u := <-out:
			if u != want {
				t.Fatalf("got %q, want %q", u, want)
			}
		case <-time.After(within):
			if want != "" {
				t.Fatalf("nothing within %s, want %q", within, want)
			}
		}
	}
	expect("", 100*time.Millisecond) // nothing stopped
	events <- "keepalived.service"
	expect("keepalived.service", time.Second)
	stat(10, "T")
	expect("nginx.service", time.Second)
	expect("", 100*time.Millisecond) // once per stop
	stat(10, "S")
	time.Sleep(50 * time.Millisecond)
	stat(10, "T")
	expect("nginx.service", time.Second)
}

func itoa(i int) string { return strconv.Itoa(i) }
