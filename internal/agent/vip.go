package agent

import (
	"context"
	"crypto/tls"
	"time"

	"github.com/mqha/mqha/internal/cluster"
	"github.com/mqha/mqha/internal/daemon"
	"github.com/mqha/mqha/internal/health"
	"github.com/mqha/mqha/internal/notify"
	"github.com/mqha/mqha/internal/probe"
)

// recheckAfter is how soon a failed check runs again, instead of waiting
// for the next round: a hung broker is confirmed (and killed) sooner.
const recheckAfter = time.Second

// onResult feeds metrics and, on a load balancer, keepalived: an nginx the
// agent cannot repair gives up the VIP, but only to a peer that serves; a
// healthy one takes part again. A busy nginx (no answer, but its workers
// progress) keeps the VIP: a reconnect storm would follow the VIP to the
// peer, and the move itself causes one.
func (a *Agent) onResult(r health.Result) {
	a.m.checked(r)
	if !r.OK && r.Failures == 1 {
		time.AfterFunc(recheckAfter, func() { a.nudge("recheck", a.checkHealth) })
	}
	if r.Name != "nginx" {
		return
	}
	held := a.fault.Holds(faultHealth)
	switch {
	case !r.OK && r.Busy && !held:
		a.log.Warn("nginx does not answer but is busy, not hung: keeping the VIP", "err", r.Error)
	case !r.OK && r.BrokerDown && !held:
		a.log.Warn("a broker behind nginx does not answer: keeping the VIP (the other load balancer has the same brokers)", "err", r.Error)
	case !r.OK && (r.Failures >= 2 || r.Stopped) && !held:
		// Two failures in a row, or one with nginx stopped (SIGSTOP): a
		// hang confirmed at once, since nothing can answer.
		// Only hand the VIP to a peer that serves: with every load balancer
		// failing alike (a bad certificate, all brokers down) moving it
		// helps nobody, and two faults leave no VIP at all.
		if !a.peerLBServes() {
			a.log.Warn("nginx does not serve, but neither does any other load balancer: keeping the VIP", "err", r.Error)
			return
		}
		a.log.Warn("nginx does not serve and was not repaired: giving up the VIP", "err", r.Error)
		if err := a.fault.Set(faultHealth); err != nil {
			a.log.Error("report the fault to keepalived", "err", err)
		}
		a.emit(notify.FailedOver, a.facts.Applied(), "nginx does not serve here: the VIP was given up to the other load balancer ("+r.Error+")")
	case r.OK && held:
		a.log.Info("nginx serves again: taking part in VRRP again")
		if err := a.fault.Clear(faultHealth); err != nil {
			a.log.Error("clear the fault reported to keepalived", "err", err)
		}
	}
}

// peerLBServes reports whether another load balancer passes TLS through to
// a broker, probed with the applied commit's certificates.
func (a *Agent) peerLBServes() bool {
	v := a.view
	if v == nil || v.Cluster.VIP == nil {
		return false
	}
	cl := v.Cluster
	for _, l := range cl.WithRole(cluster.LB) {
		if l.Name == a.node {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), probeTimeout)
		err := a.d.ProbeLB(ctx, l.At(cl.Ports.Client), daemon.WithName(v.TLS, cl.VIP.Address))
		cancel()
		if err == nil {
			return true
		}
	}
	return false
}

func probeTLSThrough(ctx context.Context, addr string, tc *tls.Config) error {
	return probe.TLSThrough(addr, tc)(ctx)
}
