package health

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// Sample is what the kernel says of a unit's processes at one moment: the
// evidence that tells a hung daemon (no progress) from a busy one.
type Sample struct {
	PID   int           // the main process
	State byte          // its state: R running, S sleeping, D waiting on I/O, T stopped, ...
	CPU   time.Duration // user + system time of the main process and its descendants
}

// clockTick is the kernel's USER_HZ, the unit of /proc/PID/stat's times:
// 100 on every Linux architecture Debian and RHEL ship.
const clockTick = 10 * time.Millisecond

// sampleProc reads the unit's main process and its descendants in /proc.
func (m *Monitor) sampleProc(ctx context.Context, unit string) (Sample, error) {
	pid, err := m.Units.MainPID(ctx, unit)
	if err != nil {
		return Sample{}, err
	}
	if pid <= 0 {
		return Sample{}, fmt.Errorf("%s has no main process", unit)
	}
	return ReadProc("/proc", pid)
}

// ReadProc samples process pid and its descendants under procfs root.
func ReadProc(root string, pid int) (Sample, error) {
	s := Sample{PID: pid}
	seen := map[int]bool{}
	var walk func(p int, depth int) error
	walk = func(p int, depth int) error {
		if seen[p] || depth > 4 {
			return nil
		}
		seen[p] = true
		state, ticks, err := readStat(root, p)
		if err != nil {
			if p != pid {
				return nil // a child that exited meanwhile
			}
			return err
		}
		if p == pid {
			s.State = state
		}
		s.CPU += time.Duration(ticks) * clockTick
		for _, c := range Children(root, p) {
			if err := walk(c, depth+1); err != nil {
				return err
			}
		}
		return nil
	}
	if err := walk(pid, 0); err != nil {
		return Sample{}, fmt.Errorf("read process %d: %w (the agent must see the daemons' processes in /proc)", pid, err)
	}
	return s, nil
}

// ProcState is process pid's state under procfs root (R, S, D, T, t, ...).
func ProcState(root string, pid int) (byte, error) {
	st, _, err := readStat(root, pid)
	return st, err
}

// readStat returns a process's state and utime+stime in clock ticks from
// /proc/PID/stat. The command name (field 2) may hold spaces and
// parentheses, so fields are counted after its last ')'.
func readStat(root string, pid int) (byte, uint64, error) {
	b, err := os.ReadFile(fmt.Sprintf("%s/%d/stat", root, pid))
	if err != nil {
		return 0, 0, err
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, 0, fmt.Errorf("unexpected /proc/%d/stat", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	// After the name: state(3) ppid(4) ... utime(14) stime(15).
	if len(f) < 13 || len(f[0]) != 1 {
		return 0, 0, fmt.Errorf("unexpected /proc/%d/stat", pid)
	}
	ut, err1 := strconv.ParseUint(f[11], 10, 64)
	st, err2 := strconv.ParseUint(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, 0, fmt.Errorf("unexpected times in /proc/%d/stat", pid)
	}
	return f[0][0], ut + st, nil
}

// Children lists a process's children under procfs root (the thread group
// leader's children file; mosquitto and nginx workers are single-threaded).
func Children(root string, pid int) []int {
	b, err := os.ReadFile(fmt.Sprintf("%s/%d/task/%d/children", root, pid, pid))
	if err != nil {
		return nil
	}
	var out []int
	for _, f := range strings.Fields(string(b)) {
		if c, err := strconv.Atoi(f); err == nil {
			out = append(out, c)
		}
	}
	return out
}
