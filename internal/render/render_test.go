package render_test

import (
	"bytes"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/mqha/mqha/internal/cluster"
	"github.com/mqha/mqha/internal/daemon"
	"github.com/mqha/mqha/internal/render"
	"github.com/mqha/mqha/schema"
)

var update = flag.Bool("update", false, "rewrite the golden files")

// cases are the cluster layouts with golden files under testdata/golden/NAME.
var cases = map[string]string{
	"example":      "../../cluster-repo-example",
	"four-brokers": "testdata/four-brokers",
	"one-broker":   "testdata/one-broker",
	"three-nodes":  "testdata/three-nodes",
	"standby":      "testdata/standby",
}

func TestGolden(t *testing.T) {
	for name, dir := range cases {
		t.Run(name, func(t *testing.T) {
			c, err := schema.LoadDir(dir)
			if err != nil {
				t.Fatal(err)
			}
			golden := filepath.Join("testdata", "golden", name)
			if *update {
				os.RemoveAll(golden)
			}
			want := map[string]bool{}
			for _, n := range c.Nodes {
				out, err := render.NodeOn(c, n.Name, render.Host{})
				if err != nil {
					t.Fatal(err)
				}
				for _, f := range out.Files {
					p := filepath.Join(golden, n.Name, f.Path)
					want[p] = true
					if *update {
						os.MkdirAll(filepath.Dir(p), 0o755)
						if err := os.WriteFile(p, f.Content, 0o644); err != nil {
							t.Fatal(err)
						}
						continue
					}
					g, err := os.ReadFile(p)
					if err != nil {
						t.Fatalf("%v (run `go test ./internal/render -update` after checking the change)", err)
					}
					if !bytes.Equal(g, f.Content) {
						t.Errorf("%s differs from the golden file:\n%s", p, f.Content)
					}
				}
			}
			// A golden file nobody renders any more is a stale expectation.
			filepath.WalkDir(golden, func(p string, d os.DirEntry, err error) error {
				if err == nil && !d.IsDir() && !want[p] {
					t.Errorf("golden file %s is no longer rendered", p)
				}
				return nil
			})
		})
	}
}

func TestUnitsPerRole(t *testing.T) {
	c, err := schema.LoadDir("testdata/three-nodes")
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		node  string
		units []string
		files int
	}{
		{"a", []string{daemon.Mosquitto.Unit, daemon.Nginx.Unit, daemon.Keepalived.Unit}, 8},
		{"c", []string{daemon.Mosquitto.Unit}, 4}, // conf, ACL, drop-in, start file
	}
	for _, tt := range tests {
		out, err := render.Node(c, tt.node)
		if err != nil {
			t.Fatal(err)
		}
		if strings.Join(out.Units, " ") != strings.Join(tt.units, " ") || len(out.Files) != tt.files {
			t.Errorf("node %s: units %v, %d files; want %v, %d", tt.node, out.Units, len(out.Files), tt.units, tt.files)
		}
	}
}

func TestBridgeSkipsItsOwnBroker(t *testing.T) {
	c := &cluster.Cluster{Name: "x", Nodes: []cluster.Node{
		{Name: "a", Address: "10.0.0.1", Roles: []cluster.Role{cluster.Broker, cluster.Bridge}},
		{Name: "b", Address: "10.0.0.2", Roles: []cluster.Role{cluster.Broker}},
	}, Ports: cluster.Ports{Client: 9000, Broker: 8883, Bridge: 8884}}
	out, err := render.Node(c, "a")
	if err != nil {
		t.Fatal(err)
	}
	conf := string(out.Files[0].Content)
	if strings.Count(conf, "\nconnection ") != 1 || !strings.Contains(conf, "address 10.0.0.2:8884") {
		t.Errorf("want exactly one bridge, to b:\n%s", conf)
	}
}

// The bridges speak the protocol the definition asks for; 3.1.1 when a
// definition built in code says none.
func TestBridgeProtocol(t *testing.T) {
	for _, tt := range []struct{ set, want string }{{"", "mqttv311"}, {"mqttv311", "mqttv311"}, {"mqttv50", "mqttv50"}} {
		c := &cluster.Cluster{Name: "x", Nodes: []cluster.Node{
			{Name: "a", Address: "10.0.0.1", Roles: []cluster.Role{cluster.Broker, cluster.Bridge}},
			{Name: "b", Address: "10.0.0.2", Roles: []cluster.Role{cluster.Broker}},
		}, Ports: cluster.Ports{Client: 9000, Broker: 8883, Bridge: 8884}, MQTT: cluster.MQTT{BridgeProtocol: tt.set}}
		out, err := render.Node(c, "a")
		if err != nil {
			t.Fatal(err)
		}
		if conf := string(out.Files[0].Content); !strings.Contains(conf, "\nbridge_protocol_version "+tt.want+"\n") {
			t.Errorf("bridgeProtocol %q: want bridge_protocol_version %s:\n%s", tt.set, tt.want, conf)
		}
	}
}

func TestUnknownNode(t *testing.T) {
	c, err := schema.LoadDir("testdata/three-nodes")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := render.Node(c, "zz"); err == nil || !strings.Contains(err.Error(), `"zz" is not in cluster`) {
		t.Errorf("got %v", err)
	}
}

func TestDeterministic(t *testing.T) {
	c, err := schema.LoadDir("testdata/four-brokers")
	if err != nil {
		t.Fatal(err)
	}
	a, _ := render.Node(c, "bridge")
	for range 20 {
		c2, _ := schema.LoadDir("testdata/four-brokers")
		b, _ := render.Node(c2, "bridge")
		if !bytes.Equal(a.Files[0].Content, b.Files[0].Content) {
			t.Fatal("two renders of one definition differ")
		}
	}
}

// A reload drops no client by default (no worker_shutdown_timeout); an
// explicit timeouts.drain bounds the old workers.
func TestDrain(t *testing.T) {
	c, err := schema.LoadDir("../../cluster-repo-example")
	if err != nil {
		t.Fatal(err)
	}
	for drain, want := range map[int]string{0: "", 45: "worker_shutdown_timeout 45s;"} {
		c.Timeouts.Drain = drain
		out, err := render.Node(c, "lb1")
		if err != nil {
			t.Fatal(err)
		}
		var conf string
		for _, f := range out.Files {
			if f.Path == "/etc/nginx/nginx.conf" {
				conf = string(f.Content)
			}
		}
		has := strings.Contains(conf, "\nworker_shutdown_timeout")
		if (want == "") == has || (want != "" && !strings.Contains(conf, want)) {
			t.Errorf("drain %d: worker_shutdown_timeout present %v, want %q", drain, has, want)
		}
	}
}

// On a host that grants 20,000 descriptors per process (this sandbox), the
// limits are clamped to it and the daemons' own connection limits stay
// below, so that at the limit connections are refused, not failed.
func TestSizedForTheHost(t *testing.T) {
	c, err := schema.LoadDir("../../cluster-repo-example")
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		node  string
		host  render.Host
		wants []string
	}{
		{"lb1", render.Host{NoFileMax: 20000}, []string{"worker_rlimit_nofile 20000;", "worker_connections 18976;", "LimitNOFILE=20000", "worker_processes auto;"}},
		// Two processors whose workers hold 9,488 clients each: six
		// workers hold 50,000, spread by reuseport.
		{"lb1", render.Host{NoFileMax: 20000, CPUs: 2}, []string{"worker_processes 6;", "listen 9000 backlog=4096 reuseport;"}},
		{"lb1", render.Host{NoFileMax: 1 << 20, CPUs: 2}, []string{"worker_processes auto;", "listen 9000 backlog=4096;"}},
		{"broker1", render.Host{NoFileMax: 20000}, []string{"max_connections 18976", "LimitNOFILE=20000"}},
		{"broker1", render.Host{NoFileMax: 1 << 20}, []string{"max_connections 50000", "LimitNOFILE=51024"}},
	} {
		out, err := render.NodeOn(c, tt.node, tt.host)
		if err != nil {
			t.Fatal(err)
		}
		var all string
		for _, f := range out.Files {
			all += string(f.Content)
		}
		for _, w := range tt.wants {
			if !strings.Contains(all, w) {
				t.Errorf("%s on a host allowing %d: no %q", tt.node, tt.host.NoFileMax, w)
			}
		}
		for _, l := range out.Limits {
			// mosquitto: its share of the clients (two brokers); nginx:
			// all of them, over its workers.
			if l.Unit == "mosquitto.service" && (l.Clients >= l.NoFile || l.Wanted != 25000) ||
				l.Unit == "nginx.service" && (l.Clients < 50000 && tt.host.CPUs > 0 || l.Wanted != 50000) {
				t.Errorf("%s: limit %+v: clients must stay below the descriptors and hold the share wanted", tt.node, l)
			}
		}
	}
}

// On a RHEL-family node nginx.conf names that distribution's nginx user and
// module directory (golden file under testdata/golden-rhel).
func TestGoldenRHEL(t *testing.T) {
	c, err := schema.LoadDir("../../cluster-repo-example")
	if err != nil {
		t.Fatal(err)
	}
	out, err := render.NodeOn(c, "lb1", render.RHELNginx)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range out.Files {
		if f.Path != daemon.Nginx.Conf {
			continue
		}
		p := filepath.Join("testdata", "golden-rhel", "example", "lb1", f.Path)
		if *update {
			os.MkdirAll(filepath.Dir(p), 0o755)
			os.WriteFile(p, f.Content, 0o644)
		}
		g, err := os.ReadFile(p)
		if err != nil || !bytes.Equal(g, f.Content) {
			t.Errorf("%s differs from the golden file (%v):\n%s", p, err, f.Content)
		}
		if !bytes.Contains(f.Content, []byte("user nginx;")) || !bytes.Contains(f.Content, []byte("include /usr/share/nginx/modules/*.conf;")) {
			t.Errorf("not RHEL's nginx layout:\n%s", f.Content)
		}
	}
}

// A broker whose host is gone is marked down in the load balancers' nginx,
// and only that one.
func TestDownBroker(t *testing.T) {
	c, err := schema.LoadDir("../../cluster-repo-example")
	if err != nil {
		t.Fatal(err)
	}
	out, err := render.NodeOn(c, "lb1", render.Host{DownBrokers: map[string]bool{"broker1": true}})
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range out.Files {
		if f.Path != "/etc/nginx/nginx.conf" {
			continue
		}
		s := string(f.Content)
		if !strings.Contains(s, "server 10.20.0.21:8883 max_fails=0 down; # broker1: host gone") ||
			!strings.Contains(s, "server 10.20.0.22:8883 max_fails=0; # broker2") {
			t.Errorf("upstream servers:\n%s", s)
		}
		return
	}
	t.Fatal("no nginx.conf")
}

// A broker a commit removed stays bridged, said so, until it stops serving.
func TestDrainingBroker(t *testing.T) {
	c, err := schema.LoadDir("../../cluster-repo-example")
	if err != nil {
		t.Fatal(err)
	}
	gone := cluster.Node{Name: "broker3", Address: "10.20.0.23", Roles: []cluster.Role{cluster.Broker}}
	for _, tt := range []struct {
		node string
		want bool
	}{{"bridge", true}, {"broker1", false}, {"lb1", false}} {
		out, err := render.NodeOn(c, tt.node, render.Host{DrainingBrokers: []cluster.Node{gone}})
		if err != nil {
			t.Fatal(err)
		}
		all := ""
		for _, f := range out.Files {
			all += string(f.Content)
		}
		got := strings.Contains(all, "connection mqha-broker3\naddress 10.20.0.23:8884") && strings.Contains(all, "which a commit removed: bridged until it stops serving")
		if got != tt.want {
			t.Errorf("%s: bridges the removed broker %v, want %v", tt.node, got, tt.want)
		}
	}
}
