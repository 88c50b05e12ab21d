//go:build e2e && soak

package e2e

import (
	"context"
	"crypto/tls"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/mqha/mqha/internal/cluster"
	"github.com/mqha/mqha/internal/soak"
)

// The soak's load: a tenth of the clients publish (5 msg/s each, two in
// three at QoS1), the others subscribe, each to one publisher, half of
// them with a persistent session. Clients come from several source
// addresses, so they spread over the brokers (nginx hashes the client's
// address) and most messages cross the bridge. Every message carries its
// publisher, sequence number and publish time.

const (
	soakRate    = 5 // messages a second per publisher
	soakMaxSeqs = 1 << 20
)

type load struct {
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	tc     *tls.Config
	start  time.Time

	mu    sync.Mutex
	pubs  []*soak.Publisher
	subs  []*soak.Subscriber
	homes map[string][]soak.Home
	// per second since the start: deliveries and their latencies
	delivered map[int64][]time.Duration
}

func startLoad(ctx context.Context, t *testing.T, clients int) *load {
	srcs := sourceAddrs(t, 8)
	ctx, cancel := context.WithCancel(ctx)
	l := &load{ctx: ctx, cancel: cancel, tc: tlsConfig(t), homes: map[string][]soak.Home{}, delivered: map[int64][]time.Duration{}, start: time.Now()}
	npub := max(2, clients/10)
	for i := range npub {
		qos := byte(1)
		if i%3 == 2 {
			qos = 0
		}
		p := &soak.Publisher{Name: fmt.Sprintf("soak-pub-%d", i), QoS: qos, Acked: make([]time.Time, 0, 4096), Published: make([]time.Time, 0, 4096)}
		l.pubs = append(l.pubs, p)
		l.wg.Add(1)
		go l.publish(p, srcs[i%len(srcs)])
	}
	for i := range clients - npub {
		s := &soak.Subscriber{Name: fmt.Sprintf("soak-sub-%d", i), Persistent: i%2 == 0, Follows: l.pubs[i%npub].Name}
		l.subs = append(l.subs, s)
		l.wg.Add(1)
		go l.subscribe(s, srcs[(i+3)%len(srcs)])
	}
	return l
}

// home records that client reached broker now.
func (l *load) home(client string) func(string) {
	return func(broker string) {
		l.mu.Lock()
		defer l.mu.Unlock()
		h := l.homes[client]
		if len(h) == 0 || h[len(h)-1].Broker != broker {
			l.homes[client] = append(h, soak.Home{At: time.Now(), Broker: broker})
		}
	}
}

func (l *load) publish(p *soak.Publisher, src string) {
	defer l.wg.Done()
	o := mqtt.NewClientOptions().AddBroker("ssl://" + vip()).SetClientID(p.Name).SetCleanSession(true).
		SetCustomOpenConnectionFn(dialVia(l.tc, src, l.home(p.Name))).SetAutoReconnect(true).SetConnectRetry(true).
		SetConnectRetryInterval(500 * time.Millisecond).SetMaxReconnectInterval(time.Second).
		SetKeepAlive(5 * time.Second).SetPingTimeout(3 * time.Second).SetConnectTimeout(5 * time.Second).SetOrderMatters(false)
	c := mqtt.NewClient(o)
	c.Connect()
	defer c.Disconnect(200)
	tick := time.NewTicker(time.Second / soakRate)
	defer tick.Stop()
	var waits sync.WaitGroup
	defer waits.Wait()
	for seq := 0; seq < soakMaxSeqs; seq++ {
		select {
		case <-l.ctx.Done():
			return
		case <-tick.C:
		}
		l.mu.Lock()
		p.Sent++
		p.Acked = append(p.Acked, time.Time{})
		p.Published = append(p.Published, time.Now())
		l.mu.Unlock()
		payload := fmt.Sprintf("%s %d %d", p.Name, seq, time.Now().UnixNano())
		tok := c.Publish("soak/"+p.Name, p.QoS, false, payload)
		waits.Add(1)
		go func() {
			defer waits.Done()
			if !tok.WaitTimeout(30*time.Second) || tok.Error() != nil {
				return // never acknowledged: owed to no one
			}
			l.mu.Lock()
			p.Acked[seq] = time.Now()
			l.mu.Unlock()
		}()
	}
}

// subscribe keeps s connected, reconnecting by hand so that each connect
// says whether its session was there.
func (l *load) subscribe(s *soak.Subscriber, src string) {
	defer l.wg.Done()
	var last map[string]int // sequence numbers seen last, by publisher
	last = map[string]int{}
	newest := -1 // the highest sequence number this connection delivered
	got := func(_ mqtt.Client, m mqtt.Message) {
		f := strings.Fields(string(m.Payload()))
		if len(f) != 3 {
			return
		}
		seq, err1 := strconv.Atoi(f[1])
		ns, err2 := strconv.ParseInt(f[2], 10, 64)
		if err1 != nil || err2 != nil || seq >= soakMaxSeqs {
			return
		}
		now := time.Now()
		l.mu.Lock()
		defer l.mu.Unlock()
		for len(s.Got) <= seq {
			s.Got = append(s.Got, false)
		}
		if s.Got[seq] {
			s.Duplicates++
			return
		}
		s.Got[seq] = true
		s.Received++
		newest = max(newest, seq)
		if prev, ok := last[f[0]]; ok && seq < prev {
			s.Reordered++
		}
		last[f[0]] = seq
		sec := int64(now.Sub(l.start) / time.Second)
		l.delivered[sec] = append(l.delivered[sec], now.Sub(time.Unix(0, ns)))
	}
	ever := false
	for l.ctx.Err() == nil {
		lost := make(chan struct{}, 1)
		o := mqtt.NewClientOptions().AddBroker("ssl://" + vip()).SetClientID(s.Name).SetCleanSession(!s.Persistent).
			SetCustomOpenConnectionFn(dialVia(l.tc, src, l.home(s.Name))).SetAutoReconnect(false).
			SetKeepAlive(5 * time.Second).SetPingTimeout(3 * time.Second).SetConnectTimeout(5 * time.Second).SetOrderMatters(false).
			SetDefaultPublishHandler(got).SetConnectionLostHandler(func(mqtt.Client, error) { lost <- struct{}{} })
		c := mqtt.NewClient(o)
		l.mu.Lock()
		newest = -1
		l.mu.Unlock()
		tok := c.Connect()
		if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			c.Disconnect(0)
			sleepCtx(l.ctx, 500*time.Millisecond)
			continue
		}
		present := tok.(*mqtt.ConnectToken).SessionPresent()
		sub := c.Subscribe("soak/"+s.Follows, 1, nil)
		if !sub.WaitTimeout(10*time.Second) || sub.Error() != nil {
			c.Disconnect(0)
			continue
		}
		up := soak.Interval{From: time.Now()}
		l.mu.Lock()
		if s.Persistent && ever && !present {
			s.SessionLost = append(s.SessionLost, up.From)
		}
		ever = true
		l.mu.Unlock()
		select {
		case <-lost:
		case <-l.ctx.Done():
		}
		up.To = time.Now()
		l.mu.Lock()
		up.Last = newest
		s.Up = append(s.Up, up)
		l.mu.Unlock()
		c.Disconnect(100)
	}
}

func sleepCtx(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

// second is what was delivered in second sec of the run.
func (l *load) second(sec int64) (int, time.Duration) {
	l.mu.Lock()
	lat := slices.Clone(l.delivered[sec])
	l.mu.Unlock()
	if len(lat) == 0 {
		return 0, 0
	}
	slices.Sort(lat)
	return len(lat), lat[len(lat)*99/100]
}

// stop ends the load and hands over what it recorded.
func (l *load) stop() ([]soak.Publisher, []soak.Subscriber, map[string][]soak.Home) {
	l.cancel()
	l.wg.Wait()
	l.mu.Lock()
	defer l.mu.Unlock()
	var pubs []soak.Publisher
	for _, p := range l.pubs {
		pubs = append(pubs, *p)
	}
	var subs []soak.Subscriber
	for _, s := range l.subs {
		subs = append(subs, *s)
	}
	return pubs, subs, l.homes
}

// sampler samples the invariants once a second.
type sampler struct {
	cancel  context.CancelFunc
	done    chan struct{}
	samples []soak.Sample
}

func startSampler(ctx context.Context, t *testing.T, l *load) *sampler {
	ctx, cancel := context.WithCancel(ctx)
	s := &sampler{cancel: cancel, done: make(chan struct{})}
	tc := tlsConfig(t)
	bridgeAddrs := map[string]string{}
	st, err := cfg.Load()
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range st.Nodes {
		if strings.HasPrefix(n.Name, "bridge") {
			bridgeAddrs[n.Addr] = n.Name
		}
	}
	states := watchBridgeStates(ctx, t, "bridge", "bridge2")
	go func() {
		defer close(s.done)
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		for i := 0; ; i++ {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			sm := soak.Sample{At: time.Now(), Bridges: map[string][]string{}}
			for _, lb := range []string{"lb1", "lb2"} {
				if holds(lb, cfg.VIP()) {
					sm.VIPHolders = append(sm.VIPHolders, lb)
				}
			}
			for _, b := range []string{"bridge", "bridge2"} {
				if holds(b, cfg.Addr(bridgeVIPAddr)) {
					sm.BridgeHold = b
				}
			}
			for _, b := range []string{"broker1", "broker2", "broker3"} {
				// A bridge node bridges a broker when its mosquitto says
				// the connection is up and the broker holds a connection
				// from it: a dead connection a broker keeps until its
				// keepalive runs out, or a standby's bridge check, is no
				// bridge session.
				for _, n := range bridgesOn(b, bridgeAddrs) {
					if states.up(n, b) {
						sm.Bridges[b] = append(sm.Bridges[b], n)
					}
				}
			}
			sm.VIPBroker, sm.VIPError = probeVIP(tc, i)
			sm.VIPServed = sm.VIPError == ""
			sm.Delivered, sm.P99 = l.second(int64(sm.At.Sub(l.start)/time.Second) - 1)
			s.samples = append(s.samples, sm)
		}
	}()
	return s
}

// bridgeStates follows, on each bridge node's mosquitto, the retained
// $SYS/broker/connection/<client id>/state of its bridge connections: 1
// while the connection to that broker is up. A node that cannot be asked
// (powered off, cut off, mosquitto stopped) bridges nothing as far as the
// sampler knows: its state is dropped with the connection.
type bridgeStates struct {
	mu    sync.Mutex
	state map[string]map[string]bool // node -> broker -> up
}

func watchBridgeStates(ctx context.Context, t *testing.T, nodes ...string) *bridgeStates {
	s := &bridgeStates{state: map[string]map[string]bool{}}
	for _, n := range nodes {
		addr, ok := nodeAddr(n)
		if !ok {
			continue
		}
		tc := nodeTLS(t, n)
		tc.ServerName = addr
		o := mqtt.NewClientOptions().AddBroker("ssl://" + cluster.HostPort(addr, 8883)).SetClientID(fmt.Sprintf("soak-bridges-%s-%d", n, time.Now().UnixNano())).
			SetTLSConfig(tc).SetCleanSession(true).SetKeepAlive(2 * time.Second).SetPingTimeout(time.Second).
			SetConnectTimeout(2 * time.Second).SetAutoReconnect(true).SetMaxReconnectInterval(time.Second).SetConnectRetry(true).SetConnectRetryInterval(time.Second)
		o.SetOnConnectHandler(func(c mqtt.Client) {
			c.Subscribe("$SYS/broker/connection/+/state", 0, func(_ mqtt.Client, m mqtt.Message) {
				id := strings.TrimSuffix(strings.TrimPrefix(m.Topic(), "$SYS/broker/connection/"), "/state")
				_, rest, ok := strings.Cut(id, "-bridge-to-")
				if !ok {
					return
				}
				broker, _, _ := strings.Cut(rest, "-")
				s.mu.Lock()
				if s.state[n] == nil {
					s.state[n] = map[string]bool{}
				}
				s.state[n][broker] = string(m.Payload()) == "1"
				s.mu.Unlock()
			})
		})
		o.SetConnectionLostHandler(func(mqtt.Client, error) {
			s.mu.Lock()
			delete(s.state, n)
			s.mu.Unlock()
		})
		c := mqtt.NewClient(o)
		c.Connect()
		go func() {
			<-ctx.Done()
			c.Disconnect(100)
		}()
	}
	return s
}

func (s *bridgeStates) up(node, broker string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.state[node][broker]
}

// nodeAddr is a lab node's address.
func nodeAddr(name string) (string, bool) {
	st, err := cfg.Load()
	if err != nil {
		return "", false
	}
	n, ok := st.Node(name)
	return n.Addr, ok
}

func (s *sampler) stop() []soak.Sample {
	s.cancel()
	<-s.done
	return s.samples
}

// holds reports whether node holds addr (false when it cannot be asked).
func holds(node, addr string) bool {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	out, err := exec1out(ctx, node, "ip", "-o", "-4", "addr", "show")
	return err == nil && strings.Contains(out, " "+addr+"/")
}

// bridgesOn are the bridge nodes with a connection to broker's bridge
// listener.
func bridgesOn(broker string, bridgeAddrs map[string]string) []string {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	out, err := exec1out(ctx, broker, "ss", "-Htn", "state", "established", "( sport = :8884 )")
	if err != nil {
		return nil
	}
	var on []string
	for _, l := range strings.Split(out, "\n") {
		f := strings.Fields(l)
		if len(f) < 4 {
			continue
		}
		host := f[3][:strings.LastIndex(f[3], ":")]
		if n, ok := bridgeAddrs[strings.TrimPrefix(host, "::ffff:")]; ok && !slices.Contains(on, n) {
			on = append(on, n)
		}
	}
	return on
}

// probeVIP is an MQTT round trip through the VIP: connect, subscribe,
// publish at QoS1, receive, within 3 s. It returns the broker it reached
// and what failed ("" none).
func probeVIP(tc *tls.Config, i int) (string, string) {
	broker := ""
	id := fmt.Sprintf("soak-probe-%d-%d", time.Now().Unix(), i)
	o := mqtt.NewClientOptions().AddBroker("ssl://" + vip()).SetClientID(id).SetCleanSession(true).
		SetCustomOpenConnectionFn(dialVia(tc, "", func(b string) { broker = b })).
		SetAutoReconnect(false).SetConnectTimeout(3 * time.Second).SetKeepAlive(5 * time.Second)
	c := mqtt.NewClient(o)
	deadline := time.Now().Add(3 * time.Second)
	tok := c.Connect()
	if !tok.WaitTimeout(3*time.Second) || tok.Error() != nil {
		return broker, fmt.Sprintf("connect: %v", tok.Error())
	}
	defer c.Disconnect(0)
	got := make(chan struct{}, 1)
	topic := "soak/probe/" + id
	if s := c.Subscribe(topic, 1, func(mqtt.Client, mqtt.Message) { got <- struct{}{} }); !s.WaitTimeout(time.Until(deadline)) || s.Error() != nil {
		return broker, "subscribe: timeout"
	}
	if p := c.Publish(topic, 1, false, "x"); !p.WaitTimeout(time.Until(deadline)) || p.Error() != nil {
		return broker, "publish: timeout"
	}
	select {
	case <-got:
		return broker, ""
	case <-time.After(time.Until(deadline)):
		return broker, "no message back within 3 s"
	}
}
