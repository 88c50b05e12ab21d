package daemon

import (
	"crypto/tls"
	"regexp"
	"slices"
	"testing"
	"time"

	"github.com/mqha/mqha/internal/cluster"
	"github.com/mqha/mqha/internal/unit"
)

func names(ds []Daemon) []string {
	var out []string
	for _, d := range ds {
		out = append(out, d.Name)
	}
	return out
}

func TestFor(t *testing.T) {
	for _, tt := range []struct {
		roles []cluster.Role
		want  []string
	}{
		{[]cluster.Role{cluster.LB}, []string{"nginx", "keepalived"}},
		{[]cluster.Role{cluster.Broker}, []string{"mosquitto"}},
		{[]cluster.Role{cluster.Bridge}, []string{"mosquitto"}},
		{[]cluster.Role{cluster.Broker, cluster.Bridge}, []string{"mosquitto"}},
		{[]cluster.Role{cluster.LB, cluster.Broker}, []string{"mosquitto", "nginx", "keepalived"}},
		{nil, nil},
	} {
		n := cluster.Node{Name: "n", Roles: tt.roles}
		if got := names(For(&cluster.Cluster{Nodes: []cluster.Node{n}}, n)); !slices.Equal(got, tt.want) {
			t.Errorf("roles %v: daemons %v, want %v", tt.roles, got, tt.want)
		}
	}
	// With standbys keepalived elects the bridge master: it runs on every
	// bridge node.
	b1 := cluster.Node{Name: "bridge1", Roles: []cluster.Role{cluster.Bridge}}
	b2 := cluster.Node{Name: "bridge2", Roles: []cluster.Role{cluster.Bridge}}
	c := &cluster.Cluster{Nodes: []cluster.Node{b1, b2}}
	for _, n := range c.Nodes {
		if got := names(For(c, n)); !slices.Equal(got, []string{"mosquitto", "keepalived"}) {
			t.Errorf("%s with a standby: daemons %v, want mosquitto, keepalived", n.Name, got)
		}
	}
}

func TestLookups(t *testing.T) {
	for _, d := range All {
		if got, ok := ByUnit(d.Unit); !ok || got.Name != d.Name {
			t.Errorf("ByUnit(%s) = %s, %v", d.Unit, got.Name, ok)
		}
		if got, ok := ByConf(d.Conf); !ok || got.Name != d.Name {
			t.Errorf("ByConf(%s) = %s, %v", d.Conf, got.Name, ok)
		}
		if d.OnChange == nil || d.Validate == nil || d.Checks == nil {
			t.Errorf("%s: the table lacks a change rule, validator or checks", d.Name)
		}
	}
	if _, ok := ByConf("/etc/passwd"); ok {
		t.Error("ByConf found a daemon for /etc/passwd")
	}
	if Mosquitto.DropIn() != "/etc/systemd/system/mosquitto.service.d/mqha.conf" {
		t.Errorf("drop-in path %s", Mosquitto.DropIn())
	}
}

func TestOnChange(t *testing.T) {
	a, _ := Nginx.OnChange([]byte("a"), []byte("b"))
	b, _ := Keepalived.OnChange([]byte("a"), []byte("b"))
	c, _ := Mosquitto.OnChange([]byte("listener 8883\n"), []byte("listener 8884\n"))
	d, _ := Mosquitto.OnChange([]byte("max_keepalive 60\n"), []byte("max_keepalive 120\n"))
	if a != unit.Reload || b != unit.Reload || c != unit.Restart || d != unit.Reload {
		t.Errorf("nginx %s, keepalived %s, mosquitto listener %s, keepalive %s", a, b, c, d)
	}
}

func TestChecksAndBridges(t *testing.T) {
	cl := &cluster.Cluster{Name: "c", VIP: &cluster.VIP{Address: "10.0.0.100"}, Ports: cluster.Ports{Client: 9000, Broker: 8883, Bridge: 8884},
		Nodes: []cluster.Node{
			{Name: "b1", Address: "10.0.0.21", Roles: []cluster.Role{cluster.Broker}},
			{Name: "b2", Address: "10.0.0.22", Roles: []cluster.Role{cluster.Broker, cluster.Bridge}},
			{Name: "lb1", Address: "10.0.0.11", Roles: []cluster.Role{cluster.LB}},
		}}
	checks := func(name string) []string {
		n, _ := cl.Node(name)
		var out []string
		for _, d := range For(cl, n) {
			for _, c := range d.Checks(cl, n, &tls.Config{}, nil) {
				out = append(out, c.Name+"@"+c.Unit)
			}
		}
		return out
	}
	for node, want := range map[string][]string{
		"b1":  {"mosquitto@mosquitto.service"},
		"b2":  {"mosquitto@mosquitto.service", "bridge@"},
		"lb1": {"nginx@nginx.service", "keepalived@keepalived.service"},
	} {
		if got := checks(node); !slices.Equal(got, want) {
			t.Errorf("%s: checks %v, want %v", node, got, want)
		}
	}
	b2, _ := cl.Node("b2")
	br := Bridges(cl, b2, nil)
	if len(br) != 1 || br[0].Name != "b1" || br[0].ClientID != "c-bridge-to-b1" || br[0].Connection != "mqha-b1" {
		t.Errorf("bridges of b2: %+v (a bridge master on a broker bridges the others only)", br)
	}
	// With the bridge nodes' secret the id cannot be guessed, and every
	// bridge node with the same secret names the same session.
	s1 := Bridges(cl, b2, []byte("0123456789abcdef0123"))
	s2 := Bridges(cl, b2, []byte("0123456789abcdef0123"))
	other := Bridges(cl, b2, []byte("another secret, as long"))
	if !regexp.MustCompile(`^c-bridge-to-b1-[0-9a-f]{16}$`).MatchString(s1[0].ClientID) || s1[0].ClientID != s2[0].ClientID || s1[0].ClientID == other[0].ClientID {
		t.Errorf("secret ids: %q %q %q", s1[0].ClientID, s2[0].ClientID, other[0].ClientID)
	}
}

// A queue limit is not in force after a SIGHUP in mosquitto 2.0.11: a change
// restarts.
func TestQueueLimitsRestart(t *testing.T) {
	for _, opt := range []string{"max_queued_messages", "max_queued_bytes"} {
		a, why := Mosquitto.OnChange([]byte(opt+" 1\n"), []byte(opt+" 2\n"))
		if a != unit.Restart {
			t.Errorf("%s changed: %s (%s), want restart", opt, a, why)
		}
	}
}

// A lone bridge's mark is fresh within LoneFresh of now, either way; a
// pair master's mark (its priority and a count) never is.
func TestLoneMarkFresh(t *testing.T) {
	now := time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		mark string
		want bool
	}{
		{LoneMark(now), true},
		{LoneMark(now.Add(-9 * time.Second)), true},
		{LoneMark(now.Add(9 * time.Second)), true}, // its clock a little ahead
		{LoneMark(now.Add(-11 * time.Second)), false},
		{LoneMark(now.Add(time.Hour)), false},
		{"20 4", false},
		{"256", false},
		{"", false},
		{"256 x", false},
	} {
		if got := LoneMarkFresh(tc.mark, now); got != tc.want {
			t.Errorf("LoneMarkFresh(%q) = %v, want %v", tc.mark, got, tc.want)
		}
	}
}
