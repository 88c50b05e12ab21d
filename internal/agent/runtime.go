package agent

import (
	"context"
	"fmt"
	"time"

	"github.com/mqha/mqha/internal/plan"
)

// runtimeChange converges the applied commit again after set changed what
// the node decides at run time (a load balancer's brokers marked down):
// rendered, validated, written, units driven, the daemons verified, like
// any change, but without waiting for the fleet's turn order (a take-over
// or a dead broker must not wait for a slot). On failure undo restores the
// state.
//
// afterUnits, if set, runs once the units took the change (before the
// verification).
func (a *Agent) runtimeChange(ctx context.Context, why string, set, undo, afterUnits func()) error {
	if a.view == nil {
		return fmt.Errorf("no applied commit to converge")
	}
	if s := a.facts.Suspended(); s != nil && s.NoRepair {
		return fmt.Errorf("suspended with --no-repair: %s is not carried out", why)
	}
	// Our own writes are no drift: the watcher starts again on what the
	// node runs after.
	a.drift.off()
	defer func() { a.watchDrift(ctx, a.view) }()
	set()
	c := *a.view // derive renders the files and checks anew
	v, err := a.derive(&c)
	if err == nil {
		// Only the daemons themselves must serve: what lies beyond them
		// (a broker that is down) is why the change is made.
		verify := func(ctx context.Context, p *plan.Plan) error { return a.verifyUnits(ctx, v, p, true, false) }
		start := time.Now()
		timing := func(stage string, _ time.Duration) {
			if stage == "units" && afterUnits != nil {
				afterUnits()
				afterUnits = nil
			}
		}
		_, err = a.d.Converge(ctx, v, Hooks{Verify: verify, Settle: a.cfg.Settle, Timing: timing})
		if err == nil {
			a.log.Info("run-time change applied", "what", why, "took", time.Since(start).Round(time.Millisecond))
		}
	}
	if err != nil {
		undo()
		return err
	}
	a.view = v
	a.rebuildMonitor(v)
	return nil
}
