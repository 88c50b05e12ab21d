package agent

import (
	"context"
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/mqha/mqha/internal/bridgerole"
	"github.com/mqha/mqha/internal/control"
	"github.com/mqha/mqha/internal/plan"
)

// The bridge role with standbys is keepalived's (internal/bridgerole): the
// agent renders keepalived's instance, the connections and the commands,
// and reports what keepalived's notify and track script last wrote. Nothing
// here decides who bridges: a stopped, busy or restarting agent changes
// nothing.

// runtimeChange converges the applied commit again after set changed what
// the node decides at run time (its bridge role, brokers marked down):
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
	if a.suspended != nil && a.suspended.NoRepair {
		return fmt.Errorf("suspended with --no-repair: %s is not carried out", why)
	}
	// Our own writes are no drift: the watcher starts again on what the
	// node runs after.
	if a.stopDrift != nil {
		a.stopDrift()
		a.stopDrift, a.drift = nil, nil
	}
	defer func() { a.watchDrift(ctx, a.view) }()
	set()
	c := *a.view // derive renders the files and checks anew
	v, err := a.derive(&c)
	if err == nil {
		// Only the daemons themselves must serve: a take-over while a
		// broker is down is still a take-over (the bridge check reports it).
		verify := func(ctx context.Context, p *plan.Plan) error { return a.verifyUnits(ctx, v, p, true) }
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

// bridgeStatus is the bridge role as keepalived last said it, on a bridge
// node of a cluster with standbys (nil elsewhere).
func (a *Agent) bridgeStatus() *control.Bridge {
	a.mu.Lock()
	elects := a.electsBridge
	a.mu.Unlock()
	if !elects {
		return nil
	}
	st, ck, err := bridgerole.Read()
	b := &control.Bridge{Active: st.Master(), State: st.State, Since: st.Since, Takeovers: st.Takeovers,
		StandDowns: st.StandDowns, CheckOK: ck.OK, Check: ck.Reason, CheckedAt: ck.At}
	if b.State == "" {
		b.State = "UNKNOWN"
		b.Check = "keepalived has not run the bridge instance yet"
	}
	if err != nil {
		b.Check = err.Error()
	}
	return b
}

// bridgeCollector exports the bridge role for Prometheus.
type bridgeCollector struct{ a *Agent }

var (
	bridgeActiveDesc    = prometheus.NewDesc("mqha_bridge_active", "1 while this bridge node is the bridge master (keepalived's bridge instance is MASTER; bridge nodes of clusters with standbys).", nil, nil)
	bridgeTakeoversDesc = prometheus.NewDesc("mqha_bridge_takeovers_total", "Times this bridge node became bridge master since boot.", nil, nil)
	bridgeStandDesc     = prometheus.NewDesc("mqha_bridge_standdowns_total", "Times this bridge node stopped being bridge master since boot.", nil, nil)
	bridgeCheckDesc     = prometheus.NewDesc("mqha_bridge_check_ok", "1 when keepalived's last bridge check on this node passed (as master: a bridge connection up; as standby: a broker reached), 0 when it failed (the instance is in FAULT).", nil, nil)
)

func (c bridgeCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{bridgeActiveDesc, bridgeTakeoversDesc, bridgeStandDesc, bridgeCheckDesc} {
		ch <- d
	}
}

func (c bridgeCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.a.bridgeStatus()
	if s == nil {
		return
	}
	b := func(x bool) float64 {
		if x {
			return 1
		}
		return 0
	}
	ch <- prometheus.MustNewConstMetric(bridgeActiveDesc, prometheus.GaugeValue, b(s.Active))
	ch <- prometheus.MustNewConstMetric(bridgeTakeoversDesc, prometheus.CounterValue, float64(s.Takeovers))
	ch <- prometheus.MustNewConstMetric(bridgeStandDesc, prometheus.CounterValue, float64(s.StandDowns))
	ch <- prometheus.MustNewConstMetric(bridgeCheckDesc, prometheus.GaugeValue, b(s.CheckOK))
}
