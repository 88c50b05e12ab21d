//go:build e2e

package e2e

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
)

// Whole-node loss: nodes powered off (link cut first, then every process
// killed: peers learn it from timeouts, as after a power cut) and
// partitioned (tc filters on the node's link). Each scenario prints its
// figures and leaves the lab serving for the next.

const (
	bridge2Addr   = 24
	bridgeVIPAddr = 101
)

// withStandby boots bridge2 (outside the definition) unless it runs, gives
// the bridge role to both bridge nodes (bridge 20, bridge2 10) and waits
// until one is the active bridge master and the other stands by. It
// returns the active one and the standby.
func withStandby(t *testing.T) (active, standby string) {
	t.Helper()
	addr := cfg.Addr(bridge2Addr)
	st, err := cfg.Load()
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := st.Node("bridge2"); !ok {
		if _, err := cfg.AddNode(t.Context(), labProject(), "bridge2", addr, "bridge"); err != nil {
			t.Fatal(err)
		}
	}
	// keepalived elects the bridge master: an address for it (.101), its
	// own VRRP router id, and the secret the bridge nodes share.
	def := fmt.Sprintf("package cluster\n\nnodes: bridge: priority: 20\nnodes: bridge2: {address: %q, roles: [\"bridge\"], priority: 10}\n"+
		"bridgeVIP: {address: \"%s/24\", routerID: 43, interface: \"host0\"}\ntls: bridgeSecret: \"/etc/mqha/tls/bridge.secret\"\n", addr, cfg.Addr(bridgeVIPAddr))
	if b, _ := os.ReadFile(filepath.Join(cfg.Dir, "cluster", "bridge2.cue")); string(b) != def {
		head := commit(t, "bridge standby: bridge2", map[string]string{"bridge2.cue": def})
		appliedAfter(t, head, time.Now(), 60*time.Second, "lb1", "lb2", "bridge", "bridge2", "broker1", "broker2")
	}
	// Settled: the same roles for 3 s (at start keepalived may elect one
	// and move the role once).
	var since time.Time
	var was string
	waitFor(t, 60*time.Second, "one bridge master and one standby, settled", func() bool {
		active, standby = bridgeRoles(t)
		switch {
		case active == "" || standby == "":
			since = time.Time{}
		case active != was || since.IsZero():
			was, since = active, time.Now()
		}
		return !since.IsZero() && time.Since(since) > 3*time.Second
	})
	return active, standby
}

// bridgeRoles are the bridge node whose keepalived is MASTER of the bridge
// instance, bridging (its connections linked in), and the one that is
// BACKUP, not bridging ("" when not exactly so).
func bridgeRoles(t *testing.T) (active, standby string) {
	t.Helper()
	// Read on the nodes, not asked of the agents: a test may stop one.
	for _, n := range []string{"bridge", "bridge2"} {
		var s struct{ State string }
		if json.Unmarshal([]byte(onAny(t, n, "cat", "/run/mqha/bridge-state.json")), &s) != nil {
			return "", ""
		}
		linked := strings.TrimSpace(onAny(t, n, "sh", "-c", "test -L /run/mqha/bridge/bridges.conf && echo yes")) == "yes"
		switch {
		case s.State == "MASTER" && linked && active == "":
			active = n
		case s.State == "BACKUP" && !linked && standby == "":
			standby = n
		default:
			return "", ""
		}
	}
	return active, standby
}

// crossFlow publishes numbered QoS1 messages on broker1 and receives them
// with a persistent subscriber on broker2: every message crosses the bridge.
type crossFlow struct {
	mu      sync.Mutex
	got     map[int]int       // message -> times received
	arrived map[int]time.Time // first arrival
	sentAt  []time.Time
	stop    chan struct{}
	done    chan struct{}
}

func startCrossFlow(t *testing.T, every time.Duration) *crossFlow {
	t.Helper()
	topic := fmt.Sprintf("e2e/nodeloss/%d", time.Now().UnixNano())
	f := &crossFlow{got: map[int]int{}, arrived: map[int]time.Time{}, stop: make(chan struct{}), done: make(chan struct{})}
	sub := client(t, brokerAddr(t, "broker2"), fmt.Sprintf("e2e-cross-sub-%d", time.Now().UnixNano()), false)
	tok := sub.Subscribe(topic, 1, func(_ mqtt.Client, m mqtt.Message) {
		var i int
		fmt.Sscanf(string(m.Payload()), "m%d", &i)
		f.mu.Lock()
		if f.got[i] == 0 {
			f.arrived[i] = time.Now()
		}
		f.got[i]++
		f.mu.Unlock()
	})
	if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("subscribe: %v", tok.Error())
	}
	pub := client(t, brokerAddr(t, "broker1"), fmt.Sprintf("e2e-cross-pub-%d", time.Now().UnixNano()), true)
	// The bridge subscribes on every broker as it connects: wait until a
	// message crosses before counting.
	waitFor(t, 30*time.Second, "a message crosses from broker1 to broker2", func() bool {
		pub.Publish(topic, 1, false, "m-1").WaitTimeout(time.Second)
		time.Sleep(200 * time.Millisecond)
		f.mu.Lock()
		defer f.mu.Unlock()
		return f.got[-1] > 0
	})
	go func() {
		defer close(f.done)
		tick := time.NewTicker(every)
		defer tick.Stop()
		for i := 0; ; i++ {
			select {
			case <-f.stop:
				return
			case <-tick.C:
			}
			f.mu.Lock()
			f.sentAt = append(f.sentAt, time.Now())
			f.mu.Unlock()
			// Acknowledged by broker1: from here on the cluster owes it.
			pub.Publish(topic, 1, false, fmt.Sprintf("m%d", i)).WaitTimeout(5 * time.Second)
		}
	}()
	return f
}

// outage is the longest stretch after t0 without any message arriving, and
// when it ended, after t0: how long cross-broker delivery was cut.
func (f *crossFlow) outage(t0 time.Time) (gap, restored time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var at []time.Time
	for _, a := range f.arrived {
		at = append(at, a)
	}
	sort.Slice(at, func(i, j int) bool { return at[i].Before(at[j]) })
	prev := t0
	for _, a := range at {
		if a.Before(t0) {
			continue
		}
		if d := a.Sub(prev); d > gap {
			gap, restored = d, a.Sub(t0)
		}
		prev = a
	}
	return gap, restored
}

// finish stops publishing, waits for stragglers, and counts.
func (f *crossFlow) finish(t *testing.T, wait time.Duration) (sent, received, lost, dups int) {
	t.Helper()
	close(f.stop)
	<-f.done
	f.mu.Lock()
	sent = len(f.sentAt)
	f.mu.Unlock()
	deadline := time.Now().Add(wait)
	for time.Now().Before(deadline) {
		f.mu.Lock()
		n := 0
		for i := 0; i < sent; i++ {
			if f.got[i] > 0 {
				n++
			}
		}
		f.mu.Unlock()
		if n == sent {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	var missing []int
	for i := 0; i < sent; i++ {
		switch c := f.got[i]; {
		case c == 0:
			lost++
			missing = append(missing, i)
		default:
			received++
			dups += c - 1
		}
	}
	if len(missing) > 0 {
		sort.Ints(missing)
		t.Logf("missing: %v", missing[:min(len(missing), 40)])
	}
	return sent, received, lost, dups
}

// TestBridgeMasterPowerOff: the active bridge master loses power; the
// standby takes over, the QoS1 messages published meanwhile (queued by
// broker1 in the bridge's session) cross, and the old master comes back as
// a standby without taking the role back.
func TestBridgeMasterPowerOff(t *testing.T) { bridgeMasterPowerOff(t) }

// lossFigures are what a node loss cost.
type lossFigures struct {
	Takeover, Outage, Restored time.Duration
	Sent, Lost, Dups           int
}

func bridgeMasterPowerOff(t *testing.T) lossFigures {
	active, standby := withStandby(t)
	f := startCrossFlow(t, 10*time.Millisecond)
	time.Sleep(2 * time.Second)
	t0 := time.Now()
	if err := cfg.PowerOff(t.Context(), active); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cfg.PowerOn(context.Background(), active) })
	report(t, "bridge master %s powered off (%s to cut and kill it)", active, time.Since(t0).Round(time.Millisecond))
	waitFor(t, 30*time.Second, standby+" takes over", func() bool {
		s := agentStatus(t, standby).Bridge
		return s != nil && s.Active
	})
	took := agentStatus(t, standby).Bridge.Since.Sub(t0)
	time.Sleep(3 * time.Second)
	sent, received, lost, dups := f.finish(t, 30*time.Second)
	gap, restored := f.outage(t0)
	report(t, "bridge master powered off: %s took over %s after the power-off; cross-broker delivery cut for %s, restored %s after the power-off (target 3 s); QoS1 published on broker1 at 100/s: %d sent, %d received, %d lost, %d duplicated",
		standby, took.Round(time.Millisecond), gap.Round(time.Millisecond), restored.Round(time.Millisecond), sent, received, lost, dups)
	// Bound: 3x the 3 s target.
	if restored > 9*time.Second {
		t.Errorf("cross-broker delivery restored after %s, want within 9 s", restored)
	}
	// What broker1 queued for the bridge session during the gap (~200
	// messages) must all arrive: the standby took the session over. Only
	// messages inside the dead master at the instant of the power cut can
	// be lost (MQTT acknowledges hop by hop: broker1 forgot them once the
	// master had them); mosquitto keeps at most 20 in flight per bridge
	// connection.
	if lost > 20 {
		t.Errorf("%d acknowledged QoS1 messages lost: more than were in flight in the dead bridge master", lost)
	}

	if err := cfg.PowerOn(t.Context(), active); err != nil {
		t.Fatal(err)
	}
	back := waitFor(t, 90*time.Second, active+" back as a standby of "+standby, func() bool {
		a, s := bridgeRoles(t)
		return a == standby && s == active
	})
	report(t, "%s powered on: a standby of %s %s later", active, standby, back.Round(time.Millisecond))
	time.Sleep(5 * time.Second)
	if a, _ := bridgeRoles(t); a != standby {
		t.Errorf("the bridge master moved back to %s (or away) after it returned", a)
	}
	if n := agentStatus(t, active).Bridge.Takeovers; n > 0 {
		t.Errorf("%s was bridge master %d times since it came back", active, n)
	}
	return lossFigures{Takeover: took, Outage: gap, Restored: restored, Sent: sent, Lost: lost, Dups: dups}
}

// TestBridgePartitions: (1) the standby cut off from the active one only
// must not take over while the active one still bridges; (2) the active
// one cut off from the brokers (not from the standby): the standby takes
// over and the old one stands down, and stays down when it sees again.
func TestBridgePartitions(t *testing.T) {
	active, standby := withStandby(t)
	activeAddr := node(t, active).Addr
	brokers := []string{node(t, "broker1").Addr, node(t, "broker2").Addr}

	f := startCrossFlow(t, 20*time.Millisecond)
	if err := cfg.Cut(t.Context(), standby, activeAddr); err != nil {
		t.Fatal(err)
	}
	time.Sleep(15 * time.Second) // 5x the 3 s a take-over needs
	s := agentStatus(t, standby).Bridge
	cfg.Heal(t.Context())
	if s.Active {
		t.Errorf("the standby cut off from the active one only: %s; want it standing by", s.State)
	}
	sent, received, lost, dups := f.finish(t, 30*time.Second)
	report(t, "standby cut off from the active bridge master for 15 s: stayed standby (%s); cross-broker QoS1: %d sent, %d received, %d lost, %d duplicated",
		s.State, sent, received, lost, dups)
	if lost > 0 || dups > 0 {
		t.Errorf("%d lost, %d duplicated while the standby only lost sight of the master", lost, dups)
	}

	f = startCrossFlow(t, 20*time.Millisecond)
	time.Sleep(time.Second)
	t0 := time.Now()
	if err := cfg.Cut(t.Context(), active, brokers...); err != nil {
		t.Fatal(err)
	}
	defer cfg.Heal(context.Background())
	waitFor(t, 60*time.Second, standby+" takes over from "+active+" cut off from the brokers", func() bool {
		s := agentStatus(t, standby).Bridge
		return s != nil && s.Active
	})
	took := agentStatus(t, standby).Bridge.Since.Sub(t0)
	old := agentStatus(t, active).Bridge
	if old.Active {
		t.Errorf("%s, cut off from the brokers, is still active: %s", active, old.State)
	}
	cfg.Heal(t.Context())
	time.Sleep(10 * time.Second)
	a, sb := bridgeRoles(t)
	sent, received, lost, dups = f.finish(t, 30*time.Second)
	gap, restored := f.outage(t0)
	report(t, "bridge master cut off from the brokers: %s took over %s after the cut, delivery cut for %s, restored %s after the cut; healed: active %s, standby %s; QoS1: %d sent, %d received, %d lost, %d duplicated",
		standby, took.Round(time.Millisecond), gap.Round(time.Millisecond), restored.Round(time.Millisecond), a, sb, sent, received, lost, dups)
	if a != standby || sb != active {
		t.Errorf("after healing: active %q, standby %q; want %s to stay master", a, sb, standby)
	}
	if lost > 0 {
		t.Errorf("%d acknowledged QoS1 messages lost", lost)
	}
}

// TestBridgeTugOfWar checks on the lab, not on trust, that two bridge
// masters at once cannot loop messages (both use the same client id per
// broker, so a broker holds one bridge session and the second takes it
// over), and that such a tug of war ends without the agents: the standby's
// agent is stopped and its mosquitto given the bridges by hand (the link
// keepalived's notify makes on a master); keepalived's bridge check on it
// finds mosquitto bridging against keepalived's state and takes them out.
func TestBridgeTugOfWar(t *testing.T) {
	active, standby := withStandby(t)
	on(t, standby, "systemctl", "stop", "mqha-agent")
	t.Cleanup(func() { onAny(t, standby, "systemctl", "start", "mqha-agent") })
	f := startCrossFlow(t, 20*time.Millisecond)
	time.Sleep(time.Second)
	t0 := time.Now()
	on(t, standby, "sh", "-c", "ln -sf /etc/mosquitto/mqha-bridges.conf /run/mqha/bridge/bridges.conf && systemctl restart mosquitto")
	d := waitFor(t, 30*time.Second, "the bridge check ends the tug of war", func() bool {
		a, s := bridgeRoles(t)
		return a == active && s == standby
	})
	time.Sleep(3 * time.Second)
	since := fmt.Sprintf("-%ds", int(time.Since(t0).Seconds())+2)
	takeovers := strings.Count(on(t, "broker1", "journalctl", "-u", "mosquitto", "--since", since, "-o", "cat"), "already connected, closing old connection")
	repaired := strings.Contains(on(t, standby, "journalctl", "--since", since, "-o", "cat"), "bridged against keepalived's state")
	sent, received, lost, dups := f.finish(t, 30*time.Second)
	report(t, "%s bridging by hand while BACKUP: ended by its bridge check %s later (agent stopped), broker1 saw the bridge session taken over %d times; QoS1 across: %d sent, %d received, %d lost, %d duplicated (a loop would repeat every message without end)",
		standby, d.Round(time.Millisecond), takeovers, sent, received, lost, dups)
	if !repaired {
		t.Errorf("%s's journal does not say the bridge check took the bridges out", standby)
	}
	if dups > sent/4 {
		t.Errorf("%d duplicates of %d messages: messages circulate", dups, sent)
	}
	if lost > 0 {
		t.Errorf("%d acknowledged QoS1 messages lost", lost)
	}
}

// TestVIPHolderPowerOff: the load balancer holding the VIP loses power
// (keepalived sends no last advert): the other one serves the VIP after
// about three missed adverts, a persistent QoS1 subscriber through the VIP
// loses nothing, and the VIP stays put when the old holder comes back.
func TestVIPHolderPowerOff(t *testing.T) { vipHolderPowerOff(t) }

// vipHolderPowerOff returns how long until the VIP served again.
func vipHolderPowerOff(t *testing.T) time.Duration {
	holder := waitVIP(t, 15*time.Second)
	other := map[string]string{"lb1": "lb2", "lb2": "lb1"}[holder]
	t.Logf("this host's clients go to %s through either load balancer", lbsAgree(t))
	s := startStream(t, "vip-poweroff")
	time.Sleep(time.Second)

	t0 := time.Now()
	go cfg.PowerOff(t.Context(), holder)
	t.Cleanup(func() { cfg.PowerOn(context.Background(), holder) })
	back := vipServesFrom(t, t0, other)
	report(t, "VIP holder %s powered off: VIP serving TLS from %s after %s (target 1 s)", holder, other, back.Round(time.Millisecond))
	time.Sleep(3 * time.Second)
	s.finish(t)
	// Bound: 3x the 1 s target.
	if back > 3*time.Second {
		t.Errorf("VIP back after %s, want within 3 s", back)
	}

	if err := cfg.PowerOn(t.Context(), holder); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 90*time.Second, holder+" serves again", func() bool {
		st := agentStatus(t, holder)
		return st.Applied != "" && len(st.Checks) > 0 && st.Checks[0].OK
	})
	time.Sleep(3 * time.Second)
	if h := vipHolder(t); h != other {
		t.Errorf("the VIP moved again when %s came back, to %q", holder, h)
	}
	return back
}

// TestBrokerPowerOff: a broker loses power under 200 idle clients through
// the VIP. The load balancers find its host gone, mark it down and close
// the connections to it: its clients reconnect to the other broker (time
// to 95%); the others keep theirs. Powered on, it takes clients again.
func TestBrokerPowerOff(t *testing.T) { brokerPowerOff(t) }

// brokerPowerOff returns when 95% of the broker's clients were back.
func brokerPowerOff(t *testing.T) time.Duration {
	const perSrc = 10
	srcs := sourceAddrs(t, 20)
	tc := tlsConfig(t)
	type idle struct {
		src, broker string
		closed      chan struct{}
	}
	var clients []*idle
	per := map[string]int{}
	for i, src := range srcs {
		for j := range perSrc {
			c, broker := connectFrom(t, src, fmt.Sprintf("idle-%d-%d", i, j))
			cl := &idle{src, broker, make(chan struct{})}
			go func() {
				io.Copy(io.Discard, c)
				close(cl.closed)
			}()
			clients = append(clients, cl)
			per[broker]++
		}
	}
	victim := "broker1"
	if per["broker2"] > per["broker1"] {
		victim = "broker2"
	}
	if per[victim] == 0 || per[victim] == len(clients) {
		t.Fatalf("clients per broker %v: need some on each", per)
	}
	t.Logf("%d idle clients through the VIP: %v; powering off %s", len(clients), per, victim)

	t0 := time.Now()
	if err := cfg.PowerOff(t.Context(), victim); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cfg.PowerOn(context.Background(), victim) })
	// Each client of the victim reconnects (from its address) when its
	// connection closes; record when it is back, on which broker.
	type result struct {
		at     time.Duration
		broker string
	}
	results := make(chan result, len(clients))
	var moving int
	for i, cl := range clients {
		if cl.broker != victim {
			continue
		}
		moving++
		go func() {
			select {
			case <-cl.closed:
			case <-time.After(60 * time.Second):
				results <- result{-1, ""}
				return
			}
			for time.Since(t0) < 60*time.Second {
				c, b, err := dialFrom(tc, cl.src, fmt.Sprintf("moved-%d", i), 5*time.Second)
				if err == nil {
					t.Cleanup(func() { c.Close() })
					results <- result{time.Since(t0), b}
					return
				}
				time.Sleep(100 * time.Millisecond)
			}
			results <- result{-1, ""}
		}()
	}
	var times []time.Duration
	for range moving {
		r := <-results
		if r.at < 0 {
			continue
		}
		if r.broker == victim {
			t.Errorf("a client reconnected to %s, which is powered off", victim)
		}
		times = append(times, r.at)
	}
	sort.Slice(times, func(i, j int) bool { return times[i] < times[j] })
	if len(times) < moving*95/100 {
		t.Fatalf("only %d of %d clients of %s reconnected within 60 s", len(times), moving, victim)
	}
	p95 := times[(moving*95+99)/100-1]
	kept := 0
	for _, cl := range clients {
		if cl.broker == victim {
			continue
		}
		select {
		case <-cl.closed:
		default:
			kept++
		}
	}
	report(t, "%s powered off under %d idle clients: its %d clients reconnected to another broker, 95%% within %s (first %s, last %s; target 5 s); %d of %d clients of the other broker kept their connections",
		victim, len(clients), moving, p95.Round(time.Millisecond), times[0].Round(time.Millisecond), times[len(times)-1].Round(time.Millisecond), kept, len(clients)-moving)
	// Bound: 3x the 5 s target.
	if p95 > 15*time.Second {
		t.Errorf("95%% of the clients back after %s, want within 15 s", p95)
	}
	if kept != len(clients)-moving {
		t.Errorf("%d clients of the other broker lost their connections", len(clients)-moving-kept)
	}
	if !handshake(vip(), func() *tls.Config { c := tc.Clone(); c.ServerName = cfg.VIP(); return c }()) {
		t.Errorf("the VIP does not serve with %s off", victim)
	}

	if err := cfg.PowerOn(t.Context(), victim); err != nil {
		t.Fatal(err)
	}
	var src string
	for _, cl := range clients {
		if cl.broker == victim {
			src = cl.src
			break
		}
	}
	back := waitFor(t, 90*time.Second, victim+" takes clients again", func() bool {
		c, b, err := dialFrom(tc, src, "rejoin", 5*time.Second)
		if err != nil {
			return false
		}
		c.Close()
		return b == victim
	})
	report(t, "%s powered on: clients from %s land on it again %s later", victim, src, back.Round(time.Millisecond))
	return p95
}
