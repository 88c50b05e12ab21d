//go:build e2e

package e2e

import (
	"fmt"
	"net"
	"net/url"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
)

// These tests add a bridge standby (withStandby) and move the bridge role:
// the file sorts after lab_test.go, whose tests expect the lab's one
// bridge, as the other node-loss tests do.

// TestRetainedAfterBridgeTakeover: a bridge node keeps the retained
// messages it relayed as master; mosquitto's bridge sends every one of its
// own to a broker it connects to. So a node that takes the role back would
// hand the brokers what they held when it last bridged: a message cleared
// and one replaced meanwhile would return on every broker. The strip at
// start (internal/retained: a bridge node relays, its store is dropped
// whenever mosquitto starts) must keep the brokers' state.
func TestRetainedAfterBridgeTakeover(t *testing.T) {
	first, second := withStandby(t)
	base := fmt.Sprintf("e2e/retained-takeover/%d", time.Now().UnixNano())
	cleared, replaced := base+"/cleared", base+"/replaced"
	pub := client(t, brokerAddr(t, "broker1"), fmt.Sprintf("e2e-retainer-%d", time.Now().UnixNano()), true)
	publishR := func(tp, payload string) {
		if tok := pub.Publish(tp, 1, true, payload); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			t.Fatalf("publish retained %s: %v", tp, tok.Error())
		}
	}
	t.Cleanup(func() {
		publishR(cleared, "")
		publishR(replaced, "")
	})
	both := []string{cleared, replaced}
	publishR(cleared, "old")
	publishR(replaced, "v1")
	waitFor(t, 10*time.Second, "broker2 holding the retained messages (bridged by "+first+")", func() bool {
		return len(retainedOn(t, brokerAddr(t, "broker2"), both, 300*time.Millisecond)) == 2
	})
	// Restarting the master's keepalived moves the role (nopreempt: the
	// node comes back as the standby).
	move := func(from, to string) {
		t.Helper()
		on(t, from, "systemctl", "restart", "keepalived")
		waitFor(t, 60*time.Second, to+" bridging, "+from+" its standby", func() bool {
			a, s := bridgeRoles(t)
			return a == to && s == from
		})
	}
	move(first, second)
	publishR(cleared, "")
	publishR(replaced, "v2")
	want := map[string]string{replaced: "v2"}
	waitFor(t, 10*time.Second, "broker2 holding the changes (bridged by "+second+")", func() bool {
		return fmt.Sprint(retainedOn(t, brokerAddr(t, "broker2"), both, 300*time.Millisecond)) == fmt.Sprint(want)
	})
	t0 := time.Now()
	move(second, first)
	took := time.Since(t0)
	time.Sleep(3 * time.Second) // what the new master sends has crossed
	got1 := retainedOn(t, brokerAddr(t, "broker1"), both, time.Second)
	got2 := retainedOn(t, brokerAddr(t, "broker2"), both, time.Second)
	report(t, "%s bridged while a message was retained, %s took over, one message was cleared and one replaced, %s took the role back (%s): broker1 holds %v, broker2 %v",
		first, second, first, took.Round(100*time.Millisecond), got1, got2)
	for b, got := range map[string]map[string]string{"broker1": got1, "broker2": got2} {
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("%s holds %v after %s took the role back; want %v (what it held before)", b, got, first, want)
		}
	}
}

// qos2Flow publishes numbered QoS 2 messages on broker1 to a persistent
// QoS 2 subscriber on broker2, and counts what arrived how often.
type qos2Flow struct {
	mu   sync.Mutex
	got  map[int]int
	sent int
	pub  mqtt.Client
	tp   string
}

func startQoS2(t *testing.T, tag string) *qos2Flow {
	t.Helper()
	f := &qos2Flow{got: map[int]int{}, tp: fmt.Sprintf("e2e/qos2/%s/%d", tag, time.Now().UnixNano())}
	sub := client(t, brokerAddr(t, "broker2"), fmt.Sprintf("e2e-qos2-sub-%d", time.Now().UnixNano()), false)
	if tok := sub.Subscribe(f.tp, 2, func(_ mqtt.Client, m mqtt.Message) {
		var i int
		fmt.Sscanf(string(m.Payload()), "m%d", &i)
		f.mu.Lock()
		f.got[i]++
		f.mu.Unlock()
	}); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("subscribe: %v", tok.Error())
	}
	f.pub = client(t, brokerAddr(t, "broker1"), fmt.Sprintf("e2e-qos2-pub-%d", time.Now().UnixNano()), true)
	waitFor(t, 30*time.Second, "a QoS 2 message crosses from broker1 to broker2", func() bool {
		f.pub.Publish(f.tp, 2, false, "m-1").WaitTimeout(time.Second)
		time.Sleep(200 * time.Millisecond)
		f.mu.Lock()
		defer f.mu.Unlock()
		return f.got[-1] > 0
	})
	return f
}

// send publishes n messages, one every gap, each acknowledged (PUBCOMP) by
// broker1 before the next; during runs alongside.
func (f *qos2Flow) send(t *testing.T, n int, gap time.Duration, during func()) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		defer close(done)
		if during != nil {
			during()
		}
	}()
	for range n {
		i := f.sent
		if tok := f.pub.Publish(f.tp, 2, false, fmt.Sprintf("m%d", i)); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			t.Fatalf("publish m%d at QoS 2: %v", i, tok.Error())
		}
		f.sent++
		time.Sleep(gap)
	}
	<-done
}

// count waits up to d for every message sent, then counts.
func (f *qos2Flow) count(d time.Duration) (lost, dups int) {
	deadline := time.Now().Add(d)
	for {
		f.mu.Lock()
		lost, dups = 0, 0
		for i := range f.sent {
			switch n := f.got[i]; {
			case n == 0:
				lost++
			case n > 1:
				dups += n - 1
			}
		}
		f.mu.Unlock()
		if lost == 0 || time.Now().After(deadline) {
			return lost, dups
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// TestQoS2AcrossBrokers: QoS 2 from a client of broker1 to a client of
// broker2 is exactly once while the bridge stands; across a bridge
// take-over (the master's keepalived restarted: the role moves) what
// crosses is counted, lost and duplicated (docs/clients.md).
func TestQoS2AcrossBrokers(t *testing.T) {
	f := startQoS2(t, "steady")
	f.send(t, 300, 10*time.Millisecond, nil)
	lost, dups := f.count(10 * time.Second)
	report(t, "QoS 2 from broker1 to broker2, the bridge standing: %d sent, %d lost, %d duplicated", f.sent, lost, dups)
	if lost != 0 || dups != 0 {
		t.Errorf("QoS 2 across brokers: %d lost, %d duplicated of %d; want exactly once", lost, dups, f.sent)
	}

	active, standby := withStandby(t)
	g := startQoS2(t, "takeover")
	g.send(t, 300, 10*time.Millisecond, func() {
		time.Sleep(time.Second)
		on(t, active, "systemctl", "restart", "keepalived")
	})
	lost, dups = g.count(30 * time.Second)
	a, s := bridgeRoles(t)
	report(t, "QoS 2 from broker1 to broker2 across a bridge take-over (%s's keepalived restarted; after it: master %q, standby %q): %d sent, %d lost, %d duplicated",
		active, a, s, g.sent, lost, dups)
	if a != standby {
		t.Errorf("the role did not move: master %q, want %s", a, standby)
	}
	// The default bridges keep their sessions on the brokers (clean session
	// off), so nothing acknowledged is lost; what the old master had in
	// flight may arrive twice.
	if lost != 0 {
		t.Errorf("%d of %d acknowledged QoS 2 messages lost across a bridge take-over", lost, g.sent)
	}
}

// willClient connects id to addr with a will on topic (QoS 1) and returns
// a function that cuts its TCP connection without a DISCONNECT, as a
// crashed client or a lost network would.
func willClient(t *testing.T, addr, id, topic string) (cut func()) {
	t.Helper()
	var mu sync.Mutex
	var conn net.Conn
	o := mqtt.NewClientOptions().AddBroker("ssl://"+addr).SetClientID(id).SetTLSConfig(tlsConfig(t)).
		SetCleanSession(true).SetAutoReconnect(false).SetKeepAlive(30*time.Second).
		SetWill(topic, "gone: "+id, 1, false).
		SetCustomOpenConnectionFn(func(u *url.URL, o mqtt.ClientOptions) (net.Conn, error) {
			c, err := dialTLS(t, u.Host)
			if err != nil {
				return nil, err
			}
			mu.Lock()
			conn = c
			mu.Unlock()
			return c, nil
		})
	c := mqtt.NewClient(o)
	if tok := c.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("connect %s with a will: %v", id, tok.Error())
	}
	return func() {
		mu.Lock()
		defer mu.Unlock()
		conn.Close()
	}
}

// TestWillAcrossBrokers: a client of broker1 with a will loses its
// connection; a client of broker2 gets the will (broker1 publishes it as any
// message and the bridge carries it).
func TestWillAcrossBrokers(t *testing.T) {
	topic := fmt.Sprintf("e2e/will/%d", time.Now().UnixNano())
	sub := client(t, brokerAddr(t, "broker2"), fmt.Sprintf("e2e-will-sub-%d", time.Now().UnixNano()), true)
	got := make(chan time.Time, 4)
	if tok := sub.Subscribe(topic, 1, func(mqtt.Client, mqtt.Message) { got <- time.Now() }); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	cut := willClient(t, brokerAddr(t, "broker1"), fmt.Sprintf("e2e-will-%d", time.Now().UnixNano()), topic)
	time.Sleep(500 * time.Millisecond) // the bridge carries the subscription's messages by now
	t0 := time.Now()
	cut()
	select {
	case at := <-got:
		report(t, "will of a client of broker1 whose connection broke: on broker2 %s later", at.Sub(t0).Round(time.Millisecond))
	case <-time.After(15 * time.Second):
		// Bound: mosquitto publishes a will as it sees the socket close (tens of ms).
		t.Fatal("no will reached broker2 within 15 s of its client's connection breaking on broker1")
	}
	select {
	case <-got:
		t.Error("the will arrived twice")
	case <-time.After(time.Second):
	}
}
