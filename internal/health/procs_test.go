package health

import (
	"os/exec"
	"syscall"
	"testing"
	"time"
)

// TestReadProc samples real processes: a stopped child shows state T and
// no CPU progress; this busy test process shows progress.
func TestReadProc(t *testing.T) {
	cmd := exec.Command("sleep", "30")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	cmd.Process.Signal(syscall.SIGSTOP)
	var s Sample
	var err error
	for range 50 {
		if s, err = ReadProc("/proc", cmd.Process.Pid); err == nil && s.State == 'T' {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err != nil || s.State != 'T' || s.PID != cmd.Process.Pid {
		t.Fatalf("stopped child: %+v, %v", s, err)
	}
	before, _ := ReadProc("/proc", syscall.Getpid())
	for end := time.Now().Add(100 * time.Millisecond); time.Now().Before(end); {
	}
	after, err := ReadProc("/proc", syscall.Getpid())
	if err != nil || after.CPU <= before.CPU {
		t.Errorf("busy process: CPU %s -> %s, %v", before.CPU, after.CPU, err)
	}
	if _, err := ReadProc("/proc", 1<<30); err == nil {
		t.Error("no error for a process that does not exist")
	}
}
