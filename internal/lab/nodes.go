package lab

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// cgroupRoots are the hierarchies a launch is moved into: on these hosts
// (PID 1 is not systemd, cgroups in hybrid mode) every container would
// otherwise share one cgroup.
var cgroupRoots = []string{"/sys/fs/cgroup/systemd", "/sys/fs/cgroup/unified"}

// NodeFiles is what a node gets written into its root before it boots.
type NodeFiles map[string]File

type File struct {
	Data  []byte
	Mode  os.FileMode
	Group string // chgrp inside the node after install, e.g. mosquitto
}

// Boot prepares an overlay root for the node on the base image, writes its
// identity, network and files, installs the package into it, and starts
// systemd-nspawn. It returns once systemd in the node is running.
func (c Config) Boot(ctx context.Context, base, name, addr string, files NodeFiles) (Node, error) {
	n := Node{Name: name, Addr: addr}
	dir := filepath.Join(c.NodesDir, name)
	n.Root = filepath.Join(dir, "root")
	for _, d := range []string{"upper", "work", "root"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			return n, err
		}
	}
	opts := fmt.Sprintf("lowerdir=%s,upperdir=%s/upper,workdir=%s/work", base, dir, dir)
	if _, err := run(ctx, "mount", "-t", "overlay", "overlay", "-o", opts, n.Root); err != nil {
		return n, err
	}
	if err := c.prepare(ctx, n, files); err != nil {
		return n, err
	}
	return c.launch(ctx, n)
}

// launch starts systemd-nspawn on the node's prepared root and returns once
// systemd in the node is running.
func (c Config) launch(ctx context.Context, n Node) (Node, error) {
	name, dir := n.Name, filepath.Join(c.NodesDir, n.Name)
	for _, r := range cgroupRoots {
		if _, err := os.Stat(r); err == nil {
			os.MkdirAll(filepath.Join(r, "mqha-lab", name), 0o755)
		}
	}
	// The wrapper moves itself into the node's cgroups, then becomes
	// systemd-nspawn; --register=no and --keep-unit because the host has no
	// systemd to register with.
	script := `for r in "$@"; do [ -d "$r" ] && echo $$ > "$r/cgroup.procs"; done; exec systemd-nspawn --register=no --keep-unit -q -D "$ROOT" -b -M "$NAME" --network-bridge="$BRIDGE"`
	var procs []string
	for _, r := range cgroupRoots {
		procs = append(procs, filepath.Join(r, "mqha-lab", name))
	}
	log, err := os.Create(filepath.Join(dir, "console.log"))
	if err != nil {
		return n, err
	}
	defer log.Close()
	cmd := exec.Command("sh", append([]string{"-c", script, "sh"}, procs...)...)
	cmd.Env = append(os.Environ(), "ROOT="+n.Root, "NAME="+name, "BRIDGE="+c.Bridge)
	cmd.Stdout, cmd.Stderr = log, log
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return n, fmt.Errorf("start node %s: %w", name, err)
	}
	n.Nspawn = cmd.Process.Pid
	go cmd.Wait() // reap it if it exits while we still run
	return n, c.waitBooted(ctx, n, filepath.Join(dir, "console.log"))
}

func (c Config) prepare(ctx context.Context, n Node, files NodeFiles) error {
	machineID := strings.ReplaceAll(strings.TrimSpace(mustRead("/proc/sys/kernel/random/uuid")), "-", "")
	hosts := "127.0.0.1 localhost\n" + n.Addr + " " + n.Name + "\n"
	network := fmt.Sprintf("[Match]\nName=host0\n\n[Network]\nAddress=%s/%d\nLinkLocalAddressing=no\nIPv6AcceptRA=no\n", n.Addr, c.Subnet.Bits())
	base := NodeFiles{
		"/etc/hostname":                         {Data: []byte(n.Name + "\n"), Mode: 0o644},
		"/etc/machine-id":                       {Data: []byte(machineID + "\n"), Mode: 0o444},
		"/etc/hosts":                            {Data: []byte(hosts), Mode: 0o644},
		"/etc/systemd/network/10-host0.network": {Data: []byte(network), Mode: 0o644},
	}
	for p, f := range files {
		base[p] = f
	}
	for p, f := range base {
		full := filepath.Join(n.Root, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			return err
		}
		os.Remove(full)
		if err := os.WriteFile(full, f.Data, f.Mode); err != nil {
			return err
		}
	}
	links := map[string]string{"multi-user.target.wants/systemd-networkd.service": "/lib/systemd/system/systemd-networkd.service"}
	// Timers that would only add noise (and disk I/O) to a lab node.
	for _, t := range []string{"apt-daily.timer", "apt-daily-upgrade.timer", "dpkg-db-backup.timer", "e2scrub_all.timer", "fstrim.timer", "e2scrub_reap.service"} {
		links[t] = "/dev/null"
	}
	for l, target := range links {
		p := filepath.Join(n.Root, "etc/systemd/system", l)
		os.MkdirAll(filepath.Dir(p), 0o755)
		os.Remove(p)
		if err := os.Symlink(target, p); err != nil {
			return err
		}
	}
	// The package, installed as dpkg would on a real machine; its postinst
	// enables the agent, which starts at boot.
	if c.Deb != "" {
		deb, err := os.ReadFile(c.Deb)
		if err != nil {
			return fmt.Errorf("%w (run make packages)", err)
		}
		if err := os.WriteFile(filepath.Join(n.Root, "tmp/mqha-agent.deb"), deb, 0o644); err != nil {
			return err
		}
		// Keep our agent.conf: it was written above, dpkg must not replace it.
		if _, err := run(ctx, "chroot", n.Root, "dpkg", "--force-confold", "-i", "/tmp/mqha-agent.deb"); err != nil {
			return err
		}
		os.Remove(filepath.Join(n.Root, "tmp/mqha-agent.deb"))
	}
	for p, f := range files {
		if f.Group != "" {
			if _, err := run(ctx, "chroot", n.Root, "chgrp", f.Group, p); err != nil {
				return err
			}
		}
	}
	return nil
}

func mustRead(p string) string {
	b, _ := os.ReadFile(p)
	return string(b)
}

// waitBooted waits until systemd in the node reports a finished boot.
func (c Config) waitBooted(ctx context.Context, n Node, console string) error {
	ctx, cancel := context.WithTimeout(ctx, 90*time.Second)
	defer cancel()
	var last string
	for {
		if !alive(n.Nspawn) {
			return fmt.Errorf("node %s: systemd-nspawn exited; console:\n%s", n.Name, tail(console, 20))
		}
		if _, err := n.Leader(); err == nil {
			cctx, ccancel := context.WithTimeout(ctx, 20*time.Second)
			out, _ := n.Exec(cctx, "systemctl", "is-system-running", "--wait")
			ccancel()
			last = strings.TrimSpace(out)
			if last == "running" || last == "degraded" {
				if last == "degraded" {
					failed, _ := n.Exec(ctx, "systemctl", "--failed", "--no-legend", "--plain")
					c.Log.Warn("node booted degraded", "node", n.Name, "failed", strings.TrimSpace(failed))
				}
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("node %s did not finish booting (last state %q); console:\n%s", n.Name, last, tail(console, 20))
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func tail(path string, n int) string {
	lines := strings.Split(strings.TrimSpace(mustRead(path)), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// Stop powers the node off, waits for it, and removes its overlay.
func (c Config) Stop(ctx context.Context, n Node) error {
	var errs []error
	if alive(n.Nspawn) {
		sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		n.Exec(sctx, "systemctl", "poweroff", "--no-block")
		cancel()
		if !waitGone(n.Nspawn, 15*time.Second) {
			syscall.Kill(n.Nspawn, syscall.SIGTERM)
			if !waitGone(n.Nspawn, 5*time.Second) {
				syscall.Kill(n.Nspawn, syscall.SIGKILL)
				waitGone(n.Nspawn, 5*time.Second)
			}
		}
	}
	dir := filepath.Join(c.NodesDir, n.Name)
	// Never remove a directory with a mount under it: that deletes through
	// the mount.
	if _, _, err := unmountUnder(ctx, dir); err != nil {
		errs = append(errs, err)
	} else if err := os.RemoveAll(dir); err != nil {
		errs = append(errs, err)
	}
	for _, r := range cgroupRoots {
		removeCgroup(filepath.Join(r, "mqha-lab", n.Name))
	}
	return errors.Join(errs...)
}

// removeCgroup removes a cgroup and the ones systemd in the node made below
// it, deepest first (a cgroup directory goes only once it is empty).
func removeCgroup(dir string) {
	var dirs []string
	filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			dirs = append(dirs, p)
		}
		return nil
	})
	for i := len(dirs) - 1; i >= 0; i-- {
		os.Remove(dirs[i])
	}
}

func waitGone(pid int, d time.Duration) bool {
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if !alive(pid) {
			return true
		}
		time.Sleep(50 * time.Millisecond)
	}
	return !alive(pid)
}

// nspawnPIDs lists systemd-nspawn processes whose root is under NodesDir.
func (c Config) nspawnPIDs() []int {
	return processes(func(args []string) bool {
		return len(args) > 0 && filepath.Base(args[0]) == "systemd-nspawn" && strings.Contains(strings.Join(args, " "), c.NodesDir+"/")
	})
}

// processes lists the PIDs whose arguments match.
func processes(match func(args []string) bool) []int {
	var out []int
	for _, pid := range allPIDs() {
		args := strings.Split(strings.TrimRight(mustRead(fmt.Sprintf("/proc/%d/cmdline", pid)), "\x00"), "\x00")
		if len(args) > 0 && args[0] != "" && match(args) {
			out = append(out, pid)
		}
	}
	return out
}
