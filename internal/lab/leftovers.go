package lab

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// What a lab leaves on the machine when its processes are ended without
// `down` (a killed job, a crash, a CI machine handed on), found without its
// state file, and removed: Up sweeps before it builds, Down after it stopped
// the nodes it knows. Leftovers only lists.

// sweep ends every process of a lab, unmounts everything under NodesDir
// (again and again: an Up over an earlier lab stacked overlays), removes the
// node directories, the bridge, the cgroups and Dir, and says what it
// removed, in words. Nothing found, nothing said.
func (c Config) sweep(ctx context.Context) (removed []string, err error) {
	if pids := c.Processes(); len(pids) > 0 {
		removed = append(removed, fmt.Sprintf("%d processes (%s)", len(pids), c.describePIDs(pids)))
		// nspawn first, politely: it tears its container down.
		for _, pid := range c.nspawnPIDs() {
			syscall.Kill(pid, syscall.SIGTERM)
		}
		waitAllGone(c.nspawnPIDs, 3*time.Second)
		// Whatever is left (a container whose nspawn was killed keeps
		// running, its init reparented; the git servers) is killed: SIGKILL
		// to a container's init ends its PID namespace.
		for _, pid := range c.Processes() {
			syscall.Kill(pid, syscall.SIGKILL)
		}
		if left := waitAllGone(c.Processes, 5*time.Second); len(left) > 0 {
			return removed, fmt.Errorf("lab processes %v survive SIGKILL (stuck in the kernel?): see ps -o pid,stat,wchan,cmd -p %s", left, joinInts(left, ","))
		}
	}
	u, lazy, uerr := unmountUnder(ctx, c.NodesDir)
	if u > 0 {
		removed = append(removed, fmt.Sprintf("%d mounts under %s", u, c.NodesDir))
	}
	if len(lazy) > 0 {
		removed = append(removed, "detached with umount -l as a last resort (busy): "+strings.Join(lazy, ", "))
	}
	if uerr != nil {
		// Removing a directory with a mount under it would delete through
		// the mount: stop here.
		return removed, uerr
	}
	// The nodes' links outlive them here (their network namespace lingers
	// after its last process): nspawn cannot make them again.
	links := c.nodeLinks(ctx)
	for _, l := range links {
		if _, err := run(ctx, "ip", "link", "del", l); err != nil && exists("/sys/class/net/"+l) {
			return removed, err
		}
	}
	if len(links) > 0 {
		removed = append(removed, "links "+strings.Join(links, ", "))
	}
	if ents, _ := os.ReadDir(c.NodesDir); len(ents) > 0 {
		var names []string
		for _, e := range ents {
			names = append(names, e.Name())
		}
		removed = append(removed, "node directories "+strings.Join(names, ", ")+" in "+c.NodesDir)
	}
	if err := os.RemoveAll(c.NodesDir); err != nil {
		return removed, fmt.Errorf("remove the lab's node directories: %w", err)
	}
	if _, err := run(ctx, "ip", "link", "show", c.Bridge); err == nil {
		if _, err := run(ctx, "ip", "link", "del", c.Bridge); err != nil {
			return removed, err
		}
		removed = append(removed, "interface "+c.Bridge)
	}
	for _, r := range cgroupRoots {
		if d := filepath.Join(r, "mqha-lab"); exists(d) {
			removeCgroup(d)
			removed = append(removed, "cgroup "+d)
		}
	}
	if exists(c.Dir) {
		if err := os.RemoveAll(c.Dir); err != nil {
			return removed, err
		}
		removed = append(removed, "directory "+c.Dir)
	}
	return removed, nil
}

// Processes lists every process of a lab, whichever lab brought it up: the
// systemd-nspawn launches for NodesDir, every process in the lab's cgroups
// (the nodes' own, also when their nspawn is gone: a container's init
// outlives it; their root, seen from here, is just "/"), and the lab's git
// servers.
func (c Config) Processes() []int {
	seen := map[int]bool{}
	for _, pid := range append(c.nspawnPIDs(), c.gitDaemonPIDs()...) {
		seen[pid] = true
	}
	for _, pid := range allPIDs() {
		if inLabCgroup(pid) {
			seen[pid] = true
		}
	}
	delete(seen, os.Getpid())
	out := make([]int, 0, len(seen))
	for pid := range seen {
		out = append(out, pid)
	}
	sort.Ints(out)
	return out
}

// nodeLinks lists the host sides of the nodes' network links: those on the
// lab bridge, and those named for a node (nspawn's vb-NAME) of the layout,
// the state file or NodesDir, wherever they are attached.
func (c Config) nodeLinks(ctx context.Context) []string {
	names := map[string]bool{}
	for _, l := range Layout {
		names[l.Name] = true
	}
	if s, err := c.Load(); err == nil {
		for _, n := range s.Nodes {
			names[n.Name] = true
		}
	}
	ents, _ := os.ReadDir(c.NodesDir)
	for _, e := range ents {
		names[e.Name()] = true
	}
	seen := map[string]bool{}
	for n := range names {
		if exists("/sys/class/net/" + veth(n)) {
			seen[veth(n)] = true
		}
	}
	if out, err := run(ctx, "ip", "-o", "link", "show", "master", c.Bridge); err == nil {
		for _, l := range strings.Split(out, "\n") {
			// "18: vb-lb2@if2: <...": the name, less its peer
			if f := strings.Fields(l); len(f) > 1 {
				seen[strings.SplitN(strings.TrimSuffix(f[1], ":"), "@", 2)[0]] = true
			}
		}
	}
	out := make([]string, 0, len(seen))
	for l := range seen {
		out = append(out, l)
	}
	sort.Strings(out)
	return out
}

// inLabCgroup reports whether pid is in a cgroup of the lab's (launch moves
// each node there, see cgroupRoots).
func inLabCgroup(pid int) bool {
	for _, l := range strings.Split(mustRead(fmt.Sprintf("/proc/%d/cgroup", pid)), "\n") {
		// hierarchy-id:controllers:path
		if f := strings.SplitN(l, ":", 3); len(f) == 3 && under(f[2], "/mqha-lab") {
			return true
		}
	}
	return false
}

// describePIDs names a few of pids by their command, for the log.
func (c Config) describePIDs(pids []int) string {
	count := map[string]int{}
	for _, pid := range pids {
		comm := strings.TrimSpace(mustRead(fmt.Sprintf("/proc/%d/comm", pid)))
		if comm == "" {
			comm = "?"
		}
		count[comm]++
	}
	var parts []string
	for comm, n := range count {
		parts = append(parts, fmt.Sprintf("%s x%d", comm, n))
	}
	sort.Strings(parts)
	if len(parts) > 8 {
		parts = append(parts[:8], "...")
	}
	return strings.Join(parts, ", ")
}

// unmountUnder unmounts every mount point under dir, deepest first, until
// none is left (mounts can be stacked on one point), and says how many it
// unmounted. A mount that stays busy is detached lazily as a last resort
// and named in lazy; one that cannot even be detached is an error.
func unmountUnder(ctx context.Context, dir string) (n int, lazy []string, err error) {
	for round := 0; ; round++ {
		points := mountsUnder(dir)
		if len(points) == 0 {
			return n, lazy, nil
		}
		if round >= 20 {
			return n, lazy, fmt.Errorf("still mounted under %s after %d rounds of umount: %s", dir, round, strings.Join(points, ", "))
		}
		// Deepest first: a mount inside a node's root before the root.
		sort.Slice(points, func(i, j int) bool { return len(points[i]) > len(points[j]) })
		for _, p := range points {
			if _, uerr := run(ctx, "umount", p); uerr == nil {
				n++
				continue
			}
			if round < 3 {
				continue // busy for a moment: try again
			}
			if _, lerr := run(ctx, "umount", "-l", p); lerr != nil {
				return n, lazy, fmt.Errorf("cannot unmount %s, not even lazily: %w", p, lerr)
			}
			n++
			lazy = append(lazy, p)
		}
		time.Sleep(time.Duration(round) * 100 * time.Millisecond)
	}
}

// mountsUnder lists the mount points under dir (each once, however many
// mounts are stacked on it: the next round finds the one below).
func mountsUnder(dir string) []string {
	seen := map[string]bool{}
	var out []string
	for _, l := range strings.Split(mustRead("/proc/self/mountinfo"), "\n") {
		f := strings.Fields(l)
		if len(f) > 4 && under(unescapeMount(f[4]), dir) && !seen[f[4]] {
			seen[f[4]] = true
			out = append(out, unescapeMount(f[4]))
		}
	}
	return out
}

// unescapeMount undoes mountinfo's octal escapes (\040 for a space).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// under reports whether p is dir or below it.
func under(p, dir string) bool {
	dir = filepath.Clean(dir)
	return p == dir || strings.HasPrefix(p, dir+"/")
}

func exists(p string) bool {
	_, err := os.Lstat(p)
	return err == nil
}

func allPIDs() []int {
	var out []int
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		if pid, err := strconv.Atoi(e.Name()); err == nil {
			out = append(out, pid)
		}
	}
	return out
}

// waitAllGone waits until list returns nothing, or d passed; it returns
// what is left.
func waitAllGone(list func() []int, d time.Duration) []int {
	deadline := time.Now().Add(d)
	for {
		left := list()
		if len(left) == 0 || time.Now().After(deadline) {
			return left
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func joinInts(xs []int, sep string) string {
	s := make([]string, len(xs))
	for i, x := range xs {
		s[i] = strconv.Itoa(x)
	}
	return strings.Join(s, sep)
}
