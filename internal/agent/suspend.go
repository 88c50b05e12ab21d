package agent

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"

	"github.com/mqha/mqha/internal/control"
)

// Suspension, the operator's pause for an incident: no new commit is
// converged and no drift reverted (hand edits stay), health repair and the
// HA machinery (bridge election, brokers watch) go on unless noRepair.
// Recorded in the state directory, so it survives a restart; resume
// converges at once.

type suspendRequest struct {
	on       bool
	reason   string
	noRepair bool
	reply    chan error
}

// Suspend and Resume serve the control socket through the loop.
func (a *Agent) Suspend(ctx context.Context, reason string, noRepair bool) error {
	reply := make(chan error, 1)
	return ask(ctx, a.suspends, suspendRequest{true, reason, noRepair, reply}, reply)
}

func (a *Agent) Resume(ctx context.Context) error {
	reply := make(chan error, 1)
	return ask(ctx, a.suspends, suspendRequest{on: false, reply: reply}, reply)
}

func (a *Agent) suspendPath() string { return filepath.Join(a.cfg.StateDir, "suspended") }

// setSuspended records a suspension (nil: none) in the state file, the
// status, the metric and the health monitor together.
func (a *Agent) setSuspended(s *control.Suspension) error {
	if s == nil {
		if err := os.Remove(a.suspendPath()); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
	} else {
		b, _ := json.Marshal(s)
		a.writeState("suspended", string(b))
	}
	a.suspended = s
	a.m.suspended.Set(map[bool]float64{true: 1, false: 0}[s != nil])
	a.mu.Lock()
	if a.monitor != nil {
		a.monitor.NoRepair = s != nil && s.NoRepair
	}
	a.mu.Unlock()
	a.update(func(st *control.Status) {
		st.Suspended = s
		if s == nil {
			st.Pending = ""
		}
	})
	return nil
}

func (a *Agent) onSuspend(ctx context.Context, req suspendRequest) error {
	if !req.on {
		if a.suspended == nil {
			return nil
		}
		a.log.Info("resumed: converging now", "was_suspended_since", a.suspended.Since)
		if err := a.setSuspended(nil); err != nil {
			return err
		}
		a.startPull(ctx, true)
		return nil
	}
	reason := req.reason
	if reason == "" {
		reason = "no reason given"
	}
	s := &control.Suspension{Since: a.d.Now(), Reason: reason, NoRepair: req.noRepair}
	a.log.Warn("suspended: not converging nor reverting drift until resumed", "reason", reason, "no_repair", req.noRepair)
	return a.setSuspended(s)
}

// restoreSuspension reads a suspension an earlier run recorded.
func (a *Agent) restoreSuspension() {
	b, err := os.ReadFile(a.suspendPath())
	if err != nil {
		return
	}
	var s control.Suspension
	if err := json.Unmarshal(b, &s); err != nil {
		a.log.Error("unreadable suspension state; staying suspended", "file", a.suspendPath(), "err", err)
		s = control.Suspension{Since: a.d.Now(), Reason: "unreadable state file " + a.suspendPath() + ": mqha-agent resume to clear"}
	}
	a.suspended = &s
	a.m.suspended.Set(1)
	a.st.Suspended = &s
}
