// Package retained keeps a mosquitto node from bringing stale retained
// messages back into the cluster when it starts.
//
// mosquitto 2.0's bridge asks a broker for its retained messages every time
// it subscribes there, and passes the retain flag on; when it connects it
// also sends the broker every retained message of its own node. So a broker
// back from a power-off, or a bridge node taking over with the store it had
// when it last bridged, would hand its old retained messages to every other
// broker: a message cleared or replaced meanwhile comes back. Before
// mosquitto starts (the unit's ExecStartPre runs "mqha-agent
// mosquitto-start"), the node drops the retained messages from its
// persistence file when another node holds the cluster's:
//
//   - a bridge node always (it relays; the brokers hold the truth, and the
//     bridge gives it back the brokers' messages when it subscribes);
//   - a broker when another broker answers; the bridge then sends it what
//     the others hold. A broker that finds no other answering keeps its own:
//     they are the best the cluster has (one broker, or all starting at once:
//     the first one up keeps its store and the later ones take it).
//
// Files: start.go owns the start file (what the renderer writes, what the
// command reads) and the decision; db.go owns mosquitto's persistence format.
package retained

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"time"
)

// File is the start file, rendered with mosquitto's configuration. mosquitto
// itself never reads it; a change to it needs no restart.
const File = "/etc/mosquitto/mqha-start.conf"

// DB is where mosquitto keeps its persistence file (persistence_location in
// the rendered mosquitto.conf, and mosquitto's default file name).
const DB = "/var/lib/mosquitto/mosquitto.db"

// Command is what the mosquitto unit runs before it starts.
const Command = "mosquitto-start"

// Peer is another broker of the cluster.
type Peer struct {
	Name string
	Addr string // host:port of its client listener
}

// Start is what the start file says about a node.
type Start struct {
	Relay bool   // a bridge node without the broker role
	Peers []Peer // the other brokers, for a broker
}

// Marshal renders the start file; header is its first comment line.
func (s Start) Marshal(header string) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "# %s\n", header)
	b.WriteString(`# Read by "mqha-agent mosquitto-start" before mosquitto starts, to drop the
# retained messages of its persistence file when another node holds the
# cluster's (mosquitto's bridge would otherwise bring old ones back).
`)
	if s.Relay {
		b.WriteString("# A bridge node relays retained messages: they are dropped at every start.\nrelay\n")
		return b.Bytes()
	}
	if len(s.Peers) == 0 {
		b.WriteString("# The only broker: its retained messages are kept.\n")
		return b.Bytes()
	}
	b.WriteString("# Dropped when one of these brokers answers; kept when none does.\n")
	for _, p := range s.Peers {
		fmt.Fprintf(&b, "peer %s %s\n", p.Name, p.Addr)
	}
	return b.Bytes()
}

// Parse reads a start file.
func Parse(b []byte) (Start, error) {
	var s Start
	sc := bufio.NewScanner(bytes.NewReader(b))
	for n := 1; sc.Scan(); n++ {
		f := strings.Fields(sc.Text())
		switch {
		case len(f) == 0 || strings.HasPrefix(f[0], "#"):
		case f[0] == "relay" && len(f) == 1:
			s.Relay = true
		case f[0] == "peer" && len(f) == 3:
			if _, _, err := net.SplitHostPort(f[2]); err != nil {
				return Start{}, fmt.Errorf("line %d: peer %s: %v", n, f[1], err)
			}
			s.Peers = append(s.Peers, Peer{Name: f[1], Addr: f[2]})
		default:
			return Start{}, fmt.Errorf("line %d: %q is neither \"relay\" nor \"peer NAME HOST:PORT\"", n, sc.Text())
		}
	}
	return s, sc.Err()
}

// Dial checks that a peer accepts a connection.
type Dial func(ctx context.Context, addr string) error

// TCP is the Dial the command uses: a peer's client listener accepts a
// connection within timeout.
func TCP(timeout time.Duration) Dial {
	return func(ctx context.Context, addr string) error {
		c, err := (&net.Dialer{Timeout: timeout}).DialContext(ctx, "tcp", addr)
		if err != nil {
			return err
		}
		return c.Close()
	}
}

// Prepare applies the start file's rule to the persistence file at db.
func (s Start) Prepare(ctx context.Context, db string, dial Dial, log *slog.Logger) error {
	why := ""
	switch {
	case s.Relay:
		why = "a bridge node relays retained messages; the brokers hold them"
	case len(s.Peers) == 0:
		log.Info("retained messages kept: the only broker")
		return nil
	default:
		if p, ok := firstAnswering(ctx, s.Peers, dial); ok {
			why = "broker " + p.Name + " answers: the bridge brings this broker the cluster's retained messages"
		} else {
			log.Info("retained messages kept: no other broker answers, this broker's are the best the cluster has", "peers", len(s.Peers))
			return nil
		}
	}
	st, err := Strip(db)
	if err != nil {
		return err
	}
	if st.Retained == 0 {
		log.Info("no retained message to drop", "why", why)
		return nil
	}
	log.Info("retained messages dropped before start", "why", why, "retained", st.Retained,
		"stored", st.Stores, "saved_at_shutdown", st.Clean, "topics", strings.Join(st.Topics, " "))
	return nil
}

// firstAnswering asks every peer at once.
func firstAnswering(ctx context.Context, peers []Peer, dial Dial) (Peer, bool) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		once sync.Once
		got  Peer
		ok   bool
		wg   sync.WaitGroup
	)
	for _, p := range peers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if dial(ctx, p.Addr) == nil {
				once.Do(func() { got, ok = p, true; cancel() })
			}
		}()
	}
	wg.Wait()
	return got, ok
}
