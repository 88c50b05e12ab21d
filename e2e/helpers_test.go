//go:build e2e

// Package e2e runs the end-to-end suite against the running lab (make e2e).
// Every claim here is checked on real nodes: systemd, mosquitto, nginx and
// keepalived in systemd-nspawn containers, agents running as the packaged
// service, changes made as git commits.
package e2e

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/mqha/mqha/internal/control"
	"github.com/mqha/mqha/internal/lab"
)

var (
	cfg  lab.Config
	root string
)

func TestMain(m *testing.M) {
	var err error
	root, _ = filepath.Abs("..")
	cfg, err = lab.FromEnv(root)
	if err == nil && os.Getenv("MQHA_E2E_HOLDER") != "" {
		os.Exit(holderMain()) // a child of TestBenchHold (holder_test.go)
	}
	if err == nil {
		if _, ok := cfg.Running(); !ok {
			err = fmt.Errorf("the lab is not running")
		}
	}
	if err != nil {
		// Never a silent pass: the suite exists to run.
		fmt.Fprintf(os.Stderr, "e2e: %v; run `make e2e` (it brings the lab up)\n", err)
		os.Exit(1)
	}
	os.Exit(m.Run())
}

// reportPath is where a bench or the soak writes its report: reports/ at
// the top of the checkout, which outlives the lab (lab-down removes .lab).
func reportPath(name string) string {
	dir := filepath.Join(root, "reports")
	os.MkdirAll(dir, 0o755)
	return filepath.Join(dir, name)
}

// report prints a measured figure so that it shows in CI output.
func report(t *testing.T, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, args...)
	t.Log(msg)
	fmt.Printf("MEASURED %s: %s\n", t.Name(), msg)
}

func node(t *testing.T, name string) lab.Node {
	t.Helper()
	s, err := cfg.Load()
	if err != nil {
		t.Fatal(err)
	}
	n, ok := s.Node(name)
	if !ok {
		t.Fatalf("no lab node %s", name)
	}
	return n
}

func on(t *testing.T, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := node(t, name).Exec(ctx, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// onAny runs a command in a node and returns its output whatever its exit
// status (systemctl is-active exits 3 for an inactive unit).
func onAny(t *testing.T, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, _ := node(t, name).Exec(ctx, args...)
	return out
}

func tlsConfig(t *testing.T) *tls.Config {
	t.Helper()
	ca, err := os.ReadFile(filepath.Join(cfg.Dir, "pki", "clients", "ca.crt")) // both CAs
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca)
	cert, err := tls.LoadX509KeyPair(filepath.Join(cfg.Dir, "pki", "clients", "lab-client.crt"), filepath.Join(cfg.Dir, "pki", "clients", "lab-client.key"))
	if err != nil {
		t.Fatal(err)
	}
	// Verified against the cluster CA: no InsecureSkipVerify anywhere.
	return &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
}

// nodeTLS is tlsConfig with the certificate of lab node name instead of the
// lab's client certificate.
func nodeTLS(t *testing.T, name string) *tls.Config {
	t.Helper()
	dir := filepath.Join(cfg.Dir, "pki", name)
	cert, err := tls.LoadX509KeyPair(filepath.Join(dir, "node.crt"), filepath.Join(dir, "node.key"))
	if err != nil {
		t.Fatal(err)
	}
	c := tlsConfig(t)
	c.Certificates = []tls.Certificate{cert}
	return c
}

// client connects a real MQTT client with automatic reconnect. A client with
// clean=false keeps a persistent session on its broker.
func client(t *testing.T, addr, id string, clean bool) mqtt.Client {
	t.Helper()
	o := mqtt.NewClientOptions().AddBroker("ssl://" + addr).SetClientID(id).SetTLSConfig(tlsConfig(t)).
		SetCleanSession(clean).SetAutoReconnect(true).SetConnectRetry(true).
		SetConnectRetryInterval(200 * time.Millisecond).SetMaxReconnectInterval(500 * time.Millisecond).
		SetKeepAlive(5 * time.Second).SetConnectTimeout(3 * time.Second).SetOrderMatters(false)
	c := mqtt.NewClient(o)
	tok := c.Connect()
	if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("connect %s as %s: %v", addr, id, tok.Error())
	}
	t.Cleanup(func() { c.Disconnect(100) })
	return c
}

// bridgeClientID is the client id of node's bridge connection to broker, as
// its rendered configuration says (inline, or the connections file of a
// bridge node with standbys).
func bridgeClientID(t *testing.T, node, broker string) string {
	t.Helper()
	conf := onAny(t, node, "cat", "/etc/mosquitto/mosquitto.conf", "/etc/mosquitto/mqha-bridges.conf")
	_, after, ok := strings.Cut(conf, "connection mqha-"+broker+"\n")
	for _, l := range strings.Split(after, "\n") {
		if id, found := strings.CutPrefix(l, "remote_clientid "); ok && found {
			return strings.TrimSpace(id)
		}
	}
	t.Fatalf("%s has no bridge connection to %s:\n%s", node, broker, conf)
	return ""
}

// sysValue is the value mosquitto at addr last published at $SYS topic
// (every 10 s, retained), "" when none came within 15 s.
func sysValue(t *testing.T, addr, topic string) string {
	t.Helper()
	c := client(t, addr, fmt.Sprintf("e2e-sys-%d", time.Now().UnixNano()), true)
	defer c.Disconnect(50)
	got := make(chan string, 1)
	c.Subscribe(topic, 0, func(_ mqtt.Client, m mqtt.Message) {
		select {
		case got <- string(m.Payload()):
		default:
		}
	})
	select {
	case v := <-got:
		return v
	case <-time.After(15 * time.Second):
		return ""
	}
}

// inbox collects messages of one subscription, counting unique payloads.
type inbox struct {
	mu   sync.Mutex
	seen map[string]int
	ch   chan string
}

func subscribe(t *testing.T, c mqtt.Client, topic string) *inbox {
	t.Helper()
	in := &inbox{seen: map[string]int{}, ch: make(chan string, 10000)}
	tok := c.Subscribe(topic, 1, func(_ mqtt.Client, m mqtt.Message) {
		in.mu.Lock()
		in.seen[string(m.Payload())]++
		in.mu.Unlock()
		select {
		case in.ch <- string(m.Payload()):
		default:
		}
	})
	if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("subscribe %s: %v", topic, tok.Error())
	}
	return in
}

func (in *inbox) unique() int {
	in.mu.Lock()
	defer in.mu.Unlock()
	return len(in.seen)
}

func (in *inbox) has(p string) bool {
	in.mu.Lock()
	defer in.mu.Unlock()
	return in.seen[p] > 0
}

// wait waits until the inbox holds payload p.
func (in *inbox) wait(t *testing.T, p string, d time.Duration) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !in.has(p) {
		if time.Now().After(deadline) {
			t.Fatalf("message %q not received within %s", p, d)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func publish(t *testing.T, c mqtt.Client, topic, payload string) {
	t.Helper()
	tok := c.Publish(topic, 1, false, payload)
	if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("publish %s: %v", topic, tok.Error())
	}
}

func vip() string { return net.JoinHostPort(cfg.VIP(), "9000") }

func brokerAddr(t *testing.T, name string) string {
	t.Helper()
	return net.JoinHostPort(node(t, name).Addr, "8883")
}

// gitErr runs git in the host clone the nodes pull from, bounded.
func gitErr(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "git", append([]string{"-C", filepath.Join(cfg.Dir, "cluster")}, args...)...)
	cmd.Env = append(os.Environ(), "GIT_AUTHOR_NAME=e2e", "GIT_AUTHOR_EMAIL=e2e@mqha.invalid", "GIT_COMMITTER_NAME=e2e", "GIT_COMMITTER_EMAIL=e2e@mqha.invalid")
	out, err := cmd.CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("git %v: %v\n%s", args, err, out)
	}
	return strings.TrimSpace(string(out)), nil
}

// git is gitErr for the test's goroutine: a failure fails the test.
func git(t *testing.T, args ...string) string {
	t.Helper()
	out, err := gitErr(args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// commit writes files into the cluster repository, commits and pushes;
// an empty content removes the file.
func commit(t *testing.T, msg string, files map[string]string) string {
	t.Helper()
	head, err := commitErr(msg, files)
	if err != nil {
		t.Fatal(err)
	}
	return head
}

// commitErr is commit for where a failure is an outcome, not a failed
// test (the soak pushes while the git server may be down).
func commitErr(msg string, files map[string]string) (string, error) {
	for name, content := range files {
		p := filepath.Join(cfg.Dir, "cluster", name)
		if content == "" {
			os.Remove(p)
			continue
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			return "", err
		}
	}
	for _, args := range [][]string{{"add", "-A"}, {"commit", "-qm", msg, "--allow-empty"}, {"push", "-q"}} {
		// push plainly, as the README says: the clone tracks origin/main
		if _, err := gitErr(args...); err != nil {
			return "", err
		}
	}
	return gitErr("rev-parse", "HEAD")
}

// converged waits for every node to apply the head and returns how long it took.
func converged(t *testing.T, d time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	if err := cfg.WaitConverged(context.Background(), d); err != nil {
		t.Fatal(err)
	}
	return time.Since(start)
}

// unitStart is a unit's main PID and last start time (monotonic µs), to
// tell whether it was restarted.
func unitStart(t *testing.T, nodeName, unit string) string {
	t.Helper()
	return strings.TrimSpace(on(t, nodeName, "systemctl", "show", "-p", "MainPID", "-p", "ActiveEnterTimestampMonotonic", "--value", unit))
}

// vipHolder is the load balancer holding the VIP, or "".
func vipHolder(t *testing.T) string {
	t.Helper()
	h, _ := vipHolderAsked(t)
	return h
}

// vipHolderAsked is vipHolder, and what could not be asked: a load
// balancer powered off by a scenario holds nothing, but one that runs and
// did not answer (nsenter failed) may hold the VIP, so a sample without a
// holder says so instead of counting as "none held it".
func vipHolderAsked(t *testing.T) (holder string, unasked error) {
	t.Helper()
	for _, n := range []string{"lb1", "lb2"} {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		out, err := node(t, n).Exec(ctx, "ip", "-4", "-o", "addr", "show", "dev", "host0")
		cancel()
		if strings.Contains(out, " "+cfg.VIP()+"/") {
			return n, nil
		}
		if err != nil && unasked == nil {
			unasked = err
		}
	}
	return "", unasked
}

func waitVIP(t *testing.T, d time.Duration) string {
	t.Helper()
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if h := vipHolder(t); h != "" {
			return h
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("no load balancer holds the VIP after %s", d)
	return ""
}

// handshake reports whether a TLS handshake with a broker through addr works.
func handshake(addr string, cfg *tls.Config) bool {
	d := &net.Dialer{Timeout: 300 * time.Millisecond}
	c, err := tls.DialWithDialer(d, "tcp", addr, cfg)
	if err != nil {
		return false
	}
	c.Close()
	return true
}

// brokerVia is the broker that the load balancer at lbAddr sends this host
// to: brokers' certificates are named after their node.
func brokerVia(lbAddr string, tc *tls.Config) string {
	c := tc.Clone()
	c.ServerName = cfg.VIP()
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: time.Second}, "tcp", net.JoinHostPort(lbAddr, "9000"), c)
	if err != nil {
		return ""
	}
	defer conn.Close()
	return conn.ConnectionState().PeerCertificates[0].Subject.CommonName
}

// lbsAgree waits until both load balancers send this host to the same
// broker. A persistent session lives on one broker, so a failover loses no
// QoS1 message only when the new VIP holder sends the client back to it.
// This is the precondition the failover scenarios rely on, made explicit
// (nginx used to mark a broker restarted by an earlier scenario down on one
// LB only, for fail_timeout; upstreams now have max_fails=0).
func lbsAgree(t *testing.T) string {
	t.Helper()
	tc := tlsConfig(t)
	var b1, b2 string
	d := waitFor(t, 30*time.Second, "both load balancers send this host to one broker", func() bool {
		b1, b2 = brokerVia(node(t, "lb1").Addr, tc), brokerVia(node(t, "lb2").Addr, tc)
		return b1 != "" && b1 == b2
	})
	if d > 200*time.Millisecond {
		t.Logf("load balancers disagreed on this host's broker for %s (nginx fail_timeout after an earlier fault)", d.Round(time.Millisecond))
	}
	return b1
}

func labProject() lab.Project {
	return lab.Project{Root: root, Agent: filepath.Join(root, "bin", "mqha-agent")}
}

// statusOf runs `mqha-agent status ARGS` on a node and returns its output
// and exit code: 0 (healthy) and 1 (degraded) are answers, anything else
// fails the test.
func statusOf(t *testing.T, name string, args ...string) (string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := node(t, name).Exec(ctx, append([]string{"mqha-agent", "status"}, args...)...)
	if err == nil {
		return out, 0
	}
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 1 {
		t.Fatal(err)
	}
	return out, 1
}

// agentStatus asks the agent on a node through its control socket.
func agentStatus(t *testing.T, name string) control.Status {
	t.Helper()
	var s control.Status
	out, _ := statusOf(t, name, "-o", "json")
	if err := json.Unmarshal([]byte(out), &s); err != nil {
		t.Fatal(err)
	}
	return s
}

// waitFor polls cond until it holds or d passes, and returns how long it took.
func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	for !cond() {
		if time.Since(start) > d {
			t.Fatalf("%s: not within %s", what, d)
		}
		time.Sleep(100 * time.Millisecond)
	}
	return time.Since(start)
}

// withoutPushTrigger runs f with the repository's post-receive hook off, so
// that nodes only see the change when they poll.
func withoutPushTrigger(t *testing.T, f func()) {
	t.Helper()
	hook := filepath.Join(cfg.Dir, "git", "cluster.git", "hooks", "post-receive")
	os.Chmod(hook, 0o644)
	defer os.Chmod(hook, 0o755)
	f()
}

// stream is a steady QoS1 publisher and a persistent-session subscriber,
// both through the VIP.
type stream struct {
	in    *inbox
	sent  atomic.Int32
	stop  chan struct{}
	done  chan struct{}
	total int
}

func startStream(t *testing.T, name string) *stream {
	t.Helper()
	return startStreamEvery(t, name, 20*time.Millisecond)
}

// startStreamEvery publishes one message every interval.
func startStreamEvery(t *testing.T, name string, every time.Duration) *stream {
	t.Helper()
	topic := fmt.Sprintf("e2e/stream/%s/%d", name, time.Now().UnixNano())
	s := &stream{in: subscribe(t, client(t, vip(), "e2e-"+name+"-sub", false), topic), stop: make(chan struct{}), done: make(chan struct{})}
	pub := client(t, vip(), "e2e-"+name+"-pub", false)
	go func() {
		defer close(s.done)
		for i := 0; ; i++ {
			select {
			case <-s.stop:
				return
			default:
			}
			pub.Publish(topic, 1, false, fmt.Sprintf("m%05d", i))
			s.sent.Add(1)
			time.Sleep(every)
		}
	}()
	return s
}

// finish stops publishing, checks that every message arrived, and returns
// how many were lost.
func (s *stream) finish(t *testing.T) int {
	t.Helper()
	close(s.stop)
	<-s.done
	total := int(s.sent.Load())
	deadline := time.Now().Add(30 * time.Second)
	for s.in.unique() < total && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	report(t, "steady QoS1 stream through the VIP: %d/%d messages received", s.in.unique(), total)
	if s.in.unique() != total {
		t.Errorf("lost %d of %d messages", total-s.in.unique(), total)
	}
	return total - s.in.unique()
}

// revert removes a file a test committed and waits for the fleet to
// converge, so that one failing test does not leave the next a broken
// cluster.
func revert(t *testing.T, name string) {
	t.Helper()
	if _, err := os.Stat(filepath.Join(cfg.Dir, "cluster", name)); err != nil {
		return
	}
	commit(t, "e2e: revert "+name, map[string]string{name: ""})
	if err := cfg.WaitConverged(context.Background(), 120*time.Second); err != nil {
		t.Errorf("after reverting %s: %v", name, err)
	}
}

// appliedAfter waits until every named node applied head and returns when
// the last one did, by the agents' own clocks (the machine's), measured from
// since: the test's polling adds nothing to the figure.
func appliedAfter(t *testing.T, head string, since time.Time, d time.Duration, nodes ...string) time.Duration {
	t.Helper()
	var last time.Time
	for _, n := range nodes {
		waitFor(t, d, n+" applies "+head[:12], func() bool { return agentStatus(t, n).Applied == head })
		at := agentStatus(t, n).AppliedAt
		t.Logf("%s applied %s %s after the push", n, head[:12], at.Sub(since).Round(time.Millisecond))
		if at.After(last) {
			last = at
		}
	}
	return last.Sub(since)
}

// spareBroker3 boots the spare node broker3 (outside the definition) unless
// it runs already, and returns its address.
func spareBroker3(t *testing.T) string {
	t.Helper()
	addr := cfg.Addr(23)
	st, err := cfg.Load()
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := st.Node("broker3"); !ok {
		if _, err := cfg.AddNode(t.Context(), labProject(), "broker3", addr, "broker"); err != nil {
			t.Fatal(err)
		}
	}
	return addr
}

// metricsOf is what a node's agent serves at /metrics.
func metricsOf(t *testing.T, name string) string {
	t.Helper()
	resp, err := http.Get(fmt.Sprintf("http://%s:%d/metrics", node(t, name).Addr, lab.WebhookPort))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(body)
}

// hangBroker stops (SIGSTOP) mosquitto on node and waits until the agent
// found it hung, killed it and it serves again; it returns how long that
// took (the callers bound it).
func hangBroker(t *testing.T, node, while string) time.Duration {
	t.Helper()
	tc := tlsConfig(t)
	addr := brokerAddr(t, node)
	pid := strings.TrimSpace(on(t, node, "systemctl", "show", "-p", "MainPID", "--value", "mosquitto"))
	on(t, node, "kill", "-STOP", pid)
	stopped := time.Now()
	waitFor(t, 30*time.Second, "hung mosquitto replaced"+while, func() bool {
		now := strings.TrimSpace(on(t, node, "systemctl", "show", "-p", "MainPID", "--value", "mosquitto"))
		return now != pid && now != "0" && handshake(addr, tc)
	})
	return time.Since(stopped)
}

// vipServesFrom waits until the VIP serves TLS from load balancer lb and
// returns how long after t0. The old holder may answer until a fault takes
// effect: only a handshake after t0 and from lb counts.
func vipServesFrom(t *testing.T, t0 time.Time, lb string) time.Duration {
	t.Helper()
	tc := tlsConfig(t)
	tc.ServerName = cfg.VIP()
	for {
		if time.Since(t0) > 50*time.Millisecond && handshake(vip(), tc) && vipHolder(t) == lb {
			return time.Since(t0)
		}
		if time.Since(t0) > 30*time.Second {
			t.Fatalf("the VIP does not serve from %s", lb)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
