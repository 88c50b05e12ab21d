package agent

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"testing/fstest"
	"time"

	"github.com/mqha/mqha/internal/cluster"
	"github.com/mqha/mqha/internal/control"
	"github.com/mqha/mqha/schema"

	"github.com/mqha/mqha/internal/health"
	"github.com/mqha/mqha/internal/plan"
	"github.com/mqha/mqha/internal/render"
	"github.com/mqha/mqha/internal/source"
	"github.com/mqha/mqha/internal/unit"
)

// fakeSource is a repository whose commits are cluster definitions held in
// memory; head is where the branch points, headErr makes the remote
// unreachable.
type fakeSource struct {
	mu       sync.Mutex
	head     string
	headErr  error
	commits  map[string]fstest.MapFS
	descends func(hash, ancestor string) bool
	heads    int // calls of Head
	reads    []string
	hang     bool // Head waits for its deadline, as a server that never answers
}

func (f *fakeSource) Head(ctx context.Context) (string, error) {
	f.mu.Lock()
	f.heads++
	hang := f.hang
	f.mu.Unlock()
	if hang {
		<-ctx.Done()
		return "", ctx.Err()
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.head, f.headErr
}
func (f *fakeSource) Fetch(_ context.Context, hash string) error {
	if _, ok := f.commits[hash]; !ok {
		return fmt.Errorf("commit %s not found", hash)
	}
	return nil
}
func (f *fakeSource) Descends(_ context.Context, hash, ancestor string) (bool, error) {
	if f.descends != nil {
		return f.descends(hash, ancestor), nil
	}
	return true, nil
}
func (f *fakeSource) Read(hash, _ string) (*source.Commit, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.reads = append(f.reads, hash)
	files, ok := f.commits[hash]
	if !ok {
		return nil, fmt.Errorf("commit %s not found", hash)
	}
	return &source.Commit{Hash: hash, Subject: "subject of " + hash, Files: files}, nil
}

// definition is the example cluster with one setting varied per commit.
func definition(t *testing.T, extra string) fstest.MapFS {
	t.Helper()
	b, err := os.ReadFile("../../cluster-repo-example/cluster.cue")
	if err != nil {
		t.Fatal(err)
	}
	return fstest.MapFS{"cluster.cue": {Data: b}, "extra.cue": {Data: []byte("package cluster\n\n" + extra + "\n")}}
}

// fakeConverger records what it was asked to converge and fails on demand.
type fakeConverger struct {
	calls []string // commits, in order
	fail  map[string]error
}

func (f *fakeConverger) converge(_ context.Context, v *View, h Hooks) (*plan.Plan, error) {
	f.calls = append(f.calls, v.Commit)
	if h.Timing != nil {
		h.Timing("units", 42*time.Millisecond)
	}
	return &plan.Plan{Node: v.Node.Name}, f.fail[v.Commit]
}

type fakeSystemd struct{}

func (fakeSystemd) State(context.Context, string) (unit.State, error) {
	return unit.State{ActiveState: "active", LoadState: "loaded"}, nil
}
func (fakeSystemd) DaemonReload(context.Context) error                 { return nil }
func (fakeSystemd) Do(context.Context, unit.Action, string) error      { return nil }
func (fakeSystemd) Enable(context.Context, string) error               { return nil }
func (fakeSystemd) Disable(context.Context, string) error              { return nil }
func (fakeSystemd) Kill(context.Context, string, syscall.Signal) error { return nil }
func (fakeSystemd) MainPID(context.Context, string) (int, error)       { return 0, nil }

type clock struct{ t time.Time }

func (c *clock) now() time.Time          { return c.t }
func (c *clock) advance(d time.Duration) { c.t = c.t.Add(d) }

type harness struct {
	a      *Agent
	src    *fakeSource
	conv   *fakeConverger
	closed []string
	clock  *clock
	notes  []string
	dir    string
	probes int
	peerOK bool
	host   render.Host
}

// newHarness is an agent of node broker1 (lb1 with lb set) of the example
// cluster, with every seam faked; stateDir may hold a previous run's state.
func newHarness(t *testing.T, node string, stateDir string, commits map[string]string) *harness {
	t.Helper()
	h := &harness{src: &fakeSource{commits: map[string]fstest.MapFS{}}, conv: &fakeConverger{fail: map[string]error{}},
		clock: &clock{t: time.Date(2026, 11, 27, 0, 0, 0, 0, time.UTC)}, dir: stateDir}
	for hash, extra := range commits {
		h.src.commits[hash] = definition(t, extra)
	}
	if h.dir == "" {
		h.dir = t.TempDir()
	}
	cfg := defaultConfig()
	cfg.Repo, cfg.StateDir = "git://example/cluster.git", h.dir
	h.a = New(cfg, node, Deps{Source: h.src, Systemd: fakeSystemd{}, Converge: h.conv.converge,
		LoadTLS: func(TLSFiles) (*tls.Config, error) { return &tls.Config{}, nil },
		ProbeLB: func(context.Context, string, *tls.Config) error {
			h.probes++
			if h.peerOK {
				return nil
			}
			return errors.New("refused")
		},
		CloseConns: func(_ context.Context, addr string, port int) error {
			h.closed = append(h.closed, fmt.Sprintf("%s:%d", addr, port))
			return nil
		},
		Notify:    func(s string) { h.notes = append(h.notes, s) },
		Now:       h.clock.now,
		FaultFile: filepath.Join(h.dir, "lb-fault"),
		Host:      func() render.Host { return h.host },
		Log:       slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	return h
}

func (h *harness) tick(t *testing.T, force bool) error {
	t.Helper()
	return h.a.tick(context.Background(), force)
}

func TestNewCommitAppliedAndRecorded(t *testing.T) {
	h := newHarness(t, "broker1", "", map[string]string{"c1": ""})
	h.src.head = "c1"
	if err := h.tick(t, false); err != nil {
		t.Fatal(err)
	}
	s := h.a.Status()
	if s.Applied != "c1" || s.AppliedSubject != "subject of c1" || s.Roles != "broker" || !s.AppliedAt.Equal(h.clock.t) {
		t.Errorf("status %+v", s)
	}
	if b, _ := os.ReadFile(filepath.Join(h.dir, "applied")); strings.TrimSpace(string(b)) != "c1" {
		t.Errorf("state file says %q", b)
	}
	if len(h.notes) == 0 || h.notes[len(h.notes)-1] != "STATUS=applied c1" {
		t.Errorf("sd_notify lines %q", h.notes)
	}
	if len(h.a.Status().Checks) != 0 || h.a.monitor == nil || len(h.a.monitor.Checks) != 1 {
		t.Errorf("the health monitor of a broker should have its mosquitto check: %+v", h.a.monitor)
	}
}

// The applied commit is enforced on every poll from the view loaded once:
// it is read once, however often it is enforced.
func TestEnforceReusesTheView(t *testing.T) {
	h := newHarness(t, "broker1", "", map[string]string{"c1": ""})
	h.src.head = "c1"
	for range 5 {
		h.clock.advance(5 * time.Second)
		if err := h.tick(t, false); err != nil {
			t.Fatal(err)
		}
	}
	if len(h.src.reads) != 1 {
		t.Errorf("read the commit %d times, want once", len(h.src.reads))
	}
	if strings.Join(h.conv.calls, " ") != "c1 c1 c1 c1 c1" {
		t.Errorf("converged %v, want c1 applied then enforced on every tick", h.conv.calls)
	}
}

func TestBackoffWhileTheRemoteIsDown(t *testing.T) {
	h := newHarness(t, "broker1", "", map[string]string{"c1": ""})
	h.src.head = "c1"
	h.tick(t, false)
	h.src.headErr = errors.New("connection refused")
	var waits []time.Duration
	for range 6 {
		before := h.src.heads
		h.tick(t, false)
		if h.src.heads != before+1 {
			t.Fatal("the remote was not asked although the back-off had passed")
		}
		waits = append(waits, h.a.backoff)
		// Not asked again before the back-off passes...
		h.clock.advance(h.a.backoff - time.Millisecond)
		h.tick(t, false)
		if h.src.heads != before+1 {
			t.Fatalf("asked the remote again within the back-off %s", h.a.backoff)
		}
		h.clock.advance(2 * time.Millisecond)
	}
	want := []time.Duration{5 * time.Second, 10 * time.Second, 20 * time.Second, 40 * time.Second, time.Minute, time.Minute}
	if fmt.Sprint(waits) != fmt.Sprint(want) {
		t.Errorf("back-off %v, want %v", waits, want)
	}
	if s := h.a.Status(); s.FetchError != "connection refused" || s.Applied != "c1" {
		t.Errorf("status %+v", s)
	}
	// ...unless forced (a push trigger, sync).
	before := h.src.heads
	h.tick(t, true)
	if h.src.heads != before+1 {
		t.Error("a forced tick did not ask the remote")
	}
	// Every tick, reachable or not, kept enforcing the applied commit.
	if n := len(h.conv.calls); n != 14 {
		t.Errorf("converged %d times, want 14 (every tick enforces)", n)
	}
	h.src.headErr = nil
	h.tick(t, true)
	if s := h.a.Status(); s.FetchError != "" || h.a.backoff != 0 {
		t.Errorf("recovered: status %+v, back-off %s", s, h.a.backoff)
	}
}

func TestRefusedCommitNotRetriedUntilTheBranchMoves(t *testing.T) {
	h := newHarness(t, "broker1", "", map[string]string{"c1": "", "c2": "mqtt: maxQueuedMessages: 2000", "c3": "mqtt: maxQueuedMessages: 3000"})
	h.src.head = "c1"
	h.tick(t, false)
	h.conv.fail["c2"] = errors.New("health check after apply: not healthy (rolled back to the previous files and unit states)")
	h.src.head = "c2"
	if err := h.tick(t, false); err == nil {
		t.Fatal("want the converge error")
	}
	s := h.a.Status()
	if s.Applied != "c1" || s.Refused != "c2" || !strings.Contains(s.RefusedReason, "rolled back") {
		t.Fatalf("status %+v", s)
	}
	if b, _ := os.ReadFile(filepath.Join(h.dir, "refused")); !strings.HasPrefix(string(b), "c2 commit c2 (subject of c2): health check") {
		t.Errorf("refused state %q", b)
	}
	if !strings.Contains(h.notes[len(h.notes)-1], "refused c2: commit c2") {
		t.Errorf("STATUS line does not say the refusal: %q", h.notes[len(h.notes)-1])
	}
	// After the refusal the previous commit is enforced again at once.
	if got := strings.Join(h.conv.calls, " "); got != "c1 c2 c1" {
		t.Errorf("converged %s, want c1 c2 c1", got)
	}
	h.conv.calls = nil
	for range 3 {
		h.clock.advance(5 * time.Second)
		h.tick(t, false)
	}
	if got := strings.Join(h.conv.calls, " "); got != "c1 c1 c1" {
		t.Errorf("converged %s: the refused commit was retried", got)
	}
	h.src.head = "c3"
	h.tick(t, false)
	if s := h.a.Status(); s.Applied != "c3" || s.Refused != "" {
		t.Errorf("after the branch moved on: status %+v", s)
	}
	if _, err := os.Stat(filepath.Join(h.dir, "refused")); !os.IsNotExist(err) {
		t.Error("the refused state file outlived a newer applied commit")
	}
}

// A restart tries a refused commit once more (what refused it may have been
// fixed on the node) and starts from the recorded applied commit.
func TestRestartRetriesARefusedCommitOnce(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "applied"), []byte("c1\n"), 0o644)
	os.WriteFile(filepath.Join(dir, "refused"), []byte("c2 it failed\n"), 0o644)
	h := newHarness(t, "broker1", dir, map[string]string{"c1": "", "c2": "mqtt: maxQueuedMessages: 2000"})
	if s := h.a.Status(); s.Applied != "c1" || s.Refused != "c2" || s.RefusedReason != "it failed" {
		t.Fatalf("restored status %+v", s)
	}
	h.src.head = "c2"
	h.tick(t, false)
	if s := h.a.Status(); s.Applied != "c2" || s.Refused != "" {
		t.Errorf("status %+v: the refused commit was not tried again after the restart", s)
	}
}

func TestChecksBeforeAnythingIsRead(t *testing.T) {
	for _, tt := range []struct {
		name     string
		setup    func(h *harness)
		want     string
		readsNew bool
	}{
		{"unsigned", func(h *harness) { h.a.d.Verifier = verifier{errors.New("commit is not signed")} }, "commit c2: untrusted: commit is not signed", false},
		{"rewritten history", func(h *harness) { h.src.descends = func(string, string) bool { return false } }, "does not descend from the applied c1", false},
		{"rewind allowed", func(h *harness) {
			h.src.descends = func(string, string) bool { return false }
			h.a.cfg.AllowRewind = true
		}, "", true},
		{"schema error", func(h *harness) {
			h.src.commits["c2"]["extra.cue"].Data = []byte("package cluster\n\nvip: routerId: 7\n")
		}, "field not allowed", true},
		{"node removed, decommission off", func(h *harness) { h.a.node, h.a.cfg.Decommission = "broker9", false }, `node "broker9" is not in the cluster definition; decommission = false`, true},
		{"certificate does not load", func(h *harness) {
			h.a.d.LoadTLS = func(TLSFiles) (*tls.Config, error) {
				return nil, errors.New("open /etc/mqha/tls/node.key: permission denied")
			}
		}, "certificate does not load", true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, "broker1", "", map[string]string{"c1": "", "c2": "mqtt: maxQueuedMessages: 2000"})
			h.src.head = "c1"
			h.tick(t, false)
			h.conv.calls, h.src.reads = nil, nil
			tt.setup(h)
			h.src.head = "c2"
			h.tick(t, false)
			s := h.a.Status()
			if tt.want == "" {
				if s.Applied != "c2" {
					t.Fatalf("status %+v, want c2 applied", s)
				}
				return
			}
			if s.Refused != "c2" || !strings.Contains(s.RefusedReason, tt.want) {
				t.Fatalf("status %+v, want c2 refused with %q", s, tt.want)
			}
			for _, c := range h.conv.calls {
				if c == "c2" {
					t.Error("a refused commit reached the node")
				}
			}
			readNew := strings.Contains(strings.Join(h.src.reads, " "), "c2")
			if readNew != tt.readsNew {
				t.Errorf("read c2: %v, want %v (signature and history are checked before anything is read)", readNew, tt.readsNew)
			}
		})
	}
}

type verifier struct{ err error }

func (v verifier) Verify(string) (string, error) { return "ops", v.err }

func faultFile(t *testing.T, h *harness) string {
	t.Helper()
	b, err := os.ReadFile(h.a.fault.path)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

// The fault file has one owner; the gate's reason and health's reason are
// held separately, so one cannot clear the other's.
func TestFaultReasons(t *testing.T) {
	h := newHarness(t, "lb1", "", nil)
	f := h.a.fault
	f.gate(true)
	f.Set(faultHealth)
	f.gate(false)
	if got := faultFile(t, h); got != "1" {
		t.Fatalf("the gate cleared health's fault: file says %s", got)
	}
	f.Clear(faultHealth)
	if got := faultFile(t, h); got != "0" {
		t.Fatalf("no reason left, file says %s", got)
	}
}

// A fault the file held before the agent started is owned by health: kept
// until nginx is seen serving, then cleared (it used to stay forever).
func TestFaultFromBeforeAStartIsCleared(t *testing.T) {
	h := newHarness(t, "lb1", "", map[string]string{"c1": ""})
	os.WriteFile(h.a.fault.path, []byte("1\n"), 0o644)
	h.a.fault = newFault(h.a.fault.path, h.a.log)
	if !h.a.fault.Holds(faultHealth) || faultFile(t, h) != "1" {
		t.Fatal("a fault from before the start was dropped or not owned")
	}
	h.a.onResult(health.Result{Name: "nginx", OK: true})
	if h.a.fault.Holds(faultHealth) || faultFile(t, h) != "0" {
		t.Fatal("nginx serves, yet the fault from before the start holds")
	}
}

// The VIP policy: nginx failing twice gives up the VIP, but only to a peer
// that serves and never while nginx is busy rather than hung; a healthy
// nginx takes part again.
func TestVIPPolicy(t *testing.T) {
	h := newHarness(t, "lb1", "", map[string]string{"c1": ""})
	h.src.head = "c1"
	h.tick(t, false)
	fail := func(n int) health.Result {
		return health.Result{Name: "nginx", OK: false, Failures: n, Error: "refused"}
	}

	h.a.onResult(fail(1))
	if h.a.fault.Holds(faultHealth) {
		t.Fatal("one failure gave up the VIP")
	}
	h.a.onResult(fail(2))
	if h.a.fault.Holds(faultHealth) || h.probes == 0 {
		t.Fatal("gave up the VIP without a serving peer (or never asked the peer)")
	}
	h.peerOK = true
	busy := fail(3)
	busy.Busy = true
	h.a.onResult(busy)
	if h.a.fault.Holds(faultHealth) {
		t.Fatal("gave up the VIP for a busy nginx (no answer, but its workers progress)")
	}
	down := fail(3)
	down.BrokerDown = true
	h.a.onResult(down)
	if h.a.fault.Holds(faultHealth) {
		t.Fatal("gave up the VIP because a broker behind nginx does not answer")
	}
	h.a.onResult(fail(3))
	if !h.a.fault.Holds(faultHealth) || faultFile(t, h) != "1" {
		t.Fatal("kept the VIP although nginx failed and the peer serves")
	}
	h.a.onResult(health.Result{Name: "mosquitto", OK: true})
	if !h.a.fault.Holds(faultHealth) {
		t.Fatal("another check's result cleared nginx's fault")
	}
	h.a.onResult(health.Result{Name: "nginx", OK: true})
	if h.a.fault.Holds(faultHealth) || faultFile(t, h) != "0" {
		t.Fatal("a serving nginx is still out of VRRP")
	}
}

// A load balancer closes the connections to a broker a commit removed (and
// only those), once the commit is applied; other nodes close nothing.
func TestRemovedBrokerConnectionsClosed(t *testing.T) {
	withBroker3 := `nodes: broker3: {address: "10.20.0.23", roles: ["broker"]}`
	for _, tt := range []struct {
		node string
		want string
	}{{"lb1", "10.20.0.23:8883"}, {"lb2", "10.20.0.23:8883"}, {"broker1", ""}, {"bridge", ""}} {
		h := newHarness(t, tt.node, "", map[string]string{"c1": withBroker3, "c2": "", "c3": withBroker3})
		h.src.head = "c1"
		h.tick(t, false)
		h.src.head = "c3" // adding a broker closes nothing
		h.src.commits["c3"] = definition(t, withBroker3+"\nmqtt: maxQueuedMessages: 2000")
		h.tick(t, false)
		if len(h.closed) != 0 {
			t.Errorf("%s: closed %v on a commit that removed no broker", tt.node, h.closed)
		}
		h.src.head = "c2"
		h.tick(t, false)
		if got := strings.Join(h.closed, " "); got != tt.want {
			t.Errorf("%s: closed %q, want %q", tt.node, got, tt.want)
		}
	}
}

// Drops mosquitto logs are counted per client and shown in status.
func TestDropsCounted(t *testing.T) {
	h := newHarness(t, "broker1", "", nil)
	h.a.countDrops([]string{"1795746031: New connection from 10.0.0.1",
		"1795746031: Outgoing messages are being dropped for client mqtt-bridge-to-broker1.",
		"1795746040: Outgoing messages are being dropped for client mqtt-bridge-to-broker1.",
		"1795746041: Outgoing messages are being dropped for client alice."})
	d := h.a.Status().Drops
	if len(d) != 2 || d[0].Client != "mqtt-bridge-to-broker1" || d[0].Episodes != 2 || d[1].Client != "alice" || d[1].Episodes != 1 {
		t.Errorf("drops %+v", d)
	}
}

// VRRP adverts keepalived dropped from a foreign source are counted per
// source, shown in status and make it degraded while recent.
func TestForgedAdvertsCounted(t *testing.T) {
	h := newHarness(t, "lb1", "", nil)
	h.a.countForged([]string{"(mqtt) Entering BACKUP STATE",
		"(mqtt) unicast source address 10.0.0.66 not a unicast peer",
		"(mqtt) unicast source address 10.0.0.66 not a unicast peer",
		"(mqtt) unicast source address 10.0.0.67 not a unicast peer"})
	h.a.countForged([]string{"(mqtt) unicast source address 10.0.0.66 not a unicast peer"})
	f := h.a.Status().ForgedAdverts
	if len(f) != 2 {
		t.Fatalf("forged %+v", f)
	}
	for _, want := range []control.Forged{{Source: "10.0.0.66", Adverts: 3}, {Source: "10.0.0.67", Adverts: 1}} {
		if !slices.ContainsFunc(f, func(g control.Forged) bool { return g.Source == want.Source && g.Adverts == want.Adverts }) {
			t.Errorf("forged %+v, want %+v among them", f, want)
		}
	}
	s := h.a.Status()
	if p := strings.Join(s.Problems(h.clock.t), "\n"); !strings.Contains(p, "3 VRRP adverts from 10.0.0.66, not a load balancer of the cluster") {
		t.Errorf("problems: %s", p)
	}
	if p := s.Problems(h.clock.t.Add(time.Hour)); len(p) != 0 {
		t.Errorf("an hour later: %q", p)
	}
}

// On a host that cannot hold limits.clients, status says so, per daemon.
func TestLimitWarnings(t *testing.T) {
	for _, tt := range []struct {
		node string
		host render.Host
		want []string
	}{
		{"lb1", render.Host{}, nil},
		// Processors unknown: one worker per processor is assumed enough.
		{"lb1", render.Host{NoFileMax: 20000}, []string{"nginx holds at most 9488 clients (this host allows 20000 descriptors per process), fewer than limits.clients, 50000"}},
		// Two processors: six workers hold 50,000.
		{"lb1", render.Host{NoFileMax: 20000, CPUs: 2}, nil},
		{"broker1", render.Host{NoFileMax: 20000}, []string{"mosquitto holds at most 18976 clients (this host allows 20000 descriptors per process), fewer than its share of limits.clients (over the brokers), 25000: add brokers"}},
		{"broker1", render.Host{NoFileMax: 1 << 20}, nil},
		// The bridge master holds its connections to the brokers, no clients.
		{"bridge", render.Host{NoFileMax: 20000}, nil},
	} {
		h := newHarness(t, tt.node, "", map[string]string{"c1": ""})
		h.host = tt.host
		h.src.head = "c1"
		h.tick(t, false)
		h.a.checkWarnings(context.Background())
		got := h.a.Status().Warnings
		if len(got) != len(tt.want) {
			t.Errorf("%s on %+v: warnings %q, want %q", tt.node, tt.host, got, tt.want)
			continue
		}
		for i := range got {
			if !strings.HasPrefix(got[i], tt.want[i]) {
				t.Errorf("%s: warning %q, want it to start %q", tt.node, got[i], tt.want[i])
			}
		}
	}
}

// The stages of converging a new commit are in status; enforcing the
// applied commit afterwards neither adds to them nor replaces them.
func TestStagesRecorded(t *testing.T) {
	h := newHarness(t, "broker1", "", map[string]string{"c1": ""})
	h.src.head = "c1"
	h.tick(t, false)
	var names []string
	for _, s := range h.a.Status().Stages {
		names = append(names, s.Name)
	}
	if strings.Join(names, " ") != "fetch+trust load units" {
		t.Fatalf("stages %v", names)
	}
	for range 3 {
		h.tick(t, false)
	}
	if n := len(h.a.Status().Stages); n != 3 || h.a.stages != nil {
		t.Errorf("after enforcing: %d stages in status, %d pending", n, len(h.a.stages))
	}
}

// settlePull plays the loop's part for a pull under way: it waits for the
// pull (off the loop) and settles it.
func (h *harness) settlePull(t *testing.T, what string) {
	t.Helper()
	select {
	case r := <-h.a.pulls:
		h.a.pullDone(context.Background(), r)
	case <-time.After(5 * time.Second):
		t.Fatal(what + " never ended")
	}
}

// sync asks the agent to pull now, as the control socket does, and plays
// the loop's part until the answer comes: the pull runs off the loop.
func (h *harness) sync(retry bool) error {
	reply := make(chan error, 1)
	ctx := context.Background()
	h.a.syncNow(ctx, syncRequest{retry, reply})
	for {
		select {
		case err := <-reply:
			return err
		case r := <-h.a.pulls:
			h.a.pullDone(ctx, r)
		}
	}
}

// sync --retry tries a refused commit again; a plain sync does not.
func TestSyncRetry(t *testing.T) {
	h := newHarness(t, "broker1", "", map[string]string{"c1": "", "c2": "mqtt: maxQueuedMessages: 2000"})
	h.src.head = "c1"
	h.tick(t, false)
	h.conv.fail["c2"] = errors.New("not healthy (rolled back)")
	h.src.head = "c2"
	h.tick(t, false)
	h.conv.calls = nil
	h.sync(false)
	if strings.Contains(strings.Join(h.conv.calls, " "), "c2") {
		t.Fatal("a plain sync retried the refused commit")
	}
	delete(h.conv.fail, "c2") // the operator fixed the node
	if err := h.sync(true); err != nil {
		t.Fatal(err)
	}
	if s := h.a.Status(); s.Applied != "c2" || s.Refused != "" {
		t.Errorf("after sync --retry: %+v", s)
	}
}

// A reload applies what can change while running and names what cannot.
func TestReloadConfig(t *testing.T) {
	h := newHarness(t, "broker1", "", map[string]string{"c1": ""})
	cfg := h.a.cfg
	cfg.Poll, cfg.VerifyTimeout, cfg.AllowRewind = 2*time.Second, 7*time.Second, true
	if err := h.a.applyConfig(cfg, verifier{}); err != nil {
		t.Fatal(err)
	}
	if h.a.cfg.Poll != 2*time.Second || h.a.cfg.VerifyTimeout != 7*time.Second || !h.a.cfg.AllowRewind || h.a.d.Verifier == nil {
		t.Errorf("not applied: %+v", h.a.cfg)
	}
	cfg.Repo, cfg.Branch = "git://elsewhere/c.git", "prod"
	err := h.a.applyConfig(cfg, nil)
	if err == nil || !strings.Contains(err.Error(), "repo, branch changed: restart mqha-agent") {
		t.Errorf("got %v", err)
	}
	if h.a.cfg.Repo == "git://elsewhere/c.git" || h.a.d.Verifier != nil {
		t.Errorf("repo changed while running, or the verifier was not updated: %+v", h.a.cfg)
	}
}

// A node certificate expiring within 30 days is a warning (degraded).
func TestCertificateExpiryWarned(t *testing.T) {
	for _, tt := range []struct {
		left time.Duration
		want string
	}{{400 * 24 * time.Hour, ""}, {10 * 24 * time.Hour, "expires in 10 days"}, {-time.Hour, "expired on"}} {
		h := newHarness(t, "broker1", "", map[string]string{"c1": ""})
		h.host = render.Host{NoFileMax: 1 << 20}
		leaf := &x509.Certificate{NotAfter: h.clock.t.Add(tt.left)}
		h.a.d.LoadTLS = func(TLSFiles) (*tls.Config, error) {
			return &tls.Config{Certificates: []tls.Certificate{{Leaf: leaf}}}, nil
		}
		h.src.head = "c1"
		h.tick(t, false)
		h.a.checkWarnings(context.Background())
		s := h.a.Status()
		got := strings.Join(s.Warnings, "; ")
		if (tt.want == "") != (got == "") || !strings.Contains(got, tt.want) || len(s.Certificates) != 1 {
			t.Errorf("%s left: warnings %q (want %q), certificates %+v", tt.left, got, tt.want, s.Certificates)
		}
	}
}

// A git server that accepts and never answers: the pull runs off the loop
// (startPull returns at once, so health repair and drift revert go on) and
// ends at fetch-timeout with an error that says so; the applied commit
// stays enforced and the next try backs off.
func TestHungServerDoesNotHoldTheLoop(t *testing.T) {
	h := newHarness(t, "broker1", "", map[string]string{"c1": ""})
	h.src.head = "c1"
	h.tick(t, false)
	h.a.cfg.FetchTimeout = 200 * time.Millisecond
	h.src.mu.Lock()
	h.src.hang = true
	h.src.mu.Unlock()
	start := time.Now()
	h.a.startPull(context.Background(), true)
	if d := time.Since(start); d > 50*time.Millisecond || !h.a.pulling {
		t.Fatalf("startPull held the loop for %s (pulling %v)", d, h.a.pulling)
	}
	h.a.startPull(context.Background(), true) // a push meanwhile: queued, not a second pull
	var r pulled
	select {
	case r = <-h.a.pulls:
	case <-time.After(5 * time.Second):
		t.Fatal("the pull never ended: no deadline")
	}
	if d := time.Since(start); d < 200*time.Millisecond || d > 2*time.Second {
		t.Errorf("the pull ended after %s, want about the fetch-timeout (200ms)", d)
	}
	h.src.mu.Lock()
	h.src.hang = false
	h.src.mu.Unlock()
	h.a.pullDone(context.Background(), r)
	if s := h.a.Status(); !strings.Contains(s.FetchError, "fetch-timeout") || s.Applied != "c1" {
		t.Errorf("status after the hang: applied %q, fetch error %q", s.Applied, s.FetchError)
	}
	if !h.a.pulling {
		t.Error("the push that came during the hang was dropped")
	}
	h.settlePull(t, "the queued pull")
	if s := h.a.Status(); s.FetchError != "" {
		t.Errorf("fetch error after the server answers: %q", s.FetchError)
	}
}

// A damaged applied-state file is said in status and ignored, not taken
// for a commit.
func TestDamagedStateFile(t *testing.T) {
	for _, content := range []string{"not a hash\n", "deadbeef\n"} {
		dir := t.TempDir()
		os.WriteFile(filepath.Join(dir, "applied"), []byte(content), 0o644)
		h := newHarness(t, "broker1", dir, map[string]string{"c1": ""})
		if h.a.applied != "" || !strings.Contains(h.a.stateWarning, "ignored") {
			t.Errorf("state %q: applied %q, warning %q", content, h.a.applied, h.a.stateWarning)
		}
	}
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "applied"), []byte("c1\n"), 0o644)
	if h := newHarness(t, "broker1", dir, map[string]string{"c1": ""}); h.a.applied != "c1" || h.a.stateWarning != "" {
		t.Errorf("a good state file: applied %q, warning %q", h.a.applied, h.a.stateWarning)
	}
}

// The webhook: a signed push is accepted once; a replay, an oversized
// body, a bad signature and a guessable secret are refused.
func TestWebhook(t *testing.T) {
	h := newHarness(t, "broker1", "", map[string]string{"c1": ""})
	secretFile := filepath.Join(t.TempDir(), "secret")
	h.a.cfg.WebhookSecretFile = secretFile
	post := func(body []byte, secret, delivery string) int {
		mac := hmac.New(sha256.New, []byte(secret))
		mac.Write(body)
		req := httptest.NewRequest("POST", "/hook", bytes.NewReader(body))
		req.Header.Set("X-Hub-Signature-256", "sha256="+hex.EncodeToString(mac.Sum(nil)))
		if delivery != "" {
			req.Header.Set("X-GitHub-Delivery", delivery)
		}
		w := httptest.NewRecorder()
		h.a.handler().ServeHTTP(w, req)
		select {
		case <-h.a.hook:
		default:
		}
		return w.Code
	}
	os.WriteFile(secretFile, []byte("short\n"), 0o600)
	if c := post([]byte("{}"), "short", "d0"); c != http.StatusServiceUnavailable {
		t.Errorf("a 5-byte secret: %d, want 503", c)
	}
	good := "0123456789abcdef0123456789abcdef"
	os.WriteFile(secretFile, []byte(good+"\n"), 0o600)
	for _, tt := range []struct {
		name     string
		body     []byte
		secret   string
		delivery string
		want     int
	}{
		{"signed", []byte(`{"ref":"refs/heads/main"}`), good, "d1", http.StatusAccepted},
		{"replayed", []byte(`{"ref":"refs/heads/main"}`), good, "d1", http.StatusConflict},
		{"another delivery", []byte(`{"ref":"refs/heads/main"}`), good, "d2", http.StatusAccepted},
		{"bad signature", []byte(`{}`), "not-the-secret-at-all!", "d3", http.StatusUnauthorized},
		{"over 1 MiB", bytes.Repeat([]byte("x"), 1<<20+1), good, "d4", http.StatusRequestEntityTooLarge},
	} {
		if c := post(tt.body, tt.secret, tt.delivery); c != tt.want {
			t.Errorf("%s: %d, want %d", tt.name, c, tt.want)
		}
	}
}

// timeoutRecorder is systemd that records the bound it is given.
type timeoutRecorder struct {
	fakeSystemd
	got time.Duration
}

func (r *timeoutRecorder) SetTimeout(d time.Duration) { r.got = d }

// timeouts.unit of the applied commit bounds the agent's systemd calls.
func TestUnitTimeoutHonoured(t *testing.T) {
	h := newHarness(t, "broker1", "", map[string]string{"c1": "", "c2": "timeouts: unit: 7"})
	rec := &timeoutRecorder{}
	h.a.d.Systemd = rec
	h.src.head = "c1"
	h.tick(t, false)
	if rec.got != 30*time.Second {
		t.Errorf("bound %s after c1, want the default 30s", rec.got)
	}
	h.src.head = "c2"
	h.tick(t, false)
	if rec.got != 7*time.Second {
		t.Errorf("bound %s after c2, want timeouts.unit 7s", rec.got)
	}
}

// A commit whose load never finished (the agent died in it) is refused at
// the next start and not tried again into the same end.
func TestLoadThatKilledTheAgentIsRefused(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "applied"), []byte("c1\n"), 0o644)
	os.WriteFile(filepath.Join(dir, "trying"), []byte("c2\n"), 0o644)
	h := newHarness(t, "broker1", dir, map[string]string{"c1": "", "c2": ""})
	if s := h.a.Status(); s.Refused != "c2" || !strings.Contains(s.RefusedReason, "loading it did not finish") {
		t.Fatalf("status %+v", s)
	}
	h.src.head = "c2"
	h.tick(t, false)
	if strings.Contains(strings.Join(h.conv.calls, " "), "c2") {
		t.Error("the commit that killed the agent was loaded again")
	}
	if _, err := os.Stat(filepath.Join(dir, "trying")); !os.IsNotExist(err) {
		t.Error("the trying mark outlived the start")
	}
}

// Reading and evaluating a new commit runs off the loop too: a definition
// that takes its full load-timeout does not hold up health repair.
func TestEvaluationOffTheLoop(t *testing.T) {
	h := newHarness(t, "broker1", "", map[string]string{"c1": "", "c2": ""})
	h.src.head = "c1"
	h.tick(t, false)
	release := make(chan struct{})
	h.a.d.LoadDefinition = func(ctx context.Context, files fs.FS) (*cluster.Cluster, error) {
		<-release
		return schema.Load(files, ".")
	}
	h.src.mu.Lock()
	h.src.head = "c2"
	h.src.mu.Unlock()
	start := time.Now()
	h.a.startPull(context.Background(), true)
	if d := time.Since(start); d > 50*time.Millisecond {
		t.Fatalf("startPull held the loop for %s while the commit was evaluated", d)
	}
	close(release)
	h.settlePull(t, "the evaluation")
	if s := h.a.Status(); s.Applied != "c2" {
		t.Errorf("applied %q after the evaluation, want c2", s.Applied)
	}
}

// status says, loudly, how an untrusted commit could reach the node:
// unsigned over git://, or an applied commit no trusted key vouches for.
func TestInsecureSaid(t *testing.T) {
	h := newHarness(t, "broker1", "", map[string]string{"c1": ""})
	if s := h.a.Status(); len(s.Insecure) != 1 || !strings.Contains(s.Insecure[0], "git:// does not authenticate the server") {
		t.Errorf("unsigned over git://: %q", s.Insecure)
	}
	if len(h.a.Status().Problems(time.Now())) != 0 {
		t.Error("insecurity counted as a health problem")
	}
	h.src.head = "c1"
	h.tick(t, false)
	h.a.d.Verifier = verifier{errors.New("signed by a key no longer trusted")}
	if got := h.a.insecurity(); len(got) != 1 || !strings.Contains(got[0], "applied commit c1 is not signed by a trusted key") {
		t.Errorf("applied commit untrusted now: %q", got)
	}
	h.a.d.Verifier = verifier{}
	if got := h.a.insecurity(); len(got) != 0 {
		t.Errorf("signed and trusted: %q", got)
	}
}

// Suspended: a new commit is seen (pending) but not applied, the applied
// one is not enforced (hand edits stay), the status says why and since
// when, and it survives a restart; resume converges at once.
func TestSuspendResume(t *testing.T) {
	h := newHarness(t, "broker1", "", map[string]string{"c1": "", "c2": ""})
	h.src.head = "c1"
	h.tick(t, false)
	ctx := context.Background()
	if err := h.a.onSuspend(ctx, suspendRequest{on: true, reason: "incident 42"}); err != nil {
		t.Fatal(err)
	}
	h.conv.calls = nil
	h.src.head = "c2"
	h.tick(t, false)
	h.tick(t, false)
	if len(h.conv.calls) != 0 {
		t.Fatalf("suspended, yet converged %v", h.conv.calls)
	}
	s := h.a.Status()
	if s.Suspended == nil || s.Suspended.Reason != "incident 42" || s.Pending != "c2" || s.Applied != "c1" {
		t.Fatalf("status while suspended: %+v", s)
	}
	if p := s.Problems(time.Now()); len(p) == 0 || !strings.Contains(p[0], "suspended") {
		t.Errorf("a suspension is not a problem in status: %q", p)
	}
	// A restart keeps it.
	h2 := newHarness(t, "broker1", h.dir, map[string]string{"c1": "", "c2": ""})
	if s := h2.a.Status(); s.Suspended == nil || s.Suspended.Reason != "incident 42" {
		t.Fatalf("suspension lost across a restart: %+v", s.Suspended)
	}
	h2.src.head = "c2"
	if err := h2.a.onSuspend(ctx, suspendRequest{on: false}); err != nil {
		t.Fatal(err)
	}
	h2.settlePull(t, "the pull on resume")
	if s := h2.a.Status(); s.Suspended != nil || s.Applied != "c2" {
		t.Errorf("after resume: suspended %+v, applied %q", s.Suspended, s.Applied)
	}
	if _, err := os.Stat(filepath.Join(h.dir, "suspended")); !os.IsNotExist(err) {
		t.Error("the suspension's state file outlived resume")
	}
}
