// Package cluster holds the typed cluster definition that every pipeline stage
// reads. It is produced by package schema and is never built by hand outside tests.
package cluster

import (
	"net"
	"slices"
	"strconv"
	"strings"
)

// Role is something a node does. A node may hold several.
type Role string

const (
	LB     Role = "lb"     // nginx + keepalived holding the VIP
	Broker Role = "broker" // mosquitto serving clients behind the LBs
	Bridge Role = "bridge" // the mosquitto bridge master joining all brokers
)

// Roles lists every role in a fixed order.
var Roles = []Role{LB, Broker, Bridge}

// Cluster is a validated cluster definition.
type Cluster struct {
	Name  string
	Nodes []Node // sorted by name
	VIP   *VIP   // nil when the cluster has no load balancers
	// BridgeVIP is the bridge master's address, with standbys only (nil
	// otherwise): keepalived on the bridge nodes elects who holds it.
	BridgeVIP *VIP
	Ports     Ports
	TLS       TLS
	MQTT      MQTT
	Limits    Limits
	Timeouts  Timeouts
	Rollout   Rollout
}

type Node struct {
	Name      string
	Address   string
	Roles     []Role
	Priority  int    // VRRP priority, LBs only
	Interface string // VIP interface, LBs only (already defaulted from the VIP)
}

type VIP struct {
	Address        string // IPv4 without prefix
	Prefix         int
	RouterID       int
	Interface      string
	AdvertInterval float64 // seconds, in hundredths (VRRP version 3)
	Unicast        bool
	DNSNames       []string // names clients use for the VIP
}

type Ports struct {
	Client int `json:"client"`
	Broker int `json:"broker"`
	Bridge int `json:"bridge"`
}

type TLS struct {
	CA     string `json:"ca"`
	Cert   string `json:"cert"`
	Key    string `json:"key"`
	NodeCA string `json:"nodeCA"`
	// BridgeSecret is a file on the bridge nodes (see daemon.Bridges).
	BridgeSecret string `json:"bridgeSecret"`
}

type MQTT struct {
	MaxKeepalive      int    `json:"maxKeepalive"`
	BridgeKeepalive   int    `json:"bridgeKeepalive"`
	BridgeProtocol    string `json:"bridgeProtocol"` // mqttv311 or mqttv50
	MaxQueuedMessages int    `json:"maxQueuedMessages"`
	MaxQueuedBytes    int    `json:"maxQueuedBytes"`
}

type Limits struct {
	Clients int `json:"clients"`
}

// Rollout orders how the fleet takes a new commit.
type Rollout struct {
	Canary     string `json:"canary"`     // the node that takes a commit first ("" none)
	CanaryWait int    `json:"canaryWait"` // seconds the others wait for it at most
}

type Timeouts struct {
	Connect int `json:"connect"`
	Drain   int `json:"drain"`
	Unit    int `json:"unit"`
}

// Has reports whether the node holds role r.
func (n Node) Has(r Role) bool { return slices.Contains(n.Roles, r) }

// At is the node's address with port: host:port, the one place it is
// built (an IPv6 address gets its brackets).
func (n Node) At(port int) string { return HostPort(n.Address, port) }

// HostPort joins host and port ([::1]:8883 for an IPv6 host).
func HostPort(host string, port int) string { return net.JoinHostPort(host, strconv.Itoa(port)) }

// RoleList is the node's roles joined by commas, in the fixed role order.
func (n Node) RoleList() string {
	var s []string
	for _, r := range Roles {
		if n.Has(r) {
			s = append(s, string(r))
		}
	}
	return strings.Join(s, ",")
}

// Node returns the node called name.
func (c *Cluster) Node(name string) (Node, bool) {
	i, ok := slices.BinarySearchFunc(c.Nodes, name, func(n Node, name string) int {
		return strings.Compare(n.Name, name)
	})
	if !ok {
		return Node{}, false
	}
	return c.Nodes[i], true
}

// WithRole returns the nodes holding role r, sorted by name.
func (c *Cluster) WithRole(r Role) []Node {
	var out []Node
	for _, n := range c.Nodes {
		if n.Has(r) {
			out = append(out, n)
		}
	}
	return out
}
