package schema

import (
	"fmt"
	"net/netip"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"cuelang.org/go/cue"
	"cuelang.org/go/cue/token"

	"github.com/mqha/mqha/internal/cluster"
)

// hostname is one DNS label: node names become hostnames, certificate
// names and parts of MQTT client ids.
var hostname = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)

// checker applies the rules that span several values, reporting each at the
// position of the value that breaks it.
type checker struct {
	v    cue.Value // the definition unified with the schema: positions of values
	user cue.Value // the definition alone: positions of fields the schema also declares
	errs Errors
}

// fail records a problem at the value under path (node names, field names and
// list indexes). A value the user did not write (a schema default) is
// reported at the nearest enclosing value the user did write.
func (k *checker) fail(path []any, hint, format string, args ...any) {
	e := Error{Path: display(path), Msg: fmt.Sprintf(format, args...), Hint: hint}
	for n := len(path); n >= 0; n-- {
		if pos, ok := k.pos(path[:n]); ok {
			e.File, e.Line, e.Col = pos.Filename(), pos.Line(), pos.Column()
			break
		}
	}
	k.errs = append(k.errs, e)
}

func (k *checker) pos(path []any) (token.Pos, bool) {
	p := cuePath(path)
	return userPos([]token.Pos{k.v.LookupPath(p).Pos(), k.user.LookupPath(p).Pos()})
}

func (k *checker) where(path []any) string {
	if p, ok := k.pos(path); ok {
		return fmt.Sprintf("%s:%d:%d", p.Filename(), p.Line(), p.Column())
	}
	return display(path)
}

// cuePath builds a path from labels and list indexes. Node names need not be
// CUE identifiers ("broker-1"), so paths are never parsed from strings.
func cuePath[T any](path []T) cue.Path {
	sels := make([]cue.Selector, len(path))
	for i, p := range path {
		switch p := any(p).(type) {
		case int:
			sels[i] = cue.Index(p)
		case string:
			if n, err := strconv.Atoi(p); err == nil {
				sels[i] = cue.Index(n)
			} else {
				sels[i] = cue.Str(p)
			}
		}
	}
	return cue.MakePath(sels...)
}

func display(path []any) string {
	s := make([]string, len(path))
	for i, p := range path {
		s[i] = fmt.Sprint(p)
	}
	return strings.Join(s, ".")
}

func check(v, user cue.Value, c *cluster.Cluster) Errors {
	k := &checker{v: v, user: user}
	k.names(c)
	k.addresses(c)
	k.roles(c)
	k.lbs(c)
	k.bridgeVIP(c)
	k.ports(c)
	k.tls(c)
	k.rollout(c)
	k.errs.sort()
	return k.errs
}

func (k *checker) rollout(c *cluster.Cluster) {
	if name := c.Rollout.Canary; name != "" {
		if _, ok := c.Node(name); !ok {
			k.fail([]any{"rollout", "canary"}, "name a node of the definition, or \"\" for no canary",
				"the canary %q is not a node of the cluster", name)
		}
	}
}

func (k *checker) names(c *cluster.Cluster) {
	for _, n := range c.Nodes {
		if !hostname.MatchString(n.Name) {
			k.fail([]any{"nodes", n.Name}, "node names are lower-case hostnames: letters, digits and '-', at most 63 characters",
				"node name %q is not a hostname", n.Name)
		}
	}
}

func (k *checker) addresses(c *cluster.Cluster) {
	first := map[string]string{}
	for _, n := range c.Nodes {
		if prev, ok := first[n.Address]; ok {
			k.fail([]any{"nodes", n.Name, "address"}, "every node needs its own address",
				"address %s is already used by node %s (%s)", n.Address, prev, k.where([]any{"nodes", prev, "address"}))
			continue
		}
		first[n.Address] = n.Name
	}
}

func (k *checker) roles(c *cluster.Cluster) {
	brokers, bridges := c.WithRole(cluster.Broker), c.WithRole(cluster.Bridge)
	switch {
	case len(c.Nodes) == 0:
		k.fail([]any{"nodes"}, `add at least one node with roles: ["broker"]`, "the cluster has no nodes")
	case len(brokers) == 0:
		k.fail([]any{"nodes"}, `give at least one node the role "broker"`, "the cluster has no broker")
	case len(brokers) >= 2 && len(bridges) == 0:
		k.fail([]any{"nodes"}, `add "bridge" to one node's roles: without a bridge master a message published on one broker never reaches subscribers on the others`,
			"%d brokers but no bridge", len(brokers))
	}
	if len(bridges) >= 2 {
		// Standbys: one active bridge master at a time, elected by priority
		// among the candidates that serve. Equal or missing priorities leave
		// the choice to chance.
		seen := map[int]string{}
		for _, b := range bridges {
			switch prev, dup := seen[b.Priority]; {
			case b.Priority == 0:
				k.fail([]any{"nodes", b.Name}, "with more than one bridge node, give each a different priority (1..254): the highest is the bridge master, the others stand by",
					"bridge %s has no priority", b.Name)
			case dup:
				k.fail([]any{"nodes", b.Name, "priority"}, "give each bridge node a different priority: the highest one is the bridge master and the others take over in priority order",
					"bridge nodes %s and %s both have priority %d", prev, b.Name, b.Priority)
			default:
				seen[b.Priority] = b.Name
			}
		}
	}
	for _, n := range c.Nodes {
		for i, r := range n.Roles {
			if slices.Index(n.Roles, r) != i {
				k.fail([]any{"nodes", n.Name, "roles", i}, "list each role once", "role %q is listed twice", r)
			}
		}
	}
}

func rolePath(n cluster.Node, r cluster.Role) []any {
	return []any{"nodes", n.Name, "roles", slices.Index(n.Roles, r)}
}

func (k *checker) lbs(c *cluster.Cluster) {
	lbs := c.WithRole(cluster.LB)
	for _, n := range c.Nodes {
		if n.Has(cluster.LB) {
			if n.Priority == 0 {
				k.fail([]any{"nodes", n.Name}, "give each load balancer a different priority (1..254); the highest takes the VIP first",
					"load balancer %s has no priority", n.Name)
			}
			continue
		}
		if n.Priority != 0 && !n.Has(cluster.Bridge) {
			k.fail([]any{"nodes", n.Name, "priority"}, `priority orders load balancers (VRRP) and bridge nodes (the bridge master and its standbys); remove it or add the role "lb" or "bridge"`,
				"node %s has a priority but is neither a load balancer nor a bridge", n.Name)
		}
		if n.Interface != "" {
			k.fail([]any{"nodes", n.Name, "interface"}, `interface carries the VIP on a node with role "lb"; remove it or add the role`,
				"node %s has an interface but is not a load balancer", n.Name)
		}
	}
	if c.VIP == nil {
		if len(lbs) > 0 {
			k.fail(rolePath(lbs[0], cluster.LB), `add vip: {address: "A.B.C.D/NN", routerID: N} for the load balancers to hold`,
				"load balancers without a vip")
		}
		return
	}
	if len(lbs) < 2 {
		k.fail([]any{"vip"}, "a VIP moves between load balancers; with fewer than two there is nowhere to move it, so it adds nothing but a single point of failure. Add a second node with role \"lb\", or remove vip",
			"a vip needs at least two load balancers, found %d", len(lbs))
	}
	k.heldAddress(c, "vip", c.VIP, lbs, "load balancer")
	seen := map[int]string{}
	for _, n := range lbs {
		if n.Priority == 0 {
			continue
		}
		if prev, ok := seen[n.Priority]; ok {
			k.fail([]any{"nodes", n.Name, "priority"}, "with equal priorities the VRRP election falls to the higher IP address, which is no one's decision; give each load balancer a different priority",
				"load balancers %s and %s both have priority %d", prev, n.Name, n.Priority)
			continue
		}
		seen[n.Priority] = n.Name
	}
}

// heldAddress checks the address keepalived moves between holders (the
// VIP between load balancers, the bridge VIP between bridge nodes): an IPv4
// prefix, no node's, in every holder's subnet.
func (k *checker) heldAddress(c *cluster.Cluster, field string, v *cluster.VIP, holders []cluster.Node, holder string) {
	label := field
	if field == "vip" {
		label = "VIP"
	}
	prefix, err := netip.ParsePrefix(v.Address + "/" + fmt.Sprint(v.Prefix))
	if err != nil || !prefix.Addr().Is4() {
		k.fail([]any{field, "address"}, "an IPv4 address with its prefix length, e.g. \"10.0.0.100/24\"", "invalid %s %s/%d", label, v.Address, v.Prefix)
		return
	}
	net := prefix.Masked()
	for _, n := range c.Nodes {
		if n.Address == v.Address {
			k.fail([]any{field, "address"}, fmt.Sprintf("the %s must be an address no node owns: pick a free address in the %ss' subnet", label, holder),
				"%s %s is node %s's address", label, v.Address, n.Name)
		}
	}
	for _, n := range holders {
		a, err := netip.ParseAddr(n.Address)
		if err == nil && !net.Contains(a) {
			k.fail([]any{field, "address"}, fmt.Sprintf("keepalived can only hold an address in a subnet the %ss are on; pick an address in the subnet of %s or fix the prefix length", holder, n.Address),
				"%s %s is outside %s, the subnet of %s %s (%s)", label, v.Address, net, holder, n.Name, n.Address)
		}
	}
}

// bridgeVIP: with standbys keepalived elects the bridge master, which
// needs an address to hold and a VRRP router id of its own; the bridge
// nodes must share a secret, or each would hold a session of its own on
// every broker (their client ids would differ).
func (k *checker) bridgeVIP(c *cluster.Cluster) {
	bridges := c.WithRole(cluster.Bridge)
	bv := c.BridgeVIP
	if len(bridges) < 2 {
		if bv != nil {
			k.fail([]any{"bridgeVIP"}, "bridgeVIP is the address keepalived moves between bridge nodes; with one bridge node there is no election: remove it, or add a second node with role \"bridge\"",
				"bridgeVIP without standbys: %d bridge node", len(bridges))
		}
		return
	}
	names := make([]string, len(bridges))
	for i, b := range bridges {
		names[i] = b.Name
	}
	if bv == nil {
		k.fail(rolePath(bridges[len(bridges)-1], cluster.Bridge), `add bridgeVIP: {address: "A.B.C.D/NN", routerID: N}: keepalived elects the bridge master among the bridge nodes, as it elects the VIP holder, and needs a free address in their subnet to hold and a VRRP router id of its own`,
			"%d bridge nodes (%s) but no bridgeVIP", len(bridges), strings.Join(names, ", "))
	} else {
		k.heldAddress(c, "bridgeVIP", bv, bridges, "bridge node")
		if c.VIP != nil && bv.Address == c.VIP.Address {
			k.fail([]any{"bridgeVIP", "address"}, "give the bridge master an address of its own", "bridgeVIP %s is the vip", bv.Address)
		}
		if c.VIP != nil && bv.RouterID == c.VIP.RouterID {
			k.fail([]any{"bridgeVIP", "routerID"}, fmt.Sprintf("each VRRP instance on a segment needs its own virtual_router_id: pick one other than vip.routerID (%s)", k.where([]any{"vip", "routerID"})),
				"bridgeVIP.routerID %d is vip.routerID too", bv.RouterID)
		}
	}
	if !k.user.LookupPath(cue.ParsePath("tls.bridgeSecret")).Exists() {
		// Reported where the second bridge node is: the secret is what it
		// must add.
		k.fail(rolePath(bridges[len(bridges)-1], cluster.Bridge), `set tls: bridgeSecret: "/etc/mqha/tls/bridge.secret" (mqha-agent pki issue writes that file on bridge nodes): without the same secret on every bridge node their client ids on the brokers differ, and two bridge masters would not take each other's session over`,
			"%d bridge nodes (%s) but no tls.bridgeSecret", len(bridges), strings.Join(names, ", "))
	}
}

// ports checks that no two listeners on one node share a port. Ports are
// cluster-wide, so a clash shows on the nodes whose roles combine them.
func (k *checker) ports(c *cluster.Cluster) {
	type use struct {
		field, what string
		port        int
	}
	reported := map[string]bool{}
	for _, n := range c.Nodes {
		var uses []use
		if n.Has(cluster.LB) {
			uses = append(uses, use{"client", "nginx client listener", c.Ports.Client})
		}
		if n.Has(cluster.Broker) || n.Has(cluster.Bridge) {
			uses = append(uses, use{"broker", "mosquitto TLS listener", c.Ports.Broker})
		}
		if n.Has(cluster.Broker) {
			uses = append(uses, use{"bridge", "mosquitto bridge listener", c.Ports.Bridge})
		}
		for i, a := range uses {
			for _, b := range uses[i+1:] {
				key := a.field + "/" + b.field
				if a.port != b.port || reported[key] {
					continue
				}
				reported[key] = true
				// Report at the port the user set; the other may be a default.
				field := b.field
				if _, ok := k.pos([]any{"ports", field}); !ok {
					field = a.field
				}
				k.fail([]any{"ports", field}, fmt.Sprintf("give ports.%s and ports.%s different values", a.field, b.field),
					"port %d is both the %s and the %s on node %s", a.port, a.what, b.what, n.Name)
			}
		}
	}
}

// publicBundles are where distributions keep the public CAs that web
// clients trust.
var publicBundles = []string{"/etc/ssl/certs/", "/etc/pki/tls/certs/", "/etc/pki/ca-trust/", "/usr/share/ca-certificates/",
	"/usr/local/share/ca-certificates/", "/etc/ssl/cert.pem", "/etc/pki/tls/cert.pem"}

// tls refuses the system's public CA bundle as the cluster CA: mutual TLS
// would then accept any certificate a public CA ever signed as a node or
// a client, bridge included.
func (k *checker) tls(c *cluster.Cluster) {
	for _, f := range []struct{ field, path string }{{"ca", c.TLS.CA}, {"nodeCA", c.TLS.NodeCA}} {
		for _, b := range publicBundles {
			if f.path == b || strings.HasSuffix(b, "/") && strings.HasPrefix(f.path, b) {
				k.fail([]any{"tls", f.field}, "use the cluster's own CA certificate (mqha-agent pki init makes one, default /etc/mqha/tls/ca.crt)",
					"tls.%s %s is the system's public CA bundle: every certificate a public CA signed would pass as a node or client of the cluster", f.field, f.path)
				break
			}
		}
	}
}
