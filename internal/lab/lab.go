// Package lab runs a real mqha cluster on one machine: systemd-nspawn
// containers booting real systemd, on a private Linux bridge, each with the
// mqha-agent package installed and converging from a git repository served
// by the host on that bridge. Lab traffic never leaves the machine.
package lab

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// Config says where the lab lives. Every field has a default that an
// environment variable overrides (see FromEnv).
type Config struct {
	Dir      string       // state, env file, PKI, cluster repo: <project>/.lab
	Cache    string       // base images
	NodesDir string       // per-node overlays
	Bridge   string       // host bridge interface
	Subnet   netip.Prefix // the lab's own /24
	Mirror   string       // Debian mirror for the base image
	Deb      string       // the mqha-agent package to install
	Log      *slog.Logger
}

// Packages of the base image: what any node may need.
var Packages = []string{"systemd", "systemd-sysv", "dbus", "mosquitto", "mosquitto-clients", "nginx",
	"libnginx-mod-stream", "keepalived", "iproute2", "ca-certificates", "procps", "git", "iputils-ping",
	// Steps a daemon's wall clock alone (a node cannot step its clock
	// without stepping the host's): the clock-step scenario.
	"libfaketime"}

const suite = "bookworm"

// baseRecipe changes whenever Base prepares the image differently, so a
// cached image built the old way is not reused.
const baseRecipe = "1"

// FromEnv builds a Config for the project at root.
func FromEnv(root string) (Config, error) {
	c := Config{
		Dir:      env("MQHA_LAB_DIR", filepath.Join(root, ".lab")),
		Cache:    env("MQHA_LAB_CACHE", "/var/cache/mqha-lab"),
		NodesDir: env("MQHA_LAB_NODES", "/var/lib/mqha-lab"),
		Bridge:   env("MQHA_LAB_BRIDGE", "mqhalab0"),
		Deb:      env("MQHA_LAB_DEB", filepath.Join(root, "dist", "mqha-agent_amd64.deb")),
		Log:      slog.Default(),
	}
	subnet := env("MQHA_LAB_SUBNET", "10.231.7.0/24")
	p, err := netip.ParsePrefix(subnet)
	if err != nil || p.Bits() != 24 || !p.Addr().Is4() || !p.Addr().IsPrivate() {
		return c, fmt.Errorf("MQHA_LAB_SUBNET %q: want a private IPv4 /24 that this machine does not use", subnet)
	}
	c.Subnet = p.Masked()
	return c, nil
}

func env(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

// Addr is host number n in the lab subnet.
func (c Config) Addr(n int) string {
	a := c.Subnet.Addr().As4()
	a[3] = byte(n)
	return netip.AddrFrom4(a).String()
}

// HostAddr is the host's address on the lab bridge; VIP the cluster's VIP.
func (c Config) HostAddr() string { return c.Addr(1) }
func (c Config) VIP() string      { return c.Addr(100) }

// Node is one running container.
type Node struct {
	Name   string `json:"name"`
	Addr   string `json:"addr"`
	Nspawn int    `json:"nspawn"` // PID of systemd-nspawn
	Root   string `json:"root"`   // overlay mount point
}

// State is what a running lab is, saved in Dir/state.json.
type State struct {
	Nodes     []Node `json:"nodes"`
	GitDaemon int    `json:"gitDaemon"`
	// Lab is the mqha-lab binary that brought the lab up: it serves git
	// over https and ssh (git-serve), also when a test restarts that.
	Lab string `json:"lab"`
}

func (c Config) statePath() string { return filepath.Join(c.Dir, "state.json") }

// Load reads the running lab's state.
func (c Config) Load() (*State, error) {
	b, err := os.ReadFile(c.statePath())
	if err != nil {
		return nil, err
	}
	var s State
	return &s, json.Unmarshal(b, &s)
}

func (c Config) save(s *State) error {
	b, _ := json.MarshalIndent(s, "", "  ")
	return os.WriteFile(c.statePath(), b, 0o644)
}

// Node returns the running node called name.
func (s *State) Node(name string) (Node, bool) {
	for _, n := range s.Nodes {
		if n.Name == name {
			return n, true
		}
	}
	return Node{}, false
}

// run runs a host command, returning its combined output in errors.
func run(ctx context.Context, name string, args ...string) (string, error) {
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s %s: %w\n%s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// mirror finds the Debian mirror in this machine's apt sources, unless
// MQHA_LAB_MIRROR names one.
func mirror() (string, error) {
	if m := os.Getenv("MQHA_LAB_MIRROR"); m != "" {
		return m, nil
	}
	var uris []string
	deb822, _ := filepath.Glob("/etc/apt/sources.list.d/*.sources")
	for _, f := range deb822 {
		b, _ := os.ReadFile(f)
		for _, stanza := range strings.Split(string(b), "\n\n") {
			var u, suites string
			for _, l := range strings.Split(stanza, "\n") {
				if v, ok := strings.CutPrefix(l, "URIs:"); ok {
					u = strings.Fields(v)[0]
				}
				if v, ok := strings.CutPrefix(l, "Suites:"); ok {
					suites = v
				}
			}
			if u != "" && containsField(suites, suite) {
				uris = append(uris, u)
			}
		}
	}
	if b, err := os.ReadFile("/etc/apt/sources.list"); err == nil {
		sc := bufio.NewScanner(bytes.NewReader(b))
		for sc.Scan() {
			f := strings.Fields(sc.Text())
			if len(f) >= 3 && f[0] == "deb" && f[2] == suite {
				uris = append(uris, f[1])
			}
		}
	}
	if len(uris) == 0 {
		return "", errors.New("no Debian mirror for " + suite + " in /etc/apt/sources.list{,.d}; set MQHA_LAB_MIRROR")
	}
	return uris[0], nil
}

func containsField(s, f string) bool {
	for _, x := range strings.Fields(s) {
		if x == f {
			return true
		}
	}
	return false
}

// Base returns the base image, building it once per package list.
func (c Config) Base(ctx context.Context) (string, error) {
	key := fmt.Sprintf("%x", sha256.Sum256([]byte(baseRecipe+"\n"+suite+"\n"+strings.Join(Packages, "\n"))))[:12]
	dir := filepath.Join(c.Cache, "base-"+key)
	if _, err := os.Stat(filepath.Join(dir, "etc", "os-release")); err == nil {
		c.Log.Info("base image cached", "dir", dir)
		return dir, nil
	}
	m, err := mirror()
	if err != nil {
		return "", err
	}
	tmp := dir + ".tmp"
	os.RemoveAll(tmp)
	if err := os.MkdirAll(c.Cache, 0o755); err != nil {
		return "", err
	}
	c.Log.Info("building the base image once (about a minute)", "dir", dir, "mirror", m)
	start := time.Now()
	if _, err := run(ctx, "debootstrap", "--variant=minbase", "--include="+strings.Join(Packages, ","), suite, tmp, m); err != nil {
		return "", err
	}
	// Debian starts daemons at boot; which ones run is the agent's decision.
	for _, u := range []string{"mosquitto", "nginx", "keepalived"} {
		os.Remove(filepath.Join(tmp, "etc/systemd/system/multi-user.target.wants", u+".service"))
	}
	os.RemoveAll(filepath.Join(tmp, "var/cache/apt/archives"))
	os.WriteFile(filepath.Join(tmp, "etc/machine-id"), nil, 0o444)
	if err := os.Rename(tmp, dir); err != nil {
		return "", err
	}
	c.Log.Info("base image built", "took", time.Since(start).Round(time.Second))
	return dir, nil
}

// procChildren returns the PIDs of pid's children.
func procChildren(pid int) []int {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", pid, pid))
	var out []int
	for _, f := range strings.Fields(string(b)) {
		if n, err := strconv.Atoi(f); err == nil {
			out = append(out, n)
		}
	}
	return out
}

func alive(pid int) bool {
	if pid <= 0 {
		return false
	}
	_, err := os.Stat(fmt.Sprintf("/proc/%d", pid))
	return err == nil
}

// Leader is the container's PID 1 (systemd), as seen from the host.
func (n Node) Leader() (int, error) {
	if !alive(n.Nspawn) {
		return 0, fmt.Errorf("node %s: systemd-nspawn (pid %d) is not running", n.Name, n.Nspawn)
	}
	kids := procChildren(n.Nspawn)
	if len(kids) == 0 {
		return 0, fmt.Errorf("node %s: no container process yet", n.Name)
	}
	return kids[0], nil
}

// Exec runs a command inside the node and returns its combined output.
func (n Node) Exec(ctx context.Context, args ...string) (string, error) {
	pid, err := n.Leader()
	if err != nil {
		return "", err
	}
	out, err := exec.CommandContext(ctx, "nsenter", append([]string{"-t", strconv.Itoa(pid), "-a"}, args...)...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("on %s: %s: %w\n%s", n.Name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}
