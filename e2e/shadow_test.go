//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
)

// numbers is what a persistent subscriber received of a numbered stream.
type numbers struct {
	mu    sync.Mutex
	seen  map[int]int
	first time.Time // the first message after mark
	mark  time.Time
}

func newNumbers() *numbers { return &numbers{seen: map[int]int{}} }

func (n *numbers) handle(_ mqtt.Client, m mqtt.Message) {
	k, err := strconv.Atoi(string(m.Payload()))
	if err != nil {
		return
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	n.seen[k]++
	if !n.mark.IsZero() && n.first.IsZero() {
		n.first = time.Now()
	}
}

// since marks now: first is then the first message after it.
func (n *numbers) since(t time.Time) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.mark, n.first = t, time.Time{}
}

// count is what arrived of acked: lost (never), duplicated (more than once,
// by number).
func (n *numbers) count(acked []int) (lost, dups []int) {
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, k := range acked {
		if n.seen[k] == 0 {
			lost = append(lost, k)
		}
	}
	for k, c := range n.seen {
		for range c - 1 {
			dups = append(dups, k)
		}
	}
	slices.Sort(dups)
	return lost, dups
}

// stream publishes numbers 0..count-1 at QoS 1, one every every, on the
// broker at addr, and records those acknowledged and when each was sent.
type numStream struct {
	mu    sync.Mutex
	acked []int
	sent  map[int]time.Time
	done  chan struct{}
}

func numberStream(t *testing.T, addr, topic string, count int, every time.Duration) *numStream {
	pub := client(t, addr, fmt.Sprintf("e2e-shadow-pub-%d", time.Now().UnixNano()), true)
	s := &numStream{sent: map[int]time.Time{}, done: make(chan struct{})}
	go func() {
		defer close(s.done)
		for i := range count {
			at := time.Now()
			tok := pub.Publish(topic, 1, false, strconv.Itoa(i))
			ok := tok.WaitTimeout(5*time.Second) && tok.Error() == nil
			s.mu.Lock()
			s.sent[i] = at
			if ok {
				s.acked = append(s.acked, i)
			}
			s.mu.Unlock()
			time.Sleep(time.Until(at.Add(every)))
		}
	}()
	return s
}

func (s *numStream) result() ([]int, map[int]time.Time) {
	<-s.done
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.acked), s.sent
}

// landsOn is the broker this host's clients land on through the VIP.
func landsOn(t *testing.T) (string, string) {
	t.Helper()
	var a string
	waitFor(t, 30*time.Second, "the VIP sending this host to a broker", func() bool {
		a = brokerVia(cfg.VIP(), tlsConfig(t))
		return a != ""
	})
	b := "broker1"
	if a == b {
		b = "broker2"
	}
	return a, b
}

// shadowed waits until broker's agent made a shadow of id's session.
func shadowed(t *testing.T, broker, id string) time.Duration {
	t.Helper()
	// 2-12 s typically, 21 s seen right after a broker's agent restarted.
	return waitFor(t, 90*time.Second, broker+"'s agent making a shadow of "+id+"'s session", func() bool {
		time.Sleep(500 * time.Millisecond)
		return strings.Contains(onAny(t, broker, "journalctl", "-u", "mqha-agent", "--since", "-5min", "--no-pager", "--grep", "made a shadow"), "client="+id)
	})
}

// reconnect connects id through the VIP with its persistent session until
// it gets in (60 s at most), handing what arrives to got; it returns when
// the CONNACK came.
func reconnect(t *testing.T, id string, got *numbers) (mqtt.Client, bool, time.Time) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		o := mqtt.NewClientOptions().AddBroker("ssl://" + vip()).SetClientID(id).SetTLSConfig(tlsConfig(t)).
			SetCleanSession(false).SetAutoReconnect(false).SetConnectTimeout(3 * time.Second).SetKeepAlive(5 * time.Second).
			SetDefaultPublishHandler(got.handle)
		c := mqtt.NewClient(o)
		got.since(time.Now())
		tok := c.Connect()
		if tok.WaitTimeout(5*time.Second) && tok.Error() == nil {
			t.Cleanup(func() { c.Disconnect(50) })
			return c, tok.(*mqtt.ConnectToken).SessionPresent(), time.Now()
		}
		c.Disconnect(0)
		if time.Now().After(deadline) {
			t.Fatalf("%s could not reconnect through the VIP within 60 s: %v", id, tok.Error())
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// TestSessionSurvivesBrokerPowerOff (issue 22): a persistent QoS 1
// subscriber on broker A through the VIP; a publisher on the other broker
// B sends a numbered stream; A's node is powered off mid-stream. The
// subscriber reconnects through the VIP, lands on B, finds its session
// there (the shadow B's agent keeps) and receives every number B
// acknowledged to the publisher. Duplicates are what the shadow queued
// since its last drain: all of them published before A went. Then the same
// with the subscriber offline (queued, not in flight) when A died.
func TestSessionSurvivesBrokerPowerOff(t *testing.T) {
	const count, every = 600, 20 * time.Millisecond // 12 s of stream
	for _, offline := range []bool{false, true} {
		name := "connected"
		if offline {
			name = "offline"
		}
		t.Run(name, func(t *testing.T) {
			a, b := landsOn(t)
			stamp := time.Now().UnixNano()
			id := fmt.Sprintf("e2e-shadow-%s-%d", name, stamp)
			topic := fmt.Sprintf("e2e/shadow/%d", stamp)
			got := newNumbers()
			lostAt := make(chan time.Time, 1)
			o := mqtt.NewClientOptions().AddBroker("ssl://" + vip()).SetClientID(id).SetTLSConfig(tlsConfig(t)).
				SetCleanSession(false).SetAutoReconnect(false).SetConnectTimeout(3 * time.Second).SetKeepAlive(5 * time.Second).
				SetDefaultPublishHandler(got.handle).
				SetConnectionLostHandler(func(mqtt.Client, error) {
					select {
					case lostAt <- time.Now():
					default:
					}
				})
			sub := mqtt.NewClient(o)
			if tok := sub.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
				t.Fatalf("connect %s through the VIP: %v", id, tok.Error())
			}
			t.Cleanup(func() { sub.Disconnect(50) })
			if tok := sub.Subscribe(topic, 1, nil); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
				t.Fatalf("subscribe: %v", tok.Error())
			}
			if on := brokerVia(cfg.VIP(), tlsConfig(t)); on != a {
				t.Fatalf("this host lands on %s now, not %s", on, a)
			}
			// A lists the session within a round; B's agent shadows it in
			// the next (shadowed says the bound).
			made := shadowed(t, b, id)
			t.Logf("%s on %s; %s's agent made its shadow %s after the subscribe", id, a, b, made.Round(100*time.Millisecond))
			if offline {
				sub.Disconnect(50)
			}

			s := numberStream(t, brokerAddr(t, b), topic, count, every)
			time.Sleep(count / 2 * every)
			off := time.Now()
			if err := cfg.PowerOff(t.Context(), a); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() {
				cfg.PowerOn(context.Background(), a)
				// The next scenario needs A serving through the VIP again,
				// its agent done with its start.
				converged(t, 120*time.Second)
				steady := 0
				waitFor(t, 120*time.Second, a+" back, taking this host's clients", func() bool {
					if brokerVia(cfg.VIP(), tlsConfig(t)) != a {
						steady = 0
						return false
					}
					steady++
					time.Sleep(500 * time.Millisecond)
					return steady >= 6
				})
			})

			if offline {
				s.result() // the whole stream passes while it is away
			} else {
				select {
				case at := <-lostAt:
					t.Logf("%s lost its connection %s after the power-off", id, at.Sub(off).Round(100*time.Millisecond))
				case <-time.After(30 * time.Second):
					t.Fatalf("%s kept its connection to powered-off %s for 30 s", id, a)
				}
			}
			_, present, back := reconnect(t, id, got)
			acked, sent := s.result()
			on := brokerVia(cfg.VIP(), tlsConfig(t))
			// Every acknowledged number, within 30 s (they come in ~1 s).
			for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
				if lostN, _ := got.count(acked); len(lostN) == 0 {
					break
				}
			}
			time.Sleep(2 * time.Second) // late duplicates are counted too
			lostN, dups := got.count(acked)
			got.mu.Lock()
			first := got.first
			got.mu.Unlock()
			toFirst := "none came"
			if !first.IsZero() {
				// The queue comes right behind the CONNACK: 0 when it came
				// before the client's connect call returned.
				toFirst = max(first.Sub(back), 0).Round(time.Millisecond).String()
			}
			report(t, "persistent session, subscriber %s when %s was powered off: reconnected through the VIP to %s with session present %v; "+
				"%d acknowledged, %d delivered, %d lost, %d duplicated; reconnect to first message %s",
				name, a, on, present, len(acked), len(acked)-len(lostN), len(lostN), len(dups), toFirst)
			if !present {
				t.Errorf("%s found no session on %s after %s was powered off", id, on, a)
			}
			if len(lostN) > 0 {
				t.Errorf("%d acknowledged numbers never arrived, from %d to %d", len(lostN), lostN[0], lostN[len(lostN)-1])
			}
			if on == a {
				t.Errorf("the VIP sent the subscriber to %s, which is powered off", a)
			}
			// The shadow's duplicates are what it queued since its last
			// drain: numbers published before A went (a second's margin).
			for _, k := range dups {
				if sent[k].After(off.Add(time.Second)) {
					t.Errorf("number %d, published %s after the power-off, arrived twice", k, sent[k].Sub(off).Round(time.Millisecond))
					break
				}
			}
		})
	}
}

// TestShadowEndsWithItsSession: a client that ends its persistent session
// (a clean connect) on its broker has the shadows of it ended on the
// others, which would otherwise queue for it for ever.
func TestShadowEndsWithItsSession(t *testing.T) {
	a, b := landsOn(t)
	id := fmt.Sprintf("e2e-shadow-ended-%d", time.Now().UnixNano())
	c, _ := connectPersistent(t, vip(), id, nil, nil)
	if tok := c.Subscribe("e2e/shadow/ended", 1, nil); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("subscribe: %v", tok.Error())
	}
	shadowed(t, b, id)
	c.Disconnect(50)
	client(t, vip(), id, true).Disconnect(50) // a clean connect ends it on a
	// a lists the end within a round, b's agent acts in the next: about
	// 10 s; bound 60 s.
	took := waitFor(t, 60*time.Second, b+"'s agent ending its shadow of "+id, func() bool {
		time.Sleep(500 * time.Millisecond)
		return strings.Contains(onAny(t, b, "journalctl", "-u", "mqha-agent", "--since", "-5min", "--no-pager", "--grep", "ended this broker's copy"), "client="+id)
	})
	report(t, "a client ended its persistent session on %s with a clean connect: %s ended its shadow %s later", a, b, took.Round(100*time.Millisecond))
	if _, present := connectPersistent(t, brokerAddr(t, b), id, nil, nil); present {
		t.Errorf("%s still holds a session for %s after it ended on %s", b, id, a)
	}
}
