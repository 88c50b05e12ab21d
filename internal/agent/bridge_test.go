package agent

import (
	"errors"
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
