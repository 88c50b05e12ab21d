// Package daemon is the one table of what mqha knows about the daemons it
// runs: which roles run each one, its unit, configuration file, drop-in and
// templates, what a change of its configuration needs (reload or restart),
// how a candidate configuration is validated, and how it is health-checked.
// Rendering, planning, validation, rollout, health and pki read the table
// instead of deciding per role themselves. With three daemons it is a table,
// not a plugin system.
package daemon

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"path"
	"slices"
	"strings"
	"time"

	"github.com/mqha/mqha/internal/cluster"
	"github.com/mqha/mqha/internal/health"
	"github.com/mqha/mqha/internal/probe"
	"github.com/mqha/mqha/internal/unit"
	"github.com/mqha/mqha/internal/validate"
)

// Daemon is everything the agent knows of one daemon.
type Daemon struct {
	Name           string         // mosquitto
	Unit           string         // mosquitto.service
	Conf           string         // its configuration file, written by the agent
	ConfTemplate   string         // render's template for Conf
	DropInTemplate string         // render's template for its systemd drop-in
	Roles          []cluster.Role // a node with any of these runs it
	// OnChange decides what a change of Conf from old to new needs.
	OnChange func(old, new []byte) (unit.Action, string)
	// Validate checks a candidate Conf with the daemon's own tool.
	Validate func(t validate.Tools, ctx context.Context, content []byte) error
	// Checks are the health checks of the daemon on node n of cl; tc is the
	// node's own certificate as a client, trusting the cluster CA.
	Checks func(cl *cluster.Cluster, n cluster.Node, tc *tls.Config, bridgeSecret []byte) []health.Check
}

// Unit names, also used by the checks below (which the table refers to).
const (
	mosquittoUnit  = "mosquitto.service"
	nginxUnit      = "nginx.service"
	keepalivedUnit = "keepalived.service"
)

var (
	Mosquitto = Daemon{
		Name: "mosquitto", Unit: mosquittoUnit, Conf: "/etc/mosquitto/mosquitto.conf",
		ConfTemplate: "mosquitto.conf.tmpl", DropInTemplate: "mosquitto.dropin.tmpl",
		Roles:    []cluster.Role{cluster.Broker, cluster.Bridge},
		OnChange: mosquittoAction,
		Validate: validate.Tools.Mosquitto,
		Checks:   mosquittoChecks,
	}
	Nginx = Daemon{
		Name: "nginx", Unit: nginxUnit, Conf: "/etc/nginx/nginx.conf",
		ConfTemplate: "nginx.conf.tmpl", DropInTemplate: "nginx.dropin.tmpl",
		Roles: []cluster.Role{cluster.LB},
		OnChange: func(_, _ []byte) (unit.Action, string) {
			return unit.Reload, "configuration changed; nginx reloads without dropping connections (old workers keep theirs)"
		},
		Validate: validate.Tools.Nginx,
		Checks:   nginxChecks,
	}
	Keepalived = Daemon{
		Name: "keepalived", Unit: keepalivedUnit, Conf: "/etc/keepalived/keepalived.conf",
		ConfTemplate: "keepalived.conf.tmpl", DropInTemplate: "keepalived.dropin.tmpl",
		Roles: []cluster.Role{cluster.LB},
		OnChange: func(_, _ []byte) (unit.Action, string) {
			return unit.Reload, "configuration changed; keepalived re-reads it on SIGHUP and keeps the VIP"
		},
		Validate: validate.Tools.Keepalived,
		Checks:   keepalivedChecks,
	}
)

// All is every daemon in start order: nginx before keepalived (keepalived
// tracks nginx); on a node with both, mosquitto first.
var All = []Daemon{Mosquitto, Nginx, Keepalived}

// FaultFile is keepalived's track file: the agent writes 0 while this load
// balancer serves, anything else puts its VRRP instance in FAULT.
const FaultFile = "/run/mqha/lb-fault"

const dropInDir, dropInName = "/etc/systemd/system", "mqha.conf"

// DropIn is where the agent's systemd drop-in for the daemon lives.
func (d Daemon) DropIn() string { return path.Join(dropInDir, d.Unit+".d", dropInName) }

// RunsOn reports whether node n of c runs the daemon: a node with one of
// its roles, and keepalived on the bridge nodes of a cluster with standbys
// (it elects the bridge master).
func (d Daemon) RunsOn(c *cluster.Cluster, n cluster.Node) bool {
	return slices.ContainsFunc(d.Roles, n.Has) || d.Unit == keepalivedUnit && ElectsBridge(c, n)
}

// For is the daemons node n of c runs, in start order.
func For(c *cluster.Cluster, n cluster.Node) []Daemon {
	var out []Daemon
	for _, d := range All {
		if d.RunsOn(c, n) {
			out = append(out, d)
		}
	}
	return out
}

// ElectsBridge reports whether node n of c takes part in keepalived's
// election of the bridge master: a bridge node of a cluster with standbys.
func ElectsBridge(c *cluster.Cluster, n cluster.Node) bool {
	return n.Has(cluster.Bridge) && HasStandby(c)
}

// Units is every managed unit, in start order.
func Units() []string {
	out := make([]string, len(All))
	for i, d := range All {
		out[i] = d.Unit
	}
	return out
}

// ByUnit and ByConf find a daemon by its unit or configuration file.
func ByUnit(u string) (Daemon, bool) {
	i := slices.IndexFunc(All, func(d Daemon) bool { return d.Unit == u })
	if i < 0 {
		return Daemon{}, false
	}
	return All[i], true
}

func ByConf(p string) (Daemon, bool) {
	i := slices.IndexFunc(All, func(d Daemon) bool { return d.Conf == p })
	if i < 0 {
		return Daemon{}, false
	}
	return All[i], true
}

// BehindVIP reports whether clients reach node n through the VIP (its
// certificate must then carry the VIP and its names): brokers do.
func BehindVIP(n cluster.Node) bool { return n.Has(cluster.Broker) }

// Bridge is one connection of a bridge master to a broker.
type Bridge struct {
	Name, Address string // the broker
	Connection    string // mosquitto's connection name
	ClientID      string // the bridge's client id on the broker
	// Draining: a commit removed the broker; it is bridged until it stops
	// serving (its clients move off first).
	Draining bool
}

// At is the broker's address with port.
func (b Bridge) At(port int) string { return cluster.HostPort(b.Address, port) }

// Bridges are node n's bridge connections, when n is (or may become) the
// bridge master: one per broker but itself.
//
// The client id names the cluster and the broker, never the bridge node:
// every bridge candidate connects to a broker under the same id, so a broker
// holds at most one bridge session of the cluster, and a second candidate
// connecting takes that session over (with its queued messages, cleansession
// false) instead of opening a second path. Two bridge masters at once can
// then delay messages but never loop them: a message enters a broker through
// its one bridge session and the bridge never gets it back (no-local).
//
// mosquitto lets any client connect under any client id, and the newer
// connection takes the session over. With the bridge nodes' shared secret
// the id ends in an HMAC of the cluster and broker names under it, which
// no client can compute; without one (nil) the id is guessable.
func Bridges(c *cluster.Cluster, n cluster.Node, secret []byte) []Bridge {
	if !n.Has(cluster.Bridge) {
		return nil
	}
	var out []Bridge
	for _, b := range c.WithRole(cluster.Broker) {
		if b.Name == n.Name {
			continue // the bridge master's own broker needs no bridge
		}
		out = append(out, BridgeTo(c.Name, b, secret))
	}
	return out
}

// BridgeTo is the connection of a bridge node of cluster to broker b.
func BridgeTo(cluster string, b cluster.Node, secret []byte) Bridge {
	id := cluster + "-bridge-to-" + b.Name
	if len(secret) > 0 {
		m := hmac.New(sha256.New, secret)
		m.Write([]byte(id))
		id += "-" + hex.EncodeToString(m.Sum(nil))[:16]
	}
	return Bridge{Name: b.Name, Address: b.Address, Connection: "mqha-" + b.Name, ClientID: id}
}

// LocalBridgeID is the client id of a bridge connection's local side, the
// session mosquitto keeps for it on the bridge node: mosquitto's default
// local_clientid for the connection's remote_clientid id.
func LocalBridgeID(id string) string { return "local." + id }

// BridgeCandidates are the nodes with the bridge role, highest priority
// first: with more than one, keepalived elects the bridge master among them
// and the others stand by.
func BridgeCandidates(c *cluster.Cluster) []cluster.Node {
	out := c.WithRole(cluster.Bridge)
	slices.SortStableFunc(out, func(a, b cluster.Node) int { return b.Priority - a.Priority })
	return out
}

// HasStandby reports whether the bridge role is elected at run time (more
// than one bridge node) rather than fixed by the definition.
func HasStandby(c *cluster.Cluster) bool { return len(c.WithRole(cluster.Bridge)) > 1 }

// With standbys, every bridge node's agent writes the bridge connections to
// BridgesFile, which mosquitto does not read; keepalived's notify
// (`mqha-agent bridge-notify`, package bridgerole) links it into BridgesDir,
// which mosquitto includes, on the node whose keepalived instance for the
// bridge is MASTER, and removes the link on any other state, restarting
// mosquitto either way. BridgesDir is under /run: a node that reboots finds
// no link and bridges only once keepalived makes it master again.
// mosquitto's drop-in creates the directory (include_dir fails on a missing
// one).
const (
	BridgesFile = "/etc/mosquitto/mqha-bridges.conf"
	BridgesDir  = "/run/mqha/bridge"
	BridgesLink = BridgesDir + "/bridges.conf"
)

// MarkerTopics is where a bridge master marks, retained, that it bridges
// (MarkerTopics/node: its priority and a count): keepalived's bridge check
// publishes it on the master's own mosquitto every second and the master's
// bridges carry it out to every broker. Two masters at once (bridge nodes
// that cannot hear each other's VRRP adverts) find each other there, and
// the one of lower priority stands down (package bridgerole). Under $: no
// client's "#" and no bridge's "topic #" matches it.
func MarkerTopics(cluster string) string { return "$mqha/bridge/" + cluster }

// A lone bridge node (the only one in its definition: no keepalived, its
// bridges always on) marks too, at the same topic, with LonePriority, above
// any keepalived priority (1-255), and the time in unix milliseconds
// instead of a count. Where a lone bridge and a pair's master meet, the
// two nodes run different commits (one has not fetched the commit that
// added, or removed, the standby); the lone one has no peer to hand over
// to, so the pair's nodes take no role while its mark is fresh (LoneFresh
// of now, either way: clocks differ a little) and the two never take the
// brokers' bridge sessions from each other in turn.
const (
	LonePriority = 256
	LoneFresh    = 10 * time.Second
)

// LoneMark is a lone bridge's mark at now.
func LoneMark(now time.Time) string { return fmt.Sprintf("%d %d", LonePriority, now.UnixMilli()) }

// LoneMarkFresh reports whether mark is a lone bridge's mark within
// LoneFresh of now.
func LoneMarkFresh(mark string, now time.Time) bool {
	var prio int
	var ms int64
	if _, err := fmt.Sscanf(mark, "%d %d", &prio, &ms); err != nil || prio != LonePriority {
		return false
	}
	d := now.Sub(time.UnixMilli(ms))
	return d < LoneFresh && d > -LoneFresh
}

// ProbeTopics is where keepalived's bridge check on the bridge master
// publishes a message on a broker (ProbeTopics/node) and waits for it to
// come in through the master's bridge: the bridge's data path. The bridges
// carry it in only.
func ProbeTopics(cluster string) string { return "$mqha/bridge-probe/" + cluster }

// ACLFile is mosquitto's access control list, written by the agent on
// every node that runs mosquitto: clients (any certificate of the cluster
// CA) use every topic but the $ ones and write only their own status; this
// node (its certificate's name is the node's) uses its own health probe's
// topics, and this node and the bridge nodes read and write
// $SYS/broker/connection/# (the bridges' state). No certificate can write
// another node's status or a bridge's state but its own node's.
const ACLFile = "/etc/mosquitto/mqha.acl"

// ACLChange is what a change of ACLFile needs: mosquitto re-reads it on
// SIGHUP.
func ACLChange() (unit.Action, string) {
	return unit.Reload, "access control list changed; mosquitto re-reads it on SIGHUP"
}

// HealthTopics is where each node's agent probes its own mosquitto
// (HealthTopics/node/...): a node's own, by the ACL.
const HealthTopics = probe.HealthTopics

// StatusTopics is where every node's agent publishes its status, retained,
// on every broker (StatusTopics/node): `mqha-agent fleet` reads them
// through the VIP with a client certificate. Each node may write only its
// own (the ACL matches the certificate name), anyone may read.
func StatusTopics(cluster string) string { return "$mqha/status/" + cluster }

// VerdictTopics is where every node keeps, retained on every broker, its
// signed verdicts on the commits it could not verify (VerdictTopics/node;
// package verdict): each node may write only its own, anyone may read
// (only a node's signature makes one count).
func VerdictTopics(cluster string) string { return "$mqha/verdict/" + cluster }

// BridgeCheck is the name of the check of a bridge master's connections; a
// standby has none to check (it passes).
const BridgeCheck = "bridge"

// Validator checks candidate configuration files with the daemons' own
// tools (the apply stage's validator).
type Validator struct{ Tools validate.Tools }

// Config checks the candidate content of the configuration file at path.
func (v Validator) Config(ctx context.Context, path string, content []byte) error {
	switch path {
	case BridgesFile:
		return v.Tools.MosquittoBridges(ctx, content)
	case ACLFile:
		return v.Tools.MosquittoACL(ctx, content)
	}
	d, ok := ByConf(path)
	if !ok {
		return fmt.Errorf("no validator for %s: not a daemon's configuration file", path)
	}
	return d.Validate(v.Tools, ctx, content)
}

// WithName is tc presenting name as the server name to verify.
func WithName(tc *tls.Config, name string) *tls.Config {
	c := tc.Clone()
	c.ServerName = name
	return c
}

// hungAfter is how long a daemon may go without answering and without CPU
// progress before it counts as hung: a stopped or deadlocked process shows
// no progress at all, a busy one always does.
const hungAfter = 2 * time.Second

// peers are the addresses (at port) of the other nodes with role r.
func peers(cl *cluster.Cluster, n cluster.Node, r cluster.Role, port int) []string {
	var out []string
	for _, p := range cl.WithRole(r) {
		if p.Name != n.Name {
			out = append(out, p.At(port))
		}
	}
	return out
}

// peersServe checks that a TLS handshake works with every address; the
// server name is serverName, or each address's host when empty.
func peersServe(addrs []string, tc *tls.Config, serverName string) func(context.Context) error {
	return func(ctx context.Context) error {
		var down []string
		for _, a := range addrs {
			name := serverName
			if name == "" {
				name, _, _ = net.SplitHostPort(a)
			}
			pctx, cancel := context.WithTimeout(ctx, time.Second)
			if err := probe.TLSThrough(a, WithName(tc, name))(pctx); err != nil {
				down = append(down, a)
			}
			cancel()
		}
		if len(down) > 0 {
			return fmt.Errorf("%s not serving", strings.Join(down, ", "))
		}
		return nil
	}
}

func mosquittoChecks(cl *cluster.Cluster, n cluster.Node, tc *tls.Config, bridgeSecret []byte) []health.Check {
	// The local listener presents the node's certificate (its address).
	local := cluster.HostPort("127.0.0.1", cl.Ports.Broker)
	mq := health.Check{Name: "mosquitto", Unit: mosquittoUnit, HungAfter: hungAfter,
		Probe: probe.MQTTRoundTrip(local, WithName(tc, n.Address), n.Name)}
	if n.Has(cluster.Broker) {
		mq.PeersServe = peersServe(peers(cl, n, cluster.Broker, cl.Ports.Broker), tc, "")
	}
	checks := []health.Check{mq}
	var ids []string
	for _, b := range Bridges(cl, n, bridgeSecret) {
		ids = append(ids, b.ClientID)
	}
	if len(ids) > 0 {
		// No unit: a remote broker being down is not the local mosquitto's
		// fault, so a failing bridge is reported, never repaired by restart
		// (with standbys keepalived's track script moves the role away).
		states := probe.BridgeStates(local, WithName(tc, n.Address), n.Name, ids)
		bridges := func(ctx context.Context) error {
			// Only the bridge master keepalived chose has connections (it
			// marks from keepalived's check).
			if _, err := os.Lstat(BridgesLink); err != nil {
				return nil
			}
			return states(ctx)
		}
		if !ElectsBridge(cl, n) {
			// A lone bridge marks that it bridges (LoneMark) every round.
			bridges = probe.MarkedBridgeStates(local, WithName(tc, n.Address), n.Name, ids,
				MarkerTopics(cl.Name)+"/"+n.Name, func() string { return LoneMark(time.Now()) })
		}
		checks = append(checks, health.Check{Name: BridgeCheck, Probe: bridges})
	}
	return checks
}

func nginxChecks(cl *cluster.Cluster, n cluster.Node, tc *tls.Config, _ []byte) []health.Check {
	if cl.VIP == nil {
		return nil
	}
	// Brokers' certificates carry the VIP: what clients verify. When no
	// broker answers, directly either, nginx is not at fault: reported, never
	// a reason to kill it.
	viaVIP := WithName(tc, cl.VIP.Address)
	brokers := peers(cl, n, cluster.Broker, cl.Ports.Broker)
	return []health.Check{{Name: "nginx", Unit: nginxUnit, HungAfter: hungAfter,
		Probe:      probe.ThroughLB(cluster.HostPort("127.0.0.1", cl.Ports.Client), brokers, viaVIP),
		PeersServe: peersServe(peers(cl, n, cluster.LB, cl.Ports.Client), tc, cl.VIP.Address)}}
}

func keepalivedChecks(cl *cluster.Cluster, n cluster.Node, tc *tls.Config, _ []byte) []health.Check {
	// On a bridge node keepalived elects the bridge master: its track script
	// checks the bridge (bridgerole), nothing here to add.
	if cl.VIP == nil || !n.Has(cluster.LB) {
		return nil
	}
	return []health.Check{{Name: "keepalived", Unit: keepalivedUnit,
		Probe: probe.VIPServes(cl.VIP.Address, cl.Ports.Client, WithName(tc, cl.VIP.Address))}}
}
