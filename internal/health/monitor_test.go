package health

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"syscall"
	"testing"
	"time"

	probepkg "github.com/mqha/mqha/internal/probe"
	"github.com/mqha/mqha/internal/unit"
)

// fakeUnits plays systemd: a killed unit with restartOnKill comes back by
// itself (Restart=on-failure), otherwise it is failed until started.
type fakeUnits struct {
	state         map[string]string
	restartOnKill bool
	calls         []string
	job           map[string]bool // a job systemd runs for someone else
}

func (f *fakeUnits) State(_ context.Context, u string) (unit.State, error) {
	return unit.State{ActiveState: f.state[u], LoadState: "loaded", Job: f.job[u]}, nil
}
func (f *fakeUnits) Do(_ context.Context, a unit.Action, u string) error {
	f.calls = append(f.calls, string(a)+" "+u)
	f.state[u] = "active"
	return nil
}
func (f *fakeUnits) MainPID(context.Context, string) (int, error) { return 42, nil }

func (f *fakeUnits) Kill(_ context.Context, u string, sig syscall.Signal) error {
	f.calls = append(f.calls, "kill "+u)
	if f.restartOnKill {
		f.state[u] = "activating"
	} else {
		f.state[u] = "failed"
	}
	return nil
}

// round is one health round of a scripted test: the clock moves by after,
// and the unit's processes look like proc (nil: unreadable).
type round struct {
	after time.Duration
	proc  *Sample
}

func rounds(n int, every time.Duration, f func(i int) *Sample) []round {
	out := make([]round, n)
	for i := range out {
		out[i] = round{every, f(i)}
	}
	return out
}

func stopped(int) *Sample  { return &Sample{PID: 7, State: 'T', CPU: time.Second} }
func sleeping(int) *Sample { return &Sample{PID: 7, State: 'S', CPU: time.Second} }
func busy(i int) *Sample {
	return &Sample{PID: 7, State: 'R', CPU: time.Duration(i) * 300 * time.Millisecond}
}
func ioWait(int) *Sample { return &Sample{PID: 7, State: 'D', CPU: time.Second} }

func TestRepairs(t *testing.T) {
	noAnswer := fmt.Errorf("%w: no MQTT CONNACK from 127.0.0.1:8883 within 1.5s", probepkg.ErrNoAnswer)
	refused := errors.New("TLS through 127.0.0.1:9000: connection refused")
	peersDown := func(context.Context) error { return errors.New("10.0.0.22:8883 not serving") }
	tests := []struct {
		name          string
		state         string
		probe         error
		hungAfter     time.Duration
		peers         func(context.Context) error
		restartOnKill bool
		rounds        []round
		want          string // calls, joined by |
		repairs       int
		errHas        string // in the last result's error
		busy          bool   // the last result says busy
	}{
		{"healthy", "active", nil, 2 * time.Second, nil, false, rounds(3, time.Second, busy), "", 0, "", false},
		{"stopped unit is started", "failed", nil, 2 * time.Second, nil, false, rounds(1, time.Second, stopped), "start u", 1, "", false},
		{"no answer, not yet hung", "active", noAnswer, 2 * time.Second, nil, false, rounds(2, time.Second, sleeping), "", 0, "hung after 2s", false},
		// A stopped process (SIGSTOP) that does not answer is hung at the
		// first failed probe: no progress can come.
		{"stopped process killed at once; systemd restarts it", "active", noAnswer, 2 * time.Second, nil, true, rounds(1, time.Second, stopped), "kill u", 1, "its process is stopped (state T)", false},
		{"deadlocked process (sleeping, no CPU) is hung too", "active", noAnswer, 2 * time.Second, nil, true, rounds(3, 1100*time.Millisecond, sleeping), "kill u", 1, "process state S", false},
		{"hung unit without a restart policy is started", "active", noAnswer, 2 * time.Second, nil, false, rounds(3, 1100*time.Millisecond, stopped), "kill u|start u", 1, "", false},
		{"busy (CPU moving) is never killed", "active", noAnswer, 2 * time.Second, nil, false, rounds(20, time.Second, busy), "", 0, "overloaded, not hung", true},
		{"waiting on I/O is busy", "active", noAnswer, 2 * time.Second, nil, false, rounds(10, time.Second, ioWait), "", 0, "waiting on I/O", true},
		{"busy, then stuck: killed 2 s after progress stopped", "active", noAnswer, 2 * time.Second, nil, true,
			rounds(8, time.Second, func(i int) *Sample { return busy(min(i, 4)) }), "kill u", 1, "", false},
		{"no evidence, no kill", "active", noAnswer, 2 * time.Second, nil, false, rounds(10, time.Second, func(int) *Sample { return nil }), "", 0, "cannot read its processes", false},
		{"an answer, if a bad one, is not a hang", "active", refused, 2 * time.Second, nil, false, rounds(10, time.Second, stopped), "", 0, "connection refused", false},
		{"probe failures never restart when HungAfter is 0", "active", noAnswer, 0, nil, false, rounds(10, time.Second, stopped), "", 0, "", false},
		{"not killed while a peer of its role does not serve", "active", noAnswer, 2 * time.Second, peersDown, true, rounds(20, time.Second, stopped), "", 0, "another node of its role does not serve", false},
		{"a dead peer delays a kill by the patience only", "active", noAnswer, 2 * time.Second, peersDown, true, rounds(40, time.Second, stopped), "kill u", 1, "", false},
		// After a repair the next one waits for the back-off (3 s).
		{"back-off between repairs", "active", noAnswer, time.Second, nil, false, rounds(5, 700*time.Millisecond, stopped), "kill u|start u", 1, "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			u := &fakeUnits{state: map[string]string{"u": tt.state}, restartOnKill: tt.restartOnKill}
			now := time.Date(2026, 11, 27, 0, 0, 0, 0, time.UTC)
			var cur *Sample
			m := &Monitor{Checks: []Check{{Name: "c", Unit: "u", Probe: func(context.Context) error { return tt.probe }, HungAfter: tt.hungAfter, PeersServe: tt.peers}},
				Units: u, Timeout: time.Second, Log: slog.New(slog.NewTextHandler(io.Discard, nil)),
				Now: func() time.Time { return now },
				Procs: func(context.Context, string) (Sample, error) {
					if cur == nil {
						return Sample{}, errors.New("permission denied")
					}
					return *cur, nil
				}}
			for _, r := range tt.rounds {
				now = now.Add(r.after)
				cur = r.proc
				m.Once(context.Background())
				if u.state["u"] == "activating" {
					u.state["u"] = "active" // systemd restarted it; it hangs again
				}
			}
			if got := strings.Join(u.calls, "|"); got != tt.want {
				t.Errorf("calls %q, want %q", got, tt.want)
			}
			res := m.Results()
			if len(res) != 1 || res[0].Repairs != tt.repairs || !strings.Contains(res[0].Error, tt.errHas) || res[0].Busy != tt.busy {
				t.Errorf("results %+v, want %d repairs, an error with %q, busy %v", res, tt.repairs, tt.errHas, tt.busy)
			}
		})
	}
}

func TestVerifyWaitsForHealth(t *testing.T) {
	n := 0
	probe := func(context.Context) error {
		n++
		if n < 3 {
			return errors.New("not yet")
		}
		return nil
	}
	u := &fakeUnits{state: map[string]string{"u": "active"}}
	m := &Monitor{Checks: []Check{{Name: "c", Unit: "u", Probe: probe}}, Units: u, Timeout: time.Second,
		Log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	if err := m.Verify(context.Background(), 5*time.Second); err != nil {
		t.Fatal(err)
	}
	never := &Monitor{Checks: []Check{{Name: "c", Probe: func(context.Context) error { return errors.New("down") }}},
		Units: u, Timeout: time.Second, Log: m.Log}
	if err := never.Verify(context.Background(), 500*time.Millisecond); err == nil || !strings.Contains(err.Error(), "c: down") {
		t.Errorf("got %v", err)
	}
	if len(u.calls) != 0 {
		t.Errorf("verify repaired: %v", u.calls)
	}
}

// NoRepair (suspended with --no-repair): failures are checked and said,
// nothing is started or killed.
func TestNoRepair(t *testing.T) {
	u := &fakeUnits{state: map[string]string{"u": "failed"}}
	m := &Monitor{Checks: []Check{{Name: "c", Unit: "u", Probe: func(context.Context) error { return nil }, HungAfter: time.Second}},
		Units: u, Timeout: time.Second, Log: slog.New(slog.NewTextHandler(io.Discard, nil)), NoRepair: true}
	for range 3 {
		m.Once(context.Background())
	}
	if len(u.calls) != 0 {
		t.Errorf("repaired while told not to: %v", u.calls)
	}
	if r := m.Results(); len(r) != 1 || r[0].OK {
		t.Errorf("the failure is not said: %+v", r)
	}
}

// A unit systemd is restarting for someone else (keepalived's bridge
// notify restarts mosquitto on a take-over) is left to that job; once the
// job is gone, a unit that is still down is started.
func TestJobUnderWayIsNotRepaired(t *testing.T) {
	u := &fakeUnits{state: map[string]string{"u": "deactivating"}, job: map[string]bool{"u": true}}
	m := &Monitor{Checks: []Check{{Name: "c", Unit: "u", HungAfter: time.Second}},
		Units: u, Timeout: time.Second, Log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	for range 3 {
		m.Once(context.Background())
	}
	if len(u.calls) != 0 {
		t.Fatalf("repaired a unit with a job under way: %v", u.calls)
	}
	u.job["u"], u.state["u"] = false, "failed"
	m.Once(context.Background())
	if got := strings.Join(u.calls, "|"); got != "start u" {
		t.Errorf("calls %q once the job ended, want start u", got)
	}
}

// A probe of a unit whose main process is stopped gets StoppedProbe, not
// the full timeout: nothing can answer, so the hang is confirmed in 0.3 s.
// A running one gets the full timeout; a stopped master whose workers
// still answer is healthy.
func TestStoppedProbeIsShort(t *testing.T) {
	for _, tc := range []struct {
		name    string
		state   byte
		answers bool
		want    time.Duration
		stopped bool
	}{
		{"stopped, silent", 'T', false, StoppedProbe, true},
		{"running, silent", 'S', false, 5 * time.Second, false},
		{"stopped master, workers answer", 'T', true, StoppedProbe, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var budget time.Duration
			probe := func(ctx context.Context) error {
				d, _ := ctx.Deadline()
				budget = time.Until(d)
				if tc.answers {
					return nil
				}
				return fmt.Errorf("%w: no TLS answer", probepkg.ErrNoAnswer)
			}
			u := &fakeUnits{state: map[string]string{"u": "active"}, restartOnKill: true}
			m := &Monitor{Checks: []Check{{Name: "c", Unit: "u", Probe: probe, HungAfter: 9 * time.Second}},
				Units: u, Timeout: 5 * time.Second, Log: slog.New(slog.NewTextHandler(io.Discard, nil)),
				Procs: func(context.Context, string) (Sample, error) { return Sample{PID: 7, State: tc.state}, nil }}
			m.Once(context.Background())
			r := m.Results()[0]
			if budget > tc.want || budget < tc.want-time.Second/2 {
				t.Errorf("probe had %s, want %s", budget, tc.want)
			}
			if r.Stopped != tc.stopped || r.OK != tc.answers {
				t.Errorf("result %+v, want stopped %v, ok %v", r, tc.stopped, tc.answers)
			}
		})
	}
}
