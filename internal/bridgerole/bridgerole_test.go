package bridgerole

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// files points the role's files at a fresh directory; with connections
// rendered unless bare.
func files(t *testing.T, bare bool) string {
	t.Helper()
	d := t.TempDir()
	Dir = d
	connections = filepath.Join(d, "mqha-bridges.conf")
	link = filepath.Join(d, "bridge", "bridges.conf")
	if !bare {
		os.WriteFile(connections, []byte("connection x\n"), 0o640)
	}
	return d
}

// Notify makes the node bridge on MASTER only, restarts mosquitto only when
// that changed, and counts the moves into and out of the role.
func TestNotify(t *testing.T) {
	files(t, false)
	restarts := 0
	restart := func() error { restarts++; return nil }
	for i, step := range []struct {
		state              string
		linked             bool
		restarts           int
		takeovers, standDs int
	}{
		{"BACKUP", false, 0, 0, 0},
		{"MASTER", true, 1, 1, 0},
		{"MASTER", true, 1, 1, 0}, // said twice: nothing to do
		{"FAULT", false, 2, 1, 1},
		{"BACKUP", false, 2, 1, 1},
		{"MASTER", true, 3, 2, 1},
		{"STOP", false, 4, 2, 2},
	} {
		if _, err := Notify(step.state, 20, restart); err != nil {
			t.Fatalf("step %d (%s): %v", i, step.state, err)
		}
		target, err := os.Readlink(link)
		if linked := err == nil; linked != step.linked || linked && target != connections {
			t.Errorf("step %d (%s): linked %v (%q), want %v", i, step.state, linked, target, step.linked)
		}
		st, _, err := Read()
		if err != nil {
			t.Fatal(err)
		}
		if restarts != step.restarts || st.State != step.state || st.Takeovers != step.takeovers || st.StandDowns != step.standDs || st.Priority != 20 {
			t.Errorf("step %d (%s): %d restarts, state %+v; want %d restarts, %d take-overs, %d stand-downs",
				i, step.state, restarts, st, step.restarts, step.takeovers, step.standDs)
		}
	}
}

func TestNotifyBadInput(t *testing.T) {
	files(t, true)
	restart := func() error { t.Error("restarted"); return nil }
	if _, err := Notify("MASTER", 20, restart); err == nil || !strings.Contains(err.Error(), "not rendered") {
		t.Errorf("MASTER without rendered connections: %v", err)
	}
	if _, err := os.Lstat(link); err == nil {
		t.Error("linked what is not there")
	}
	if _, err := Notify("SOMETHING", 20, restart); err == nil {
		t.Error("an unknown state was taken")
	}
}

// The check puts right what keepalived's state says, whoever changed it:
// a link made by hand on a standby is taken out, one lost on the master is
// made again.
func TestCheckEnforcesTheState(t *testing.T) {
	files(t, false)
	restarts := 0
	restart := func() error { restarts++; return nil }
	if _, err := Notify("BACKUP", 10, restart); err != nil {
		t.Fatal(err)
	}
	os.MkdirAll(filepath.Dir(link), 0o755)
	os.Symlink(connections, link) // by hand
	unlock, _ := lock()
	did, err := bridge(false, restart)
	unlock()
	if err != nil || !strings.Contains(did, "taken out") || restarts != 1 {
		t.Errorf("a standby bridging by hand: %q, %v, %d restarts", did, err, restarts)
	}
	if _, err := Notify("MASTER", 10, restart); err != nil {
		t.Fatal(err)
	}
	os.Remove(link) // /run emptied, a hand
	if did, err := bridge(true, restart); err != nil || !strings.Contains(did, "linked in") || restarts != 3 {
		t.Errorf("a master not bridging: %q, %v, %d restarts", did, err, restarts)
	}
}

// A process stopped by SIGSTOP is told from one that runs (busy, or
// restarting, gets a second chance).
func TestNotRunning(t *testing.T) {
	d := t.TempDir()
	pidFile := filepath.Join(d, "pid")
	if got := notRunning(pidFile); !strings.Contains(got, "not running") {
		t.Errorf("no pid file: %q", got)
	}
	cmd := exec.Command("sleep", "30")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	os.WriteFile(pidFile, []byte(strconv.Itoa(cmd.Process.Pid)+"\n"), 0o644)
	if got := notRunning(pidFile); got != "" {
		t.Errorf("a running process: %q", got)
	}
	if !startedWithin(pidFile, time.Minute) || startedWithin(pidFile, 0) {
		t.Error("startedWithin does not read the process's start")
	}
	syscall.Kill(cmd.Process.Pid, syscall.SIGSTOP)
	deadline := time.Now().Add(5 * time.Second)
	for notRunning(pidFile) != stopped && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if got := notRunning(pidFile); got != stopped {
		t.Errorf("a stopped process: %q", got)
	}
	syscall.Kill(cmd.Process.Pid, syscall.SIGCONT)
}

// A node that a commit removed fails its check at once, whatever else it
// would find, and passes the leaving part again once it stays.
func TestLeavingFailsTheCheck(t *testing.T) {
	files(t, false)
	if err := SetLeaving("removed by commit abc"); err != nil {
		t.Fatal(err)
	}
	err := check(t.Context(), CheckConfig{Local: "127.0.0.1:1"}, State{State: "MASTER"}, &Check{})
	if err == nil || !strings.Contains(err.Error(), "leaving the cluster (removed by commit abc)") {
		t.Fatalf("check while leaving: %v", err)
	}
	if err := SetLeaving(""); err != nil {
		t.Fatal(err)
	}
	if err := SetLeaving(""); err != nil {
		t.Fatalf("not leaving twice: %v", err)
	}
	if w := leaving(); w != "" {
		t.Errorf("still leaving: %q", w)
	}
}
