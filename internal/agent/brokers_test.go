package agent

import (
	"maps"
	"testing"

	"github.com/mqha/mqha/internal/cluster"
)

// The brokers a load balancer marks down: one gone, one back, never all.
func TestMarkDown(t *testing.T) {
	cl := &cluster.Cluster{Nodes: []cluster.Node{{Name: "b1", Roles: []cluster.Role{cluster.Broker}},
		{Name: "b2", Roles: []cluster.Role{cluster.Broker}}, {Name: "lb1", Roles: []cluster.Role{cluster.LB}}}}
	for _, tt := range []struct {
		cur     map[string]bool
		e       brokerEvent
		next    map[string]bool // nil: no change
		allGone bool
	}{
		{nil, brokerEvent{"b1", true}, map[string]bool{"b1": true}, false},
		{map[string]bool{"b1": true}, brokerEvent{"b1", true}, nil, false},
		{map[string]bool{"b1": true}, brokerEvent{"b1", false}, map[string]bool{}, false},
		{map[string]bool{"b1": true}, brokerEvent{"b2", true}, nil, true},
		{nil, brokerEvent{"b9", true}, nil, false}, // not in the definition
	} {
		next, allGone := markDown(tt.cur, cl, tt.e)
		if (next == nil) != (tt.next == nil) || !maps.Equal(next, tt.next) || allGone != tt.allGone {
			t.Errorf("%v after %+v: %v (all gone %v), want %v (%v)", tt.cur, tt.e, next, allGone, tt.next, tt.allGone)
		}
	}
	// The current set is the loop's: never changed in place.
	cur := map[string]bool{"b1": true}
	markDown(cur, cl, brokerEvent{"b1", false})
	if !cur["b1"] {
		t.Errorf("the current set changed: %v", cur)
	}
}
