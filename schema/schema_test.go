package schema_test

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"
	"testing/fstest"

	"github.com/mqha/mqha/schema"
)

// base is a valid cluster; cases replace parts of it. Line numbers in the
// cases below count from "package cluster" as line 1.
const base = `package cluster

name: "mqtt"
vip: {address: "10.0.0.100/24", routerID: 42}
nodes: {
	lb1: {address: "10.0.0.11", roles: ["lb"], priority: 150}
	lb2: {address: "10.0.0.12", roles: ["lb"], priority: 100}
	bridge: {address: "10.0.0.20", roles: ["bridge"]}
	broker1: {address: "10.0.0.21", roles: ["broker"]}
	broker2: {address: "10.0.0.22", roles: ["broker"]}
}
`

func load(t *testing.T, files map[string]string) error {
	t.Helper()
	fsys := fstest.MapFS{}
	for name, src := range files {
		fsys[name] = &fstest.MapFile{Data: []byte(src)}
	}
	_, err := schema.Load(fsys, ".")
	return err
}

func TestValid(t *testing.T) {
	if err := load(t, map[string]string{"cluster.cue": base}); err != nil {
		t.Fatal(err)
	}
}

// A bridge master with standbys: each bridge node has its own priority.
// standby gives the bridge role a second node (a standby); standbyVIP is
// what such a cluster must add: the bridge master's address and a shared
// secret.
const (
	standby    = `roles: ["bridge"], priority: 20}` + "\n\tbridge2: {address: \"10.0.0.23\", roles: [\"bridge\"], priority: 10}"
	standbyVIP = "bridgeVIP: {address: \"10.0.0.101/24\", routerID: 43}\ntls: bridgeSecret: \"/etc/mqha/tls/bridge.secret\"\n"
)

func TestBridgeStandbyValid(t *testing.T) {
	src := strings.Replace(base, `roles: ["bridge"]}`, standby, 1)
	c, err := schema.Load(fstest.MapFS{"cluster.cue": {Data: []byte(src)}, "bridge.cue": {Data: []byte("package cluster\n\n" + standbyVIP)}}, ".")
	if err != nil {
		t.Fatal(err)
	}
	if b := c.BridgeVIP; b == nil || b.Address != "10.0.0.101" || b.Prefix != 24 || b.RouterID != 43 || b.Interface != "eth0" || b.AdvertInterval != 0.2 || !b.Unicast {
		t.Fatalf("bridgeVIP decoded as %+v", b)
	}
}

func TestRules(t *testing.T) {
	tests := []struct {
		name    string
		old     string // replaced in base by new
		new     string
		extra   string // a second file, extra.cue, when set
		pos     string // file:line:col of the reported value
		path    string
		message string
	}{
		{"duplicate address", `broker2: {address: "10.0.0.22"`, `broker2: {address: "10.0.0.21"`, "",
			"cluster.cue:10:21", "nodes.broker2.address", "address 10.0.0.21 is already used by node broker1 (cluster.cue:9:21)"},
		{"node name not a hostname", `broker2: {`, `Broker_2: {`, "",
			"cluster.cue:10:2", "nodes.Broker_2", `node name "Broker_2" is not a hostname`},
		{"unknown role", `roles: ["bridge"]`, `roles: ["bridges"]`, "",
			"cluster.cue:8:41", "nodes.bridge.roles.0", `"bridges" is not allowed here`},
		{"no roles", `roles: ["bridge"]`, `roles: []`, "",
			"cluster.cue:8:33", "nodes.bridge.roles", `incompatible list lengths`},
		{"no broker", "broker1: {address: \"10.0.0.21\", roles: [\"broker\"]}\n\tbroker2: {address: \"10.0.0.22\", roles: [\"broker\"]}", "", "",
			"cluster.cue:5:1", "nodes", "the cluster has no broker"},
		{"the public CA bundle as cluster CA", "", "", `tls: ca: "/etc/ssl/certs/ca-certificates.crt"`,
			"extra.cue:3:10", "tls.ca", "is the system's public CA bundle"},
		{"a canary that is no node", "", "", `rollout: canary: "broker9"`,
			"extra.cue:3:18", "rollout.canary", `the canary "broker9" is not a node of the cluster`},
		{"two brokers without a bridge", `bridge: {address: "10.0.0.20", roles: ["bridge"]}`, ``, "",
			"cluster.cue:5:1", "nodes", "2 brokers but no bridge"},
		{"two bridges without priorities", `broker2: {address: "10.0.0.22", roles: ["broker"]}`, `broker2: {address: "10.0.0.22", roles: ["broker", "bridge"]}`, "",
			"cluster.cue:10:2", "nodes.broker2", "bridge broker2 has no priority"},
		{"a standby bridge without a priority", `roles: ["bridge"]}`, `roles: ["bridge"], priority: 20}` + "\n\tbridge2: {address: \"10.0.0.23\", roles: [\"bridge\"]}", "",
			"cluster.cue:9:2", "nodes.bridge2", "bridge bridge2 has no priority"},
		{"equal bridge priorities", `roles: ["bridge"]}`, `roles: ["bridge"], priority: 20}` + "\n\tbridge2: {address: \"10.0.0.23\", roles: [\"bridge\"], priority: 20}", "",
			"cluster.cue:9:63", "nodes.bridge2.priority", "bridge nodes bridge and bridge2 both have priority 20"},
		{"standby without bridgeVIP", `roles: ["bridge"]}`, standby, `tls: bridgeSecret: "/etc/mqha/tls/bridge.secret"`,
			"cluster.cue:9:42", "nodes.bridge2.roles.0", "2 bridge nodes (bridge, bridge2) but no bridgeVIP"},
		{"standby without a bridge secret", `roles: ["bridge"]}`, standby, `bridgeVIP: {address: "10.0.0.101/24", routerID: 43}`,
			"cluster.cue:9:42", "nodes.bridge2.roles.0", "2 bridge nodes (bridge, bridge2) but no tls.bridgeSecret"},
		{"bridgeVIP with the vip's router id", `roles: ["bridge"]}`, standby, strings.Replace(standbyVIP, "43", "42", 1),
			"extra.cue:3:49", "bridgeVIP.routerID", "bridgeVIP.routerID 42 is vip.routerID too"},
		{"bridgeVIP a node's address", `roles: ["bridge"]}`, standby, strings.Replace(standbyVIP, "10.0.0.101", "10.0.0.21", 1),
			"extra.cue:3:22", "bridgeVIP.address", "bridgeVIP 10.0.0.21 is node broker1's address"},
		{"bridgeVIP without standbys", "", "", `bridgeVIP: {address: "10.0.0.101/24", routerID: 43}`,
			"extra.cue:3:1", "bridgeVIP", "bridgeVIP without standbys: 1 bridge node"},
		{"vip with one lb", `lb2: {address: "10.0.0.12", roles: ["lb"], priority: 100}`, ``, "",
			"cluster.cue:4:1", "vip", "a vip needs at least two load balancers, found 1"},
		{"lbs without vip", `vip: {address: "10.0.0.100/24", routerID: 42}`, ``, "",
			"cluster.cue:6:38", "nodes.lb1.roles.0", "load balancers without a vip"},
		{"vip is a node address", `"10.0.0.100/24"`, `"10.0.0.21/24"`, "",
			"cluster.cue:4:16", "vip.address", "VIP 10.0.0.21 is node broker1's address"},
		{"vip outside the lb subnet", `"10.0.0.100/24"`, `"10.0.1.100/24"`, "",
			"cluster.cue:4:16", "vip.address", "VIP 10.0.1.100 is outside 10.0.1.0/24, the subnet of load balancer lb1 (10.0.0.11)"},
		{"vip not a cidr", `"10.0.0.100/24"`, `"10.0.0.100"`, "",
			"cluster.cue:4:16", "vip.address", "invalid value"},
		{"router id too large", `routerID: 42`, `routerID: 256`, "",
			"cluster.cue:4:43", "vip.routerID", "invalid value 256 (out of bound <=255)"},
		{"router id zero", `routerID: 42`, `routerID: 0`, "",
			"cluster.cue:4:43", "vip.routerID", "invalid value 0 (out of bound >=1)"},
		{"equal lb priorities", `priority: 100`, `priority: 150`, "",
			"cluster.cue:7:55", "nodes.lb2.priority", "load balancers lb1 and lb2 both have priority 150"},
		{"lb without priority", `, priority: 100}`, `}`, "",
			"cluster.cue:7:2", "nodes.lb2", "load balancer lb2 has no priority"},
		{"priority on a broker", `roles: ["broker"]}`, `roles: ["broker"], priority: 9}`, "",
			"cluster.cue:9:63", "nodes.broker1.priority", "node broker1 has a priority but is neither a load balancer nor a bridge"},
		{"port clash on an lb that is a broker", `roles: ["lb"], priority: 150`, `roles: ["lb", "broker"], priority: 150`, "ports: client: 8883\n",
			"extra.cue:3:16", "ports.client", "port 8883 is both the nginx client listener and the mosquitto TLS listener on node lb1"},
		{"port clash on a broker", "", "", "ports: bridge: 8883\n",
			"extra.cue:3:16", "ports.bridge", "port 8883 is both the mosquitto TLS listener and the mosquitto bridge listener on node broker1"},
		{"port out of range", "", "", "ports: client: 70000\n",
			"extra.cue:3:16", "ports.client", "out of bound <=65535"},
		{"not an address", `"10.0.0.22"`, `"10.0.0.256"`, "",
			"cluster.cue:10:21", "nodes.broker2.address", "invalid value"},
		{"unknown field", `routerID: 42}`, `routerID: 42, preempt_delay: 60}`, "",
			"cluster.cue:4:47", "vip.preempt_delay", "field not allowed"},
		{"new file adds a node with a clashing address", "", "", `nodes: broker3: {address: "10.0.0.22", roles: ["broker"]}` + "\n",
			"extra.cue:3:27", "nodes.broker3.address", "address 10.0.0.22 is already used by node broker2 (cluster.cue:10:21)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			src := base
			if tt.old != "" {
				if !strings.Contains(src, tt.old) {
					t.Fatalf("base has no %q", tt.old)
				}
				src = strings.Replace(src, tt.old, tt.new, 1)
			}
			files := map[string]string{"cluster.cue": src}
			if tt.extra != "" {
				files["extra.cue"] = "package cluster\n\n" + tt.extra
			}
			err := load(t, files)
			var errs schema.Errors
			if !errors.As(err, &errs) {
				t.Fatalf("want schema.Errors, got %v", err)
			}
			for _, e := range errs {
				got := fmt.Sprintf("%s:%d:%d", e.File, e.Line, e.Col)
				if got == tt.pos && e.Path == tt.path && strings.Contains(e.Msg, tt.message) {
					if e.Hint == "" {
						t.Errorf("no hint for %v", e)
					}
					return
				}
			}
			t.Errorf("want %s: %s: ...%s..., got:\n%v", tt.pos, tt.path, tt.message, err)
		})
	}
}

// Files CUE would skip silently are errors with their path and a hint: the
// third load balancer in a file without a package line must not vanish.
func TestFilesTheAgentWouldNotLoad(t *testing.T) {
	example, err := os.ReadFile("../cluster-repo-example/cluster.cue")
	if err != nil {
		t.Fatal(err)
	}
	lb3 := []byte("nodes: lb3: {address: \"10.20.0.13\", roles: [\"lb\"], priority: 50}\n")
	for _, tt := range []struct {
		name  string
		files map[string]string
		want  string
	}{
		{"no package clause", map[string]string{"lb3.cue": string(lb3)}, "lb3.cue:1:1: no package clause"},
		{"subdirectory", map[string]string{"nodes/broker4.cue": "package cluster\n" + string(lb3)}, "nodes/broker4.cue:1:1: this file is in a subdirectory"},
		{"another package", map[string]string{"x.cue": "package other\n" + string(lb3)}, "x.cue:1:1: package other, but the definition is package cluster"},
		{"syntax error", map[string]string{"bad.cue": "package cluster\nnodes: lb3: {address: \n"}, "bad.cue:2:24: "},
		{"dot directories are not the definition", map[string]string{".github/x.cue": "junk"}, ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			fsys := fstest.MapFS{"cluster.cue": {Data: example}}
			for p, c := range tt.files {
				fsys[p] = &fstest.MapFile{Data: []byte(c)}
			}
			_, err := schema.Load(fsys, ".")
			if tt.want == "" {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), "hint:") {
				t.Fatalf("got %v, want an error with %q and a hint", err, tt.want)
			}
			if tt.name == "syntax error" && (strings.Contains(err.Error(), "single package") || !strings.Contains(err.Error(), "syntax")) {
				t.Errorf("a syntax error's hint is about syntax, not packages: %v", err)
			}
		})
	}
	if _, err := schema.Load(fstest.MapFS{"README.md": {Data: []byte("hi")}}, "."); err == nil || !strings.Contains(err.Error(), "has no .cue files: expected the cluster definition") {
		t.Errorf("empty repository: %v", err)
	}
}
