package agent

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"testing/fstest"
	"time"

	"github.com/mqha/mqha/internal/health"
	"github.com/mqha/mqha/internal/probe"
	"github.com/mqha/mqha/internal/render"
)

// The tests run the loop production runs (Run, in a goroutine) with every
// seam of the world faked: the test fires its rounds (poll, health) and
// asks it what the control socket asks, and reads what the fakes saw once
// the loop is quiet.

// harness is an agent of node (broker1, lb1, bridge...) of the example
// cluster with every seam faked.
type harness struct {
	t      *testing.T
	a      *Agent
	src    *fakeSource
	conv   *fakeConverger
	clock  *clock
	dir    string
	host   render.Host
	peerOK bool

	polls, rounds *fakeTicker
	ctx           context.Context
	started       bool

	mu     sync.Mutex // what goroutines other than the loop touch
	notes  []string
	closed []string
	ended  []string // sessions EndSession ended
	// drained: sessions DrainSession drained
	drained []string
	// stopped: addresses that refuse connections (Serves)
	stopped map[string]bool
	// leaving: what the agent told keepalived's bridge check (BridgeLeaving).
	leaving []string
	probes  int
	// probeErr is what every health probe answers (nil: healthy).
	probeErr error
	// tls is what LoadTLS returns (nil: an empty config, no certificate).
	tls *tls.Config
}

// newHarness makes the agent of node; stateDir may hold a previous run's
// state. The loop starts at the first poll, sync or onLoop that needs it.
func newHarness(t *testing.T, node string, stateDir string, commits map[string]string) *harness {
	t.Helper()
	h := &harness{t: t, src: &fakeSource{commits: map[string]fstest.MapFS{}}, conv: &fakeConverger{fail: map[string]error{}},
		clock: &clock{t: time.Date(2026, 11, 27, 0, 0, 0, 0, time.UTC)}, dir: stateDir,
		polls: &fakeTicker{make(chan time.Time)}, rounds: &fakeTicker{make(chan time.Time)}}
	for hash, extra := range commits {
		h.src.commits[hash] = definition(t, extra)
	}
	if h.dir == "" {
		h.dir = t.TempDir()
	}
	cfg := defaultConfig()
	cfg.Repo, cfg.StateDir = "git://example/cluster.git", h.dir
	h.a = New(cfg, node, Deps{Source: h.src, Systemd: fakeSystemd{}, Converge: h.conv.converge,
		LoadTLS: func(TLSFiles) (*tls.Config, error) {
			h.mu.Lock()
			defer h.mu.Unlock()
			if h.tls != nil {
				return h.tls, nil
			}
			return &tls.Config{}, nil
		},
		Probe: func(health.Check) probe.Probe {
			return func(context.Context) error {
				h.mu.Lock()
				defer h.mu.Unlock()
				return h.probeErr
			}
		},
		ProbeLB: func(context.Context, string, *tls.Config) error {
			h.mu.Lock()
			defer h.mu.Unlock()
			h.probes++
			if h.peerOK {
				return nil
			}
			return errors.New("refused")
		},
		CloseConns: func(_ context.Context, addr string, port int) error {
			h.mu.Lock()
			defer h.mu.Unlock()
			h.closed = append(h.closed, fmt.Sprintf("%s:%d", addr, port))
			return nil
		},
		EndSession: func(_ context.Context, addr string, _ *tls.Config, id string) error {
			h.mu.Lock()
			defer h.mu.Unlock()
			h.ended = append(h.ended, addr+" "+id)
			return nil
		},
		Serves: func(_ context.Context, addr string) bool {
			h.mu.Lock()
			defer h.mu.Unlock()
			return !h.stopped[addr]
		},
		DrainSession: func(_ context.Context, addr string, _ *tls.Config, id string, sub map[string]byte, unsub []string, _ time.Duration) (int, bool, error) {
			h.mu.Lock()
			defer h.mu.Unlock()
			d := addr + " " + id
			for _, f := range slices.Sorted(maps.Keys(sub)) {
				d += " +" + f
			}
			for _, f := range unsub {
				d += " -" + f
			}
			h.drained = append(h.drained, d)
			return 3, true, nil
		},
		Journal: func(context.Context, string, string) ([]string, string, error) { return nil, "", nil },
		Notify: func(s string) {
			h.mu.Lock()
			defer h.mu.Unlock()
			h.notes = append(h.notes, s)
		},
		Now: h.clock.now,
		Ticker: func(name string, _ time.Duration) Ticker {
			return map[string]*fakeTicker{"poll": h.polls, "health": h.rounds}[name]
		},
		BridgeLeaving: func(why string) error {
			h.mu.Lock()
			defer h.mu.Unlock()
			h.leaving = append(h.leaving, why)
			return nil
		},
		FaultFile: filepath.Join(h.dir, "lb-fault"),
		Host:      func() render.Host { return h.host },
		Log:       slog.New(slog.NewTextHandler(testLogOut(), nil)),
	})
	return h
}

// start runs the agent's loop until the test ends: it converges the
// recorded commit and pulls once, as at a start.
func (h *harness) start() {
	if h.started {
		return
	}
	h.started = true
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- h.a.Run(ctx) }()
	h.ctx = ctx
	h.t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			h.t.Error(err)
		}
	})
	h.quiet()
}

// poll is a poll round: the first starts the loop (a start pulls), the
// next fire its poll ticker; it returns once the pull settled.
func (h *harness) poll() {
	h.t.Helper()
	if !h.started {
		h.start()
		return
	}
	h.polls.ch <- h.clock.now()
	h.quiet()
}

// round is a health round (checks, the decommission's step).
func (h *harness) round() {
	h.t.Helper()
	h.start()
	h.rounds.ch <- h.clock.now()
	h.onLoop(func() {})
}

// sync asks the loop to pull now, as the control socket does.
func (h *harness) sync(retry bool) error {
	h.start()
	return h.a.Sync(h.ctx, retry)
}

// onLoop runs f on the loop (directly before it starts): the test changes
// what the loop reads without racing it.
func (h *harness) onLoop(f func()) {
	h.t.Helper()
	if !h.started {
		f()
		return
	}
	ctx, cancel := context.WithTimeout(h.ctx, 10*time.Second)
	defer cancel()
	if err := h.a.ask(ctx, func(_ context.Context, reply chan<- error) { f(); reply <- nil }); err != nil {
		h.t.Fatalf("the loop did not answer: %v", err)
	}
}

// quiet returns once the loop has no pull under way.
func (h *harness) quiet() {
	h.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		var busy bool
		h.onLoop(func() { busy = h.a.pulls.underWay })
		if !busy {
			return
		}
		if time.Now().After(deadline) {
			h.t.Fatal("a pull never settled")
		}
		time.Sleep(time.Millisecond)
	}
}

func (h *harness) lastNote() string {
	h.mu.Lock()
	defer h.mu.Unlock()
	for i := len(h.notes) - 1; i >= 0; i-- {
		if n := h.notes[i]; len(n) > 7 && n[:7] == "STATUS=" {
			return n
		}
	}
	return ""
}

func (h *harness) closedConns() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]string(nil), h.closed...)
}

func (h *harness) stop(addr string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.stopped == nil {
		h.stopped = map[string]bool{}
	}
	h.stopped[addr] = true
}

func (h *harness) drainedSessions() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]string(nil), h.drained...)
}

func (h *harness) endedSessions() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]string(nil), h.ended...)
}

type verifier struct{ err error }

func (v verifier) Verify(string) (string, error) { return "ops", v.err }

// result hands a health check's result to the loop's policy, as the
// monitor does in a health round.
func (h *harness) result(r health.Result) { h.onLoop(func() { h.a.onResult(r) }) }

func testLogOut() io.Writer {
	if os.Getenv("MQHA_TEST_LOG") != "" {
		return os.Stderr
	}
	return io.Discard
}
