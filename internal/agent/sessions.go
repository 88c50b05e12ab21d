package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/mqha/mqha/internal/atomicfile"
	"github.com/mqha/mqha/internal/cluster"
	"github.com/mqha/mqha/internal/daemon"
	"github.com/mqha/mqha/internal/probe"
	"github.com/mqha/mqha/internal/sessions"
)

// Short copies of moved sessions (package sessions): on a broker node, the
// agent follows its mosquitto's connections, lists the persistent clients
// connected to it for the other brokers (the bridges carry the listings),
// and drains its own copy of a session whose client is connected to another
// broker and stays away from this one.

// drainsPerRound bounds the copies drained in one round, drainsAtOnce how
// many at a time: a broker whose clients all moved drains over a few
// rounds, not in one burst.
const (
	drainsPerRound = 400
	drainsAtOnce   = 16
	// drainQuiet: a drain leaves once no message came for this long
	// (loopback; mosquitto sends the queue right after CONNACK).
	drainQuiet = 150 * time.Millisecond
)

// sessionKeeper is the other brokers' listings as received, and the
// metrics of FollowMosquitto's rounds.
type sessionKeeper struct {
	mu       sync.Mutex
	peers    map[string]sessions.Listed // by broker node
	at       map[string]int64           // the newest listing's time, by broker node
	drained  prometheus.Counter
	messages prometheus.Counter
	here     prometheus.Gauge
}

func newSessionKeeper() *sessionKeeper {
	return &sessionKeeper{peers: map[string]sessions.Listed{}, at: map[string]int64{},
		drained: prometheus.NewCounter(prometheus.CounterOpts{Name: "mqha_sessions_drained_total",
			Help: "Drains of this broker's copies of persistent sessions whose client is connected to another broker."}),
		messages: prometheus.NewCounter(prometheus.CounterOpts{Name: "mqha_sessions_drained_messages_total",
			Help: "Messages those drains acknowledged: duplicates the clients were spared had they come back."}),
		here: prometheus.NewGauge(prometheus.GaugeOpts{Name: "mqha_sessions_connected",
			Help: "Clients connected to this broker with a persistent session, as its agent lists them to the other brokers."}),
	}
}

func (k *sessionKeeper) received(node string, payload []byte, now time.Time) error {
	l, err := sessions.Decode(payload)
	if err != nil {
		return err
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	k.peers[node], k.at[node], _ = sessions.Receive(k.peers[node], l, now, k.at[node])
	return nil
}

func (k *sessionKeeper) listings() map[string]sessions.Listed {
	k.mu.Lock()
	defer k.mu.Unlock()
	out := make(map[string]sessions.Listed, len(k.peers))
	for n, l := range k.peers {
		out[n] = l
	}
	return out
}

// FollowMosquitto runs until ctx ends. While this node runs mosquitto it
// reads mosquitto's journal every journalPoll, one reader for what the
// agent learns there: the drop episodes (journal.go), on every node, and on
// a broker node the connections, to list the persistent clients connected
// (on change, and every sessions.Republish) and drain the copies the policy
// names.
func (a *Agent) FollowMosquitto(ctx context.Context) {
	tr, pol := sessions.NewTracker(), sessions.NewPolicy()
	cursor, first := journalFromStart, true
	heldFile := filepath.Join(a.cfg.StateDir, "sessions-held.json")
	var held []string
	if b, err := os.ReadFile(heldFile); err == nil {
		if err := json.Unmarshal(b, &held); err != nil {
			a.log.Warn("the sessions this broker held, as recorded, do not read: its copies of sessions that moved before this start are not drained", "file", heldFile, "err", err)
		}
		tr.Restore(held)
	}
	var (
		key       string
		c         mqtt.Client
		listed    []string
		published time.Time
		topic     string
		skipped   int
		failing   bool
	)
	stop := func() {
		if c == nil {
			return
		}
		if c.IsConnectionOpen() {
			c.Publish(topic, 1, true, []byte{}).WaitTimeout(time.Second)
		}
		c.Disconnect(100)
		c = nil
	}
	defer stop()
	for {
		t := a.publish.get()
		broker := t.v != nil && t.v.Node.Has(cluster.Broker)
		// The listing's client is made anew only when what it connects
		// with changes: its will clears the listing, and the other brokers
		// trust a listing only once it is republished.
		k := ""
		if broker {
			k = fmt.Sprintf("%s %s %d %s", t.v.Cluster.Name, t.v.Node.Name, t.v.Cluster.Ports.Broker, t.v.TLSID)
		}
		if k != key {
			stop()
			key = k
			if broker {
				topic = sessions.Topics(t.v.Cluster.Name) + "/" + t.v.Node.Name
				c, published = a.sessionClient(t.v, topic), time.Time{}
			}
		}
		if slices.Contains(a.daemons.runs(), daemon.Mosquitto.Unit) {
			lines, next, err := a.d.Journal(ctx, daemon.Mosquitto.Unit, cursor)
			switch {
			case err != nil && cursor == journalFromStart:
				// Without its start the tracker does not know who is
				// connected: it follows from now on and drains nothing
				// until mosquitto starts again.
				a.log.Error("cannot read mosquitto's journal since it started: sessions are listed as clients connect, none is drained until mosquitto restarts", "err", err)
				cursor = ""
			case err != nil && !failing:
				a.log.Error("cannot read mosquitto's journal: dropped messages are not reported, persistent sessions left on this broker by clients that moved are not drained", "err", err)
				failing = true
			case err == nil:
				failing = false
				// The first read reaches back to mosquitto's start: its
				// drops were reported by the agent that ran then.
				if !first {
					a.countDrops(lines)
				}
				first = false
				now := a.d.Now()
				for _, l := range lines {
					tr.Observe(l, now)
				}
				if next != "" {
					cursor = next
				}
			}
		}
		if broker && slices.Contains(a.daemons.runs(), daemon.Mosquitto.Unit) {
			if tr.Skipped() > skipped {
				a.log.Warn("mosquitto logged client ids with a space: their sessions are not tracked", "lines", tr.Skipped()-skipped)
				skipped = tr.Skipped()
			}
			if h := tr.Held(); !slices.Equal(h, held) {
				b, _ := json.Marshal(h)
				if err := atomicfile.Write(heldFile, b, 0o600); err != nil {
					a.log.Error("record the sessions this broker holds", "file", heldFile, "err", err)
				}
				held = h
			}
			here := tr.Here()
			if len(here) > sessions.MaxListed {
				a.log.Warn("more persistent clients than one listing holds: the rest are not listed", "clients", len(here), "listed", sessions.MaxListed)
				here = here[:sessions.MaxListed]
			}
			a.sessions.here.Set(float64(len(here)))
			if c.IsConnectionOpen() && (!slices.Equal(here, listed) || time.Since(published) >= sessions.Republish) {
				c.Publish(topic, 1, true, sessions.Listing{Clients: here, At: time.Now().UnixMilli()}.Encode())
				listed, published = here, time.Now()
			}
			if tr.Started() {
				a.drainSessions(ctx, t.v, tr, pol)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(journalPoll):
		}
	}
}

// sessionClient connects to this node's own broker: it publishes the
// listing there (retained; its will clears it) and receives the other
// brokers', which the bridges carry.
func (a *Agent) sessionClient(v *View, topic string) mqtt.Client {
	prefix := sessions.Topics(v.Cluster.Name) + "/"
	o := mqtt.NewClientOptions().AddBroker("ssl://"+cluster.HostPort("127.0.0.1", v.Cluster.Ports.Broker)).
		SetClientID(probe.ClientID("mqha-"+v.Cluster.Name+"-sessions-"+v.Node.Name)).
		SetTLSConfig(daemon.WithName(v.TLS, v.Node.Address)).SetCleanSession(true).SetAutoReconnect(true).
		SetConnectRetry(true).SetConnectRetryInterval(5*time.Second).SetMaxReconnectInterval(30*time.Second).
		SetConnectTimeout(5*time.Second).SetKeepAlive(10*time.Second).
		SetBinaryWill(topic, []byte{}, 1, true).
		SetOnConnectHandler(func(c mqtt.Client) {
			c.Subscribe(prefix+"+", 1, func(_ mqtt.Client, m mqtt.Message) {
				node := strings.TrimPrefix(m.Topic(), prefix)
				if node == v.Node.Name {
					return
				}
				if err := a.sessions.received(node, m.Payload(), a.d.Now()); err != nil {
					a.log.Warn("a broker's session listing does not read: ignored", "broker", node, "err", err)
				}
			})
		})
	c := mqtt.NewClient(o)
	c.Connect()
	return c
}

// drainSessions drains this broker's copies of the sessions the policy
// names.
func (a *Agent) drainSessions(ctx context.Context, v *View, tr *sessions.Tracker, pol *sessions.Policy) {
	ids := pol.Decide(tr, a.sessions.listings(), a.d.Now())
	if len(ids) > drainsPerRound {
		ids = ids[:drainsPerRound]
	}
	local := cluster.HostPort("127.0.0.1", v.Cluster.Ports.Broker)
	tc := daemon.WithName(v.TLS, v.Node.Address)
	type result struct {
		n       int
		present bool
		err     error
	}
	results := make([]result, len(ids))
	var wg sync.WaitGroup
	sem := make(chan struct{}, drainsAtOnce)
	for i, id := range ids {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			defer cancel()
			r := &results[i]
			r.n, r.present, r.err = a.d.DrainSession(ctx, local, tc, id, drainQuiet)
		}()
	}
	wg.Wait()
	for i, id := range ids {
		r := results[i]
		if r.err != nil {
			a.log.Error("drain this broker's copy of a session whose client is connected to another broker", "client", id, "err", r.err)
			continue
		}
		pol.Drained(tr, id)
		a.sessions.drained.Inc()
		a.sessions.messages.Add(float64(r.n))
		a.log.Info("drained this broker's copy of a persistent session: its client is connected to another broker", "client", id, "messages", r.n, "session_present", r.present)
	}
}
