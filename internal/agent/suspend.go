package agent

import (
	"context"

	"github.com/mqha/mqha/internal/control"
)

// Suspension, the operator's pause for an incident: no new commit is
// converged and no drift reverted (hand edits stay), health repair and the
// HA machinery (brokers watch; the bridge role is keepalived's) go on
// unless noRepair. The record keeps it in the state directory, so it
// survives a restart; resume converges at once.

func (a *Agent) suspend(reason string, noRepair bool) error {
	if reason == "" {
		reason = "no reason given"
	}
	s := &control.Suspension{Since: a.d.Now(), Reason: reason, NoRepair: noRepair}
	a.log.Warn("suspended: not converging nor reverting drift until resumed", "reason", reason, "no_repair", noRepair)
	if err := a.facts.SetSuspended(s); err != nil {
		return err
	}
	a.daemons.noRepair(noRepair)
	return nil
}

func (a *Agent) resume(ctx context.Context) error {
	was := a.facts.Suspended()
	if was == nil {
		return nil
	}
	a.log.Info("resumed: converging now", "was_suspended_since", was.Since)
	if err := a.facts.SetSuspended(nil); err != nil {
		return err
	}
	a.daemons.noRepair(false)
	a.startPull(ctx, true)
	return nil
}
