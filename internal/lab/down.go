package lab

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Down removes everything the lab made: nodes, overlays, cgroups, the git
// daemon, the bridge and Dir. It then checks that nothing is left and says
// what is, if anything.
func (c Config) Down(ctx context.Context) error {
	s, err := c.Load()
	if err != nil {
		s = &State{} // still sweep for leftovers
	}
	nodes := s.Nodes
	// Nodes the state file does not know (a crashed Up) are found by their
	// nspawn processes and overlay directories.
	known := map[string]bool{}
	for _, n := range nodes {
		known[n.Name] = true
	}
	ents, _ := os.ReadDir(c.NodesDir)
	for _, e := range ents {
		if !known[e.Name()] {
			nodes = append(nodes, Node{Name: e.Name()})
		}
	}
	for _, pid := range c.nspawnPIDs() {
		syscall.Kill(pid, syscall.SIGTERM)
	}
	var wg sync.WaitGroup
	errs := make([]error, len(nodes))
	for i, n := range nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = c.Stop(ctx, n)
		}()
	}
	wg.Wait()
	for _, pid := range c.nspawnPIDs() {
		syscall.Kill(pid, syscall.SIGKILL)
	}
	if pid := s.GitDaemon; pid != 0 {
		syscall.Kill(pid, syscall.SIGTERM)
		waitGone(pid, 3*time.Second)
	}
	if b, err := os.ReadFile(filepath.Join(c.Dir, "git-daemon.pid")); err == nil {
		if pid, _ := strconv.Atoi(strings.TrimSpace(string(b))); pid > 0 {
			syscall.Kill(pid, syscall.SIGTERM)
			waitGone(pid, 3*time.Second)
		}
	}
	for _, pid := range c.gitDaemonPIDs() {
		syscall.Kill(pid, syscall.SIGTERM)
		waitGone(pid, 3*time.Second)
	}
	if _, err := run(ctx, "ip", "link", "show", c.Bridge); err == nil {
		if _, err := run(ctx, "ip", "link", "del", c.Bridge); err != nil {
			errs = append(errs, err)
		}
	}
	for _, r := range cgroupRoots {
		removeCgroup(filepath.Join(r, "mqha-lab"))
	}
	os.Remove(c.NodesDir)
	if err := os.RemoveAll(c.Dir); err != nil {
		errs = append(errs, err)
	}
	if left := c.Leftovers(ctx); len(left) > 0 {
		errs = append(errs, fmt.Errorf("still there after lab-down: %s", strings.Join(left, "; ")))
	}
	return errors.Join(errs...)
}

// Leftovers lists anything of the lab's still on the machine: processes,
// mounts, the bridge, its route, cgroups, state.
func (c Config) Leftovers(ctx context.Context) []string {
	var left []string
	if pids := c.nspawnPIDs(); len(pids) > 0 {
		left = append(left, fmt.Sprintf("systemd-nspawn processes %v", pids))
	}
	for _, l := range strings.Split(mustRead("/proc/self/mountinfo"), "\n") {
		if f := strings.Fields(l); len(f) > 4 && strings.HasPrefix(f[4], c.NodesDir+"/") {
			left = append(left, "mount "+f[4])
		}
	}
	if _, err := run(ctx, "ip", "link", "show", c.Bridge); err == nil {
		left = append(left, "interface "+c.Bridge)
	}
	if out, _ := run(ctx, "ip", "route", "show", c.Subnet.String()); strings.TrimSpace(out) != "" {
		left = append(left, "route "+strings.TrimSpace(out))
	}
	for _, r := range cgroupRoots {
		if _, err := os.Stat(filepath.Join(r, "mqha-lab")); err == nil {
			left = append(left, "cgroup "+filepath.Join(r, "mqha-lab"))
		}
	}
	for _, pid := range c.gitDaemonPIDs() {
		left = append(left, fmt.Sprintf("git daemon pid %d", pid))
	}
	if _, err := os.Stat(c.Dir); err == nil {
		left = append(left, "directory "+c.Dir)
	}
	return left
}

// gitDaemonPIDs finds the lab's git servers by the directory they serve: the
// git daemon (the git wrapper and the git-daemon it runs) and git-serve
// (https and ssh).
func (c Config) gitDaemonPIDs() []int {
	return processes(func(cmdline string) bool {
		return strings.Contains(cmdline, "daemon") && strings.Contains(cmdline, "--base-path="+filepath.Join(c.Dir, "git")) ||
			strings.Contains(cmdline, "git-serve") && strings.Contains(cmdline, c.Dir)
	})
}
