// Package render turns a cluster definition into the files one node needs:
// mosquitto, nginx and keepalived configurations and systemd drop-ins. Output
// is deterministic: the same definition renders the same bytes.
package render

import (
	"bytes"
	"embed"
	"fmt"
	"io/fs"
	"path"
	"sort"
	"text/template"

	"github.com/mqha/mqha/internal/cluster"
)

// Kind says how a daemon takes a change to a file.
type Kind int

const (
	Config Kind = iota // the daemon's own configuration
	DropIn             // a systemd drop-in: needs daemon-reload
)

// File is one rendered file with the systemd unit it configures.
type File struct {
	Path    string // absolute path on the node
	Mode    fs.FileMode
	Unit    string
	Kind    Kind
	Content []byte
}

// Units the agent manages, in the order they are started: nginx before
// keepalived (keepalived tracks nginx), brokers before the bridge master.
const (
	Mosquitto  = "mosquitto.service"
	Nginx      = "nginx.service"
	Keepalived = "keepalived.service"
)

var AllUnits = []string{Mosquitto, Nginx, Keepalived}

// Paths of the files the agent owns on a node.
const (
	MosquittoConf   = "/etc/mosquitto/mosquitto.conf"
	NginxConf       = "/etc/nginx/nginx.conf"
	KeepalivedConf  = "/etc/keepalived/keepalived.conf"
	dropInDir       = "/etc/systemd/system"
	FaultFile       = "/run/mqha/lb-fault"
	dropInName      = "mqha.conf"
	fdHeadroom      = 1024
	proxyTimeoutPct = 200 // nginx idle timeout, in % of the longest MQTT keepalive
)

// DropInPath is where the agent's drop-in for unit lives.
func DropInPath(unit string) string { return path.Join(dropInDir, unit+".d", dropInName) }

// Output is what one node runs and the files it needs.
type Output struct {
	Node  cluster.Node
	Units []string // units this node runs, in start order
	Files []File   // sorted by path
}

//go:embed templates/*.tmpl
var templateFS embed.FS

var templates = template.Must(template.New("").Option("missingkey=error").ParseFS(templateFS, "templates/*.tmpl"))

// data is what every template sees; derived numbers are computed here, not
// in templates.
type data struct {
	Cluster           *cluster.Cluster
	Node              cluster.Node
	VIP               *cluster.VIP
	Brokers           []cluster.Node // every broker, for the nginx upstream
	Peers             []cluster.Node // the other load balancers
	Bridges           []bridge       // connections of the bridge master
	NoFile            int
	WorkerConnections int
	MosquittoNoFile   int
	ProxyTimeout      int
	FaultFile         string
	FaultDir          string
}

type bridge struct {
	Name, Address, Connection, ClientID string
}

// Node renders the files of the node called name.
func Node(c *cluster.Cluster, name string) (*Output, error) {
	n, ok := c.Node(name)
	if !ok {
		return nil, fmt.Errorf("node %q is not in cluster %q; the nodes are %v (use --node, or add the node to the cluster repository)", name, c.Name, names(c.Nodes))
	}
	d := data{
		Cluster:           c,
		Node:              n,
		VIP:               c.VIP,
		Brokers:           c.WithRole(cluster.Broker),
		NoFile:            2*c.Limits.Clients + fdHeadroom,
		WorkerConnections: 2*c.Limits.Clients + fdHeadroom,
		MosquittoNoFile:   c.Limits.Clients + fdHeadroom,
		ProxyTimeout:      c.MQTT.MaxKeepalive * proxyTimeoutPct / 100,
		FaultFile:         FaultFile,
		FaultDir:          path.Dir(FaultFile),
	}
	for _, p := range c.WithRole(cluster.LB) {
		if p.Name != n.Name {
			d.Peers = append(d.Peers, p)
		}
	}
	d.Bridges = bridges(c, n)

	out := &Output{Node: n}
	add := func(unit, p, tmpl string, kind Kind, mode fs.FileMode) error {
		var buf bytes.Buffer
		if err := templates.ExecuteTemplate(&buf, tmpl, d); err != nil {
			return fmt.Errorf("render %s for node %s: %w", p, n.Name, err)
		}
		out.Files = append(out.Files, File{Path: p, Mode: mode, Unit: unit, Kind: kind, Content: buf.Bytes()})
		return nil
	}
	type spec struct {
		unit, path, tmpl string
		kind             Kind
	}
	var specs []spec
	if n.Has(cluster.Broker) || n.Has(cluster.Bridge) {
		out.Units = append(out.Units, Mosquitto)
		specs = append(specs,
			spec{Mosquitto, MosquittoConf, "mosquitto.conf.tmpl", Config},
			spec{Mosquitto, DropInPath(Mosquitto), "mosquitto.dropin.tmpl", DropIn})
	}
	if n.Has(cluster.LB) {
		out.Units = append(out.Units, Nginx, Keepalived)
		specs = append(specs,
			spec{Nginx, NginxConf, "nginx.conf.tmpl", Config},
			spec{Nginx, DropInPath(Nginx), "nginx.dropin.tmpl", DropIn},
			spec{Keepalived, KeepalivedConf, "keepalived.conf.tmpl", Config},
			spec{Keepalived, DropInPath(Keepalived), "keepalived.dropin.tmpl", DropIn})
	}
	for _, s := range specs {
		if err := add(s.unit, s.path, s.tmpl, s.kind, 0o644); err != nil {
			return nil, err
		}
	}
	sort.Slice(out.Files, func(i, j int) bool { return out.Files[i].Path < out.Files[j].Path })
	return out, nil
}

// bridges are the bridge master's connections: one per broker but itself.
func bridges(c *cluster.Cluster, n cluster.Node) []bridge {
	var out []bridge
	if !n.Has(cluster.Bridge) {
		return nil
	}
	for _, b := range c.WithRole(cluster.Broker) {
		if b.Name == n.Name {
			continue // the bridge master's own broker needs no bridge
		}
		out = append(out, bridge{
			Name: b.Name, Address: b.Address,
			Connection: "mqha-" + b.Name,
			ClientID:   c.Name + "-" + n.Name + "-to-" + b.Name,
		})
	}
	return out
}

// BridgeClientIDs are the remote client ids of node's bridges; each bridge
// publishes its state at $SYS/broker/connection/<id>/state.
func BridgeClientIDs(c *cluster.Cluster, n cluster.Node) []string {
	var ids []string
	for _, b := range bridges(c, n) {
		ids = append(ids, b.ClientID)
	}
	return ids
}

func names(ns []cluster.Node) []string {
	s := make([]string, len(ns))
	for i, n := range ns {
		s[i] = n.Name
	}
	return s
}
