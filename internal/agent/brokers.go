package agent

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"maps"
	"net"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/mqha/mqha/internal/cluster"
	"github.com/mqha/mqha/internal/daemon"
	"github.com/mqha/mqha/internal/probe"
)

// A load balancer watches the brokers' hosts. When one is gone (powered
// off, cut off), nginx's connections to it hang until the clients' own
// keepalive gives up (minutes, for many clients), and every client that
// hashes to it waits proxy_connect_timeout on each connect. So the agent
// marks it down in nginx and closes the connections to it: its clients
// reconnect to the others at once. It comes back when it answers again.
//
// Gone is not slow: a persistent MQTT connection to each broker's bridge
// listener notices a silent broker within ~2 s (keepalive 1 s, ping timeout 0.5 s), and only
// TCP connects that get no answer at all for goneAfter confirm it. A busy
// mosquitto still has a kernel that answers SYNs on a listener no client
// storm fills. Never every broker: with none answering, this load balancer
// is the one cut off, and that is the VIP policy's business.

const (
	goneAfter   = 600 * time.Millisecond // one connect attempt unanswered, and a pause
	goneAttempt = 500 * time.Millisecond
)

// brokerEvent says a broker's host is gone or answers again.
type brokerEvent struct {
	name string
	gone bool
}

// confirmGone probes addr with TCP connects for d: gone only when none
// gets an answer (a refusal is an answer: the host is up).
func confirmGone(ctx context.Context, addr string, d time.Duration) bool {
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		c, err := (&net.Dialer{Timeout: goneAttempt}).DialContext(ctx, "tcp", addr)
		if err == nil {
			c.Close()
			return false
		}
		var ne net.Error
		if !(errors.As(err, &ne) && ne.Timeout()) && !errors.Is(err, syscall.EHOSTUNREACH) {
			return false // refused: the host answers
		}
		if ctx.Err() != nil {
			return false
		}
		time.Sleep(100 * time.Millisecond)
	}
	return true
}

// watchBrokers runs on a load balancer until ctx ends, sending an event
// when a broker's host goes or comes back. down are the brokers marked down
// already: a watch started anew (the brokers changed) still says when they
// come back.
func watchBrokers(ctx context.Context, cl *cluster.Cluster, self string, tc *tls.Config, down map[string]bool, events func(context.Context, brokerEvent) bool) {
	var wg sync.WaitGroup
	defer wg.Wait()
	for _, b := range cl.WithRole(cluster.Broker) {
		if b.Name == self {
			continue
		}
		addr := b.At(cl.Ports.Bridge)
		lost := make(chan struct{}, 1)
		back := make(chan struct{}, 1)
		signal := func(ch chan struct{}) {
			select {
			case ch <- struct{}{}:
			default:
			}
		}
		o := mqtt.NewClientOptions().AddBroker("ssl://" + addr).SetClientID(probe.ClientID("mqha-" + cl.Name + "-watch-" + self)).
			SetTLSConfig(daemon.WithName(tc, b.Address)).SetCleanSession(true).
			SetAutoReconnect(true).SetConnectRetry(true).SetConnectRetryInterval(time.Second).SetMaxReconnectInterval(time.Second).
			SetConnectTimeout(2 * time.Second).SetKeepAlive(time.Second).SetPingTimeout(500 * time.Millisecond).
			SetConnectionLostHandler(func(mqtt.Client, error) { signal(lost) }).
			SetOnConnectHandler(func(mqtt.Client) { signal(back) })
		c := mqtt.NewClient(o)
		c.Connect()
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer c.Disconnect(100)
			gone := down[b.Name]
			tick := time.NewTicker(time.Second)
			defer tick.Stop()
			for {
				select {
				case <-ctx.Done():
					return
				case <-lost:
				case <-back:
				case <-tick.C:
				}
				switch {
				case !gone && !c.IsConnectionOpen() && confirmGone(ctx, addr, goneAfter):
					gone = true
				case gone && (c.IsConnectionOpen() || !confirmGone(ctx, addr, goneAttempt)):
					gone = false
				default:
					continue
				}
				if !events(ctx, brokerEvent{b.Name, gone}) {
					return
				}
			}
		}()
	}
}

// brokerWatch is a load balancer's watch of the brokers' hosts, and the
// brokers it marks down in nginx.
type brokerWatch struct {
	down map[string]bool // brokers marked down
	key  string          // what the running watch watches (brokersKey)
	stop context.CancelFunc
}

// off stops the watch.
func (w *brokerWatch) off() {
	if w.stop != nil {
		w.stop()
	}
	w.stop, w.key = nil, ""
}

// followBrokers starts, restarts or stops the watch of the brokers' hosts
// as v says: on load balancers only, anew when the brokers change. A watch
// started anew still says when the brokers marked down come back.
func (a *Agent) followBrokers(ctx context.Context, v *View) {
	w := &a.brokers
	if !v.Node.Has(cluster.LB) {
		w.off()
		return
	}
	key := brokersKey(v)
	if w.stop != nil && key == w.key {
		return
	}
	w.off()
	wctx, cancel := context.WithCancel(ctx)
	w.stop, w.key = cancel, key
	events := func(ctx context.Context, e brokerEvent) bool {
		return a.post(ctx, func(ctx context.Context) { a.onBrokerEvent(ctx, e) })
	}
	go watchBrokers(wctx, v.Cluster, v.Node.Name, v.TLS, maps.Clone(w.down), events)
}

// markDown is the brokers marked down after e (nil: no change). Never
// every broker: with none answering, this load balancer is the one cut
// off (allGone), and that is the VIP policy's business.
func markDown(cur map[string]bool, cl *cluster.Cluster, e brokerEvent) (next map[string]bool, allGone bool) {
	if _, ok := cl.Node(e.name); !ok || cur[e.name] == e.gone {
		return nil, false
	}
	next = maps.Clone(cur)
	if next == nil {
		next = map[string]bool{}
	}
	if !e.gone {
		delete(next, e.name)
		return next, false
	}
	next[e.name] = true
	for _, x := range cl.WithRole(cluster.Broker) {
		if !next[x.Name] {
			return next, false
		}
	}
	return nil, true
}

// onBrokerEvent updates the brokers this load balancer marks down and
// converges nginx on it; a broker gone also loses its connections, so its
// clients reconnect to the others now.
func (a *Agent) onBrokerEvent(ctx context.Context, e brokerEvent) {
	v := a.view
	if v == nil || !v.Node.Has(cluster.LB) {
		return
	}
	down, allGone := markDown(a.brokers.down, v.Cluster, e)
	b, _ := v.Cluster.Node(e.name)
	switch {
	case allGone:
		a.log.Warn("no broker's host answers this load balancer: marking none down (this node is the one cut off?)", "broker", e.name)
		return
	case down == nil:
		return
	case e.gone:
		a.log.Warn("a broker's host does not answer: marking it down and moving its clients", "broker", e.name, "address", b.Address)
	default:
		a.log.Info("a broker's host answers again: sending clients to it again", "broker", e.name)
	}
	prev := a.brokers.down
	closed := false
	closeConns := func() {
		if !e.gone || closed {
			return
		}
		closed = true
		// nginx sends no new client there now: the clients whose
		// connections close reconnect to the others at once.
		if err := a.d.CloseConns(ctx, b.Address, v.Cluster.Ports.Broker); err != nil {
			a.log.Error("close the connections to a broker whose host is gone", "broker", e.name, "err", err)
		}
	}
	err := a.runtimeChange(ctx, "brokers down "+names(down), func() { a.brokers.down = down }, func() { a.brokers.down = prev }, closeConns)
	if err != nil {
		a.log.Error("mark a broker down in nginx", "broker", e.name, "err", err)
	}
	closeConns() // the connections to a dead host are dead, marked or not
}

func names(m map[string]bool) string {
	var out []string
	for k, x := range m {
		if x {
			out = append(out, k)
		}
	}
	if len(out) == 0 {
		return "none"
	}
	slices.Sort(out)
	return strings.Join(out, ",")
}

// brokersKey identifies what the brokers watch of v watches: a commit that
// changes neither the brokers nor their port keeps the running one.
func brokersKey(v *View) string {
	var b strings.Builder
	for _, n := range v.Cluster.WithRole(cluster.Broker) {
		fmt.Fprintf(&b, "%s %s;", n.Name, n.Address)
	}
	fmt.Fprintf(&b, "%d", v.Cluster.Ports.Broker)
	return b.String()
}
