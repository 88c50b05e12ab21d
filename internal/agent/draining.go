package agent

import (
	"context"
	"net"
	"slices"
	"strings"
	"time"

	"github.com/mqha/mqha/internal/cluster"
)

// A bridge node keeps bridging a broker that a commit removed until that
// broker stops serving. The removed broker stops once no other host is
// connected to its client port (the load balancers closed its clients'
// connections as they applied the commit; the agents stopped publishing
// to it), and until then its clients still publish and receive there: a
// bridge dropped at once lost what they published and what was published
// for them (the fourth soak hour: 11,357 acknowledged messages, with the
// load balancers unable to fetch the commit for 40 s). The broker's own
// decommission does not wait for the bridge's connection.

// drainProbeEvery: how often a removed broker is probed (a variable for
// the tests); drainGoneAfter: consecutive refused or unanswered connects
// that say it stopped. A connect, not a TLS handshake: a broker too busy
// to finish handshakes in time still serves its clients.
var drainProbeEvery = time.Second

const drainGoneAfter = 3

// drainWatch is the watch of the brokers the applied view still bridges
// after a commit removed them, and those found stopped since.
type drainWatch struct {
	gone map[string]bool // stopped serving: no longer bridged
	key  string          // what the running watch watches
	stop context.CancelFunc
}

// drainingFor is what v's bridge node keeps bridging: the brokers the
// applied view bridges (listed, or draining already) that v does not list,
// less those found stopped.
func (a *Agent) drainingFor(v *View) []cluster.Node {
	if !v.Node.Has(cluster.Bridge) || a.view == nil || a.view.Cluster == nil {
		return nil
	}
	listed := func(name string) bool { _, ok := v.Cluster.Node(name); return ok }
	var out []cluster.Node
	for _, b := range append(a.view.Cluster.WithRole(cluster.Broker), a.view.Draining...) {
		if b.Name == v.Node.Name || listed(b.Name) || a.draining.gone[b.Name] ||
			slices.ContainsFunc(out, func(x cluster.Node) bool { return x.Name == b.Name }) {
			continue
		}
		out = append(out, b)
	}
	return out
}

// watchDraining starts, restarts or stops the watch of v's draining
// brokers: each is dropped (a run-time change) once its bridge listener
// stops answering, or after decommission-grace and a margin at the latest.
func (a *Agent) watchDraining(ctx context.Context, v *View) {
	w := &a.draining
	var names []string
	for _, b := range v.Draining {
		names = append(names, b.Name)
	}
	key := strings.Join(names, ",")
	if key == w.key && w.stop != nil {
		return
	}
	if w.stop != nil {
		w.stop()
	}
	w.stop, w.key = nil, key
	for n := range w.gone {
		if !slices.Contains(names, n) {
			delete(w.gone, n) // listed again, or dropped: judged anew next time
		}
	}
	if len(names) == 0 {
		return
	}
	wctx, cancel := context.WithCancel(ctx)
	w.stop = cancel
	giveUp := a.cfg.DecommissionGrace + 30*time.Second
	for _, b := range v.Draining {
		addr := b.At(v.Cluster.Ports.Bridge)
		a.log.Info("a commit removed a broker: bridging it until it stops serving", "broker", b.Name, "give_up_after", giveUp)
		go func() {
			start, failed := time.Now(), 0
			for {
				select {
				case <-wctx.Done():
					return
				case <-time.After(drainProbeEvery):
				}
				if a.d.Serves(wctx, addr) {
					failed = 0
				} else {
					failed++
				}
				if failed >= drainGoneAfter || time.Since(start) > giveUp {
					why := "it stopped serving"
					if failed < drainGoneAfter {
						why = "it still serves after " + giveUp.String() + ": its clients are not bridged any more"
					}
					a.post(wctx, func(ctx context.Context) { a.dropDrained(ctx, b.Name, why) })
					return
				}
			}
		}()
	}
}

// serves reports whether addr accepts a TCP connection within a second: a
// stopped mosquitto refuses it, a host that is gone does not answer.
func serves(ctx context.Context, addr string) bool {
	c, err := (&net.Dialer{Timeout: time.Second}).DialContext(ctx, "tcp", addr)
	if err != nil {
		return false
	}
	c.Close()
	return true
}

// dropDrained stops bridging a removed broker (a run-time change of the
// bridges, which restarts mosquitto) and ends its connection's local
// session.
func (a *Agent) dropDrained(ctx context.Context, name, why string) {
	old := a.view
	if old == nil || !slices.ContainsFunc(old.Draining, func(b cluster.Node) bool { return b.Name == name }) {
		return
	}
	if a.draining.gone == nil {
		a.draining.gone = map[string]bool{}
	}
	err := a.runtimeChange(ctx, "stop bridging removed broker "+name, func() { a.draining.gone[name] = true }, func() { delete(a.draining.gone, name) }, nil)
	if err != nil {
		a.log.Error("stop bridging a removed broker; retried when the watch finds it again", "broker", name, "err", err)
		a.draining.key = "" // the watch starts anew
		a.watchDraining(ctx, a.view)
		return
	}
	a.log.Info("stopped bridging a removed broker", "broker", name, "why", why)
	a.endRemovedBridges(ctx, old, a.view)
	a.watchDraining(ctx, a.view)
}
