package agent

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mqha/mqha/internal/cluster"
	"github.com/mqha/mqha/internal/evaluate"
	"github.com/mqha/mqha/internal/health"
	"github.com/mqha/mqha/internal/probe"
	"github.com/mqha/mqha/internal/unit"
	"github.com/mqha/mqha/schema"
)

// A git server that accepts and never answers: the pull runs off the loop
// (the loop keeps answering, so health repair and drift revert go on) and
// ends at fetch-timeout with an error that says so; a sync that came
// meanwhile gets the pull after it; the applied commit stays enforced.
func TestHungServerDoesNotHoldTheLoop(t *testing.T) {
	h := newHarness(t, "broker1", "", map[string]string{"c1": ""})
	h.src.head = "c1"
	h.poll()
	h.onLoop(func() { h.a.cfg.FetchTimeout = 200 * time.Millisecond })
	h.src.mu.Lock()
	h.src.hang = true
	h.src.mu.Unlock()
	start := time.Now()
	first := make(chan error, 1)
	go func() { first <- h.sync(false) }()
	// The loop answers while the pull hangs.
	for hung := 0; hung == 0; {
		h.onLoop(func() {})
		h.src.mu.Lock()
		hung = h.src.hung
		h.src.mu.Unlock()
	}
	if d := time.Since(start); d > 150*time.Millisecond {
		t.Fatalf("the loop took %s to answer while the pull hung", d)
	}
	second := make(chan error, 1)
	go func() { second <- h.sync(false) }() // a push meanwhile: queued, not a second pull
	for queued := false; !queued; {
		h.onLoop(func() { queued = h.a.pulls.again })
	}
	h.src.mu.Lock()
	h.src.hang = false // the pull under way hangs on; the next one is answered
	h.src.mu.Unlock()
	select {
	case <-first:
	case <-time.After(5 * time.Second):
		t.Fatal("the pull never ended: no deadline")
	}
	if d := time.Since(start); d < 200*time.Millisecond || d > 2*time.Second {
		t.Errorf("the pull ended after %s, want about the fetch-timeout (200ms)", d)
	}
	// The STATUS lines said it (the pull queued behind it may be done).
	h.mu.Lock()
	said := strings.Join(h.notes, "\n")
	h.mu.Unlock()
	if !strings.Contains(said, "STATUS=applied c1; fetch error: context deadline exceeded (no answer within fetch-timeout 200ms)") {
		t.Errorf("sd_notify lines after the hang: %s", said)
	}
	select {
	case <-second:
	case <-time.After(5 * time.Second):
		t.Fatal("the push that came during the hang was dropped")
	}
	if s := h.a.Status(); s.FetchError != "" {
		t.Errorf("fetch error after the server answers: %q", s.FetchError)
	}
}

// Reading and evaluating a new commit runs off the loop too: a definition
// that takes its full load-timeout does not hold up health repair.
func TestEvaluationOffTheLoop(t *testing.T) {
	h := newHarness(t, "broker1", "", map[string]string{"c1": "", "c2": ""})
	h.src.head = "c1"
	h.poll()
	release := make(chan struct{})
	h.onLoop(func() {
		h.a.d.LoadDefinition = func(ctx context.Context, files fs.FS, _ evaluate.Limits) (*cluster.Cluster, error) {
			<-release
			return schema.Load(files, ".")
		}
	})
	h.src.mu.Lock()
	h.src.head = "c2"
	h.src.mu.Unlock()
	done := make(chan error, 1)
	go func() { done <- h.sync(false) }()
	time.Sleep(20 * time.Millisecond)
	start := time.Now()
	h.round() // a health round while the commit is evaluated
	if d := time.Since(start); d > 150*time.Millisecond {
		t.Fatalf("a health round waited %s for the evaluation", d)
	}
	close(release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if s := h.a.Status(); s.Applied != "c2" {
		t.Errorf("applied %q after the evaluation, want c2", s.Applied)
	}
}

// The stages of converging a new commit are in status; enforcing the
// applied commit afterwards neither adds to them nor replaces them.
func TestStagesRecorded(t *testing.T) {
	h := newHarness(t, "broker1", "", map[string]string{"c1": ""})
	h.src.head = "c1"
	h.poll()
	var names []string
	for _, s := range h.a.Status().Stages {
		names = append(names, s.Name)
	}
	if strings.Join(names, " ") != "fetch+trust load units" {
		t.Fatalf("stages %v", names)
	}
	for range 3 {
		h.poll()
	}
	if n, pending := len(h.a.Status().Stages), h.a.facts.get().converging; n != 3 || pending != nil {
		t.Errorf("after enforcing: %d stages in status, %d pending", n, len(pending))
	}
}

// A damaged applied-state file is said in status and ignored, not taken
// for a commit.
func TestDamagedStateFile(t *testing.T) {
	for _, content := range []string{"not a hash\n", "deadbeef\n"} {
		dir := t.TempDir()
		os.WriteFile(filepath.Join(dir, "applied"), []byte(content), 0o644)
		h := newHarness(t, "broker1", dir, map[string]string{"c1": ""})
		if f := h.a.facts.get(); f.applied != "" || !strings.Contains(f.stateWarning, "ignored") {
			t.Errorf("state %q: applied %q, warning %q", content, f.applied, f.stateWarning)
		} else if w := h.a.Status().Warnings; len(w) != 1 || w[0] != f.stateWarning {
			t.Errorf("status warnings %q, want the state file's", w)
		}
	}
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "applied"), []byte("c1\n"), 0o644)
	if h := newHarness(t, "broker1", dir, map[string]string{"c1": ""}); h.a.facts.Applied() != "c1" || h.a.facts.get().stateWarning != "" {
		t.Errorf("a good state file: %+v", h.a.facts.get())
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
	h.poll()
	if rec.got != 30*time.Second {
		t.Errorf("bound %s after c1, want the default 30s", rec.got)
	}
	h.src.head = "c2"
	h.poll()
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
	h.poll()
	if strings.Contains(strings.Join(h.conv.calls, " "), "c2") {
		t.Error("the commit that killed the agent was loaded again")
	}
	if _, err := os.Stat(filepath.Join(dir, "trying")); !os.IsNotExist(err) {
		t.Error("the trying mark outlived the start")
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
	h.poll()
	// A reload with a verifier that no longer vouches for the applied commit.
	cfg := h.a.cfg
	if err := h.a.Reload(h.ctx, cfg, verifier{errors.New("signed by a key no longer trusted")}); err != nil {
		t.Fatal(err)
	}
	if got := h.a.Status().Insecure; len(got) != 1 || !strings.Contains(got[0], "applied commit c1 is not signed by a trusted key") {
		t.Errorf("applied commit untrusted now: %q", got)
	}
	if err := h.a.Reload(h.ctx, cfg, verifier{}); err != nil {
		t.Fatal(err)
	}
	if got := h.a.Status().Insecure; len(got) != 0 {
		t.Errorf("signed and trusted: %q", got)
	}
}

// unitSystemd is fakeSystemd whose units' states the test sets, and which
// records what the agent asks of them.
type unitSystemd struct {
	fakeSystemd
	mu    sync.Mutex
	state map[string]string
	calls []string
}

func (s *unitSystemd) State(_ context.Context, u string) (unit.State, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.state[u]
	if st == "" {
		st = "active"
	}
	return unit.State{ActiveState: st, LoadState: "loaded"}, nil
}

func (s *unitSystemd) Do(_ context.Context, a unit.Action, u string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls = append(s.calls, string(a)+" "+u)
	s.state[u] = "active"
	return nil
}

func (s *unitSystemd) set(u, st string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.state[u] = st
}

func (s *unitSystemd) did() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.calls)
}

// TestUnitEventRepairsAtOnce: systemd reports that mosquitto died; the
// agent checks and starts it at once. The health round's ticker never
// fires here, so the repair cannot come from the 3 s loop.
func TestUnitEventRepairsAtOnce(t *testing.T) {
	h := newHarness(t, "broker1", "", map[string]string{"c1": ""})
	sd := &unitSystemd{state: map[string]string{}}
	h.a.d.Systemd = sd
	events := make(chan string, 1)
	h.a.d.WatchUnits = func(func() []string) (<-chan string, error) { return events, nil }
	var dead atomic.Bool
	h.a.d.Probe = func(c health.Check) probe.Probe {
		return func(context.Context) error {
			if dead.Load() && c.Unit == "mosquitto.service" {
				return errors.New("dial tcp 127.0.0.1:8883: connect: connection refused")
			}
			return nil
		}
	}
	h.src.head = "c1"
	h.poll()
	if s := h.a.Status(); s.Applied != "c1" {
		t.Fatalf("not applied: %+v", s)
	}
	before := len(sd.did())
	sd.set("mosquitto.service", "failed")
	dead.Store(true)
	h.onLoop(func() {}) // nothing happens without an event or a round
	if got := sd.did()[before:]; len(got) != 0 {
		t.Fatalf("acted before any event: %q", got)
	}
	events <- "mosquitto.service"
	h.onLoop(func() {}) // the loop took the event before this
	if got := sd.did()[before:]; !slices.Contains(got, "start mosquitto.service") {
		t.Errorf("after systemd's event, without a health round: %q; want mosquitto started", got)
	}
}
