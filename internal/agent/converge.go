package agent

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/mqha/mqha/internal/apply"
	"github.com/mqha/mqha/internal/cluster"
	"github.com/mqha/mqha/internal/daemon"
	"github.com/mqha/mqha/internal/health"
	"github.com/mqha/mqha/internal/plan"
	"github.com/mqha/mqha/internal/render"
	"github.com/mqha/mqha/internal/rollout"
	"github.com/mqha/mqha/internal/source"
	"github.com/mqha/mqha/internal/unit"
	"github.com/mqha/mqha/internal/vipguard"
)

// probeTimeout bounds one probe; the loop runs every health-interval. A
// loopback TLS + MQTT round trip takes milliseconds: 1.5 s means hung.
const probeTimeout = 1500 * time.Millisecond

// Fleet order: the delay per position among nodes of a role, and how long a
// node waits for its peers before going ahead anyway.
const (
	rolloutSlot     = 3 * time.Second
	rolloutPatience = time.Minute
)

// Converge is the real Converger: the view's rendered files, planned
// against this machine's files and units, applied through systemd.
func Converge(sd apply.Systemd, stateDir string, log *slog.Logger) Converger {
	return func(ctx context.Context, v *View, h Hooks) (*plan.Plan, error) {
		return ConvergeOutput(ctx, v.Output, sd, stateDir, h.Settle, log, h)
	}
}

// ConvergeOutput plans out against the live system and applies it; also
// what `mqha-agent apply` runs.
func ConvergeOutput(ctx context.Context, out *render.Output, sd apply.Systemd, stateDir string, settle time.Duration, log *slog.Logger, h Hooks) (*plan.Plan, error) {
	states, err := UnitStates(ctx, sd)
	if err != nil {
		return nil, err
	}
	p, err := plan.Make(out, os.DirFS("/"), states)
	if err != nil {
		return nil, err
	}
	a := &apply.Applier{Root: "/", BackupDir: filepath.Join(stateDir, "backup"), Journal: JournalPath(stateDir), Systemd: sd,
		Validator: daemon.Validator{}, Settle: settle, Log: log, Gate: h.Gate, Verify: h.Verify, Timing: h.Timing}
	return p, a.Apply(ctx, p)
}

// JournalPath is where an apply journals its unit actions (see
// apply.Applier.Journal).
func JournalPath(stateDir string) string { return filepath.Join(stateDir, "apply-journal.json") }

// UnitStates asks systemd for the state of every managed unit.
func UnitStates(ctx context.Context, sd interface {
	State(context.Context, string) (unit.State, error)
}) (map[string]unit.State, error) {
	states := map[string]unit.State{}
	for _, u := range daemon.Units() {
		st, err := sd.State(ctx, u)
		if err != nil {
			return nil, err
		}
		states[u] = st
	}
	return states, nil
}

// apply converges the node on v in its turn of the fleet, verifies the
// daemons serve, and records v as applied when it is new.
func (a *Agent) apply(ctx context.Context, v *View) error {
	// Peers still serve with the applied configuration: probe them with its
	// certificates, not with the candidate's (which may be the mistake).
	peerTLS := v.TLS
	if a.view != nil {
		peerTLS = a.view.TLS
	}
	gate := &rollout.Gate{Cluster: v.Cluster, Node: v.Node, TLS: peerTLS, Fault: a.fault.gate, Log: a.log,
		Slot: rolloutSlot, Patience: rolloutPatience}
	defer gate.Done()
	// A commit that changes this node's TLS files or CA changes how the
	// agent probes every daemon, touched by the plan or not: all its checks
	// must pass with it (a wrong tls.ca on a load balancer renders the same
	// nginx.conf, and used to pass as "converged" with every probe failing
	// after).
	tlsChanged := a.view != nil && v != a.view && v.TLSID != a.view.TLSID
	verifiedAll := false
	verify := func(ctx context.Context, p *plan.Plan) error {
		verifiedAll = verifiedAll || tlsChanged
		return a.verifyUnits(ctx, v, p, false, tlsChanged)
	}
	// After waiting for its turn, a new commit is checked for a verdict
	// once more: a node ahead of this one may have failed it meanwhile.
	before := func(ctx context.Context, p *plan.Plan) error {
		if err := gate.Before(ctx, p); err != nil {
			return err
		}
		if v == a.view {
			return nil
		}
		if why := a.waitCanary(ctx, v.Commit); why != "" {
			a.log.Info("waited for the canary", "commit", source.Short(v.Commit), "until", why)
		}
		if err := a.fleetVerdict(v.Commit); err != nil {
			a.m.verdicts.WithLabelValues("obeyed").Inc()
			return fmt.Errorf("%w (nothing was written)", err)
		}
		return nil
	}
	p, err := a.d.Converge(ctx, v, Hooks{Gate: before, Verify: verify, Timing: a.facts.Stage, Settle: a.cfg.Settle})
	if p != nil && !p.Empty() {
		for _, ch := range p.Changes {
			a.log.Info("diff", "path", ch.File.Path, "diff", ch.Diff)
		}
	}
	if err == nil && tlsChanged && !verifiedAll {
		// No unit restarted (nothing to roll back): the running daemons
		// must answer the probes made with the new files.
		if verr := a.verifyUnits(ctx, v, &plan.Plan{}, false, true); verr != nil {
			err = fmt.Errorf("%w: this node's TLS files (tls.ca, tls.cert, tls.key, tls.nodeCA) changed and its checks fail with them: %w", apply.ErrUnverified, verr)
		}
	}
	if err != nil {
		return fmt.Errorf("commit %s (%s): %w", source.Short(v.Commit), v.Subject, err)
	}
	if v != a.view {
		old := a.view
		a.applied(v)
		a.rebuild(ctx, v)
		a.closeRemovedBrokers(ctx, old, v)
		a.endRemovedBridges(ctx, old, v)
	}
	return nil
}

// applied records v as the applied commit: a node listed again is back in
// the cluster (this apply started its units).
func (a *Agent) applied(v *View) {
	if a.facts.Decommission() != nil {
		a.log.Info("this node is in the cluster definition again", "commit", source.Short(v.Commit))
		a.facts.SetDecommission(nil)
		if err := a.d.BridgeLeaving(""); err != nil {
			a.log.Error("tell keepalived's bridge check that this node stays", "err", err)
		}
	}
	a.view = v // first: the "applied" event names v's cluster
	a.facts.SetApplied(v.Commit, v.Subject)
	a.log.Info("converged", "commit", source.Short(v.Commit), "subject", v.Subject)
	a.facts.SetInsecure(a.insecurity())
	a.facts.SetRoles(v.Node.RoleList())
}

// verifyUnits runs the health checks of the daemons a plan touched (all
// of them with all) until they pass; daemonsOnly leaves out the checks of
// what lies beyond a daemon (a bridge's connections to the brokers).
func (a *Agent) verifyUnits(ctx context.Context, v *View, p *plan.Plan, daemonsOnly, all bool) error {
	var checks []health.Check
	if all {
		checks = slices.Clone(v.Checks)
	} else {
		for _, u := range p.Units {
			if u.Action != unit.None && u.Action != unit.Stop {
				checks = append(checks, v.checksOf[u.Name]...)
			}
		}
	}
	if daemonsOnly {
		checks = slices.DeleteFunc(checks, func(c health.Check) bool { return c.Unit == "" })
	}
	return a.verifyChecks(ctx, checks, a.cfg.VerifyTimeout)
}

// verifyChecks runs checks until they all pass or within passes.
func (a *Agent) verifyChecks(ctx context.Context, checks []health.Check, within time.Duration) error {
	m := &health.Monitor{Checks: checks, Units: a.d.Systemd, Timeout: probeTimeout, Log: a.log}
	return m.Verify(ctx, within)
}

// rebuild points the health monitor, the unit watcher, the drift watcher,
// the status publisher, the bridge role and the brokers watch at v.
func (a *Agent) rebuild(ctx context.Context, v *View) {
	// The definition's bound on systemd calls and unit jobs.
	if t, ok := a.d.Systemd.(interface{ SetTimeout(time.Duration) }); ok {
		t.SetTimeout(time.Duration(v.Cluster.Timeouts.Unit) * time.Second)
	}
	a.rebuildMonitor(v)
	a.publish.set(statusTargetOf(v))
	a.bridge.set(daemon.ElectsBridge(v.Cluster, v.Node))
	a.followBrokers(ctx, v)
	a.watchDraining(ctx, v)
	a.watchDrift(ctx, v)
}

// watchDrift points the drift watcher at v's files.
func (a *Agent) watchDrift(ctx context.Context, v *View) {
	a.drift.off()
	if a.d.WatchFiles == nil {
		return
	}
	var files []string
	for _, f := range v.Output.Files {
		files = append(files, f.Path)
	}
	dctx, cancel := context.WithCancel(ctx)
	ch, err := a.d.WatchFiles(dctx, files)
	if err != nil {
		a.log.Error("drift watcher", "err", err)
		cancel()
		return
	}
	a.drift = driftWatch{ch, cancel}
}

// driftWatch reports hand edits of the applied files (nil ch: none).
type driftWatch struct {
	ch   <-chan string
	stop context.CancelFunc
}

func (w *driftWatch) off() {
	if w.stop != nil {
		w.stop()
	}
	*w = driftWatch{}
}

// rebuildMonitor points the health monitor, the unit watcher and the VIP
// guard at v.
func (a *Agent) rebuildMonitor(v *View) {
	s := a.facts.Suspended()
	a.daemons.set(&health.Monitor{Checks: v.Checks, Units: a.d.Systemd, Timeout: probeTimeout, Log: a.log, OnResult: a.onResult,
		NoRepair: s != nil && s.NoRepair}, v.Output.Units, guarded(v))
}

// guarded is what keepalived holds on this node under v: the VIP on a load
// balancer, the bridge role's address on a bridge node that takes part in
// its election.
func guarded(v *View) vipguard.Watch {
	var w vipguard.Watch
	if v == nil || v.Cluster == nil {
		return w
	}
	cl, n := v.Cluster, v.Node
	add := func(vip *cluster.VIP, iface string) {
		ip, err := netip.ParseAddr(vip.Address)
		if err != nil {
			return // the schema refuses it first
		}
		w.Addrs = append(w.Addrs, vipguard.Addr{Prefix: netip.PrefixFrom(ip, vip.Prefix), Interface: iface})
	}
	if cl.VIP != nil && n.Has(cluster.LB) {
		add(cl.VIP, n.Interface)
	}
	if cl.BridgeVIP != nil && daemon.ElectsBridge(cl, n) {
		add(cl.BridgeVIP, cl.BridgeVIP.Interface)
		w.Bridge = true
	}
	return w
}

// daemons are the health monitor of the applied commit, the units it runs
// and the guard of what keepalived holds: the loop sets them, the control
// socket and the unit watcher read.
type daemons struct {
	mu      sync.Mutex
	monitor *health.Monitor
	units   []string
	guard   *vipguard.Guard // nil: none (tests)
}

func (d *daemons) set(m *health.Monitor, units []string, w vipguard.Watch) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.monitor, d.units = m, units
	d.guard.Set(w)
	d.guard.Pause(m.NoRepair)
}

func (d *daemons) get() *health.Monitor {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.monitor
}

// runs is the set of units this node runs under the applied commit.
func (d *daemons) runs() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.units
}

// noRepair turns repairs off (suspend --no-repair) or on.
func (d *daemons) noRepair(on bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.monitor != nil {
		d.monitor.NoRepair = on
	}
	d.guard.Pause(on)
}
