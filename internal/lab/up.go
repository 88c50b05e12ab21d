package lab

import (
	"crypto/tls"
	"crypto/x509"
	"net"

	"bytes"
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/mqha/mqha/internal/agent"
	"github.com/mqha/mqha/internal/probe"
	"github.com/mqha/mqha/internal/render"
)

// Layout is the lab's cluster: the example's five nodes at lab addresses.
var Layout = []struct {
	Name string
	Host int // host number in the subnet
}{{"lb1", 11}, {"lb2", 12}, {"bridge", 20}, {"broker1", 21}, {"broker2", 22}}

// Project is the mqha source tree the lab is built from.
type Project struct {
	Root  string // repository root
	Agent string // a host build of mqha-agent (for pki)
}

// hostTools are the host commands the lab needs, with their Debian packages.
var hostTools = map[string]string{"debootstrap": "debootstrap", "systemd-nspawn": "systemd-container",
	"ip": "iproute2", "git": "git", "nsenter": "util-linux", "bridge": "iproute2"}

func (c Config) ensureHostTools(ctx context.Context) error {
	var missing []string
	for tool, pkg := range hostTools {
		if _, err := exec.LookPath(tool); err != nil {
			missing = append(missing, pkg)
		}
	}
	if len(missing) == 0 {
		return nil
	}
	sort.Strings(missing)
	c.Log.Info("installing host packages", "packages", missing)
	if _, err := run(ctx, "apt-get", "update", "-qq"); err != nil {
		return err
	}
	_, err := run(ctx, "apt-get", append([]string{"install", "-y", "-qq", "--no-install-recommends"}, missing...)...)
	return err
}

// Running reports whether a lab is up (every node's nspawn alive).
func (c Config) Running() (*State, bool) {
	s, err := c.Load()
	if err != nil || len(s.Nodes) == 0 {
		return s, false
	}
	for _, n := range s.Nodes {
		if !alive(n.Nspawn) {
			return s, false
		}
	}
	return s, true
}

// Up brings the lab up from nothing and waits until every node's agent has
// applied the cluster repository's head.
func (c Config) Up(ctx context.Context, p Project) error {
	if os.Geteuid() != 0 {
		return errors.New("the lab needs root (it mounts overlays, creates a bridge and boots containers)")
	}
	if s, ok := c.Running(); ok {
		c.Log.Info("the lab is already running; `make lab-down` first to rebuild it", "nodes", len(s.Nodes))
		return c.WaitConverged(ctx, 60*time.Second)
	}
	// Whatever an earlier lab left (ended without down, its state file gone
	// or not): booting over it would mount on its mounts and boot its nodes
	// with their old state.
	removed, err := c.sweep(ctx)
	if len(removed) > 0 {
		c.Log.Warn("cleared what an earlier lab left on this machine", "removed", strings.Join(removed, "; "))
	}
	if err != nil {
		return fmt.Errorf("clear an earlier lab's leftovers: %w", err)
	}
	start := time.Now()
	if err := c.ensureHostTools(ctx); err != nil {
		return err
	}
	base, err := c.Base(ctx)
	if err != nil {
		return err
	}
	t0 := time.Now()
	if err := os.MkdirAll(c.Dir, 0o755); err != nil {
		return err
	}
	s := &State{}
	if s.Lab, err = os.Executable(); err != nil {
		return err
	}
	if err := c.save(s); err != nil { // from here on, Down can clean up
		return err
	}
	if err := c.bridgeUp(ctx); err != nil {
		return err
	}
	if err := c.initRepo(ctx, p); err != nil {
		return err
	}
	if s.GitDaemon, err = c.gitDaemon(ctx); err != nil {
		return err
	}
	c.save(s)
	if err := c.makeGitAccess(); err != nil {
		return err
	}
	if err := c.startGitServe(ctx, s); err != nil {
		return err
	}
	if err := c.pki(ctx, p); err != nil {
		return err
	}
	var mu sync.Mutex
	var wg sync.WaitGroup
	var errs []error
	for _, l := range Layout {
		wg.Add(1)
		go func() {
			defer wg.Done()
			n, err := c.bootNode(ctx, base, p, l.Name, c.Addr(l.Host), "")
			mu.Lock()
			defer mu.Unlock()
			if n.Nspawn != 0 {
				s.Nodes = append(s.Nodes, n)
			}
			errs = append(errs, err)
		}()
	}
	wg.Wait()
	sort.Slice(s.Nodes, func(i, j int) bool { return s.Nodes[i].Name < s.Nodes[j].Name })
	if err := c.save(s); err != nil {
		return err
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	booted := time.Since(t0)
	if err := c.WaitConverged(ctx, 120*time.Second); err != nil {
		return err
	}
	// Converged is not yet serving: keepalived elects the VIP holder about
	// 3 s after boot. Return when a client through the VIP gets an MQTT
	// round trip, so that whatever runs next finds the service up.
	if err := c.waitServing(ctx, 60*time.Second); err != nil {
		return err
	}
	if err := c.writeEnv(p, s); err != nil {
		return err
	}
	// And the fleet view, as a user runs it, sees every node at head and ok.
	if err := c.waitFleet(ctx, p, 60*time.Second); err != nil {
		return err
	}
	c.Log.Info("lab is up", "nodes", len(s.Nodes), "vip", c.VIP(), "boot", booted.Round(time.Millisecond),
		"converged_after", time.Since(t0).Round(time.Millisecond), "total", time.Since(start).Round(time.Millisecond),
		"env", filepath.Join(c.Dir, "env"))
	return nil
}

// AddNode boots one more node with the agent installed and pointed at the
// cluster repository, though the definition does not name it yet.
func (c Config) AddNode(ctx context.Context, p Project, name, addr, role string) (Node, error) {
	s, ok := c.Running()
	if !ok {
		return Node{}, errors.New("the lab is not running: make lab first")
	}
	if _, dup := s.Node(name); dup {
		return Node{}, fmt.Errorf("node %s is already running", name)
	}
	for _, n := range s.Nodes {
		if n.Addr == addr {
			return Node{}, fmt.Errorf("address %s is node %s's", addr, n.Name)
		}
	}
	base, err := c.Base(ctx)
	if err != nil {
		return Node{}, err
	}
	n, err := c.bootNode(ctx, base, p, name, addr, role)
	if n.Nspawn != 0 {
		s.Nodes = append(s.Nodes, n)
		sort.Slice(s.Nodes, func(i, j int) bool { return s.Nodes[i].Name < s.Nodes[j].Name })
		c.save(s)
		c.writeEnv(p, s)
	}
	return n, err
}

// bootNode boots node name; role is the role of its certificate when it is
// not in the definition yet ("" when it is).
func (c Config) bootNode(ctx context.Context, base string, p Project, name, addr, role string) (Node, error) {
	pkiDir := filepath.Join(c.Dir, "pki")
	// --force: the lab owns a throwaway PKI, and a node booted again gets a
	// new key.
	args := []string{"pki", "issue", "--force", "--dir", pkiDir, "--repo", filepath.Join(c.Dir, "cluster")}
	if role != "" {
		args = append(args, "--address", addr, "--role", role)
	}
	args = append(args, name)
	if _, err := run(ctx, p.Agent, args...); err != nil {
		return Node{}, err
	}
	read := func(f string) []byte { b, _ := os.ReadFile(filepath.Join(pkiDir, name, f)); return b }
	conf := fmt.Sprintf("# Written by the mqha lab.\nrepo = git://%s/cluster.git\nbranch = main\nnode = %s\npoll = 5s\n"+
		"listen = %s:%d\nwebhook-secret-file = /etc/mqha/webhook.secret\n", c.HostAddr(), name, addr, WebhookPort)
	secret, err := os.ReadFile(c.webhookSecretPath())
	if err != nil {
		return Node{}, err
	}
	files := NodeFiles{
		"/etc/mqha/agent.conf":      {Data: []byte(conf), Mode: 0o644},
		"/etc/mqha/webhook.secret":  {Data: secret, Mode: 0o600},
		"/etc/mqha/tls/ca.crt":      {Data: read("ca.crt"), Mode: 0o644},
		"/etc/mqha/tls/node-ca.crt": {Data: read("node-ca.crt"), Mode: 0o644},
		"/etc/mqha/tls/node.crt":    {Data: read("node.crt"), Mode: 0o644},
		// mosquitto loads its key after dropping to user mosquitto.
		"/etc/mqha/tls/node.key": {Data: read("node.key"), Mode: 0o640, Group: "mosquitto"},
	}
	// Bridge nodes share a secret their bridges' client ids derive from.
	if b := read("bridge.secret"); b != nil {
		files["/etc/mqha/tls/bridge.secret"] = File{Data: b, Mode: 0o600}
	}
	return c.Boot(ctx, base, name, addr, files)
}

// bridgeUp creates the lab bridge with a fixed MAC (a bridge otherwise takes
// its lowest port's MAC, which changes as nodes come and go) and STP off.
func (c Config) bridgeUp(ctx context.Context) error {
	if _, err := run(ctx, "ip", "link", "show", c.Bridge); err == nil {
		run(ctx, "ip", "link", "del", c.Bridge)
	}
	a := c.Subnet.Addr().As4()
	mac := fmt.Sprintf("02:6d:71:68:%02x:%02x", a[1], a[2])
	for _, args := range [][]string{
		{"link", "add", c.Bridge, "type", "bridge", "stp_state", "0"},
		{"link", "set", c.Bridge, "address", mac},
		{"addr", "add", fmt.Sprintf("%s/%d", c.HostAddr(), c.Subnet.Bits()), "dev", c.Bridge},
		{"link", "set", c.Bridge, "up"},
	} {
		if _, err := run(ctx, "ip", args...); err != nil {
			return err
		}
	}
	return nil
}

// labDefinition is the example cluster moved onto the lab's subnet and
// interface.
func (c Config) labDefinition(p Project) ([]byte, error) {
	b, err := os.ReadFile(filepath.Join(p.Root, "cluster-repo-example", "cluster.cue"))
	if err != nil {
		return nil, err
	}
	a := c.Subnet.Addr().As4()
	s := strings.ReplaceAll(string(b), "10.20.0.", fmt.Sprintf("%d.%d.%d.", a[0], a[1], a[2]))
	s = strings.ReplaceAll(s, `interface: "eth0"`, `interface: "host0"`)
	s += "\n// The lab's node certificates come from a CA of their own (pki init\n// --node-ca): only they reach the brokers' bridge listeners.\ntls: nodeCA: \"/etc/mqha/tls/node-ca.crt\"\n"
	return []byte(s), nil
}

// LimitsFile is the lab repository's file that plans limits.clients for
// what this machine holds; a scenario that needs more writes its own value
// there (CUE unifies: a second file could not override it).
const LimitsFile = "limits.cue"

// labLimits plans for what this machine holds: its two brokers each hold
// what its descriptor limit allows (a sandbox caps it), so a fresh lab's
// fleet is ok. Empty when the example's 50,000 fits.
func labLimits() string {
	holds := render.MosquittoHolds(agent.LocalHost())
	if holds == 0 || 2*holds >= 50000 {
		return ""
	}
	return fmt.Sprintf("package cluster\n\n// This machine's descriptor limit: two brokers hold %d clients each.\nlimits: clients: %d\n", holds, 2*holds)
}

func git(ctx context.Context, dir string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, "git", append([]string{"-C", dir}, args...)...)
	cmd.Env = append(os.Environ(), "GIT_AUTHOR_NAME=mqha lab", "GIT_AUTHOR_EMAIL=lab@mqha.invalid",
		"GIT_COMMITTER_NAME=mqha lab", "GIT_COMMITTER_EMAIL=lab@mqha.invalid")
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("git %s: %w\n%s", strings.Join(args, " "), err, out)
	}
	return strings.TrimSpace(string(out)), nil
}

// initRepo makes the served bare repository and the host clone operators
// (and tests) commit to.
func (c Config) initRepo(ctx context.Context, p Project) error {
	bare, clone := filepath.Join(c.Dir, "git", "cluster.git"), filepath.Join(c.Dir, "cluster")
	os.RemoveAll(bare)
	os.RemoveAll(clone)
	os.MkdirAll(bare, 0o755)
	if _, err := git(ctx, bare, "init", "-q", "--bare", "-b", "main"); err != nil {
		return err
	}
	os.MkdirAll(clone, 0o755)
	def, err := c.labDefinition(p)
	if err != nil {
		return err
	}
	// The push trigger: the served repository's post-receive hook calls
	// every node's webhook, as a git server would.
	secret := make([]byte, 16)
	rand.Read(secret)
	if err := os.WriteFile(c.webhookSecretPath(), []byte(hex.EncodeToString(secret)+"\n"), 0o600); err != nil {
		return err
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	hook := fmt.Sprintf("#!/bin/sh\n# Tell every lab node a push happened.\nMQHA_LAB_DIR=%q MQHA_LAB_SUBNET=%q exec %q notify\n", c.Dir, c.Subnet, self)
	if err := os.WriteFile(filepath.Join(bare, "hooks", "post-receive"), []byte(hook), 0o755); err != nil {
		return err
	}
	readme, _ := os.ReadFile(filepath.Join(p.Root, "cluster-repo-example", "README.md"))
	os.WriteFile(filepath.Join(clone, "cluster.cue"), def, 0o644)
	if l := labLimits(); l != "" {
		os.WriteFile(filepath.Join(clone, LimitsFile), []byte(l), 0o644)
	}
	os.WriteFile(filepath.Join(clone, "README.md"), readme, 0o644)
	for _, args := range [][]string{
		{"init", "-q", "-b", "main"}, {"add", "."}, {"commit", "-qm", "lab: the example cluster on the lab subnet"},
		// -u: a plain `git push` in the clone works, as the README says.
		{"remote", "add", "origin", bare}, {"push", "-q", "-u", "origin", "main"},
	} {
		if _, err := git(ctx, clone, args...); err != nil {
			return err
		}
	}
	return nil
}

// gitDaemon serves Dir/git read-only over git:// on the lab bridge only.
func (c Config) gitDaemon(ctx context.Context) (int, error) {
	pidFile := filepath.Join(c.Dir, "git-daemon.pid")
	cmd := exec.Command("git", "daemon", "--reuseaddr", "--export-all", "--base-path="+filepath.Join(c.Dir, "git"),
		"--listen="+c.HostAddr(), "--port=9418", "--pid-file="+pidFile, filepath.Join(c.Dir, "git"))
	log, _ := os.Create(filepath.Join(c.Dir, "git-daemon.log"))
	cmd.Stdout, cmd.Stderr = log, log
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return 0, fmt.Errorf("start git daemon: %w", err)
	}
	go cmd.Wait()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		if _, err := git(ctx, c.Dir, "ls-remote", "git://"+c.HostAddr()+"/cluster.git"); err == nil {
			return cmd.Process.Pid, nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return cmd.Process.Pid, fmt.Errorf("git daemon does not answer on %s:9418; see %s/git-daemon.log", c.HostAddr(), c.Dir)
}

// pki makes the lab's CA and a client certificate for tests and users.
func (c Config) pki(ctx context.Context, p Project) error {
	dir := filepath.Join(c.Dir, "pki")
	os.RemoveAll(dir)
	// Two CAs, as in production: node certificates from a CA of their own,
	// so client certificates never reach the bridge listeners.
	if _, err := run(ctx, p.Agent, "pki", "init", "--node-ca", "--dir", dir, "--repo", filepath.Join(c.Dir, "cluster")); err != nil {
		return err
	}
	_, err := run(ctx, p.Agent, "pki", "client", "--dir", dir, "lab-client")
	return err
}

// Head is the commit the host clone's main points at.
func (c Config) Head(ctx context.Context) (string, error) {
	return git(ctx, filepath.Join(c.Dir, "cluster"), "rev-parse", "HEAD")
}

// AgentStatus is the running agent's systemd status text on n.
func AgentStatus(ctx context.Context, n Node) string {
	out, _ := n.Exec(ctx, "systemctl", "show", "-p", "StatusText", "--value", "mqha-agent.service")
	return strings.TrimSpace(out)
}

// waitFleet waits until `mqha-agent fleet` (the lab's client certificate,
// every broker read) exits 0: every node reported, at head, ok.
func (c Config) waitFleet(ctx context.Context, p Project, timeout time.Duration) error {
	pki := filepath.Join(c.Dir, "pki", "clients")
	deadline := time.Now().Add(timeout)
	for {
		out, err := exec.CommandContext(ctx, filepath.Join(p.Root, "bin", "mqha-agent"), "fleet", "--repo", filepath.Join(c.Dir, "cluster"),
			"--ca", filepath.Join(pki, "ca.crt"), "--cert", filepath.Join(pki, "lab-client.crt"), "--key", filepath.Join(pki, "lab-client.key")).CombinedOutput()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the fleet view is not every node at head and ok after %s: %v\n%s", timeout, err, out)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// WaitConverged waits until every node's agent reports the head of the
// cluster repository as applied.
func (c Config) WaitConverged(ctx context.Context, timeout time.Duration) error {
	s, err := c.Load()
	if err != nil {
		return err
	}
	head, err := c.Head(ctx)
	if err != nil {
		return err
	}
	want := "applied " + head[:12]
	deadline := time.Now().Add(timeout)
	for {
		var behind []string
		for _, n := range s.Nodes {
			st := AgentStatus(ctx, n)
			// A spare node outside the definition (booted by a scenario)
			// is not a member: it says so, and that is its converged state.
			spare := strings.Contains(st, "refused "+head[:12]) && strings.Contains(st, "is not in the cluster definition")
			if !strings.HasPrefix(st, want) && !spare {
				behind = append(behind, n.Name+": "+st)
			}
		}
		if len(behind) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not converged on %s after %s:\n  %s", head[:12], timeout, strings.Join(behind, "\n  "))
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// writeEnv writes Dir/env, shell-sourceable, for MQTT clients and tests.
func (c Config) writeEnv(p Project, s *State) error {
	pki := filepath.Join(c.Dir, "pki")
	var b strings.Builder
	fmt.Fprintf(&b, "# The mqha lab; source it: . %s/env\n", c.Dir)
	kv := [][2]string{
		{"MQHA_LAB_VIP", c.VIP()}, {"MQHA_LAB_PORT", "9000"},
		// Both CAs: the clients' (their certificates) and the nodes' (the
		// brokers' certificates, which clients verify).
		{"MQHA_LAB_CA", filepath.Join(pki, "clients", "ca.crt")},
		{"MQHA_LAB_CERT", filepath.Join(pki, "clients", "lab-client.crt")},
		{"MQHA_LAB_KEY", filepath.Join(pki, "clients", "lab-client.key")},
		{"MQHA_LAB_REPO", filepath.Join(c.Dir, "cluster")},
		{"MQHA_LAB_HOST", c.HostAddr()}, {"MQHA_LAB_SUBNET", c.Subnet.String()},
	}
	var names []string
	for _, n := range s.Nodes {
		names = append(names, n.Name)
		kv = append(kv, [2]string{"MQHA_LAB_NODE_" + strings.ReplaceAll(n.Name, "-", "_"), n.Addr})
	}
	// Not MQHA_LAB_NODES: that is the lab's own setting (the nodes'
	// directory), and an exported env file must not change where the lab
	// looks for its nodes.
	kv = append(kv, [2]string{"MQHA_LAB_NODE_NAMES", strings.Join(names, " ")})
	for _, e := range kv {
		fmt.Fprintf(&b, "%s=%q\n", e[0], e[1])
	}
	return os.WriteFile(filepath.Join(c.Dir, "env"), []byte(b.String()), 0o644)
}

// WebhookPort is where lab agents serve /hook and /metrics.
const WebhookPort = 9100

func (c Config) webhookSecretPath() string { return filepath.Join(c.Dir, "webhook.secret") }

// Notify posts a signed push notification to every node's webhook, as a git
// server's push hook would, and returns how many nodes accepted it.
func (c Config) Notify(ctx context.Context) (int, error) {
	s, err := c.Load()
	if err != nil {
		return 0, err
	}
	secret, err := os.ReadFile(c.webhookSecretPath())
	if err != nil {
		return 0, err
	}
	body := []byte(`{"ref":"refs/heads/main"}`)
	mac := hmac.New(sha256.New, bytes.TrimSpace(secret))
	mac.Write(body)
	sig := "sha256=" + hex.EncodeToString(mac.Sum(nil))
	// One id per push, as a git server sends: the agents refuse replays.
	delivery := fmt.Sprintf("lab-%d", time.Now().UnixNano())
	var errs []error
	ok := 0
	for _, n := range s.Nodes {
		req, _ := http.NewRequestWithContext(ctx, "POST", fmt.Sprintf("http://%s:%d/hook", n.Addr, WebhookPort), bytes.NewReader(body))
		req.Header.Set("X-Hub-Signature-256", sig)
		req.Header.Set("X-GitHub-Delivery", delivery)
		resp, err := (&http.Client{Timeout: 2 * time.Second}).Do(req)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusAccepted {
			errs = append(errs, fmt.Errorf("%s: webhook answered %s", n.Name, resp.Status))
			continue
		}
		ok++
	}
	return ok, errors.Join(errs...)
}

// StopGit and StartGit take the lab's git servers (git://, https, ssh) away
// and bring them back.
func (c Config) StopGit(ctx context.Context) error {
	s, err := c.Load()
	if err != nil {
		return err
	}
	for _, pid := range c.gitDaemonPIDs() {
		syscall.Kill(pid, syscall.SIGTERM)
		waitGone(pid, 3*time.Second)
	}
	s.GitDaemon = 0
	return c.save(s)
}

// StartGit starts the git server unless it runs.
func (c Config) StartGit(ctx context.Context) error {
	s, err := c.Load()
	if err != nil {
		return err
	}
	if len(c.gitDaemonPIDs()) > 0 {
		return nil
	}
	if s.GitDaemon, err = c.gitDaemon(ctx); err != nil {
		return err
	}
	if err := c.save(s); err != nil {
		return err
	}
	return c.startGitServe(ctx, s)
}

// waitServing waits until an MQTT client with the lab's client certificate
// gets a QoS1 round trip through the VIP.
func (c Config) waitServing(ctx context.Context, timeout time.Duration) error {
	pki := filepath.Join(c.Dir, "pki")
	ca, err := os.ReadFile(filepath.Join(pki, "clients", "ca.crt"))
	if err != nil {
		return err
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca)
	cert, err := tls.LoadX509KeyPair(filepath.Join(pki, "clients", "lab-client.crt"), filepath.Join(pki, "clients", "lab-client.key"))
	if err != nil {
		return err
	}
	tc := &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}, ServerName: c.VIP(), MinVersion: tls.VersionTLS12}
	// A client certificate: a client's topic (the brokers keep $mqha for
	// their nodes).
	roundTrip := probe.MQTTRoundTripUnder("mqha-lab/health", net.JoinHostPort(c.VIP(), "9000"), tc, "lab")
	deadline := time.Now().Add(timeout)
	for {
		pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		err := roundTrip(pctx)
		cancel()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the lab converged but no MQTT round trip through the VIP %s within %s: %w", c.VIP(), timeout, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}
