package rollout

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/mqha/mqha/internal/cluster"
	"github.com/mqha/mqha/internal/plan"
	"github.com/mqha/mqha/internal/unit"
)

var lab = &cluster.Cluster{Name: "c", VIP: &cluster.VIP{Address: "10.0.0.100"},
	Ports: cluster.Ports{Client: 9000, Broker: 8883, Bridge: 8884},
	Nodes: []cluster.Node{
		{Name: "bridge", Address: "10.0.0.20", Roles: []cluster.Role{cluster.Bridge}},
		{Name: "broker1", Address: "10.0.0.21", Roles: []cluster.Role{cluster.Broker}},
		{Name: "broker2", Address: "10.0.0.22", Roles: []cluster.Role{cluster.Broker}},
		{Name: "broker3", Address: "10.0.0.23", Roles: []cluster.Role{cluster.Broker}},
		{Name: "lb1", Address: "10.0.0.11", Roles: []cluster.Role{cluster.LB}},
		{Name: "lb2", Address: "10.0.0.12", Roles: []cluster.Role{cluster.LB}},
	}}

// world is a fake clock and fleet: down holds the addresses that do not
// serve until the clock reaches their time; events is what the gate did, in
// order.
type world struct {
	t      time.Time
	down   map[string]time.Time
	vipAt  time.Time // the VIP leaves this node at this time
	events []string
}

func (w *world) gate(t *testing.T, node string) *Gate {
	t.Helper()
	n, ok := lab.Node(node)
	if !ok {
		t.Fatalf("no node %s", node)
	}
	return &Gate{Cluster: lab, Node: n, TLS: &tls.Config{}, Slot: 3 * time.Second, Patience: time.Minute,
		Log: slog.New(slog.NewTextHandler(io.Discard, nil)),
		Fault: func(on bool) error {
			w.events = append(w.events, fmt.Sprintf("fault %v", on))
			if on && w.vipAt.IsZero() {
				w.vipAt = w.t.Add(700 * time.Millisecond)
			}
			return nil
		},
		Probe: func(_ context.Context, addr string, tc *tls.Config) error {
			w.events = append(w.events, "probe "+addr+" as "+tc.ServerName)
			if until, ok := w.down[addr]; ok && w.t.Before(until) {
				return errors.New("connection refused")
			}
			return nil
		},
		HasVIP: func() (bool, error) { return !w.vipAt.IsZero() && w.t.Before(w.vipAt), nil },
		Now:    func() time.Time { return w.t },
		Sleep: func(ctx context.Context, d time.Duration) error {
			w.t = w.t.Add(d)
			return ctx.Err()
		},
	}
}

func planOf(u string, a unit.Action) *plan.Plan {
	return &plan.Plan{Units: []plan.Unit{{Name: u, Action: a}}}
}

func (w *world) has(prefix string) bool {
	for _, e := range w.events {
		if strings.HasPrefix(e, prefix) {
			return true
		}
	}
	return false
}

// Brokers restart one at a time: each waits its slot (position among the
// brokers x Slot), and only while every other broker serves.
func TestBrokerSlots(t *testing.T) {
	for _, tt := range []struct {
		node string
		wait time.Duration
	}{{"broker1", 0}, {"broker2", 3 * time.Second}, {"broker3", 6 * time.Second}} {
		w := &world{}
		if err := w.gate(t, tt.node).Before(context.Background(), planOf("mosquitto.service", unit.Restart)); err != nil {
			t.Fatal(err)
		}
		if d := w.t.Sub(time.Time{}); d != tt.wait {
			t.Errorf("%s waited %s, want its slot %s", tt.node, d, tt.wait)
		}
		n, _ := lab.Node(tt.node)
		for _, addr := range []string{"10.0.0.21:8883", "10.0.0.22:8883", "10.0.0.23:8883"} {
			self := addr == n.Address+":8883"
			if w.has("probe "+addr) == self {
				t.Errorf("%s: probed %s: %v (the other brokers, never itself)", tt.node, addr, !self)
			}
		}
	}
	// A reload takes no turn.
	w := &world{}
	w.gate(t, "broker3").Before(context.Background(), planOf("mosquitto.service", unit.Reload))
	if w.t != (time.Time{}) || len(w.events) != 0 {
		t.Errorf("a reload waited %s and did %v", w.t.Sub(time.Time{}), w.events)
	}
}

// A broker waits while another broker does not serve (it is restarting).
func TestBrokerWaitsForTheOthers(t *testing.T) {
	w := &world{down: map[string]time.Time{"10.0.0.22:8883": time.Time{}.Add(5 * time.Second)}}
	w.gate(t, "broker1").Before(context.Background(), planOf("mosquitto.service", unit.Restart))
	if w.t.Before(time.Time{}.Add(5 * time.Second)) {
		t.Errorf("broker1 went ahead at %s while broker2 was down until 5s", w.t.Sub(time.Time{}))
	}
}

// The bridge master restarts last: only once every broker serves on its
// bridge listener.
func TestBridgeLast(t *testing.T) {
	w := &world{down: map[string]time.Time{"10.0.0.23:8884": time.Time{}.Add(8 * time.Second)}}
	w.gate(t, "bridge").Before(context.Background(), planOf("mosquitto.service", unit.Restart))
	for _, b := range []string{"10.0.0.21:8884", "10.0.0.22:8884", "10.0.0.23:8884"} {
		if !w.has("probe " + b) {
			t.Errorf("the bridge did not check %s", b)
		}
	}
	if w.t.Before(time.Time{}.Add(8 * time.Second)) {
		t.Errorf("the bridge restarted at %s, before broker3 served at 8s", w.t.Sub(time.Time{}))
	}
}

// A load balancer restarting nginx gives up the VIP first (after the other
// load balancer serves through the VIP's name), waits for it to leave, and
// takes part in VRRP again when done; a reload keeps the VIP.
func TestLBReleasesTheVIPBeforeRestartingNginx(t *testing.T) {
	w := &world{}
	g := w.gate(t, "lb2")
	if err := g.Before(context.Background(), planOf("nginx.service", unit.Restart)); err != nil {
		t.Fatal(err)
	}
	if len(w.events) < 2 || w.events[0] != "probe 10.0.0.11:9000 as 10.0.0.100" || w.events[1] != "fault true" {
		t.Fatalf("events %v: want the peer probed through the VIP's name, then the fault", w.events)
	}
	if w.t.Before(w.vipAt) {
		t.Errorf("went ahead at %s, before the VIP left at %s", w.t.Sub(time.Time{}), w.vipAt.Sub(time.Time{}))
	}
	g.Done()
	if w.events[len(w.events)-1] != "fault false" {
		t.Errorf("the fault was not cleared when done: %v", w.events)
	}

	w = &world{}
	g = w.gate(t, "lb2")
	g.Before(context.Background(), planOf("nginx.service", unit.Reload))
	g.Done()
	if w.has("fault") {
		t.Errorf("a reload gave up the VIP: %v", w.events)
	}
}

// A dead peer delays a change by Patience at most, then the node goes ahead.
func TestPatienceWithADeadPeer(t *testing.T) {
	w := &world{down: map[string]time.Time{"10.0.0.22:8883": time.Time{}.Add(time.Hour)}}
	if err := w.gate(t, "broker1").Before(context.Background(), planOf("mosquitto.service", unit.Restart)); err != nil {
		t.Fatal(err)
	}
	if d := w.t.Sub(time.Time{}); d < time.Minute || d > time.Minute+2*time.Second {
		t.Errorf("waited %s for a dead peer, want the patience of 1m", d)
	}
}

// Waiting for a slot ends when the agent stops.
func TestCancelledWhileWaiting(t *testing.T) {
	w := &world{}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := w.gate(t, "broker3").Before(ctx, planOf("mosquitto.service", unit.Restart)); !errors.Is(err, context.Canceled) {
		t.Errorf("got %v, want the context's error", err)
	}
}
