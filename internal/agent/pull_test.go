package agent

import (
	"crypto/tls"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mqha/mqha/internal/apply"
	"github.com/mqha/mqha/internal/probe"
)

func TestNewCommitAppliedAndRecorded(t *testing.T) {
	h := newHarness(t, "broker1", "", map[string]string{"c1": ""})
	h.src.head = "c1"
	h.poll()
	s := h.a.Status()
	if s.Applied != "c1" || s.AppliedSubject != "subject of c1" || s.Roles != "broker" || !s.AppliedAt.Equal(h.clock.t) {
		t.Errorf("status %+v", s)
	}
	if b, _ := os.ReadFile(filepath.Join(h.dir, "applied")); strings.TrimSpace(string(b)) != "c1" {
		t.Errorf("state file says %q", b)
	}
	if n := h.lastNote(); n != "STATUS=applied c1" {
		t.Errorf("sd_notify STATUS line %q", n)
	}
	if m := h.a.daemons.get(); len(h.a.Status().Checks) != 0 || m == nil || len(m.Checks) != 1 {
		t.Errorf("the health monitor of a broker should have its mosquitto check: %+v", m)
	}
}

// The applied commit is enforced on every poll from the view loaded once:
// it is read once, however often it is enforced.
func TestEnforceReusesTheView(t *testing.T) {
	h := newHarness(t, "broker1", "", map[string]string{"c1": ""})
	h.src.head = "c1"
	for range 5 {
		h.clock.advance(5 * time.Second)
		h.poll()
	}
	if len(h.src.reads) != 1 {
		t.Errorf("read the commit %d times, want once", len(h.src.reads))
	}
	if strings.Join(h.conv.calls, " ") != "c1 c1 c1 c1 c1" {
		t.Errorf("converged %v, want c1 applied then enforced on every poll", h.conv.calls)
	}
}

func TestBackoffWhileTheRemoteIsDown(t *testing.T) {
	h := newHarness(t, "broker1", "", map[string]string{"c1": ""})
	h.src.head = "c1"
	h.poll()
	h.src.headErr = errors.New("connection refused")
	backoff := func() (d time.Duration) {
		h.onLoop(func() { d = h.a.pulls.backoff })
		return d
	}
	var waits []time.Duration
	for range 6 {
		before := h.src.heads
		h.poll()
		if h.src.heads != before+1 {
			t.Fatal("the remote was not asked although the back-off had passed")
		}
		waits = append(waits, backoff())
		// Not asked again before the back-off passes...
		h.clock.advance(backoff() - time.Millisecond)
		h.poll()
		if h.src.heads != before+1 {
			t.Fatalf("asked the remote again within the back-off %s", backoff())
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
	// ...unless forced (sync).
	before := h.src.heads
	h.sync(false)
	if h.src.heads != before+1 {
		t.Error("a sync did not ask the remote")
	}
	// Every round, reachable or not, kept enforcing the applied commit.
	if n := len(h.conv.calls); n != 14 {
		t.Errorf("converged %d times, want 14 (every round enforces)", n)
	}
	h.src.headErr = nil
	h.sync(false)
	if s := h.a.Status(); s.FetchError != "" || backoff() != 0 {
		t.Errorf("recovered: status %+v, back-off %s", s, backoff())
	}
}

// What the repository or this node cannot do is not the commit's fault:
// a fetch that fails (the soak's full disk refused a commit for good), or
// a mirror that cannot tell whether the commit descends from the applied
// one (unknown is not "no"). Said as a fetch error, retried after the
// back-off, applied once it works; never a refusal, which holds until the
// branch moves.
func TestRepositoryTroubleIsRetriedNotRefused(t *testing.T) {
	for _, tt := range []struct {
		name string
		set  func(*fakeSource, error)
		err  string
		said string
	}{
		{"a failed fetch", func(f *fakeSource, err error) { f.fetchErr = err },
			"write objects/pack/tmp_pack_1: no space left on device", "fetch c2: write objects/pack/tmp_pack_1: no space left on device"},
		{"unknown ancestry", func(f *fakeSource, err error) { f.descErr = err },
			"their history is incomplete", "check that c2 descends from the applied c1: their history is incomplete"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, "broker1", "", map[string]string{"c1": "", "c2": "mqtt: maxQueuedMessages: 2000"})
			h.src.head = "c1"
			h.poll()
			h.src.head = "c2"
			tt.set(h.src, errors.New(tt.err))
			h.clock.advance(5 * time.Second)
			h.poll()
			if s := h.a.Status(); s.Refused != "" || s.Applied != "c1" || !strings.Contains(s.FetchError, tt.said) {
				t.Fatalf("status %+v", s)
			}
			tt.set(h.src, nil)
			h.clock.advance(6 * time.Second) // past the back-off
			h.poll()
			if s := h.a.Status(); s.Applied != "c2" || s.FetchError != "" {
				t.Errorf("status once it works %+v", s)
			}
		})
	}
}

func TestRefusedCommitNotRetriedUntilTheBranchMoves(t *testing.T) {
	h := newHarness(t, "broker1", "", map[string]string{"c1": "", "c2": "mqtt: maxQueuedMessages: 2000", "c3": "mqtt: maxQueuedMessages: 3000"})
	h.src.head = "c1"
	h.poll()
	h.conv.fail["c2"] = errors.New("health check after apply: not healthy (rolled back to the previous files and unit states)")
	h.src.head = "c2"
	if err := h.sync(false); err == nil {
		t.Fatal("want the converge error")
	}
	s := h.a.Status()
	if s.Applied != "c1" || s.Refused != "c2" || !strings.Contains(s.RefusedReason, "rolled back") {
		t.Fatalf("status %+v", s)
	}
	if b, _ := os.ReadFile(filepath.Join(h.dir, "refused")); !strings.HasPrefix(string(b), "c2 commit c2 (subject of c2): health check") {
		t.Errorf("refused state %q", b)
	}
	if n := h.lastNote(); !strings.Contains(n, "refused c2: commit c2") {
		t.Errorf("STATUS line does not say the refusal: %q", n)
	}
	// After the refusal the previous commit is enforced again at once.
	if got := strings.Join(h.conv.calls, " "); got != "c1 c2 c1" {
		t.Errorf("converged %s, want c1 c2 c1", got)
	}
	h.conv.calls = nil
	for range 3 {
		h.clock.advance(5 * time.Second)
		h.poll()
	}
	if got := strings.Join(h.conv.calls, " "); got != "c1 c1 c1" {
		t.Errorf("converged %s: the refused commit was retried", got)
	}
	h.src.head = "c3"
	h.poll()
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
	h.poll()
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
			h.poll()
			h.conv.calls, h.src.reads = nil, nil
			h.onLoop(func() { tt.setup(h) })
			h.src.head = "c2"
			h.poll()
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

// sync --retry tries a refused commit again; a plain sync does not.
func TestSyncRetry(t *testing.T) {
	h := newHarness(t, "broker1", "", map[string]string{"c1": "", "c2": "mqtt: maxQueuedMessages: 2000"})
	h.src.head = "c1"
	h.poll()
	h.conv.fail["c2"] = errors.New("not healthy (rolled back)")
	h.src.head = "c2"
	h.poll()
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

// The pull state alone: one at a time, a forced one queued behind it, the
// back-off doubling from poll up to maxBackoff, a sync answered by a pull
// that starts after it asked.
func TestPuller(t *testing.T) {
	var p puller
	now := time.Date(2026, 12, 7, 0, 0, 0, 0, time.UTC)
	first, second := make(chan error, 1), make(chan error, 1)
	p.wait(first)
	if !p.start(true, now) || p.start(false, now) || p.again {
		t.Fatal("a second pull started, or a poll was queued")
	}
	p.wait(second)
	if w, again := p.done(); len(w) != 1 || w[0] != first || !again {
		t.Fatalf("done: waiting %d, again %v", len(w), again)
	}
	if !p.start(true, now) {
		t.Fatal("the queued pull did not start")
	}
	if w, _ := p.done(); len(w) != 1 || w[0] != second {
		t.Fatal("the sync that came during a pull was answered by it")
	}
	var waits []time.Duration
	for range 6 {
		p.reached(errors.New("refused"), now, 5*time.Second)
		waits = append(waits, p.backoff)
	}
	if fmt.Sprint(waits) != "[5s 10s 20s 40s 1m0s 1m0s]" || p.start(false, now.Add(59*time.Second)) || !p.start(false, now.Add(time.Minute)) {
		t.Errorf("back-off %v", waits)
	}
	p.done()
	p.reached(nil, now, 5*time.Second)
	if p.backoff != 0 || !p.start(false, now) {
		t.Error("an answer did not end the back-off")
	}
}

// A commit that changes this node's TLS files changes every probe the
// agent makes, whatever the plan restarts: on a load balancer a wrong
// tls.ca renders the same nginx.conf (an empty plan), and used to pass as
// applied while every check failed after. Now all checks must pass with the
// new files, or the commit is refused as not verified.
func TestTLSChangeVerifiesEveryCheck(t *testing.T) {
	dir := t.TempDir()
	wrong, right := filepath.Join(dir, "wrong.crt"), filepath.Join(dir, "right.crt")
	os.WriteFile(wrong, []byte("a node certificate, not the CA"), 0o644)
	os.WriteFile(right, []byte("a new CA bundle"), 0o644)
	h := newHarness(t, "lb1", "", map[string]string{"c1": "", "c2": fmt.Sprintf("tls: ca: %q", wrong), "c3": fmt.Sprintf("tls: ca: %q", right)})
	h.a.cfg.VerifyTimeout = 300 * time.Millisecond
	h.src.head = "c1"
	h.poll()
	h.mu.Lock()
	h.probeErr = fmt.Errorf("%w: tls: failed to verify certificate", probe.ErrNoAnswer)
	h.mu.Unlock()
	h.src.head = "c2"
	if err := h.sync(false); err == nil || !errors.Is(err, apply.ErrUnverified) {
		t.Fatalf("sync: %v, want a refusal as not verified", err)
	}
	if s := h.a.Status(); s.Applied != "c1" || s.Refused != "c2" || !strings.Contains(s.RefusedReason, "TLS files") {
		t.Fatalf("status %+v", s)
	}
	h.mu.Lock()
	h.probeErr = nil
	h.mu.Unlock()
	h.src.head = "c3"
	h.poll()
	if s := h.a.Status(); s.Applied != "c3" {
		t.Errorf("a TLS change whose checks pass was not applied: %+v", s)
	}
}
