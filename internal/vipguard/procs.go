package vipguard

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/mqha/mqha/internal/health"
)

// Unit is keepalived's unit.
const Unit = "keepalived.service"

// Proc is one process of keepalived and its state (R, S, D, T stopped,
// t stopped by a tracer, ...).
type Proc struct {
	PID   int
	State byte
}

// Stopped counts the stopped processes: their VRRP child sends no adverts.
func Stopped(ps []Proc) int {
	n := 0
	for _, p := range ps {
		if p.State == 'T' || p.State == 't' {
			n++
		}
	}
	return n
}

// Roots of the file systems read (variables for tests).
var (
	cgroupRoot = "/sys/fs/cgroup"
	procRoot   = "/proc"
)

// Processes lists unit's processes from its cgroup: cheap enough to read
// ten times a second. Without a cgroup file system it looks for processes
// named keepalived in /proc.
func Processes(unit string) ([]Proc, error) {
	for _, dir := range []string{
		filepath.Join(cgroupRoot, "system.slice", unit),            // cgroup v2
		filepath.Join(cgroupRoot, "systemd", "system.slice", unit), // v1, systemd's hierarchy
	} {
		b, err := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
		if err == nil {
			return states(strings.Fields(string(b))), nil
		}
		if !errors.Is(err, fs.ErrNotExist) {
			return nil, err
		}
	}
	// No cgroup for the unit: not running, where systemd keeps cgroups
	// (it removes a stopped unit's); elsewhere, ask /proc.
	if _, err := os.Stat(filepath.Join(cgroupRoot, "system.slice")); err == nil {
		return nil, nil
	}
	if _, err := os.Stat(filepath.Join(cgroupRoot, "systemd", "system.slice")); err == nil {
		return nil, nil
	}
	return byName(strings.TrimSuffix(unit, ".service"))
}

func states(pids []string) []Proc {
	var out []Proc
	for _, f := range pids {
		pid, err := strconv.Atoi(f)
		if err != nil {
			continue
		}
		st, err := health.ProcState(procRoot, pid)
		if err != nil {
			continue // exited meanwhile
		}
		out = append(out, Proc{PID: pid, State: st})
	}
	return out
}

func byName(name string) ([]Proc, error) {
	ents, err := os.ReadDir(procRoot)
	if err != nil {
		return nil, err
	}
	var pids []string
	for _, e := range ents {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		comm, err := os.ReadFile(filepath.Join(procRoot, e.Name(), "comm"))
		if err == nil && strings.TrimSpace(string(comm)) == name {
			pids = append(pids, e.Name())
		}
	}
	return states(pids), nil
}
