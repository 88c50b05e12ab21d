//go:build e2e && leftovers

package e2e

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestLabLeftovers ends the running lab as a crash or a killed CI job does:
// every process of it SIGKILLed, no down, its state file gone. `make lab`
// must then come up fresh (not boot the old nodes' state: their agents
// would refuse the new repository's history), `make lab-down` must leave
// nothing, and a second one must print nothing. It runs last (make e2e),
// since it takes the lab away.
func TestLabLeftovers(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	pids := cfg.Processes()
	if len(pids) < 6 { // five nodes' processes and the git servers at least
		t.Fatalf("the lab has only processes %v: is it up?", pids)
	}
	for _, pid := range pids {
		syscall.Kill(pid, syscall.SIGKILL)
	}
	deadline := time.Now().Add(10 * time.Second)
	for len(cfg.Processes()) > 0 && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	if left := cfg.Processes(); len(left) > 0 {
		t.Fatalf("processes %v survived SIGKILL", left)
	}
	if err := os.Remove(filepath.Join(cfg.Dir, "state.json")); err != nil {
		t.Fatal(err)
	}
	left := strings.Join(cfg.Leftovers(ctx), "; ")
	for _, want := range []string{"mount " + cfg.NodesDir, "interface " + cfg.Bridge} {
		if !strings.Contains(left, want) {
			t.Fatalf("the killed lab left no %q, so this proves nothing: %s", want, left)
		}
	}
	t.Logf("a killed lab left: %s", left)

	labCmd := func(args ...string) (string, error) {
		cmd := exec.CommandContext(ctx, filepath.Join(root, "bin", "mqha-lab"), args...)
		cmd.Dir = root
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	start := time.Now()
	out, err := labCmd("up")
	if err != nil {
		t.Fatalf("mqha-lab up over a killed lab: %v\n%s", err, out)
	}
	if !strings.Contains(out, "cleared what an earlier lab left") {
		t.Errorf("up did not say what it cleared:\n%s", out)
	}
	report(t, "lab up over a killed lab's leftovers in %s", time.Since(start).Round(time.Millisecond))
	// Fresh: every agent applied the new repository's head (up waits for
	// it) and none remembers the old one.
	s, err := cfg.Load()
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range s.Nodes {
		if st := onAny(t, n.Name, "systemctl", "show", "-p", "StatusText", "--value", "mqha-agent"); strings.Contains(st, "refused") {
			t.Errorf("%s: %s", n.Name, st)
		}
	}

	if out, err := labCmd("down"); err != nil {
		t.Fatalf("mqha-lab down: %v\n%s", err, out)
	}
	if left := cfg.Leftovers(ctx); len(left) > 0 {
		t.Fatalf("left after down: %s", strings.Join(left, "; "))
	}
	if _, err := os.Stat(cfg.NodesDir); err == nil {
		t.Fatalf("%s still there after down", cfg.NodesDir)
	}
	out, err = labCmd("down")
	if err != nil || strings.TrimSpace(out) != "" {
		t.Fatalf("a second down must print nothing and succeed: %v\n%q", err, out)
	}
}
