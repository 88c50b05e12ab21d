package agent

import (
	"errors"
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

// The bridge node ends the local sessions of the bridge connections an
// applied commit removed (and only those); a commit that fails to apply, or
// that adds a broker, ends none; other nodes end none.
func TestRemovedBridgeSessionsEnded(t *testing.T) {
	withBroker3 := `nodes: broker3: {address: "10.20.0.23", roles: ["broker"]}`
	withBroker4 := withBroker3 + "\n" + `nodes: broker4: {address: "10.20.0.24", roles: ["broker"]}`
	for _, tt := range []struct {
		node string
		want string
	}{
		{"bridge", "127.0.0.1:8883 local.mqtt-bridge-to-broker3"},
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
		if e := h.endedSessions(); len(e) != 0 {
			t.Errorf("%s: ended %v before a commit that removes a bridge was applied", tt.node, e)
		}
		h.src.head = "c1" // removes broker4
		h.poll()
		h.src.head = "c3" // removes broker3
		h.poll()
		want := ""
		if tt.want != "" {
			want = "127.0.0.1:8883 local.mqtt-bridge-to-broker4 " + tt.want
		}
		if got := strings.Join(h.endedSessions(), " "); got != want {
			t.Errorf("%s: ended %q, want %q", tt.node, got, want)
		}
	}
}
