//go:build e2e

package e2e

import (
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
)

// lastLine is the last line of s that contains sub.
func lastLine(s, sub string) string {
	out := ""
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = l
		}
	}
	return strings.TrimSpace(out)
}

// connectPersistent connects a persistent (clean session off) client id to
// the broker at addr once, without reconnecting, and says whether the
// broker had a session for it; lost counts its connection losses, handle
// (when set) gets what the session delivers.
func connectPersistent(t *testing.T, addr, id string, lost *atomic.Int32, handle mqtt.MessageHandler) (mqtt.Client, bool) {
	t.Helper()
	o := mqtt.NewClientOptions().AddBroker("ssl://" + addr).SetClientID(id).SetTLSConfig(tlsConfig(t)).
		SetCleanSession(false).SetAutoReconnect(false).SetConnectTimeout(3 * time.Second).SetKeepAlive(5 * time.Second).
		SetDefaultPublishHandler(handle).
		SetConnectionLostHandler(func(mqtt.Client, error) {
			if lost != nil {
				lost.Add(1)
			}
		})
	c := mqtt.NewClient(o)
	tok := c.Connect()
	if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("connect %s as %s: %v", addr, id, tok.Error())
	}
	t.Cleanup(func() { c.Disconnect(50) })
	return c, tok.(*mqtt.ConnectToken).SessionPresent()
}

// TestSessionCopyDrained (issue 22, step 1): a persistent client that
// moved from broker1 to broker2 leaves a copy of its session on broker1,
// which queues everything it subscribed to. broker1's agent drains it once
// the client stayed away sessions.Quiet (30 s) while broker2's agent lists
// it: the client, back on broker1, finds its session (nothing lost on a
// move back) but none of what broker2 already delivered. A client id
// connected to broker1 is never drained there, even while broker2 lists
// the same id.
func TestSessionCopyDrained(t *testing.T) {
	stamp := time.Now().UnixNano()
	moved := fmt.Sprintf("e2e-moved-%d", stamp)
	both := fmt.Sprintf("e2e-both-%d", stamp)
	topic := fmt.Sprintf("e2e/sessions/%d", stamp)
	b1, b2 := brokerAddr(t, "broker1"), brokerAddr(t, "broker2")

	// The moved client: subscribed on broker1, gone, then on broker2.
	c, _ := connectPersistent(t, b1, moved, nil, nil)
	if tok := c.Subscribe(topic, 1, nil); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("subscribe: %v", tok.Error())
	}
	c.Disconnect(50)
	left := time.Now()
	in := subscribe(t, client(t, b2, moved, false), topic)

	// The same id on both brokers at once, each connected.
	var lostB1 atomic.Int32
	connectPersistent(t, b1, both, &lostB1, nil)
	connectPersistent(t, b2, both, nil, nil)

	// What broker1's copy would queue while the client is on broker2.
	pub := client(t, b2, fmt.Sprintf("e2e-sessions-pub-%d", stamp), true)
	for i := range 20 {
		publish(t, pub, topic, fmt.Sprintf("m%02d", i))
	}
	waitFor(t, 10*time.Second, "the moved client got the stream on broker2", func() bool { return in.unique() == 20 })

	// Within Quiet + a round (about 35 s); bound 3x.
	waitFor(t, 120*time.Second, "broker1's agent drained its copy of the moved client's session", func() bool {
		time.Sleep(time.Second)
		return strings.Contains(onAny(t, "broker1", "journalctl", "-u", "mqha-agent", "--since", "-5min", "--no-pager"), "client="+moved)
	})
	report(t, "broker1 drained its copy of the moved client's session %s after the client left it (the policy waits 30 s away): %s", time.Since(left).Round(time.Second),
		lastLine(onAny(t, "broker1", "journalctl", "-u", "mqha-agent", "--since", "-5min", "--no-pager"), "client="+moved))

	// Back on broker1: its session, none of what broker2 delivered.
	var got atomic.Int32
	_, present := connectPersistent(t, b1, moved, nil, func(mqtt.Client, mqtt.Message) { got.Add(1) })
	time.Sleep(2 * time.Second)
	if !present || got.Load() != 0 {
		t.Errorf("back on broker1: session present %v, %d late duplicates; want its session and none of the 20 broker2 delivered", present, got.Load())
	}
	if n := lostB1.Load(); n != 0 {
		t.Errorf("the client connected to broker1 under an id broker2 lists too lost its connection %d times: a live session was taken over", n)
	}
	if strings.Contains(onAny(t, "broker1", "journalctl", "-u", "mqha-agent", "--since", "-5min", "--no-pager"), "client="+both) {
		t.Errorf("broker1's agent drained the session of %s, connected to it", both)
	}
}
