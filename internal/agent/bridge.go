package agent

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/mqha/mqha/internal/cluster"
	"github.com/mqha/mqha/internal/control"
	"github.com/mqha/mqha/internal/daemon"
	"github.com/mqha/mqha/internal/election"
	"github.com/mqha/mqha/internal/health"
	"github.com/mqha/mqha/internal/plan"
)

// The bridge role with standbys: the election (internal/election) decides,
// in its own goroutine, and asks the loop to run the role; the loop renders
// the applied commit with the role and converges it like any change
// (validate, write, restart, verify), without the fleet's turn order: a
// take-over must not wait for a slot.

// flipRequest asks the loop to run the bridge role decided.
type flipRequest struct {
	active bool
	reason string
	reply  chan error
}

// bridgeOnDisk is the role this node ran before the agent started: its
// bridges file (under /run, so empty after a reboot) holds connections on
// the active one, and its time says since when.
//
// A node that was the lone bridge master (connections in mosquitto.conf)
// counts as active too: adding a standby to the definition keeps the
// bridge where it is, without a gap.
func bridgeOnDisk() (bool, time.Time) {
	for _, f := range []string{daemon.BridgesFile, daemon.Mosquitto.Conf} {
		b, err := os.ReadFile(f)
		if err != nil || !bytes.Contains(b, []byte("\nconnection ")) {
			continue
		}
		if st, err := os.Stat(f); err == nil {
			return true, st.ModTime()
		}
		return true, time.Now()
	}
	return false, time.Time{}
}

// elected reports whether this node's bridge role is elected at run time
// under the definition of v.
func elected(cl *cluster.Cluster, n cluster.Node) bool {
	return n.Has(cluster.Bridge) && daemon.HasStandby(cl)
}

// flipBridge makes the node run the bridge role decided: the applied
// commit rendered with it, converged, its daemon verified.
func (a *Agent) flipBridge(ctx context.Context, active bool, reason string) error {
	prev, prevSince := a.bridgeActive, a.bridgeSince
	err := a.runtimeChange(ctx, reason, func() {
		a.bridgeActive = active
		if active {
			a.bridgeSince = a.d.Now()
		}
	}, func() { a.bridgeActive, a.bridgeSince = prev, prevSince }, nil)
	if err != nil {
		return fmt.Errorf("run the bridge role (active %v): %w", active, err)
	}
	return nil
}

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

// askFlip is the election's Apply: it hands the role to the loop.
func (a *Agent) askFlip(ctx context.Context, active bool, reason string) error {
	reply := make(chan error, 1)
	return ask(ctx, a.flips, flipRequest{active, reason, reply}, reply)
}

// electorKey identifies what the election of v listens to: a commit that
// changes neither the candidates nor the brokers keeps the running one.
func electorKey(v *View) string {
	var b strings.Builder
	for _, n := range daemon.BridgeCandidates(v.Cluster) {
		fmt.Fprintf(&b, "c %s %s %d;", n.Name, n.Address, n.Priority)
	}
	for _, n := range v.Cluster.WithRole(cluster.Broker) {
		fmt.Fprintf(&b, "b %s %s;", n.Name, n.Address)
	}
	fmt.Fprintf(&b, "p %d %d", v.Cluster.Ports.Broker, v.Cluster.Ports.Bridge)
	return b.String()
}

// runElection starts, restarts or stops the election as v says.
func (a *Agent) runElection(ctx context.Context, v *View) {
	if !elected(v.Cluster, v.Node) {
		a.stopElection()
		return
	}
	key := electorKey(v)
	if a.elector != nil && key == a.electorKey {
		return
	}
	a.stopElection()
	cl := v.Cluster
	cfg := election.Config{Cluster: cl.Name, Topics: daemon.BeatTopics(cl.Name),
		Me:     election.Candidate{Name: v.Node.Name, Priority: v.Node.Priority},
		Local:  election.Endpoint{Addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(cl.Ports.Broker)), TLS: daemon.WithName(v.TLS, v.Node.Address)},
		Active: a.bridgeActive, Since: a.bridgeSince, Log: a.log, Apply: a.askFlip, LocalServes: a.mosquittoServes}
	for _, b := range cl.WithRole(cluster.Broker) {
		if b.Name == v.Node.Name {
			continue
		}
		cfg.Brokers = append(cfg.Brokers, election.Endpoint{Addr: net.JoinHostPort(b.Address, strconv.Itoa(cl.Ports.Bridge)), TLS: daemon.WithName(v.TLS, b.Address)})
	}
	for _, c := range daemon.BridgeCandidates(cl) {
		if c.Name == v.Node.Name {
			continue
		}
		cfg.Peers = append(cfg.Peers, election.Endpoint{Addr: net.JoinHostPort(c.Address, strconv.Itoa(cl.Ports.Broker)), TLS: daemon.WithName(v.TLS, c.Address)})
	}
	e := election.New(cfg)
	ectx, cancel := context.WithCancel(ctx)
	go e.Run(ectx)
	a.mu.Lock()
	a.elector, a.electorKey, a.stopElector = e, key, cancel
	a.mu.Unlock()
}

func (a *Agent) stopElection() {
	a.mu.Lock()
	stop := a.stopElector
	a.elector, a.electorKey, a.stopElector = nil, "", nil
	a.mu.Unlock()
	if stop != nil {
		stop()
	}
}

// bridgeStatus is the election's view for status (nil without one).
func (a *Agent) bridgeStatus() *control.Bridge {
	a.mu.Lock()
	e := a.elector
	a.mu.Unlock()
	if e == nil {
		return nil
	}
	return bridgeView(e.Status())
}

func bridgeView(s election.Status) *control.Bridge {
	return &control.Bridge{Active: s.Active, Since: s.Since, Master: s.Master, State: s.Reason, Brokers: s.Brokers,
		Takeovers: s.Takeovers, StandDowns: s.StandDowns, Conflicts: s.Conflicts, Conflict: s.Conflict, LastConflict: s.LastConflict}
}

// bridgeCollector exports the election for Prometheus.
type bridgeCollector struct{ a *Agent }

var (
	bridgeActiveDesc    = prometheus.NewDesc("mqha_bridge_active", "1 while this bridge node is the active bridge master (bridge nodes of clusters with standbys).", nil, nil)
	bridgeTakeoversDesc = prometheus.NewDesc("mqha_bridge_takeovers_total", "Times this bridge node took over as bridge master.", nil, nil)
	bridgeStandDesc     = prometheus.NewDesc("mqha_bridge_standdowns_total", "Times this bridge node stood down as bridge master.", nil, nil)
	bridgeConflictsDesc = prometheus.NewDesc("mqha_bridge_conflicts_total", "Tugs of war seen: another candidate active at the same time as this one.", nil, nil)
	bridgeMasterDesc    = prometheus.NewDesc("mqha_bridge_master_known", "1 when this bridge node knows of an active bridge master (itself or another).", nil, nil)
)

func (c bridgeCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{bridgeActiveDesc, bridgeTakeoversDesc, bridgeStandDesc, bridgeConflictsDesc, bridgeMasterDesc} {
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
	ch <- prometheus.MustNewConstMetric(bridgeConflictsDesc, prometheus.CounterValue, float64(s.Conflicts))
	ch <- prometheus.MustNewConstMetric(bridgeMasterDesc, prometheus.GaugeValue, b(s.Master != ""))
}

// mosquittoServes is the health checks' view of this node's mosquitto: it
// serves unless the checks found it failing twice without being busy (not
// running, or hung).
func (a *Agent) mosquittoServes() bool {
	a.mu.Lock()
	m := a.monitor
	a.mu.Unlock()
	if m == nil {
		return true
	}
	return serves(m.Results(), daemon.Mosquitto.Name)
}

func serves(rs []health.Result, check string) bool {
	for _, r := range rs {
		if r.Name == check && !r.OK && !r.Busy && r.Failures >= 2 {
			return false
		}
	}
	return true
}
