package health

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mqha/mqha/internal/unit"
)

// fakeUnits plays systemd: a killed unit with restartOnKill comes back by
// itself (Restart=on-failure), otherwise it is failed until started.
type fakeUnits struct {
	state         map[string]string
	restartOnKill bool
	calls         []string
}

func (f *fakeUnits) State(_ context.Context, u string) (unit.State, error) {
	return unit.State{ActiveState: f.state[u], LoadState: "loaded"}, nil
}
func (f *fakeUnits) Do(_ context.Context, a unit.Action, u string) error {
	f.calls = append(f.calls, string(a)+" "+u)
	f.state[u] = "active"
	return nil
}
func (f *fakeUnits) Kill(_ context.Context, u string, sig syscall.Signal) error {
	f.calls = append(f.calls, "kill "+u)
	if f.restartOnKill {
		f.state[u] = "activating"
	} else {
		f.state[u] = "failed"
	}
	return nil
}

func TestRepairs(t *testing.T) {
	hung := errors.New("no MQTT CONNACK")
	tests := []struct {
		name          string
		state         string
		probe         error
		hungAfter     int
		restartOnKill bool
		rounds        int
		want          string // calls, joined by |
		ok            bool
		repairs       int
	}{
		{"healthy", "active", nil, 2, false, 3, "", true, 0},
		{"stopped unit is started", "failed", nil, 2, false, 1, "start u", false, 1},
		{"one failed probe is not yet hung", "active", hung, 2, false, 1, "", false, 0},
		{"hung unit is killed; systemd restarts it", "active", hung, 2, true, 2, "kill u", false, 1},
		{"hung unit without a restart policy is started", "active", hung, 2, false, 2, "kill u|start u", false, 1},
		{"probe failures never restart when HungAfter is 0", "active", hung, 0, false, 5, "", false, 0},
		// After a repair the next one waits for the back-off (3 s).
		{"back-off between repairs", "active", hung, 1, false, 3, "kill u|start u", false, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			u := &fakeUnits{state: map[string]string{"u": tt.state}, restartOnKill: tt.restartOnKill}
			probe := func(context.Context) error { return tt.probe }
			m := &Monitor{Checks: []Check{{Name: "c", Unit: "u", Probe: probe, HungAfter: tt.hungAfter}},
				Units: u, Timeout: time.Second, Log: slog.New(slog.NewTextHandler(io.Discard, nil))}
			ok := false
			for range tt.rounds {
				ok = m.Once(context.Background())
			}
			if got := strings.Join(u.calls, "|"); got != tt.want || ok != tt.ok {
				t.Errorf("calls %q ok %v; want %q ok %v", got, ok, tt.want, tt.ok)
			}
			if r := m.Results(); len(r) != 1 || r[0].Repairs != tt.repairs {
				t.Errorf("results %+v, want %d repairs", r, tt.repairs)
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
