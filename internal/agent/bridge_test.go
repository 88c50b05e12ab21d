package agent

import (
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/mqha/mqha/internal/bridgerole"
)

// The bridge role is reported only where keepalived elects it, as its
// files last said.
func TestBridgeRoleReported(t *testing.T) {
	state := bridgerole.State{State: "MASTER", Since: time.Date(2026, 12, 7, 0, 0, 0, 0, time.UTC), Takeovers: 2}
	check := bridgerole.Check{OK: true, Reason: "bridging to 3 brokers"}
	var readErr error
	b := &bridgeRole{read: func() (bridgerole.State, bridgerole.Check, error) { return state, check, readErr }}
	if b.status() != nil || testutil.CollectAndCount(bridgeCollector{b}) != 0 {
		t.Fatal("a node that does not elect the bridge reports a role")
	}
	b.set(true)
	s := b.status()
	if s == nil || !s.Active || s.Takeovers != 2 || !s.CheckOK || s.Check != "bridging to 3 brokers" {
		t.Fatalf("status %+v", s)
	}
	if n := testutil.CollectAndCount(bridgeCollector{b}); n != 4 {
		t.Errorf("%d bridge metrics, want 4", n)
	}
	state, readErr = bridgerole.State{}, errors.New("unreadable")
	if s := b.status(); s.State != "UNKNOWN" || s.Check != "unreadable" {
		t.Errorf("before keepalived ran the instance: %+v", s)
	}
}

// The bridge node keeps bridging the brokers an applied commit removed
// until they stop serving, then drops them and ends their connections'
// local sessions (and only those); a commit that fails to apply, or that
// adds a broker, ends none; other nodes end none.
func TestRemovedBridgeSessionsEnded(t *testing.T) {
	drainProbeEvery = 5 * time.Millisecond
	t.Cleanup(func() { drainProbeEvery = time.Second })
	withBroker3 := `nodes: broker3: {address: "10.20.0.23", roles: ["broker"]}`
	withBroker4 := withBroker3 + "\n" + `nodes: broker4: {address: "10.20.0.24", roles: ["broker"]}`
	for _, tt := range []struct {
		node string
		want string
	}{
		{"bridge", "127.0.0.1:8883 local.mqtt-bridge-to-broker4 127.0.0.1:8883 local.mqtt-bridge-to-broker3"},
		{"broker1", ""},
		{"lb1", ""},
	} {
		h := newHarness(t, tt.node, "", map[string]string{"c1": withBroker3, "c2": withBroker4, "bad": "", "c3": ""})
		h.src.head = "c1"
		h.poll()
		h.src.head = "c2" // adding a broker ends nothing
		h.poll()
		h.conv.fail["bad"] = errors.New("rolled back")
		h.src.head = "bad" // removes broker3 and broker4, but is not applied
		h.poll()
		h.src.head = "c1" // removes broker4
		h.poll()
		h.src.head = "c3" // removes broker3
		h.poll()
		if e := h.endedSessions(); len(e) != 0 {
			t.Errorf("%s: ended %v while the removed brokers still serve", tt.node, e)
		}
		var draining []string
		h.onLoop(func() {
			for _, b := range h.a.view.Draining {
				draining = append(draining, b.Name)
			}
		})
		slices.Sort(draining)
		if want := map[bool]string{true: "broker3 broker4", false: ""}[tt.want != ""]; strings.Join(draining, " ") != want {
			t.Errorf("%s: bridges %v of the removed brokers, want %q", tt.node, draining, want)
		}
		h.stop("10.20.0.24:8884")
		h.stop("10.20.0.23:8884")
		want := strings.Split(tt.want, " 1")
		if tt.want == "" {
			want = nil
		} else {
			for i := 1; i < len(want); i++ {
				want[i] = "1" + want[i]
			}
		}
		slices.Sort(want)
		deadline := time.Now().Add(5 * time.Second)
		for len(h.endedSessions()) < len(want) && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		h.onLoop(func() {})
		got := h.endedSessions()
		slices.Sort(got)
		if !slices.Equal(got, want) {
			t.Errorf("%s: ended %q once the removed brokers stopped, want %q", tt.node, got, want)
		}
	}
}
