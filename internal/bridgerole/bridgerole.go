// Package bridgerole runs the bridge master's role on the bridge nodes of a
// cluster with standbys, on keepalived: the node whose keepalived instance
// for the bridge is MASTER bridges, the others do not. keepalived runs two
// commands of mqha-agent, which need no agent running, so that a stopped,
// busy or restarting agent changes nothing:
//
//   - notify.go: `mqha-agent bridge-notify`, the instance's notify. On
//     MASTER it links the rendered connections (daemon.BridgesFile) into
//     mosquitto's include directory; on any other state it removes the link
//     first; when that changed it restarts mosquitto. It records the state.
//   - check.go: `mqha-agent bridge-check`, the instance's track script. It
//     fails (the instance enters FAULT, the role moves) when this node's
//     mosquitto does not answer, when as master it has no bridge connection
//     up after a grace, or when as a standby it reaches no broker's bridge
//     listener with its certificate (it could not bridge if elected).
//   - state.go: the files both write under /run/mqha, which the agent reads
//     for status and metrics: the role (state.json) and the last check
//     (check.json).
package bridgerole

import (
	"strconv"
	"strings"

	"github.com/mqha/mqha/internal/cluster"
	"github.com/mqha/mqha/internal/daemon"
	"github.com/mqha/mqha/internal/validate"
)

// Binary is the packaged mqha-agent, whose commands keepalived runs.
const Binary = validate.AgentBin

// NotifyCommand is keepalived's notify for the bridge instance; keepalived
// appends INSTANCE, the instance's name, the state and the priority.
const NotifyCommand = Binary + " bridge-notify"

// CheckCommand is keepalived's track script on bridge node n of c: what it
// checks, with which files, spelled out so it needs nothing else.
func CheckCommand(c *cluster.Cluster, n cluster.Node) string {
	var bridge, client []string
	for _, b := range c.WithRole(cluster.Broker) {
		if b.Name != n.Name {
			bridge = append(bridge, b.At(c.Ports.Bridge))
			client = append(client, b.At(c.Ports.Broker))
		}
	}
	args := []string{Binary, "bridge-check",
		"--local", cluster.HostPort("127.0.0.1", c.Ports.Broker), "--name", n.Name, "--address", n.Address,
		"--priority", strconv.Itoa(n.Priority), "--markers", daemon.MarkerTopics(c.Name), "--probes", daemon.ProbeTopics(c.Name),
		"--brokers", strings.Join(bridge, ","), "--broker-clients", strings.Join(client, ","),
		"--ca", c.TLS.CA, "--node-ca", c.TLS.NodeCA, "--cert", c.TLS.Cert, "--key", c.TLS.Key}
	return strings.Join(args, " ")
}
