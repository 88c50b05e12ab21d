// Package health checks that a node's daemons really serve, not just run,
// every few seconds, and repairs what it can through systemd, with backoff.
//
// Files: monitor.go owns the checks, their results and the repairs;
// procs.go reads the daemons' processes in /proc (hung or busy); stopped.go
// watches for a stopped process between rounds; broken.go is the
// deliberately broken build the soak's checker must catch.
package health

import (
	"context"
	"errors"
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
	// MainPID is the unit's main process (0 when it has none).
	MainPID(ctx context.Context, name string) (int, error)
}

// Check is one health check of a node.
type Check struct {
	Name  string      // e.g. "mosquitto"
	Unit  string      // unit that must be active and that repairs restart; "" for none
	Probe probe.Probe // nil: the unit's state alone
	// HungAfter is how long an active unit may go without answering its
	// probe and without any progress of its processes (CPU time) before it
	// counts as hung: it is then killed and restarted. A unit that does not
	// answer but makes progress is busy (a reconnect storm), never killed.
	// Zero: never restart on probe failures (a bridge's remote broker being
	// down is not ours to fix).
	HungAfter time.Duration
	// PeersServe, if set, reports whether the other nodes running this
	// daemon serve. A hung unit is not killed while one does not (it may be
	// being replaced): at most one kill per role across the fleet at a
	// time, for up to PeerPatience.
	PeersServe func(ctx context.Context) error
}

// brokenKill is nil but in a deliberately broken build (broken.go, tag
// soakbroken): it says when to kill a unit whose check passed.
var brokenKill func(unit string) bool

// PeerPatience bounds how long a hung unit is left alone because a peer of
// its role does not serve either: a dead peer must not stop every repair.
const PeerPatience = 30 * time.Second

// Result is the last outcome of a check.
type Result struct {
	Name       string    `json:"name"`
	OK         bool      `json:"ok"`
	Error      string    `json:"error,omitempty"`
	At         time.Time `json:"at"`
	Failures   int       `json:"consecutiveFailures"`
	Repairs    int       `json:"repairs"`
	LastRepair time.Time `json:"lastRepair,omitzero"`
	// Busy: the unit does not answer but its processes make progress (CPU
	// time, or waiting on I/O): overloaded, not hung. Policies that act on
	// failures (the VIP) leave a busy daemon alone, as repairs do.
	Busy bool `json:"busy,omitempty"`
	// Stopped: the unit's main process is stopped (state T, SIGSTOP) and it
	// does not answer: a hang confirmed at the first failed probe, with no
	// need to watch for progress. Policies act on it at once (the VIP).
	Stopped bool `json:"stopped,omitempty"`
	// BrokerDown: a load balancer's check failed because a broker behind
	// it does not answer while others do; the other load balancer can do
	// no better, so the VIP stays (probe.ErrBrokerDown).
	BrokerDown bool `json:"brokerDown,omitempty"`

	nextRepair time.Time
	backoff    time.Duration
	// While the probe gets no answer: when that started, and the last
	// sample of the unit's processes that showed progress (or the first).
	silentSince time.Time
	ref         Sample
	refAt       time.Time
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
	// Procs samples a unit's processes (nil: from /proc through MainPID).
	Procs func(ctx context.Context, unit string) (Sample, error)
	// Now is the clock (nil: time.Now).
	Now func() time.Time
	// NoRepair: check and report only (an operator suspended repairs).
	NoRepair bool

	mu      sync.Mutex
	results map[string]*Result
}

const (
	verifyAttempt = time.Second
	minBackoff    = 3 * time.Second
	maxBackoff    = time.Minute
	// StoppedProbe bounds the probe of a unit whose main process is
	// stopped: it cannot answer at all, so there is nothing to wait for
	// (a stopped master whose workers still serve answers in milliseconds).
	StoppedProbe = 300 * time.Millisecond
)

// outcome is one probe's result and whether the unit's process was stopped
// when it ran.
type outcome struct {
	err     error
	stopped bool
}

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
	// The probes run at once: a round costs its slowest probe, not their
	// sum (the caller's loop waits for it). Repairs follow in check order.
	outs := make([]outcome, len(m.Checks))
	var wg sync.WaitGroup
	for i, c := range m.Checks {
		wg.Add(1)
		go func() {
			defer wg.Done()
			outs[i] = m.probe(ctx, c)
		}()
	}
	wg.Wait()
	ok := true
	for i, c := range m.Checks {
		r := m.check(ctx, c, outs[i])
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
			if err := attempt.probe(ctx, c).err; err != nil {
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

func (m *Monitor) probe(ctx context.Context, c Check) outcome {
	if c.Unit != "" {
		st, err := m.Units.State(ctx, c.Unit)
		if err != nil {
			return outcome{err: err}
		}
		if st.ActiveState != "active" {
			return outcome{err: fmt.Errorf("%s is %s", c.Unit, st.ActiveState)}
		}
	}
	if c.Probe == nil {
		return outcome{}
	}
	timeout, stopped := m.Timeout, false
	if c.Unit != "" && c.HungAfter > 0 {
		// A stopped main process is read in /proc in microseconds, and
		// then a short probe tells whether anything still serves.
		if s, err := m.sample(ctx, c.Unit); err == nil && s.State == 'T' {
			timeout, stopped = min(timeout, StoppedProbe), true
		}
	}
	pctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	err := c.Probe(pctx)
	return outcome{err: err, stopped: stopped && probe.NoAnswer(err)}
}

func (m *Monitor) sample(ctx context.Context, unit string) (Sample, error) {
	if m.Procs != nil {
		return m.Procs(ctx, unit)
	}
	return m.sampleProc(ctx, unit)
}

func (m *Monitor) now() time.Time {
	if m.Now != nil {
		return m.Now()
	}
	return time.Now()
}

// check records the outcome of c's probe and repairs what it can.
func (m *Monitor) check(ctx context.Context, c Check, out outcome) Result {
	err := out.err
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

	now := m.now()
	m.mu.Lock()
	r.At = now
	r.OK = err == nil
	r.Error = ""
	r.Busy = false
	r.Stopped = out.stopped
	r.BrokerDown = errors.Is(err, probe.ErrBrokerDown)
	switch {
	case err == nil:
		if r.Failures > 0 {
			m.Log.Info("healthy again", "check", c.Name, "after_failures", r.Failures)
		}
		r.Failures, r.backoff, r.nextRepair = 0, 0, time.Time{}
		r.silentSince, r.refAt = time.Time{}, time.Time{}
	case probe.NoAnswer(err):
		r.Error = err.Error()
		r.Failures++
		if r.silentSince.IsZero() {
			r.silentSince = now
		}
	default: // an answer, if a bad one: not a hang
		r.Error = err.Error()
		r.Failures++
		r.silentSince, r.refAt = time.Time{}, time.Time{}
	}
	snapshot := *r
	m.mu.Unlock()
	if err == nil && c.Unit != "" && brokenKill != nil && brokenKill(c.Unit) {
		// Only in a build with the soakbroken tag (broken.go): the soak's
		// checker must see this.
		m.Log.Warn("unit is active but hung: killing it", "unit", c.Unit, "evidence", "none: a deliberately broken agent")
		m.kill(ctx, c.Unit)
		return snapshot
	}
	if err == nil {
		return snapshot
	}
	m.Log.Warn("health check failed", "check", c.Name, "err", err, "consecutive", snapshot.Failures)
	if c.Unit == "" || m.NoRepair {
		return snapshot
	}
	st, serr := m.Units.State(ctx, c.Unit)
	if serr != nil {
		return snapshot
	}
	var rerr error
	switch {
	case st.Job:
		// systemd is starting, stopping or restarting it for someone else
		// (keepalived's bridge notify restarts mosquitto on a take-over):
		// a repair now would race that job.
		m.Log.Info("not repaired: systemd has a job under way for it", "unit", c.Unit, "state", st.ActiveState)
		return snapshot
	case !st.Running():
		if now.Before(snapshot.nextRepair) {
			return snapshot
		}
		rerr = m.Units.Do(ctx, unit.Start, c.Unit)
	case c.HungAfter > 0 && !snapshot.silentSince.IsZero():
		hung, busy, why := m.hung(ctx, c, r, now)
		m.mu.Lock()
		r.Error += " (" + why + ")"
		r.Busy = busy
		snapshot = *r
		m.mu.Unlock()
		if !hung {
			m.Log.Warn("no answer, not killed", "unit", c.Unit, "evidence", why)
			return snapshot
		}
		if now.Before(snapshot.nextRepair) {
			return snapshot
		}
		// Active but not serving, and not progressing: hung (a stopped
		// process does not even take SIGTERM). Kill it, then start it again.
		m.Log.Warn("unit is active but hung: killing it", "unit", c.Unit, "evidence", why)
		rerr = m.kill(ctx, c.Unit)
	default:
		return snapshot
	}
	m.mu.Lock()
	r.Repairs++
	r.LastRepair = now
	r.backoff = min(max(2*r.backoff, minBackoff), maxBackoff)
	r.nextRepair = now.Add(r.backoff)
	r.silentSince, r.refAt = time.Time{}, time.Time{}
	snapshot = *r
	m.mu.Unlock()
	if rerr != nil {
		m.Log.Error("repair failed", "unit", c.Unit, "err", rerr, "next_try_in", snapshot.backoff)
	} else {
		m.Log.Info("repaired", "unit", c.Unit, "repairs", snapshot.Repairs)
	}
	return snapshot
}

// hung decides, from the unit's processes, whether a unit that does not
// answer is hung, or busy (its processes progress), and says why. Without
// evidence it never says hung: killing a busy daemon turns overload into an
// outage.
func (m *Monitor) hung(ctx context.Context, c Check, r *Result, now time.Time) (hung, busy bool, why string) {
	s, err := m.sample(ctx, c.Unit)
	m.mu.Lock()
	defer m.mu.Unlock()
	if err != nil {
		return false, false, "cannot read its processes to tell hung from busy, so it is not killed: " + err.Error()
	}
	if r.Stopped && s.State == 'T' {
		// Stopped (SIGSTOP) and no answer: no progress can come; a hang
		// confirmed now, not after HungAfter.
		why = "hung: its process is stopped (state T) and it does not answer"
		return m.peersAllow(ctx, c, r, now, why)
	}
	if r.refAt.IsZero() {
		r.ref, r.refAt = s, now
		return false, false, "no answer; watching its processes for progress"
	}
	switch {
	case s.State == 'D':
		r.ref, r.refAt = s, now
		return false, true, "busy, not hung: waiting on I/O"
	case s.PID != r.ref.PID:
		r.ref, r.refAt = s, now
		return false, false, "restarted since; watching the new process"
	case s.CPU > r.ref.CPU:
		used, over := s.CPU-r.ref.CPU, now.Sub(r.refAt)
		r.ref, r.refAt = s, now
		return false, true, fmt.Sprintf("overloaded, not hung: no answer, but its processes used %s of CPU in %s", used, over.Round(time.Millisecond))
	}
	stuck := now.Sub(r.refAt)
	if stuck < c.HungAfter {
		return false, false, fmt.Sprintf("no answer and no progress for %s (hung after %s)", stuck.Round(time.Millisecond), c.HungAfter)
	}
	why = fmt.Sprintf("hung: no answer and no CPU progress for %s (process state %c)", stuck.Round(time.Millisecond), s.State)
	return m.peersAllow(ctx, c, r, now, why)
}

// peersAllow decides a kill of a hung unit: not while another node of its
// role does not serve either, for up to PeerPatience. Called with m.mu held.
func (m *Monitor) peersAllow(ctx context.Context, c Check, r *Result, now time.Time, why string) (hung, busy bool, _ string) {
	if c.PeersServe != nil && now.Sub(r.silentSince) < c.HungAfter+PeerPatience {
		m.mu.Unlock()
		perr := c.PeersServe(ctx)
		m.mu.Lock()
		if perr != nil {
			return false, false, why + ", but not killed while another node of its role does not serve either (" + perr.Error() + ")"
		}
	}
	return true, false, why
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
