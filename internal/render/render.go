// Package render turns a cluster definition into the files one node needs:
// mosquitto, nginx and keepalived configurations and systemd drop-ins. Output
// is deterministic: the same definition renders the same bytes.
package render

import (
	"bytes"
	"cmp"
	"embed"
	"fmt"
	"io/fs"
	"net"
	"path"
	"sort"
	"strconv"
	"text/template"

	"github.com/mqha/mqha/internal/bridgerole"
	"github.com/mqha/mqha/internal/cluster"
	"github.com/mqha/mqha/internal/daemon"
	"github.com/mqha/mqha/internal/retained"
	"github.com/mqha/mqha/internal/sessions"
	"github.com/mqha/mqha/internal/validate"
)

// Kind says how a daemon takes a change to a file.
type Kind int

const (
	Config  Kind = iota // the daemon's own configuration
	DropIn              // a systemd drop-in: needs daemon-reload
	AtStart             // read only when the unit starts (ExecStartPre): a change needs nothing now
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
	maxWorkers      = 64 // nginx workers at most, whatever the descriptor limits
	fdHeadroom      = 1024
	proxyTimeoutPct = 200 // nginx idle timeout, in % of the longest MQTT keepalive
)

// Output is what one node runs and the files it needs.
type Output struct {
	Node  cluster.Node
	Units []string // units this node runs, in start order
	Files []File   // sorted by path
	// Limits are the descriptor limits the files give each unit and the
	// clients that holds, to check that they are in force.
	Limits []Limit
}

// Limit is a unit's descriptor limit (LimitNOFILE) and what it is for.
type Limit struct {
	Unit    string
	NoFile  int // LimitNOFILE
	Clients int // clients the daemon holds within it
	Wanted  int // clients the definition plans for (limits.clients)
}

// Host is what the node is and allows, which rendering must respect.
type Host struct {
	// NoFileMax is the most descriptors one process may have on this host:
	// the hard RLIMIT_NOFILE services inherit, and fs.nr_open. 0: unknown,
	// sized from the definition alone.
	NoFileMax int
	// NginxUser and NginxModules are the distribution's nginx worker user
	// and dynamic-module include; empty: Debian's (DebianNginx).
	NginxUser, NginxModules string
	// CPUs is the number of processors (0: unknown): nginx runs one worker
	// per processor unless that many cannot hold limits.clients within
	// NoFileMax.
	CPUs int
	// DownBrokers are brokers a load balancer's agent finds gone (their
	// host does not answer TCP): nginx sends no client there until they
	// answer again. A run-time fact, like the limits.
	DownBrokers map[string]bool
	// BridgeSecret is the bridge nodes' shared secret (tls.bridgeSecret),
	// read on a bridge node: the bridges' client ids carry its HMAC. nil:
	// guessable ids (a workstation's render, or no secret installed).
	BridgeSecret []byte
	// DrainingBrokers are brokers a commit removed that a bridge node
	// still bridges until they stop serving (a run-time fact): clients
	// that have not moved off yet still publish and receive there.
	DrainingBrokers []cluster.Node
}

// sysTrees are mosquitto 2.0's $SYS/broker statistics subtrees: all but
// connection (bridges, by client id).
var sysTrees = []string{"bytes", "clients", "heap", "load", "messages", "publish", "retained messages", "store", "subscriptions"}

// The nginx layouts of the distributions the packages target.
var (
	DebianNginx = Host{NginxUser: "www-data", NginxModules: "/etc/nginx/modules-enabled/*.conf"}
	RHELNginx   = Host{NginxUser: "nginx", NginxModules: "/usr/share/nginx/modules/*.conf"}
)

// MosquittoHolds is how many clients one mosquitto holds on host h (0: no
// bound known): its descriptors less the headroom for its own files.
func MosquittoHolds(h Host) int {
	if h.NoFileMax == 0 {
		return 0
	}
	return max(h.NoFileMax-fdHeadroom, 1)
}

func (h Host) clamp(n int) int {
	if h.NoFileMax > 0 && n > h.NoFileMax {
		return h.NoFileMax
	}
	return n
}

//go:embed templates/*.tmpl
var templateFS embed.FS

var templates = template.Must(template.New("").Option("missingkey=error").ParseFS(templateFS, "templates/*.tmpl"))

// data is what every template sees; derived numbers are computed here, not
// in templates.
type data struct {
	Cluster *cluster.Cluster
	Node    cluster.Node
	VIP     *cluster.VIP
	Brokers []cluster.Node  // every broker, for the nginx upstream
	Peers   []cluster.Node  // the other load balancers
	Bridges []daemon.Bridge // connections of the bridge master
	// Standby: keepalived elects the bridge master among several bridge
	// nodes; the connections go to daemon.BridgesFile, which its notify
	// links into BridgesDir (included) on the master only.
	Standby     bool
	BridgesDir  string
	BridgesFile string
	// BridgeVIP, BridgePeers, BridgeCheck and BridgeNotify are keepalived's
	// bridge instance on a bridge node with standbys (BridgeVIP nil
	// elsewhere): the address, the other bridge nodes, the track script
	// and the notify command.
	BridgeVIP    *cluster.VIP
	BridgePeers  []cluster.Node
	BridgeCheck  string
	BridgeNotify string
	MarkerTopics string
	ProbeTopics  string
	// SessionTopics: the brokers' agents' session listings, which the
	// bridges carry to every broker (package sessions).
	SessionTopics string
	DownBrokers   map[string]bool
	ACLFile       string
	ACLUsers      []ACLUser
	StatusTopics  string
	VerdictTopics string
	SysTrees      []string // $SYS/broker subtrees clients may read
	// WorkerProcesses is nginx's: "auto" (one per processor), or more when
	// one worker's descriptors hold too few clients; ReusePort spreads the
	// connections evenly over them then.
	WorkerProcesses   string
	ReusePort         bool
	NoFile            int
	WorkerConnections int
	MosquittoNoFile   int
	MaxConnections    int // mosquitto's, below its descriptor limit
	NginxUser         string
	NginxModules      string
	ProxyTimeout      int
	FaultFile         string
	FaultDir          string
	// MosquittoStart runs before mosquitto starts: it drops the retained
	// messages the node should not bring back (internal/retained).
	MosquittoStart string
	StartFile      string
}

// Node renders the files of the node called name, sized from the
// definition alone (a workstation's render; golden files).
func Node(c *cluster.Cluster, name string) (*Output, error) { return NodeOn(c, name, Host{}) }

// NodeOn renders the files of the node called name for a host that allows
// h: descriptor limits never above what the host grants, and the daemons'
// own connection limits below them, so that at the limit new connections
// are refused cleanly instead of failing in accept (EMFILE) while the
// existing ones keep working.
func NodeOn(c *cluster.Cluster, name string, h Host) (*Output, error) {
	n, ok := c.Node(name)
	if !ok {
		return nil, fmt.Errorf("node %q is not in cluster %q; the nodes are %v (use --node, or add the node to the cluster repository)", name, c.Name, names(c.Nodes))
	}
	d := data{
		Cluster: c,
		Node:    n,
		VIP:     c.VIP,
		Brokers: c.WithRole(cluster.Broker),
		// Each proxied client holds two descriptors in nginx (client and
		// broker side) and one in mosquitto.
		NoFile:          h.clamp(2*c.Limits.Clients + fdHeadroom),
		MosquittoNoFile: h.clamp(c.Limits.Clients + fdHeadroom),
		ProxyTimeout:    c.MQTT.MaxKeepalive * proxyTimeoutPct / 100,
		FaultFile:       daemon.FaultFile,
		FaultDir:        path.Dir(daemon.FaultFile),
	}
	d.NginxUser, d.NginxModules = cmp.Or(h.NginxUser, DebianNginx.NginxUser), cmp.Or(h.NginxModules, DebianNginx.NginxModules)
	d.WorkerConnections = max(d.NoFile-fdHeadroom, 1)
	d.MaxConnections = max(d.MosquittoNoFile-fdHeadroom, 1)
	d.WorkerProcesses = "auto"
	workers := max(h.CPUs, 1)
	if perWorker := d.WorkerConnections / 2; h.CPUs > 0 && perWorker*h.CPUs < c.Limits.Clients {
		workers = min((c.Limits.Clients+perWorker-1)/perWorker, maxWorkers)
		d.WorkerProcesses, d.ReusePort = strconv.Itoa(workers), true
	}
	for _, p := range c.WithRole(cluster.LB) {
		if p.Name != n.Name {
			d.Peers = append(d.Peers, p)
		}
	}
	d.Bridges = daemon.Bridges(c, n, h.BridgeSecret)
	if n.Has(cluster.Bridge) {
		for _, b := range h.DrainingBrokers {
			br := daemon.BridgeTo(c.Name, b, h.BridgeSecret)
			br.Draining = true
			d.Bridges = append(d.Bridges, br)
		}
	}
	d.Standby = daemon.ElectsBridge(c, n)
	d.BridgesDir, d.BridgesFile = daemon.BridgesDir, daemon.BridgesFile
	d.MarkerTopics, d.ProbeTopics = daemon.MarkerTopics(c.Name), daemon.ProbeTopics(c.Name)
	d.SessionTopics = sessions.Topics(c.Name)
	if d.Standby {
		d.BridgeVIP = c.BridgeVIP
		for _, b := range c.WithRole(cluster.Bridge) {
			if b.Name != n.Name {
				d.BridgePeers = append(d.BridgePeers, b)
			}
		}
		d.BridgeCheck, d.BridgeNotify = bridgerole.CheckCommand(c, n), bridgerole.NotifyCommand
	}
	d.DownBrokers = h.DownBrokers
	d.ACLFile = daemon.ACLFile
	d.MosquittoStart = validate.AgentBin + " " + retained.Command
	d.StartFile = retained.File
	d.StatusTopics = daemon.StatusTopics(c.Name)
	d.VerdictTopics = daemon.VerdictTopics(c.Name)
	d.SysTrees = sysTrees
	d.ACLUsers = aclUsers(c, n)

	out := &Output{Node: n}
	add := func(unit, p, tmpl string, kind Kind, mode fs.FileMode) error {
		var buf bytes.Buffer
		if err := templates.ExecuteTemplate(&buf, tmpl, d); err != nil {
			return fmt.Errorf("render %s for node %s: %w", p, n.Name, err)
		}
		out.Files = append(out.Files, File{Path: p, Mode: mode, Unit: unit, Kind: kind, Content: buf.Bytes()})
		return nil
	}
	for _, dm := range daemon.For(c, n) {
		out.Units = append(out.Units, dm.Unit)
		switch dm.Name {
		case daemon.Mosquitto.Name:
			// The load balancers spread clients over the brokers (by address).
			// A bridge node's mosquitto holds only its connections to them.
			brokers := max(len(c.WithRole(cluster.Broker)), 1)
			wanted := (c.Limits.Clients + brokers - 1) / brokers
			if !n.Has(cluster.Broker) {
				wanted = brokers
			}
			out.Limits = append(out.Limits, Limit{Unit: dm.Unit, NoFile: d.MosquittoNoFile, Clients: d.MaxConnections, Wanted: wanted})
		case daemon.Nginx.Name:
			// Every worker holds its share (reuseport spreads them evenly
			// when there are more workers than processors).
			out.Limits = append(out.Limits, Limit{Unit: dm.Unit, NoFile: d.NoFile, Clients: d.WorkerConnections / 2 * workers, Wanted: c.Limits.Clients})
		}
		if err := add(dm.Unit, dm.Conf, dm.ConfTemplate, Config, 0o644); err != nil {
			return nil, err
		}
		if err := add(dm.Unit, dm.DropIn(), dm.DropInTemplate, DropIn, 0o644); err != nil {
			return nil, err
		}
		if dm.Name == daemon.Mosquitto.Name {
			if err := add(dm.Unit, daemon.ACLFile, "mosquitto.acl.tmpl", Config, 0o644); err != nil {
				return nil, err
			}
			out.Files = append(out.Files, File{Path: retained.File, Mode: 0o644, Unit: dm.Unit, Kind: AtStart,
				Content: startFile(c, n).Marshal(fmt.Sprintf("Managed by mqha-agent: node %s of cluster %s (%s).", n.Name, c.Name, n.RoleList()))})
		}
		if dm.Name == daemon.Mosquitto.Name && d.Standby {
			// The bridge master's connections, readable by mosquitto only
			// through the link on the master; the client ids in them are
			// no one else's business.
			if err := add(dm.Unit, daemon.BridgesFile, "mosquitto.bridges.tmpl", Config, 0o640); err != nil {
				return nil, err
			}
		}
	}
	sort.Slice(out.Files, func(i, j int) bool { return out.Files[i].Path < out.Files[j].Path })
	return out, nil
}

// startFile says whose retained messages node n's mosquitto keeps when it
// starts (internal/retained): a bridge node relays, a broker keeps its own
// unless another broker answers.
func startFile(c *cluster.Cluster, n cluster.Node) retained.Start {
	if !n.Has(cluster.Broker) {
		return retained.Start{Relay: true}
	}
	var s retained.Start
	for _, b := range c.WithRole(cluster.Broker) {
		if b.Name != n.Name {
			s.Peers = append(s.Peers, retained.Peer{Name: b.Name, Addr: net.JoinHostPort(b.Address, strconv.Itoa(c.Ports.Broker))})
		}
	}
	return s
}

// ACLUser is one certificate name's topics beyond what every client may use.
type ACLUser struct {
	Name   string
	Topics []string // "readwrite TOPIC", "read TOPIC"
}

// aclUsers are the nodes that use node n's mosquitto beyond a client: n
// itself (its agent's health probe on its own topics, the bridges' state to
// read) and the bridge nodes (the bridge master writes its state, and with
// standbys its mark, on the brokers it connects to; its bridge check sends
// its probe through them). Each node writes only its own status (a pattern
// for every certificate); none writes another's.
func aclUsers(c *cluster.Cluster, n cluster.Node) []ACLUser {
	users := []ACLUser{{Name: n.Name, Topics: []string{"readwrite " + daemon.HealthTopics + "/" + n.Name + "/#", "read $SYS/broker/connection/#"}}}
	add := func(name string, topics ...string) {
		for i := range users {
			if users[i].Name == name {
				if i == 0 && len(users[0].Topics) == 2 && topics[0] == "readwrite $SYS/broker/connection/#" {
					users[0].Topics = users[0].Topics[:1] // read is in readwrite
				}
				users[i].Topics = append(users[i].Topics, topics...)
				return
			}
		}
		users = append(users, ACLUser{Name: name, Topics: topics})
	}
	for _, b := range c.WithRole(cluster.Bridge) {
		// A bridge node writes the bridges' state and its own mark (a
		// master's, or a lone bridge's), and reads the others' marks; it
		// carries the brokers' session listings; with standbys, the
		// master's probe too.
		m := daemon.MarkerTopics(c.Name)
		topics := []string{"readwrite $SYS/broker/connection/#", "readwrite " + m + "/" + b.Name, "read " + m + "/#",
			"readwrite " + sessions.Topics(c.Name) + "/#"}
		if daemon.HasStandby(c) {
			p := daemon.ProbeTopics(c.Name)
			topics = append(topics, "readwrite "+p+"/"+b.Name, "read "+p+"/#")
		}
		add(b.Name, topics...)
	}
	if n.Has(cluster.Broker) {
		// This broker's agent lists the persistent clients connected to
		// it here, and reads the other brokers' listings, which the
		// bridges carry (and its will clears its own).
		s := sessions.Topics(c.Name)
		add(n.Name, "readwrite "+s+"/"+n.Name, "read "+s+"/#")
	}
	return users
}

func names(ns []cluster.Node) []string {
	s := make([]string, len(ns))
	for i, n := range ns {
		s[i] = n.Name
	}
	return s
}
