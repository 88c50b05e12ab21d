// Package health checks that a node's daemons really serve, not just run,
// every few seconds, and repairs what it can through systemd, with backoff.
package health

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"syscall"
	"time"

	"github.com/mqha/mqha/internal/probe"
	"github.com/mqha/mqha/internal/unit"
)

// Units is what repairs need of systemd.
type Units interface {
	State(ctx context.Context, name string) (unit.State, error)
	Do(ctx context.Context, action unit.Action, name string) error
	Kill(ctx context.Context, name string, sig syscall.Signal) error
}

// Check is one health check of a node.
type Check struct {
	Name  string      // e.g. "mosquitto"
	Unit  string      // unit that must be active and that repairs restart; "" for none
	Probe probe.Probe // nil: the unit's state alone
	// HungAfter consecutive probe failures of an active unit mean it is
	// hung: it is killed and restarted. Zero: never restart on probe
	// failures (a bridge's remote broker being down is not ours to fix).
	HungAfter int
}

// Result is the last outcome of a check.
type Result struct {
	Name       string    `json:"name"`
	OK         bool      `json:"ok"`
	Error      string    `json:"error,omitempty"`
	At         time.Time `json:"at"`
	Failures   int       `json:"consecutiveFailures"`
	Repairs    int       `json:"repairs"`
	LastRepair time.Time `json:"lastRepair,omitzero"`

	nextRepair time.Time
	backoff    time.Duration
}

// Monitor runs the checks when its owner's loop asks (Once) and verifies
// changes (Verify).
type Monitor struct {
	Checks  []Check
	Units   Units
	Timeout time.Duration // per probe
	Log     *slog.Logger
	// OnResult is called after every check, e.g. to feed keepalived.
	OnResult func(Result)

	mu      sync.Mutex
	results map[string]*Result
}

const (
	verifyAttempt = time.Second
	minBackoff    = 3 * time.Second
	maxBackoff    = time.Minute
)

// Results returns the last result of every check, in check order.
func (m *Monitor) Results() []Result {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []Result
	for _, c := range m.Checks {
		if r := m.results[c.Name]; r != nil {
			out = append(out, *r)
		}
	}
	return out
}

// Once runs every check once and repairs what fails. It returns whether all
// checks passed.
func (m *Monitor) Once(ctx context.Context) bool {
	ok := true
	for _, c := range m.Checks {
		r := m.check(ctx, c)
		ok = ok && r.OK
		if m.OnResult != nil {
			m.OnResult(r)
		}
	}
	return ok
}

// Verify runs the checks until all pass or the deadline passes, without
// repairing: used after an apply to decide whether to roll back.
func (m *Monitor) Verify(ctx context.Context, deadline time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, deadline)
	defer cancel()
	// Short attempts, often: a daemon that just started answers within
	// moments, and a change counts as applied as soon as it does.
	attempt := &Monitor{Units: m.Units, Timeout: min(m.Timeout, verifyAttempt)}
	pending := m.Checks
	for {
		var failed []string
		var still []Check
		for _, c := range pending {
			if err := attempt.probe(ctx, c); err != nil {
				failed = append(failed, c.Name+": "+err.Error())
				still = append(still, c)
			}
		}
		if len(still) == 0 {
			return nil
		}
		pending = still
		select {
		case <-ctx.Done():
			return fmt.Errorf("not healthy within %s: %v", deadline, failed)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func (m *Monitor) probe(ctx context.Context, c Check) error {
	if c.Unit != "" {
		st, err := m.Units.State(ctx, c.Unit)
		if err != nil {
			return err
		}
		if st.ActiveState != "active" {
			return fmt.Errorf("%s is %s", c.Unit, st.ActiveState)
		}
	}
	if c.Probe == nil {
		return nil
	}
	pctx, cancel := context.WithTimeout(ctx, m.Timeout)
	defer cancel()
	return c.Probe(pctx)
}

func (m *Monitor) check(ctx context.Context, c Check) Result {
	m.mu.Lock()
	if m.results == nil {
		m.results = map[string]*Result{}
	}
	r := m.results[c.Name]
	if r == nil {
		r = &Result{Name: c.Name}
		m.results[c.Name] = r
	}
	m.mu.Unlock()

	err := m.probe(ctx, c)
	m.mu.Lock()
	r.At = time.Now()
	r.OK = err == nil
	r.Error = ""
	if err != nil {
		r.Error = err.Error()
		r.Failures++
	} else {
		if r.Failures > 0 {
			m.Log.Info("healthy again", "check", c.Name, "after_failures", r.Failures)
		}
		r.Failures, r.backoff, r.nextRepair = 0, 0, time.Time{}
	}
	snapshot := *r
	m.mu.Unlock()
	if err == nil {
		return snapshot
	}
	m.Log.Warn("health check failed", "check", c.Name, "err", err, "consecutive", snapshot.Failures)
	if c.Unit == "" || time.Now().Before(snapshot.nextRepair) {
		return snapshot
	}
	st, serr := m.Units.State(ctx, c.Unit)
	if serr != nil {
		return snapshot
	}
	var rerr error
	switch {
	case !st.Running():
		rerr = m.Units.Do(ctx, unit.Start, c.Unit)
	case c.HungAfter > 0 && snapshot.Failures >= c.HungAfter:
		// Active but not serving: hung (a stopped process does not even
		// take SIGTERM). Kill it outright, then start it again.
		m.Log.Warn("unit is active but not serving: killing it", "unit", c.Unit)
		rerr = m.kill(ctx, c.Unit)
	default:
		return snapshot
	}
	m.mu.Lock()
	r.Repairs++
	r.LastRepair = time.Now()
	r.backoff = min(max(2*r.backoff, minBackoff), maxBackoff)
	r.nextRepair = time.Now().Add(r.backoff)
	snapshot = *r
	m.mu.Unlock()
	if rerr != nil {
		m.Log.Error("repair failed", "unit", c.Unit, "err", rerr, "next_try_in", snapshot.backoff)
	} else {
		m.Log.Info("repaired", "unit", c.Unit, "repairs", snapshot.Repairs)
	}
	return snapshot
}

// kill SIGKILLs a hung unit's main process. systemd restarts a unit with
// Restart=on-failure by itself (queueing a restart job of our own would race
// with it); a unit without one is started.
func (m *Monitor) kill(ctx context.Context, name string) error {
	if err := m.Units.Kill(ctx, name, syscall.SIGKILL); err != nil {
		return err
	}
	deadline := time.Now().Add(3 * time.Second)
	for time.Now().Before(deadline) {
		st, err := m.Units.State(ctx, name)
		if err != nil {
			return err
		}
		if st.ActiveState == "failed" || st.ActiveState == "inactive" {
			return m.Units.Do(ctx, unit.Start, name)
		}
		if st.ActiveState == "activating" {
			return nil // systemd is restarting it
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	return nil
}
