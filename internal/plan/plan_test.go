package plan_test

import (
	"bytes"
	"fmt"
	"strings"
	"testing"
	"testing/fstest"

	"github.com/mqha/mqha/internal/daemon"
	"github.com/mqha/mqha/internal/plan"
	"github.com/mqha/mqha/internal/render"
	"github.com/mqha/mqha/internal/retained"
	"github.com/mqha/mqha/internal/unit"
	"github.com/mqha/mqha/schema"
)

const mosq = `# Managed by mqha-agent
pid_file /run/mosquitto/mosquitto.pid
user mosquitto
max_queued_messages 1000
max_keepalive 300
log_type error

listener 8883
cafile /etc/mqha/tls/ca.crt

connection mqha-broker1
address 10.0.0.21:8884
topic # both 2
`

func TestMosquittoAction(t *testing.T) {
	tests := []struct {
		name, old, new string
		action         unit.Action
		reason         string
	}{
		{"bridge added", "topic # both 2\n", "topic # both 2\nconnection mqha-broker2\naddress 10.0.0.22:8884\ntopic # both 2\n", unit.Restart, "bridges changed and mosquitto cannot reload bridges"},
		{"bridge address", "10.0.0.21:8884", "10.0.0.29:8884", unit.Restart, "bridges changed"},
		{"listener port", "listener 8883", "listener 8893", unit.Restart, "listeners changed and mosquitto cannot reload listeners"},
		{"listener option", "cafile /etc/mqha/tls/ca.crt", "cafile /etc/other.crt", unit.Restart, "listeners changed"},
		{"reloadable option", "max_keepalive 300", "max_keepalive 600", unit.Reload, "max_keepalive changed; mosquitto re-reads it on SIGHUP"},
		{"queue limit (not in force after a reload in 2.0.11)", "max_queued_messages 1000", "max_queued_messages 5000", unit.Restart, "max_queued_messages changed and mosquitto reads it only at start"},
		{"added reloadable option", "log_type error\n", "log_type error\nlog_type warning\n", unit.Reload, "log_type changed"},
		{"start-only option", "user mosquitto", "user nobody", unit.Restart, "user changed and mosquitto reads it only at start"},
		{"comment only", "# Managed by mqha-agent", "# Managed by mqha-agent, v2", unit.Reload, "only comments changed"},
		{"whitespace only", "listener 8883", "listener   8883", unit.Reload, "only comments changed"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out := &render.Output{Units: []string{daemon.Mosquitto.Unit},
				Files: []render.File{{Path: daemon.Mosquitto.Conf, Unit: daemon.Mosquitto.Unit, Kind: render.Config,
					Content: []byte(strings.Replace(mosq, tt.old, tt.new, 1))}}}
			root := fstest.MapFS{"etc/mosquitto/mosquitto.conf": {Data: []byte(mosq)}}
			p, err := plan.Make(out, root, nil)
			if err != nil {
				t.Fatal(err)
			}
			u := p.Units[0]
			if u.Action != tt.action || !strings.Contains(u.Reason, tt.reason) {
				t.Errorf("got %s, %s; want %s, %s", u.Action, u.Reason, tt.action, tt.reason)
			}
		})
	}
}

func TestUnitDecisions(t *testing.T) {
	c, err := schema.LoadDir("../../cluster-repo-example")
	if err != nil {
		t.Fatal(err)
	}
	lb, _ := render.Node(c, "lb1")
	live := fstest.MapFS{}
	for _, f := range lb.Files {
		live[f.Path[1:]] = &fstest.MapFile{Data: f.Content}
	}
	with := func(path, content string) fstest.MapFS {
		m := fstest.MapFS{}
		for k, v := range live {
			m[k] = v
		}
		m[path[1:]] = &fstest.MapFile{Data: []byte(content)}
		return m
	}
	active := unit.State{ActiveState: "active", LoadState: "loaded"}
	running := map[string]unit.State{daemon.Nginx.Unit: active, daemon.Keepalived.Unit: active}
	dropIn := string(live[daemon.Keepalived.DropIn()[1:]].Data)
	tests := []struct {
		name   string
		root   fstest.MapFS
		states map[string]unit.State
		unit   string
		action unit.Action
		reason string
		reload bool // daemon-reload expected
	}{
		{"in sync", live, running, daemon.Nginx.Unit, unit.None, "up to date", false},
		{"nginx config edited", with(daemon.Nginx.Conf, "# hand edit\n"), running, daemon.Nginx.Unit, unit.Reload, "nginx reloads without dropping connections", false},
		{"keepalived config edited", with(daemon.Keepalived.Conf, "x"), running, daemon.Keepalived.Unit, unit.Reload, "keepalived re-reads it on SIGHUP", false},
		{"limits drop-in changed", with(daemon.Nginx.DropIn(), "[Service]\nLimitNOFILE=1024\n"), running, daemon.Nginx.Unit, unit.Restart, "apply only when the daemon starts", true},
		{"ordering-only drop-in change", with(daemon.Keepalived.DropIn(), strings.Replace(dropIn, "After=nginx.service", "", 1)), running, daemon.Keepalived.Unit, unit.None, "daemon-reload is enough", true},
		{"unit failed", live, map[string]unit.State{daemon.Nginx.Unit: {ActiveState: "failed", LoadState: "loaded"}, daemon.Keepalived.Unit: active}, daemon.Nginx.Unit, unit.Start, "nginx is failed", false},
		{"unit not installed", live, map[string]unit.State{daemon.Nginx.Unit: {ActiveState: "inactive", LoadState: "not-found"}, daemon.Keepalived.Unit: active}, daemon.Nginx.Unit, unit.Start, "install nginx first", false},
		{"mosquitto running on an lb-only node", live, map[string]unit.State{daemon.Nginx.Unit: active, daemon.Keepalived.Unit: active, daemon.Mosquitto.Unit: active}, daemon.Mosquitto.Unit, unit.Stop, "does not need it", false},
		{"our mosquitto config left on an lb (states unknown)", with(daemon.Mosquitto.Conf, plan.Marker+": old\n"), nil, daemon.Mosquitto.Unit, unit.Stop, "does not need it", false},
		{"foreign mosquitto config (states unknown)", with(daemon.Mosquitto.Conf, "# Debian\n"), nil, daemon.Mosquitto.Unit, "", "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := plan.Make(lb, tt.root, tt.states)
			if err != nil {
				t.Fatal(err)
			}
			var got *plan.Unit
			for i := range p.Units {
				if p.Units[i].Name == tt.unit {
					got = &p.Units[i]
				}
			}
			switch {
			case tt.action == "" && got != nil:
				t.Errorf("unexpected %s: %s", got.Action, got.Reason)
			case tt.action != "" && got == nil:
				t.Errorf("no decision for %s", tt.unit)
			case got != nil && (got.Action != tt.action || !strings.Contains(got.Reason, tt.reason)):
				t.Errorf("got %s, %s; want %s, ...%s...", got.Action, got.Reason, tt.action, tt.reason)
			}
			if p.DaemonReload != tt.reload {
				t.Errorf("daemon-reload %v, want %v", p.DaemonReload, tt.reload)
			}
		})
	}
}

// bigCluster is a CUE definition with n brokers, two LBs and a bridge.
func bigCluster(n int) fstest.MapFS {
	var b strings.Builder
	b.WriteString("package cluster\n\nname: \"big\"\nvip: {address: \"10.9.0.250/16\", routerID: 9}\nnodes: {\n")
	b.WriteString("\tlb1: {address: \"10.9.0.1\", roles: [\"lb\"], priority: 200}\n")
	b.WriteString("\tlb2: {address: \"10.9.0.2\", roles: [\"lb\"], priority: 100}\n")
	b.WriteString("\tbridge: {address: \"10.9.0.3\", roles: [\"bridge\"]}\n")
	for i := range n {
		fmt.Fprintf(&b, "\tbroker%d: {address: \"10.9.%d.%d\", roles: [\"broker\"]}\n", i, 1+i/200, 1+i%200)
	}
	b.WriteString("}\n")
	return fstest.MapFS{"cluster.cue": {Data: []byte(b.String())}}
}

// BenchmarkRenderAndPlan200 loads a 200-broker cluster, renders every node
// and plans each against an empty root: the work of a whole fleet's diff.
// Target: under 100 ms and 50 MB per op.
func BenchmarkRenderAndPlan200(b *testing.B) {
	fsys := bigCluster(200)
	empty := fstest.MapFS{}
	for b.Loop() {
		c, err := schema.Load(fsys, ".")
		if err != nil {
			b.Fatal(err)
		}
		for _, n := range c.Nodes {
			out, err := render.Node(c, n.Name)
			if err != nil {
				b.Fatal(err)
			}
			if _, err := plan.Make(out, empty, nil); err != nil {
				b.Fatal(err)
			}
		}
	}
}

// The bridge connections of a cluster with standbys (a file mosquitto
// includes only on the master, through keepalived's link): a change of them
// restarts mosquitto (bridges are not reloaded), although mosquitto.conf is
// unchanged; an unchanged commit changes nothing.
func TestBridgeConnectionsRestart(t *testing.T) {
	c, err := schema.LoadDir("../render/testdata/standby")
	if err != nil {
		t.Fatal(err)
	}
	out, err := render.NodeOn(c, "bridge2", render.Host{})
	if err != nil {
		t.Fatal(err)
	}
	states := map[string]unit.State{daemon.Mosquitto.Unit: {ActiveState: "active", LoadState: "loaded"},
		daemon.Keepalived.Unit: {ActiveState: "active", LoadState: "loaded"}}
	for _, tt := range []struct {
		name   string
		edit   func(path string, b []byte) []byte
		action unit.Action
	}{
		{"unchanged", func(_ string, b []byte) []byte { return b }, unit.None},
		{"a broker more", func(p string, b []byte) []byte {
			if p == daemon.BridgesFile {
				return bytes.Replace(b, []byte("connection mqha-broker2"), []byte("connection mqha-broker0"), 1)
			}
			return b
		}, unit.Restart},
	} {
		live := fstest.MapFS{}
		for _, f := range out.Files {
			live[f.Path[1:]] = &fstest.MapFile{Data: tt.edit(f.Path, f.Content)}
		}
		p, err := plan.Make(out, live, states)
		if err != nil {
			t.Fatal(err)
		}
		var got unit.Action
		for _, u := range p.Units {
			if u.Name == daemon.Mosquitto.Unit {
				got = u.Action
			}
		}
		if got != tt.action {
			t.Errorf("%s: mosquitto %s, want %s (%+v)", tt.name, got, tt.action, p.Units)
		}
	}
}

// The start file (internal/retained) is read only when mosquitto starts: a
// change to it (a broker added elsewhere) is written and restarts nothing.
func TestStartFileRestartsNothing(t *testing.T) {
	c, err := schema.LoadDir("../../cluster-repo-example")
	if err != nil {
		t.Fatal(err)
	}
	out, _ := render.Node(c, "broker1")
	live := fstest.MapFS{}
	for _, f := range out.Files {
		live[f.Path[1:]] = &fstest.MapFile{Data: f.Content}
	}
	live[retained.File[1:]] = &fstest.MapFile{Data: []byte("# older\n")}
	p, err := plan.Make(out, live, map[string]unit.State{daemon.Mosquitto.Unit: {ActiveState: "active", LoadState: "loaded"}})
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Changes) != 1 || p.Changes[0].File.Path != retained.File || p.DaemonReload {
		t.Errorf("changes %d, daemon-reload %v; want the start file alone", len(p.Changes), p.DaemonReload)
	}
	for _, u := range p.Units {
		if u.Action != unit.None {
			t.Errorf("%s: %s (%s), want none", u.Name, u.Action, u.Reason)
		}
	}
}
