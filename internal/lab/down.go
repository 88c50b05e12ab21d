package lab

import (
	"context"
	"errors"
	"fmt"

	"path/filepath"

	"strings"
	"sync"

	"sort"
)

// Down removes everything a lab made: the nodes its state names are
// powered off cleanly (their daemons stop as on a real machine), then
// whatever of any lab is left is swept away (see leftovers.go). It checks
// that nothing is left and returns what it removed: nothing on a machine
// without a lab, so a second Down says nothing.
func (c Config) Down(ctx context.Context) ([]string, error) {
	var removed []string
	if s, err := c.Load(); err == nil {
		var wg sync.WaitGroup
		var mu sync.Mutex
		var errs []error
		var stopped []string
		for _, n := range s.Nodes {
			if !alive(n.Nspawn) {
				continue
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				err := c.Stop(ctx, n)
				mu.Lock()
				defer mu.Unlock()
				stopped = append(stopped, n.Name)
				errs = append(errs, err)
			}()
		}
		wg.Wait()
		if len(stopped) > 0 {
			sort.Strings(stopped)
			removed = append(removed, "nodes "+strings.Join(stopped, ", ")+" powered off")
		}
		if err := errors.Join(errs...); err != nil {
			c.Log.Warn("a node did not stop cleanly; sweeping it", "err", err)
		}
	}
	swept, err := c.sweep(ctx)
	removed = append(removed, swept...)
	if err != nil {
		return removed, err
	}
	if left := c.Leftovers(ctx); len(left) > 0 {
		return removed, fmt.Errorf("still there after lab-down: %s", strings.Join(left, "; "))
	}
	return removed, nil
}

// Leftovers lists anything of the lab's still on the machine: processes,
// mounts, the bridge, its route, cgroups, state.
func (c Config) Leftovers(ctx context.Context) []string {
	var left []string
	if pids := c.Processes(); len(pids) > 0 {
		left = append(left, fmt.Sprintf("processes %v (%s)", pids, c.describePIDs(pids)))
	}
	for _, m := range mountsUnder(c.NodesDir) {
		left = append(left, "mount "+m)
	}
	if exists(c.NodesDir) {
		left = append(left, "directory "+c.NodesDir)
	}
	if _, err := run(ctx, "ip", "link", "show", c.Bridge); err == nil {
		left = append(left, "interface "+c.Bridge)
	}
	for _, l := range c.nodeLinks(ctx) {
		left = append(left, "link "+l)
	}
	if out, _ := run(ctx, "ip", "route", "show", c.Subnet.String()); strings.TrimSpace(out) != "" {
		left = append(left, "route "+strings.TrimSpace(out))
	}
	for _, r := range cgroupRoots {
		if d := filepath.Join(r, "mqha-lab"); exists(d) {
			left = append(left, "cgroup "+d)
		}
	}
	if exists(c.Dir) {
		left = append(left, "directory "+c.Dir)
	}
	return left
}

// gitDaemonPIDs finds the lab's git servers by the directory they serve: the
// git daemon (the git wrapper and the git-daemon it runs) and git-serve
// (https and ssh).
func (c Config) gitDaemonPIDs() []int {
	return processes(func(args []string) bool {
		cmdline := strings.Join(args, " ") + " "
		// git daemon (the git wrapper and the git-daemon it runs), by what it
		// serves or where it listens: an earlier lab's may serve another
		// checkout's directory on the lab's address.
		if strings.Contains(cmdline, "daemon") && (strings.Contains(cmdline, "--base-path="+filepath.Join(c.Dir, "git")+" ") ||
			strings.Contains(cmdline, "--listen="+c.HostAddr()+" ")) {
			return true
		}
		// git-serve: only ever the lab's (an mqha-lab binary of any checkout).
		return len(args) > 1 && filepath.Base(args[0]) == "mqha-lab" && args[1] == "git-serve"
	})
}
