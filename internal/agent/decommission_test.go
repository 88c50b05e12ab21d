package agent

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mqha/mqha/internal/plan"
	"github.com/mqha/mqha/internal/unit"
)

// TestDecommission: a commit without this node drains it (its units keep
// serving while other hosts are connected, up to decommission-grace), then
// stops and disables its units, survives a restart, and a commit that lists
// the node again brings it back.
func TestDecommission(t *testing.T) {
	const broker9 = `nodes: broker9: {address: "10.20.0.29", roles: ["broker"]}`
	for _, tt := range []struct {
		name    string
		peers   []int // connections counted at each health round
		rounds  int   // peer counts (a health round, 3 s, apart) until it stops
		why     string
		peerErr error
	}{
		{"drained", []int{2, 1, 0}, 3, "no other host was connected", nil},
		{"grace", []int{5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5}, 21, "decommission-grace 1m0s passed with 5 connections", nil},
		{"cannot count", nil, 21, "connections not counted", errors.New("ss: not found")},
	} {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			h := newHarness(t, "broker9", dir, map[string]string{"c1": broker9, "c2": "", "c3": broker9})
			var stopped []string
			h.a.d.Converge = func(ctx context.Context, v *View, hk Hooks) (*plan.Plan, error) {
				h.conv.calls = append(h.conv.calls, v.Commit)
				p := &plan.Plan{Node: v.Node.Name}
				if len(v.Output.Units) == 0 {
					p.Units = []plan.Unit{{Name: "mosquitto.service", Action: unit.Stop}}
					stopped = append(stopped, v.Commit)
				}
				return p, nil
			}
			round := 0
			h.a.d.PeerConns = func(context.Context, []int) (int, error) {
				defer func() { round++ }()
				if tt.peerErr != nil {
					return 0, tt.peerErr
				}
				return tt.peers[min(round, len(tt.peers)-1)], nil
			}
			h.src.head = "c1"
			h.poll()
			h.src.head = "c2"
			h.poll()
			s := h.a.Status()
			if s.Applied != "c2" || s.Refused != "" || s.Decommission == nil || !s.Decommission.Done.IsZero() {
				t.Fatalf("after the removing commit: %+v %+v", s, s.Decommission)
			}
			if p := s.Problems(h.clock.t); len(p) == 0 || !strings.Contains(p[0], "decommissioning: draining") {
				t.Errorf("draining is not a problem of status: %q", p)
			}
			for i := 1; i < tt.rounds-1; i++ { // the first count was the removing commit's poll
				h.clock.advance(3 * time.Second)
				h.round()
				if len(stopped) > 0 {
					t.Fatalf("units stopped at round %d, want %d", i, tt.rounds)
				}
			}
			h.clock.advance(3 * time.Second)
			h.round()
			s = h.a.Status()
			d := s.Decommission
			if len(stopped) != 1 || d == nil || d.Done.IsZero() || !strings.Contains(d.State, tt.why) || d.Stopped[0] != "mosquitto.service" {
				t.Fatalf("after %d rounds: stopped %v, %+v", tt.rounds, stopped, d)
			}
			if len(s.Problems(h.clock.t)) != 0 || s.Roles != "none (decommissioned)" {
				t.Errorf("a decommissioned node is what its commit says: problems %q, roles %q", s.Problems(h.clock.t), s.Roles)
			}
			// Nothing left to check or repair, no drift to revert.
			var enforced error
			h.onLoop(func() { enforced = h.a.enforce(h.ctx) })
			if m := h.a.daemons.get(); len(m.Checks) != 0 || enforced != nil || len(stopped) != 1 {
				t.Errorf("monitor checks %d after decommission", len(m.Checks))
			}

			// A restart stays decommissioned.
			h2 := newHarness(t, "broker9", dir, map[string]string{"c1": broker9, "c2": "", "c3": broker9})
			h2.src.head = "c2"
			h2.poll()
			if d := h2.a.Status().Decommission; d == nil || d.Done.IsZero() || len(h2.conv.calls) != 0 {
				t.Fatalf("after a restart: %+v, converged %v", d, h2.conv.calls)
			}
			// Listed again: converged back, a member.
			h2.src.head = "c3"
			if err := h2.sync(false); err != nil {
				t.Fatal(err)
			}
			if s := h2.a.Status(); s.Applied != "c3" || s.Decommission != nil || s.Roles != "broker" {
				t.Fatalf("listed again: %+v", s)
			}
			if _, err := os.Stat(filepath.Join(dir, "decommission")); !os.IsNotExist(err) {
				t.Errorf("the decommission state file is left: %v", err)
			}
		})
	}
}

// TestNeverAMemberIsLeftAlone: a node installed before the commit that adds
// it is not decommissioned: the commit is refused and nothing converged.
func TestNeverAMemberIsLeftAlone(t *testing.T) {
	h := newHarness(t, "broker9", "", map[string]string{"c1": ""})
	h.src.head = "c1"
	h.poll()
	s := h.a.Status()
	if s.Refused != "c1" || !strings.Contains(s.RefusedReason, "add it to the definition") || s.Decommission != nil || len(h.conv.calls) != 0 {
		t.Fatalf("a spare node: %+v, converged %v", s, h.conv.calls)
	}
}

func TestCountPeers(t *testing.T) {
	ss := `0      0      10.231.7.21:52780 10.231.7.22:8883
0      0        127.0.0.1:8883    127.0.0.1:39136
0      0      10.231.7.21:8883  10.231.7.20:60524
0      0      10.231.7.21:8884  10.231.7.20:60530
0      0      10.231.7.21:8883  10.231.7.21:60600
0      0      [::ffff:10.231.7.21]:8883  [::ffff:10.231.7.11]:41000
0      0      10.231.7.21:22  10.231.7.1:5000
garbage
`
	if n := countPeers(ss, []int{8883, 8884}); n != 3 {
		t.Errorf("counted %d peers, want 3 (bridge on 8883 and 8884, lb1 over IPv6-mapped)", n)
	}
}

// TestRemovedBridgeNodeLeavesAtOnce: a bridge node of a pair that a commit
// removes tells keepalived's bridge check at once (the role moves now, not
// when the node has drained), and a commit that lists it again takes that
// back.
func TestRemovedBridgeNodeLeavesAtOnce(t *testing.T) {
	const pair = `nodes: bridge: priority: 20
nodes: bridge2: {address: "10.20.0.24", roles: ["bridge"], priority: 10}
bridgeVIP: {address: "10.20.0.101/24", routerID: 43, interface: "eth0"}
tls: bridgeSecret: "/nonexistent/bridge.secret"`
	h := newHarness(t, "bridge2", "", map[string]string{"c1": pair, "c2": "", "c3": pair})
	h.a.d.PeerConns = func(context.Context, []int) (int, error) { return 1, nil } // draining
	h.src.head = "c1"
	h.poll()
	if s := h.a.Status(); s.Applied != "c1" {
		t.Fatalf("the pair's commit: %+v", s)
	}
	h.src.head = "c2"
	h.poll()
	h.mu.Lock()
	got := append([]string(nil), h.leaving...)
	h.mu.Unlock()
	if len(got) != 1 || got[0] != "removed by commit c2" {
		t.Fatalf("after the removing commit, the bridge check was told %q; want it leaving at once", got)
	}
	if d := h.a.Status().Decommission; d == nil || !d.Done.IsZero() {
		t.Fatalf("want it still draining: %+v", d)
	}
	h.src.head = "c3"
	h.poll()
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.leaving) != 2 || h.leaving[1] != "" {
		t.Errorf("listed again, the bridge check was told %q; want it staying", h.leaving)
	}
}
