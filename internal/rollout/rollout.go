// Package rollout orders a change across the fleet without a central
// server. Each node decides from the cluster definition and from probing its
// peers: brokers restart one at a time (a slot per broker, and only while
// every other broker serves), the bridge master restarts only once every
// broker it bridges serves, and a load balancer gives up the VIP before it
// restarts nginx.
package rollout

import (
	"context"
	"crypto/tls"
	"log/slog"
	"net"
	"slices"
	"time"

	"github.com/mqha/mqha/internal/cluster"
	"github.com/mqha/mqha/internal/daemon"
	"github.com/mqha/mqha/internal/plan"
	"github.com/mqha/mqha/internal/probe"
	"github.com/mqha/mqha/internal/unit"
)

// Gate waits for this node's turn before a plan is applied.
type Gate struct {
	Cluster *cluster.Cluster
	Node    cluster.Node
	TLS     *tls.Config // the node's certificate, to probe peers
	// Fault feeds keepalived's track file: true gives up the VIP.
	Fault func(on bool) error
	Log   *slog.Logger
	// Slot is the delay per position among nodes of a role; Patience how
	// long to wait for peers before going ahead anyway (a dead peer must not
	// block every change forever).
	Slot, Patience time.Duration

	// Seams, for tests; nil means the real thing.
	// Probe checks that a TLS handshake with a broker works at addr.
	Probe func(ctx context.Context, addr string, tc *tls.Config) error
	// HasVIP reports whether this node still holds the VIP.
	HasVIP func() (bool, error)
	// Now and Sleep are the clock; Sleep returns early with ctx's error.
	Now   func() time.Time
	Sleep func(ctx context.Context, d time.Duration) error

	faulted bool
}

func (g *Gate) probe(ctx context.Context, addr string, tc *tls.Config) error {
	if g.Probe != nil {
		return g.Probe(ctx, addr, tc)
	}
	return probe.TLSThrough(addr, tc)(ctx)
}

func (g *Gate) hasVIP() (bool, error) {
	if g.HasVIP != nil {
		return g.HasVIP()
	}
	return probe.HasAddr(g.Cluster.VIP.Address)
}

func (g *Gate) now() time.Time {
	if g.Now != nil {
		return g.Now()
	}
	return time.Now()
}

func (g *Gate) sleep(ctx context.Context, d time.Duration) error {
	if g.Sleep != nil {
		return g.Sleep(ctx, d)
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (g *Gate) action(p *plan.Plan, name string) unit.Action {
	for _, u := range p.Units {
		if u.Name == name {
			return u.Action
		}
	}
	return unit.None
}

// Before blocks until this node may apply p.
func (g *Gate) Before(ctx context.Context, p *plan.Plan) error {
	if g.action(p, daemon.Mosquitto.Unit) == unit.Restart {
		if g.Node.Has(cluster.Broker) {
			if err := g.sleepSlot(ctx, g.Cluster.WithRole(cluster.Broker)); err != nil {
				return err
			}
			g.waitServing(ctx, "the other brokers", g.others(cluster.Broker, g.Cluster.Ports.Broker), "")
		}
		if g.Node.Has(cluster.Bridge) {
			g.waitServing(ctx, "every bridged broker", g.others(cluster.Broker, g.Cluster.Ports.Bridge), "")
		}
	}
	if g.action(p, daemon.Nginx.Unit) == unit.Restart && g.Node.Has(cluster.LB) && g.Cluster.VIP != nil {
		if err := g.sleepSlot(ctx, g.Cluster.WithRole(cluster.LB)); err != nil {
			return err
		}
		g.waitServing(ctx, "the other load balancers", g.others(cluster.LB, g.Cluster.Ports.Client), g.Cluster.VIP.Address)
		if g.Fault != nil {
			if err := g.Fault(true); err != nil {
				return err
			}
			g.faulted = true
			g.waitVIPGone(ctx)
		}
	}
	return nil
}

// others are the addresses (at port) of the other nodes with role r.
func (g *Gate) others(r cluster.Role, port int) []string {
	var out []string
	for _, n := range g.Cluster.WithRole(r) {
		if n.Name != g.Node.Name {
			out = append(out, n.At(port))
		}
	}
	return out
}

// Done ends the node's turn: a load balancer that gave up the VIP may take
// part in elections again (nopreempt: it does not take the VIP back).
func (g *Gate) Done() {
	if g.faulted && g.Fault != nil {
		if err := g.Fault(false); err != nil {
			g.Log.Error("clear VRRP fault", "err", err)
		}
		g.faulted = false
	}
}

func (g *Gate) sleepSlot(ctx context.Context, nodes []cluster.Node) error {
	i := slices.IndexFunc(nodes, func(n cluster.Node) bool { return n.Name == g.Node.Name })
	if i <= 0 {
		return nil
	}
	d := time.Duration(i) * g.Slot
	g.Log.Info("waiting for this node's slot", "slot", i, "delay", d)
	return g.sleep(ctx, d)
}

// waitServing waits until a TLS handshake with a broker works at every
// address (through nginx for load balancers), or Patience runs out.
func (g *Gate) waitServing(ctx context.Context, what string, addrs []string, serverName string) {
	if len(addrs) == 0 {
		return
	}
	deadline := g.now().Add(g.Patience)
	for {
		var down []string
		for _, a := range addrs {
			tc := g.TLS.Clone()
			tc.ServerName = serverName
			if serverName == "" {
				tc.ServerName, _, _ = net.SplitHostPort(a)
			}
			pctx, cancel := context.WithTimeout(ctx, time.Second)
			if err := g.probe(pctx, a, tc); err != nil {
				down = append(down, a)
			}
			cancel()
		}
		if len(down) == 0 {
			return
		}
		if g.now().After(deadline) || ctx.Err() != nil {
			g.Log.Warn("going ahead although peers do not serve", "waited_for", what, "down", down, "patience", g.Patience)
			return
		}
		g.Log.Info("waiting for peers to serve", "waiting_for", what, "down", down)
		g.sleep(ctx, 500*time.Millisecond)
	}
}

func (g *Gate) waitVIPGone(ctx context.Context) {
	deadline := g.now().Add(10 * time.Second)
	for g.now().Before(deadline) && ctx.Err() == nil {
		has, err := g.hasVIP()
		if err != nil || !has {
			return
		}
		g.sleep(ctx, 100*time.Millisecond)
	}
	g.Log.Warn("the VIP is still here after giving it up; restarting nginx anyway")
}
