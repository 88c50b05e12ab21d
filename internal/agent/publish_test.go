package agent

import (
	"crypto/tls"
	"testing"

	"github.com/mqha/mqha/internal/cluster"
)

// A commit that brings another certificate or CA makes the status
// publisher connect anew: its clients keep the TLS they were made with.
func TestStatusTargetFollowsTheTLS(t *testing.T) {
	c := &cluster.Cluster{Name: "mqtt", Ports: cluster.Ports{Broker: 8883},
		Nodes: []cluster.Node{{Name: "b1", Address: "10.0.0.21", Roles: []cluster.Role{cluster.Broker}},
			{Name: "lb1", Address: "10.0.0.11", Roles: []cluster.Role{cluster.LB}}}}
	lb1, _ := c.Node("lb1")
	a := statusTargetOf(&View{Cluster: c, Node: lb1, TLS: &tls.Config{}, TLSID: "wrong"})
	b := statusTargetOf(&View{Cluster: c, Node: lb1, TLS: &tls.Config{}, TLSID: "good"})
	if a.key == b.key {
		t.Error("a commit with another TLS keeps the publisher's clients")
	}
	// Every commit loads the TLS again: the same files keep the clients.
	if again := statusTargetOf(&View{Cluster: c, Node: lb1, TLS: &tls.Config{}, TLSID: "good"}); again.key != b.key {
		t.Error("the same TLS files make new clients")
	}
	if len(b.brokers) != 1 || b.brokers[0] != "10.0.0.21:8883" || b.topic != "$mqha/status/mqtt/lb1" {
		t.Errorf("target %+v", b)
	}
}

// A decommissioned node's view may have no certificate (restarted while
// draining): no target, not a client built on a nil TLS config (the hour
// soak's agent on broker3 panicked in daemon.WithName).
func TestStatusTargetWithoutTLS(t *testing.T) {
	c := &cluster.Cluster{Name: "mqtt", Ports: cluster.Ports{Broker: 8883},
		Nodes: []cluster.Node{{Name: "b1", Address: "10.0.0.21", Roles: []cluster.Role{cluster.Broker}}}}
	if got := statusTargetOf(&View{Cluster: c, Node: cluster.Node{Name: "b9"}}); got.v != nil || len(got.brokers) != 0 {
		t.Errorf("a target without TLS: %+v", got)
	}
}
