package schema

import (
	"cmp"
	"fmt"
	"slices"
	"strings"
)

// Error is one problem in a cluster definition, located in the repository.
type Error struct {
	File string // relative to the repository root; empty when unknown
	Line int
	Col  int
	Path string // CUE path of the offending value, e.g. "nodes.lb1.address"
	Msg  string
	Hint string // what to do about it
}

func (e Error) Error() string {
	var b strings.Builder
	if e.File != "" {
		fmt.Fprintf(&b, "%s:%d:%d: ", e.File, e.Line, e.Col)
	}
	if e.Path != "" {
		b.WriteString(e.Path + ": ")
	}
	b.WriteString(e.Msg)
	if e.Hint != "" {
		b.WriteString("\n\thint: " + e.Hint)
	}
	return b.String()
}

// Errors is every problem found in one load, ordered by position.
type Errors []Error

func (es Errors) Error() string {
	lines := make([]string, len(es))
	for i, e := range es {
		lines[i] = e.Error()
	}
	return strings.Join(lines, "\n")
}

func (es Errors) sort() {
	slices.SortStableFunc(es, func(a, b Error) int {
		return cmp.Or(cmp.Compare(a.File, b.File), cmp.Compare(a.Line, b.Line),
			cmp.Compare(a.Col, b.Col), cmp.Compare(a.Path, b.Path))
	})
}

// hints explain schema violations by the path they occur at. The first
// matching suffix wins; "*" matches one path element.
var hints = []struct{ path, hint string }{
	{"name", `the cluster name is a lower-case hostname label, e.g. "mqtt-prod"`},
	{"nodes.*.address", `an IPv4 address such as "10.0.0.21"`},
	{"nodes.*.roles", `roles is a non-empty list of "lb", "broker", "bridge"`},
	{"nodes.*.roles.*", `a role is one of "lb", "broker", "bridge"`},
	{"nodes.*.priority", "VRRP priority is 1..254 (255 is reserved for the address owner)"},
	{"nodes.*.interface", `an interface name such as "eth0"`},
	{"vip.address", `the VIP with its prefix length, e.g. "10.0.0.100/24"`},
	{"vip.routerID", "VRRP virtual_router_id is 1..255 and must be unique on the network segment"},
	{"vip.advertInterval", "seconds, 0.05..40.95, in hundredths (VRRP version 3)"},
	{"ports.*", "a TCP port, 1..65535"},
	{"tls.*", "an absolute path on the nodes"},
	{"mqtt.maxKeepalive", "seconds, 10..65535"},
	{"mqtt.bridgeKeepalive", "seconds, 5..600 (mosquitto's minimum is 5)"},
	{"limits.clients", "1..1000000 concurrent clients"},
	{"timeouts.*", "whole seconds"},
}

func hintFor(path string) string {
	parts := strings.Split(path, ".")
	for _, h := range hints {
		hp := strings.Split(h.path, ".")
		if len(hp) != len(parts) {
			continue
		}
		match := true
		for i := range hp {
			if hp[i] != "*" && hp[i] != parts[i] {
				match = false
				break
			}
		}
		if match {
			return h.hint
		}
	}
	return ""
}
