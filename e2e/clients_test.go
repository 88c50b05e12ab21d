//go:build e2e

package e2e

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/packets"
	"github.com/eclipse/paho.golang/paho"
	mqtt "github.com/eclipse/paho.mqtt.golang"
)

// What clients see when they land on different brokers (docs/clients.md):
// each test connects its clients to brokers directly, as clients from
// different addresses would be sent through the VIP, and says what it
// measured.

// v5 is an MQTT 5 client of the lab and what it received.
type v5 struct {
	c   *paho.Client
	mu  sync.Mutex
	got []*paho.Publish
}

// dialTLS opens a TLS connection to a broker of the lab as a client.
func dialTLS(t *testing.T, addr string) (*tls.Conn, error) {
	tc := tlsConfig(t)
	host, _, _ := net.SplitHostPort(addr)
	tc.ServerName = host
	return tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, tc)
}

func dialV5(t *testing.T, addr, id string) *v5 {
	t.Helper()
	conn, err := dialTLS(t, addr)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	v := &v5{}
	v.c = paho.NewClient(paho.ClientConfig{Conn: packets.NewThreadSafeConn(conn),
		OnPublishReceived: []func(paho.PublishReceived) (bool, error){func(r paho.PublishReceived) (bool, error) {
			v.mu.Lock()
			v.got = append(v.got, r.Packet)
			v.mu.Unlock()
			return true, nil
		}}})
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	ca, err := v.c.Connect(ctx, &paho.Connect{ClientID: id, KeepAlive: 30, CleanStart: true})
	if err != nil || ca.ReasonCode != 0 {
		t.Fatalf("MQTT 5 connect to %s: %v %+v", addr, err, ca)
	}
	t.Cleanup(func() { v.c.Disconnect(&paho.Disconnect{}) })
	return v
}

func (v *v5) subscribe(t *testing.T, topic string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if _, err := v.c.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: topic, QoS: 1}}}); err != nil {
		t.Fatalf("subscribe %s: %v", topic, err)
	}
}

func (v *v5) first(t *testing.T, d time.Duration) *paho.Publish {
	t.Helper()
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		v.mu.Lock()
		if len(v.got) > 0 {
			p := v.got[0]
			v.mu.Unlock()
			return p
		}
		v.mu.Unlock()
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("no message within %s", d)
	return nil
}

// propsKept compares the MQTT 5 properties a message was published with to
// what arrived, and names those that did not.
func propsKept(sent, got *paho.PublishProperties) (kept int, lost []string) {
	if got == nil {
		got = &paho.PublishProperties{}
	}
	check := func(name string, ok bool) {
		if ok {
			kept++
		} else {
			lost = append(lost, name)
		}
	}
	check("user property", len(got.User) == len(sent.User) && len(got.User) > 0 && got.User[0] == sent.User[0])
	check("response topic", got.ResponseTopic == sent.ResponseTopic)
	check("correlation data", bytes.Equal(got.CorrelationData, sent.CorrelationData))
	// The broker counts the expiry down while it holds the message.
	check("message expiry", got.MessageExpiry != nil && *got.MessageExpiry > 0 && *got.MessageExpiry <= *sent.MessageExpiry)
	check("content type", got.ContentType == sent.ContentType)
	check("payload format", got.PayloadFormat != nil && *got.PayloadFormat == *sent.PayloadFormat)
	return kept, lost
}

// crossBrokers publishes one MQTT 5 message with every property on broker1
// and returns what a v5 client and a 3.1.1 client on broker2 received.
func crossBrokers(t *testing.T, tag string) (sent *paho.PublishProperties, got *paho.Publish, v3 string) {
	t.Helper()
	topic := fmt.Sprintf("e2e/v5/%s/%d", tag, time.Now().UnixNano())
	sub := dialV5(t, brokerAddr(t, "broker2"), "e2e-v5-sub-"+tag)
	sub.subscribe(t, topic)
	old := subscribe(t, client(t, brokerAddr(t, "broker2"), "e2e-v311-sub-"+tag, true), topic)
	pub := dialV5(t, brokerAddr(t, "broker1"), "e2e-v5-pub-"+tag)
	expiry, format := uint32(3600), byte(1)
	sent = &paho.PublishProperties{User: paho.UserProperties{{Key: "trace", Value: "e2e-" + tag}},
		ResponseTopic: topic + "/reply", CorrelationData: []byte("req-42"), MessageExpiry: &expiry,
		ContentType: "text/plain", PayloadFormat: &format}
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if _, err := pub.c.Publish(ctx, &paho.Publish{Topic: topic, QoS: 1, Payload: []byte("across"), Properties: sent}); err != nil {
		t.Fatalf("publish: %v", err)
	}
	got = sub.first(t, 10*time.Second)
	old.wait(t, "across", 10*time.Second)
	return sent, got, "across"
}

// bridgeProtocol commits mqtt.bridgeProtocol (""; the default) and waits
// until the bridge nodes run it.
func bridgeProtocol(t *testing.T, proto string) {
	t.Helper()
	content := ""
	if proto != "" {
		content = fmt.Sprintf("package cluster\n\nmqtt: bridgeProtocol: %q\n", proto)
	}
	if b, _ := os.ReadFile(filepath.Join(cfg.Dir, "cluster", "bridgeprotocol.cue")); string(b) == content {
		return
	}
	pushed := time.Now()
	head := commit(t, "e2e: bridge protocol "+proto, map[string]string{"bridgeprotocol.cue": content})
	appliedAfter(t, head, pushed, 60*time.Second, bridgeNodes(t)...)
	want := "bridge_protocol_version " + proto
	if proto == "" {
		want = "bridge_protocol_version mqttv311"
	}
	waitFor(t, 30*time.Second, "the bridge master connected with "+want, func() bool {
		for _, n := range bridgeNodes(t) {
			// Not t.Context(): this also runs as a cleanup, after it ends.
			out, _ := node(t, n).Exec(context.Background(), "sh", "-c", "cat /etc/mosquitto/mosquitto.conf /run/mqha/bridge/*.conf 2>/dev/null")
			if strings.Contains(out, "\nconnection ") && strings.Contains(out, want) && bridgesUp(t, n) {
				return true
			}
		}
		return false
	})
}

// bridging is the bridge node whose mosquitto has the bridge connections.
func bridging(t *testing.T) string {
	for _, n := range bridgeNodes(t) {
		out, _ := node(t, n).Exec(context.Background(), "sh", "-c", "cat /etc/mosquitto/mosquitto.conf /run/mqha/bridge/*.conf 2>/dev/null")
		if strings.Contains(out, "\nconnection ") {
			return n
		}
	}
	t.Fatal("no bridge node has bridge connections")
	return ""
}

// bridgeRestartLoss restarts mosquitto on the bridging node under a
// cross-broker QoS1 flow (broker1 to a persistent subscriber on broker2,
// 100 a second) and returns what it cost.
func bridgeRestartLoss(t *testing.T) (sent, lost int) {
	t.Helper()
	n := bridging(t)
	flow := startCrossFlow(t, 10*time.Millisecond)
	time.Sleep(time.Second)
	on(t, n, "systemctl", "restart", "mosquitto")
	// With standbys keepalived may move the role meanwhile: any bridge
	// node bridging again will do.
	waitFor(t, 30*time.Second, "the bridges up again", func() bool {
		for _, b := range bridgeNodes(t) {
			if bridgesUp(t, b) {
				return true
			}
		}
		return false
	})
	time.Sleep(2 * time.Second)
	sent, _, lost, _ = flow.finish(t, 20*time.Second)
	return sent, lost
}

// bridgeNodes are the lab's nodes with the bridge role.
func bridgeNodes(t *testing.T) []string {
	st, err := cfg.Load()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, n := range st.Nodes {
		if strings.HasPrefix(n.Name, "bridge") {
			out = append(out, n.Name)
		}
	}
	return out
}

// bridgesUp: every bridge connection of node n says it is up.
func bridgesUp(t *testing.T, n string) bool {
	tc := nodeTLS(t, n)
	tc.ServerName = node(t, n).Addr
	c := mqtt.NewClient(mqtt.NewClientOptions().AddBroker("ssl://" + net.JoinHostPort(node(t, n).Addr, "8883")).
		SetClientID(fmt.Sprintf("e2e-bridges-%d", time.Now().UnixNano())).SetTLSConfig(tc).SetConnectTimeout(3 * time.Second))
	if tok := c.Connect(); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		return false
	}
	defer c.Disconnect(50)
	var mu sync.Mutex
	state := map[string]string{}
	c.Subscribe("$SYS/broker/connection/+/state", 0, func(_ mqtt.Client, m mqtt.Message) {
		mu.Lock()
		state[m.Topic()] = string(m.Payload())
		mu.Unlock()
	}).WaitTimeout(3 * time.Second)
	time.Sleep(300 * time.Millisecond)
	mu.Lock()
	defer mu.Unlock()
	up := 0
	for _, v := range state {
		if v != "1" {
			return false
		}
		up++
	}
	return up >= 2
}

// TestMQTT5AcrossBrokers: a message published on broker1 with a user
// property, response topic, correlation data, message expiry, content type
// and payload format. With the bridges on MQTT 3.1.1 (the default) none
// reaches a client of broker2; with mqtt.bridgeProtocol "mqttv50" all do,
// and a 3.1.1 client of broker2 gets the message too (a mixed fleet).
func TestMQTT5AcrossBrokers(t *testing.T) {
	bridgeProtocol(t, "")
	sent, got, _ := crossBrokers(t, "v311")
	kept, lost := propsKept(sent, got.Properties)
	report(t, "bridges on mqttv311: a v5 message from broker1 reached broker2 with %d of 6 properties (lost: %s); the 3.1.1 client got it too", kept, strings.Join(lost, ", "))
	if kept > 1 { // payload format may be inferred by no one: at most that one
		t.Errorf("with 3.1.1 bridges %d properties crossed: docs/clients.md says they are lost", kept)
	}
	sent311, lost311 := bridgeRestartLoss(t)
	report(t, "bridges on mqttv311: the bridge's mosquitto restarted under a cross-broker QoS1 flow: %d sent, %d lost", sent311, lost311)
	if lost311 > 0 {
		t.Errorf("3.1.1 bridges lost %d acknowledged messages over a bridge restart: their sessions on the brokers should have kept them", lost311)
	}

	bridgeProtocol(t, "mqttv50")
	t.Cleanup(func() { bridgeProtocol(t, "") })
	sent, got, _ = crossBrokers(t, "v50")
	kept, lost = propsKept(sent, got.Properties)
	report(t, "bridges on mqttv50: a v5 message from broker1 reached broker2 with %d of 6 properties (lost: %s); the 3.1.1 client got it too", kept, strings.Join(lost, ", "))
	if kept != 6 {
		t.Errorf("with MQTT 5 bridges, lost: %s", strings.Join(lost, ", "))
	}
	// The trade docs/clients.md states: mosquitto 2.0's MQTT 5 bridge asks
	// for no session expiry, so a broker ends its session with the
	// connection. Measured, not asserted either way: a restart may fall
	// between two messages.
	sent50, lost50 := bridgeRestartLoss(t)
	report(t, "bridges on mqttv50: the bridge's mosquitto restarted under a cross-broker QoS1 flow: %d sent, %d lost", sent50, lost50)
}

// TestSharedSubscriptionAcrossBrokers: a shared group with one member on
// each broker. mosquitto shares within a broker only: 100 messages are
// delivered once per broker with a member (the measured exception that
// vet's note and docs/clients.md state), never more, never fewer; with the
// members on one broker, exactly 100.
func TestSharedSubscriptionAcrossBrokers(t *testing.T) {
	const n = 100
	run := func(tag string, brokers ...string) int {
		topic := fmt.Sprintf("e2e/share/%s/%d", tag, time.Now().UnixNano())
		var mu sync.Mutex
		count := 0
		for i, b := range brokers {
			c := client(t, brokerAddr(t, b), fmt.Sprintf("e2e-share-%s-%d", tag, i), true)
			if tok := c.Subscribe("$share/g1/"+topic, 1, func(mqtt.Client, mqtt.Message) {
				mu.Lock()
				count++
				mu.Unlock()
			}); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
				t.Fatalf("subscribe: %v", tok.Error())
			}
		}
		time.Sleep(time.Second) // the subscriptions cross the bridge
		pub := client(t, brokerAddr(t, "broker1"), "e2e-share-pub-"+tag, true)
		for i := range n {
			publish(t, pub, topic, fmt.Sprintf("job-%d", i))
		}
		distinct := map[string]bool{}
		for _, b := range brokers {
			distinct[b] = true
		}
		want := n * len(distinct)
		waitFor(t, 20*time.Second, fmt.Sprintf("%d deliveries", want), func() bool {
			mu.Lock()
			defer mu.Unlock()
			return count >= want
		})
		time.Sleep(2 * time.Second) // nothing more comes
		mu.Lock()
		defer mu.Unlock()
		return count
	}
	one := run("one", "broker1", "broker1")
	two := run("two", "broker1", "broker2")
	report(t, "shared group: %d messages delivered %d times with both members on broker1, %d times with one member on each of 2 brokers (duplicate factor %.1f)", n, one, two, float64(two)/n)
	if one != n {
		t.Errorf("members on one broker: %d deliveries of %d messages, want %d", one, n, n)
	}
	if two != 2*n {
		t.Errorf("members on two brokers: %d deliveries of %d messages; docs/clients.md says %d (once per broker)", two, n, 2*n)
	}
	out, err := exec.Command(filepath.Join(root, "bin", "mqha-agent"), "vet", "--repo", filepath.Join(cfg.Dir, "cluster")).CombinedOutput()
	if vet := string(out); err != nil || !strings.Contains(vet, "note: shared subscriptions") {
		t.Errorf("vet does not warn of shared groups per broker:\n%s", vet)
	}
}

// rawPublish sends one MQTT 3.1.1 CONNECT and a QoS0 PUBLISH whose topic
// bytes are given as they are (invalid UTF-8 included), as a broken or
// hostile client would; it returns what the broker answered (nothing, or
// a closed connection, for a protocol error).
func rawPublish(t *testing.T, addr string, topic []byte) error {
	t.Helper()
	conn, err := dialTLS(t, addr)
	if err != nil {
		return err
	}
	defer conn.Close()
	id := fmt.Sprintf("e2e-raw-%d", time.Now().UnixNano())
	str := func(b []byte) []byte { return append([]byte{byte(len(b) >> 8), byte(len(b))}, b...) }
	remaining := remainingLength // load_test.go
	body := append(str([]byte("MQTT")), 4, 0x02, 0, 30)
	body = append(body, str([]byte(id))...)
	pkt := append(append([]byte{0x10}, remaining(len(body))...), body...)
	pub := append(str(topic), []byte("bad")...)
	pkt = append(pkt, append(append([]byte{0x30}, remaining(len(pub))...), pub...)...)
	conn.SetDeadline(time.Now().Add(3 * time.Second))
	if _, err := conn.Write(pkt); err != nil {
		return err
	}
	buf := make([]byte, 16)
	_, err = io.ReadFull(conn, buf[:4]) // CONNACK
	if err != nil {
		return err
	}
	_, err = conn.Read(buf) // the broker closes on the bad PUBLISH
	return err
}

// TestBadInputAcrossBrokers: what a bridge cannot carry never stops it nor
// the broker: a topic that is not UTF-8, a topic of 65,000 bytes, a 60 KiB
// user property, each published on broker1; broker1 keeps its process and
// a message published after them still crosses to broker2.
func TestBadInputAcrossBrokers(t *testing.T) {
	before := unitStart(t, "broker1", "mosquitto")
	bridgeBefore := map[string]string{}
	for _, n := range bridgeNodes(t) {
		bridgeBefore[n] = unitStart(t, n, "mosquitto")
	}
	b1 := brokerAddr(t, "broker1")
	errUTF8 := rawPublish(t, b1, []byte{'e', '2', 'e', '/', 0xff, 0xfe})
	long := client(t, b1, "e2e-bad-long", true)
	longTok := long.Publish("e2e/"+strings.Repeat("x", 65000), 1, false, "long")
	longTok.WaitTimeout(10 * time.Second)
	v := dialV5(t, b1, "e2e-bad-props")
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	_, errProps := v.c.Publish(ctx, &paho.Publish{Topic: "e2e/bad/props", QoS: 1, Payload: []byte("p"),
		Properties: &paho.PublishProperties{User: paho.UserProperties{{Key: "big", Value: strings.Repeat("y", 60<<10)}}}})
	cancel()
	topic := fmt.Sprintf("e2e/bad/after/%d", time.Now().UnixNano())
	in := subscribe(t, client(t, brokerAddr(t, "broker2"), "e2e-bad-sub", true), topic)
	pub := client(t, b1, "e2e-bad-pub", true)
	deadline := time.Now().Add(20 * time.Second)
	for !in.has("after") {
		if time.Now().After(deadline) {
			t.Fatal("after the bad input, nothing published on broker1 reaches broker2")
		}
		publish(t, pub, topic, "after")
		time.Sleep(200 * time.Millisecond)
	}
	report(t, "bad input on broker1: a non-UTF-8 topic (%v), a 65,000-byte topic (%v), a 60 KiB user property (%v); broker1 and the bridge kept running and the next message crossed",
		errUTF8, longTok.Error(), errProps)
	if now := unitStart(t, "broker1", "mosquitto"); now != before {
		t.Errorf("broker1's mosquitto restarted: %q -> %q", before, now)
	}
	for n, was := range bridgeBefore {
		if now := unitStart(t, n, "mosquitto"); now != was {
			t.Errorf("%s's mosquitto restarted: %q -> %q", n, was, now)
		}
	}
}

// retainedOn reads what broker addr holds retained under each topic: a
// fresh subscriber's retained messages, within settle ("" none).
func retainedOn(t *testing.T, addr string, topics []string, settle time.Duration) map[string]string {
	t.Helper()
	c := client(t, addr, fmt.Sprintf("e2e-retained-%d", time.Now().UnixNano()), true)
	defer c.Disconnect(50)
	var mu sync.Mutex
	got := map[string]string{}
	for _, tp := range topics {
		if tok := c.Subscribe(tp, 1, func(_ mqtt.Client, m mqtt.Message) {
			if m.Retained() {
				mu.Lock()
				got[m.Topic()] = string(m.Payload())
				mu.Unlock()
			}
		}); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
			t.Fatalf("subscribe %s on %s: %v", tp, addr, tok.Error())
		}
	}
	time.Sleep(settle)
	mu.Lock()
	defer mu.Unlock()
	return got
}

// TestRetainedAfterBrokerPowerOff: broker2 loses power holding retained
// messages (saved on its disk); meanwhile clients of broker1 clear one,
// replace one and retain a new one, at QoS 1 and at QoS 0. Back, broker2
// must serve what broker1 holds, and broker1 must still hold it: mosquitto
// 2.0's bridge asks a returning broker for its retained messages and
// passes the retain flag on, so without the strip at start
// (internal/retained) broker2 handed its stale ones back to broker1 (a
// cleared and a replaced message returned), and kept the old value of
// what changed at QoS 0 (no QoS 0 message is queued for a broker that is
// down).
func TestRetainedAfterBrokerPowerOff(t *testing.T) {
	base := fmt.Sprintf("e2e/retained-poweroff/%d", time.Now().UnixNano())
	topic := func(qos byte, what string) string { return fmt.Sprintf("%s/q%d/%s", base, qos, what) }
	pub := client(t, brokerAddr(t, "broker1"), fmt.Sprintf("e2e-retainer-%d", time.Now().UnixNano()), true)
	publishR := func(tp, payload string, qos byte) {
		if tok := pub.Publish(tp, qos, true, payload); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			t.Fatalf("publish retained %s: %v", tp, tok.Error())
		}
	}
	var all []string
	want := map[string]string{}
	for _, q := range []byte{1, 0} {
		publishR(topic(q, "cleared"), "old", 1)
		publishR(topic(q, "replaced"), "v1", 1)
		all = append(all, topic(q, "cleared"), topic(q, "replaced"), topic(q, "new"))
		want[topic(q, "replaced")], want[topic(q, "new")] = "v2", "new"
	}
	t.Cleanup(func() {
		for _, tp := range all {
			pub.Publish(tp, 1, true, "").WaitTimeout(5 * time.Second)
		}
	})
	waitFor(t, 10*time.Second, "broker2 holding the retained messages", func() bool {
		return len(retainedOn(t, brokerAddr(t, "broker2"), all, 300*time.Millisecond)) == 4
	})
	// A client of broker2 with a will, and who listens for it on broker1:
	// measured (docs/clients.md: a broker that loses power publishes no will).
	willTopic := base + "/will"
	var wills sync.Map
	wsub := client(t, brokerAddr(t, "broker1"), fmt.Sprintf("e2e-will-sub-%d", time.Now().UnixNano()), true)
	if tok := wsub.Subscribe(willTopic, 1, func(_ mqtt.Client, m mqtt.Message) { wills.Store(time.Now(), string(m.Payload())) }); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	willClient(t, brokerAddr(t, "broker2"), fmt.Sprintf("e2e-will-%d", time.Now().UnixNano()), willTopic)
	// On broker2's disk (as its autosave would, at worst just before the
	// power goes).
	on(t, "broker2", "systemctl", "kill", "-s", "USR1", "mosquitto")
	time.Sleep(500 * time.Millisecond)
	if err := cfg.PowerOff(t.Context(), "broker2"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cfg.PowerOn(context.Background(), "broker2") })
	for _, q := range []byte{1, 0} {
		publishR(topic(q, "cleared"), "", q)
		publishR(topic(q, "replaced"), "v2", q)
		publishR(topic(q, "new"), "new", q)
	}
	time.Sleep(time.Second)
	if err := cfg.PowerOn(t.Context(), "broker2"); err != nil {
		t.Fatal(err)
	}
	// Bound: ~2.5 s seen (boot included); 90 s as the other power-on tests.
	var got2 map[string]string
	same := waitFor(t, 90*time.Second, "broker2 back, serving what broker1 holds", func() bool {
		got2 = retainedOn(t, brokerAddr(t, "broker2"), all, 300*time.Millisecond)
		return fmt.Sprint(got2) == fmt.Sprint(want)
	})
	time.Sleep(3 * time.Second) // anything the return sends back has crossed
	got1 := retainedOn(t, brokerAddr(t, "broker1"), all, time.Second)
	got2 = retainedOn(t, brokerAddr(t, "broker2"), all, time.Second)
	dropped := strings.TrimSpace(onAny(t, "broker2", "sh", "-c", "journalctl -b -u mosquitto -o cat | grep -o 'retained messages dropped.*' | tail -1"))
	report(t, "broker2 powered off holding retained messages, 3 changed at QoS 1 and 3 at QoS 0 on broker1 meanwhile: broker2 served broker1's state %s after its power-on (boot included); its start: %s",
		same.Round(100*time.Millisecond), dropped)
	var back []string
	for _, tp := range all {
		if got2[tp] != want[tp] {
			t.Errorf("%s: broker2 holds %q after its return; want %q, as broker1 was told while broker2 was down", strings.TrimPrefix(tp, base+"/"), got2[tp], want[tp])
		}
		if got1[tp] != want[tp] {
			back = append(back, fmt.Sprintf("%s %q (want %q)", strings.TrimPrefix(tp, base+"/"), got1[tp], want[tp]))
		}
	}
	report(t, "what broker2 brought back to broker1 on its return: %s", orNoneList(back))
	nwills := 0
	wills.Range(func(any, any) bool { nwills++; return true })
	report(t, "the will of a client connected to broker2 when it lost power: received %d times on broker1 (by its return and 3 s after)", nwills)
	if len(back) > 0 {
		t.Errorf("broker2 brought stale retained messages back to broker1: %s", strings.Join(back, ", "))
	}
}

func orNoneList(s []string) string {
	if len(s) == 0 {
		return "nothing"
	}
	return strings.Join(s, ", ")
}
