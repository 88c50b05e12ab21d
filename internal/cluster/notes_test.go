package cluster

import (
	"strings"
	"testing"
)

func TestNotes(t *testing.T) {
	brokers := func(n int, proto string) *Cluster {
		c := &Cluster{MQTT: MQTT{BridgeProtocol: proto}}
		for i := range n {
			c.Nodes = append(c.Nodes, Node{Name: string(rune('a' + i)), Roles: []Role{Broker}})
		}
		return c
	}
	tests := []struct {
		name string
		c    *Cluster
		want []string // one substring per note
	}{
		{"one broker is one broker", brokers(1, "mqttv311"), nil},
		{"two brokers, 3.1.1 bridges", brokers(2, "mqttv311"), []string{"up to 2 copies", "lose their MQTT 5 properties"}},
		{"three brokers, MQTT 5 bridges", brokers(3, "mqttv50"), []string{"up to 3 copies", "reaches no other broker"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := tt.c.Notes()
			if len(got) != len(tt.want) {
				t.Fatalf("notes %q, want %d", got, len(tt.want))
			}
			for i, w := range tt.want {
				if !strings.Contains(got[i], w) {
					t.Errorf("note %d %q lacks %q", i, got[i], w)
				}
			}
		})
	}
}
