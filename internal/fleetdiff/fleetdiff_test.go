package fleetdiff

import (
	"context"
	"os"
	"strings"
	"testing"
	"testing/fstest"

	"github.com/mqha/mqha/internal/cluster"
	"github.com/mqha/mqha/schema"
)

func load(t *testing.T, extra string) *cluster.Cluster {
	t.Helper()
	b, err := os.ReadFile("../../cluster-repo-example/cluster.cue")
	if err != nil {
		t.Fatal(err)
	}
	c, err := schema.Load(fstest.MapFS{"cluster.cue": {Data: b}, "extra.cue": {Data: []byte("package cluster\n\n" + extra + "\n")}}, ".")
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// Adding a broker: it is added, the load balancers reload nginx, the bridge
// bridges to it, the other brokers only learn of it for their next start
// (internal/retained), nothing restarts there; taking it out again
// removes it.
func TestCompute(t *testing.T) {
	before := load(t, "")
	after := load(t, `nodes: broker3: {address: "10.20.0.23", roles: ["broker"]}`)
	nodes, err := Compute(context.Background(), before, after, "", false)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, n := range nodes {
		got[n.Name] = n.Summary()
	}
	for name, want := range map[string]string{
		"broker1": "broker1: 1 files changed; nothing restarts",
		"broker3": "(added by the commit)",
		"lb1":     "nginx reload",
		"bridge":  "mosquitto",
	} {
		if !strings.Contains(got[name], want) {
			t.Errorf("%s: %q, want it to say %q", name, got[name], want)
		}
	}
	back, err := Compute(context.Background(), after, before, "broker3", false)
	if err != nil || len(back) != 1 || back[0].Membership != Removed || !back[0].Changed() || back[0].Plan != nil {
		t.Errorf("removing broker3: %+v %v", back, err)
	}
	if _, err := Compute(context.Background(), before, after, "broker9", false); err == nil {
		t.Error("a node in neither commit was diffed")
	}
}
