package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/mqha/mqha/internal/cluster"
	"github.com/mqha/mqha/internal/control"
	"github.com/mqha/mqha/internal/daemon"
	"github.com/mqha/mqha/internal/health"
	"github.com/mqha/mqha/internal/render"
	"github.com/mqha/mqha/internal/source"
	"github.com/mqha/mqha/internal/unit"
)

// Decommissioning: a commit that removes this node from the definition is
// applied by the others too: the load balancers take it out of nginx and
// close its clients' connections, the bridge drops its link, every agent
// stops publishing to it and watching it. This node waits until no other
// host holds a connection to its broker or bridge listener (or
// decommission-grace; a load balancer has nothing to wait for: its clients
// follow the VIP), then stops and
// disables its managed units (keepalived first: the VIP moves before nginx
// stops) and says it is decommissioned. Recorded in the state directory, so
// a restart stays out; a commit that lists the node again converges it back
// like any commit (its units enabled and started). decommission = false in
// agent.conf keeps the old behaviour: the commit is refused and the node
// serves its last configuration.

// errNotInDefinition is view0's error for a commit that does not list this
// node.
var errNotInDefinition = errors.New("is not in the cluster definition")

// startDecommission handles commit def, which does not list this node
// (notIn says so): the commit is recorded as applied and the node drains,
// unless agent.conf opts out (then it is refused, as notIn).
func (a *Agent) startDecommission(ctx context.Context, def *evaluated, notIn error) error {
	if !a.cfg.Decommission {
		return fmt.Errorf("%w; decommission = false in agent.conf: it keeps serving its last configuration", notIn)
	}
	old := a.facts.Decommission()
	if a.facts.Applied() == "" && old == nil {
		// Never a member: a node installed before its commit, not one
		// taken out. Nothing of it is touched.
		return fmt.Errorf("%w: add it to the definition to make it part of the cluster; nothing was changed on this node", notIn)
	}
	d := &control.Decommission{Commit: def.hash, Subject: def.subject, Since: a.d.Now(),
		State: "draining: waiting for the others to apply the commit and let go of this node"}
	if old != nil {
		// A later commit that still leaves it out: the same way out.
		d.Since, d.Done, d.Stopped, d.State = old.Since, old.Done, old.Stopped, old.State
	} else {
		a.log.Warn("this node is not in the cluster definition any more: decommissioning", "commit", source.Short(def.hash), "subject", def.subject,
			"grace", a.cfg.DecommissionGrace)
		if a.view != nil && daemon.ElectsBridge(a.view.Cluster, a.view.Node) {
			// The bridge role goes now, not once the node drained: the
			// remaining bridge node, on this commit too, may bridge alone.
			if err := a.d.BridgeLeaving("removed by commit " + source.Short(def.hash)); err != nil {
				a.log.Error("tell keepalived's bridge check that this node leaves", "err", err)
			}
		}
	}
	a.decomCluster = def.cluster
	a.facts.SetApplied(def.hash, def.subject)
	a.facts.SetDecommission(d)
	return a.stepDecommission(ctx)
}

// stepDecommission, every health round while draining: the units stop once
// no other host is connected, or after decommission-grace.
func (a *Agent) stepDecommission(ctx context.Context) error {
	d := a.facts.Decommission()
	if d == nil || !d.Done.IsZero() {
		return nil
	}
	cl := a.decomCluster
	if cl == nil {
		def, err := evaluateCommit(ctx, a.d, a.cfg, d.Commit)
		if err != nil {
			a.decomState(d, fmt.Sprintf("draining: cannot read commit %s for the cluster's ports: %v", source.Short(d.Commit), err))
			return err
		}
		cl = def.cluster
		a.decomCluster = cl
	}
	waited := a.d.Now().Sub(d.Since)
	// The client port only: the bridge keeps its connection until this
	// broker stops (draining.go), so that its clients lose nothing.
	n, err := a.d.PeerConns(ctx, []int{cl.Ports.Broker})
	var why string
	switch {
	case err != nil && waited < a.cfg.DecommissionGrace:
		a.decomState(d, fmt.Sprintf("draining: cannot count the connections from other hosts (%v); stopping at %s", err, d.Since.Add(a.cfg.DecommissionGrace).Format(time.RFC3339)))
		return nil
	case err == nil && n > 0 && waited < a.cfg.DecommissionGrace:
		a.decomState(d, fmt.Sprintf("draining: %d connections from other hosts (they let go as they apply commit %s); stopping at %s at the latest (decommission-grace)",
			n, source.Short(d.Commit), d.Since.Add(a.cfg.DecommissionGrace).Format(time.RFC3339)))
		return nil
	case err != nil:
		why = fmt.Sprintf("decommission-grace %s passed (connections not counted: %v)", a.cfg.DecommissionGrace, err)
	case n > 0:
		why = fmt.Sprintf("decommission-grace %s passed with %d connections from other hosts left", a.cfg.DecommissionGrace, n)
	default:
		why = "no other host was connected to it after " + waited.Round(time.Second).String()
	}
	// No roles: the plan stops and disables every unit this node ran.
	none := cluster.Node{Name: a.node}
	v := &View{Commit: d.Commit, Subject: d.Subject, Cluster: cl, Node: none, Output: &render.Output{Node: none},
		checksOf: map[string][]health.Check{}}
	if a.view != nil {
		v.TLS = a.view.TLS // the node's certificate still says it is decommissioned on the brokers
	}
	p, err := a.d.Converge(ctx, v, Hooks{Timing: func(string, time.Duration) {}})
	if err != nil {
		a.decomState(d, fmt.Sprintf("stopping its units failed, retrying every health round: %v", err))
		return err
	}
	var stopped []string
	if p != nil {
		for _, u := range p.Units {
			if u.Action == unit.Stop {
				stopped = append(stopped, u.Name)
			}
		}
	}
	a.view = v
	a.rebuild(ctx, v) // no checks, no bridge role, no brokers watch, no drift watch
	done := *d
	done.Done, done.Stopped = a.d.Now(), stopped
	done.State = fmt.Sprintf("decommissioned by commit %s: %s; stopped and disabled: %s", source.Short(d.Commit), why, orNone(stopped))
	a.log.Warn("decommissioned: this node's units are stopped and disabled", "commit", source.Short(d.Commit), "why", why, "stopped", stopped)
	a.facts.SetDecommission(&done)
	return nil
}

// decomState says why d is where it is (recorded only when that changed).
func (a *Agent) decomState(d *control.Decommission, state string) {
	if d.State != state {
		next := *d
		next.State = state
		a.facts.SetDecommission(&next)
	}
}

func orNone(s []string) string {
	if len(s) == 0 {
		return "none running"
	}
	return strings.Join(s, ", ")
}

// peerConns counts established TCP connections to ports of this host whose
// other end is another host (not loopback, not one of this host's
// addresses: the agent's own probes and status).
func peerConns(ctx context.Context, ports []int) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "ss", "-Htn", "state", "established").Output()
	if err != nil {
		return 0, fmt.Errorf("ss -Htn state established: %w", err)
	}
	return countPeers(string(out), ports), nil
}

// countPeers reads ss -Htn state established: Recv-Q Send-Q Local Peer.
func countPeers(ss string, ports []int) int {
	n := 0
	for _, l := range strings.Split(ss, "\n") {
		f := strings.Fields(l)
		if len(f) < 4 {
			continue
		}
		lh, lp, err1 := net.SplitHostPort(f[2])
		ph, _, err2 := net.SplitHostPort(f[3])
		port, err3 := strconv.Atoi(lp)
		if err1 != nil || err2 != nil || err3 != nil || !slices.Contains(ports, port) {
			continue
		}
		peer := net.ParseIP(strings.TrimPrefix(ph, "::ffff:"))
		if peer == nil || peer.IsLoopback() || ph == lh {
			continue
		}
		n++
	}
	return n
}
