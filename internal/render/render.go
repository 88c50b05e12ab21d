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
	"github.com/mqha/mqha/internal/daemon"
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

const (
	fdHeadroom      = 1024
	proxyTimeoutPct = 200 // nginx idle timeout, in % of the longest MQTT keepalive
)

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
	Brokers           []cluster.Node  // every broker, for the nginx upstream
	Peers             []cluster.Node  // the other load balancers
	Bridges           []daemon.Bridge // connections of the bridge master
	NoFile            int
	WorkerConnections int
	MosquittoNoFile   int
	ProxyTimeout      int
	FaultFile         string
	FaultDir          string
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
		FaultFile:         daemon.FaultFile,
		FaultDir:          path.Dir(daemon.FaultFile),
	}
	for _, p := range c.WithRole(cluster.LB) {
		if p.Name != n.Name {
			d.Peers = append(d.Peers, p)
		}
	}
	d.Bridges = daemon.Bridges(c, n)

	out := &Output{Node: n}
	add := func(unit, p, tmpl string, kind Kind, mode fs.FileMode) error {
		var buf bytes.Buffer
		if err := templates.ExecuteTemplate(&buf, tmpl, d); err != nil {
			return fmt.Errorf("render %s for node %s: %w", p, n.Name, err)
		}
		out.Files = append(out.Files, File{Path: p, Mode: mode, Unit: unit, Kind: kind, Content: buf.Bytes()})
		return nil
	}
	for _, dm := range daemon.For(n) {
		out.Units = append(out.Units, dm.Unit)
		if err := add(dm.Unit, dm.Conf, dm.ConfTemplate, Config, 0o644); err != nil {
			return nil, err
		}
		if err := add(dm.Unit, dm.DropIn(), dm.DropInTemplate, DropIn, 0o644); err != nil {
			return nil, err
		}
	}
	sort.Slice(out.Files, func(i, j int) bool { return out.Files[i].Path < out.Files[j].Path })
	return out, nil
}

func names(ns []cluster.Node) []string {
	s := make([]string, len(ns))
	for i, n := range ns {
		s[i] = n.Name
	}
	return s
}
