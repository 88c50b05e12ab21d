package agent

import (
	"bytes"
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

// Persistent sessions across brokers (package sessions): on a broker node,
// the agent follows its mosquitto's connections and subscriptions, lists
// the persistent clients connected to it with their subscriptions for the
// other brokers (the bridges carry the listings), keeps on its own
// mosquitto a shadow of each session a peer lists (same client id and
// subscriptions, so this broker queues for the client should its broker
// fail), and drains its copy while the client is connected elsewhere.

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
	shadowed prometheus.Counter
	ended    prometheus.Counter
	spaced   prometheus.Counter
	unheld   *prometheus.GaugeVec
	unheldBy map[string]int // unheld, as last logged (FollowMosquitto's goroutine only)
}

func newSessionKeeper() *sessionKeeper {
	return &sessionKeeper{peers: map[string]sessions.Listed{}, at: map[string]int64{}, unheldBy: map[string]int{},
		drained: prometheus.NewCounter(prometheus.CounterOpts{Name: "mqha_sessions_drained_total",
			Help: "Drains of this broker's copies of persistent sessions whose client is connected to another broker."}),
		messages: prometheus.NewCounter(prometheus.CounterOpts{Name: "mqha_sessions_drained_messages_total",
			Help: "Messages those drains acknowledged: duplicates the clients were spared had they come back."}),
		here: prometheus.NewGauge(prometheus.GaugeOpts{Name: "mqha_sessions_connected",
			Help: "Clients connected to this broker with a persistent session, as its agent lists them to the other brokers."}),
		shadowed: prometheus.NewCounter(prometheus.CounterOpts{Name: "mqha_sessions_shadowed_total",
			Help: "Shadows made on this broker: sessions of clients connected to another broker, kept with their subscriptions so that this broker queues for them."}),
		ended: prometheus.NewCounter(prometheus.CounterOpts{Name: "mqha_sessions_ended_total",
			Help: "Copies of sessions ended on this broker because another broker listed their end (a clean connect there, or their expiry)."}),
		spaced: prometheus.NewCounter(prometheus.CounterOpts{Name: "mqha_sessions_untracked_total",
			Help: "Connection lines of client ids with a space, which the log cannot tell apart: their sessions have no shadow and are never drained."}),
		unheld: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "mqha_sessions_unshadowed_filters",
			Help: "Filters the other brokers list that no shadow here holds, by reason (shared subscription, reserved topic, invalid filter)."}, []string{"reason"}),
	}
}

// collectors are the keeper's metrics, as registered and listed.
func (k *sessionKeeper) collectors() []prometheus.Collector {
	return []prometheus.Collector{k.drained, k.messages, k.here, k.shadowed, k.ended, k.spaced, k.unheld}
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
	tr.Self = a.node
	cursor, first := journalFromStart, true
	heldFile := filepath.Join(a.cfg.StateDir, "sessions-held.json")
	var held []byte
	if b, err := os.ReadFile(heldFile); err == nil {
		h, err := readHeld(b)
		if err != nil {
			a.log.Warn("the sessions this broker held, as recorded, do not read: its copies of sessions that moved before this start are not drained", "file", heldFile, "err", err)
		}
		tr.Restore(h)
		held = b
	}
	var (
		key       string
		c         mqtt.Client
		listed    sessions.Listing
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
		runs := slices.Contains(a.daemons.runs(), daemon.Mosquitto.Unit)
		if runs {
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
		if broker && runs {
			if tr.Skipped() > skipped {
				a.log.Warn("mosquitto logged client ids with a space: their sessions are not tracked", "lines", tr.Skipped()-skipped)
				a.sessions.spaced.Add(float64(tr.Skipped() - skipped))
				skipped = tr.Skipped()
			}
			if b, _ := json.Marshal(tr.Held()); !bytes.Equal(b, held) {
				if err := atomicfile.Write(heldFile, b, 0o600); err != nil {
					a.log.Error("record the sessions this broker holds", "file", heldFile, "err", err)
				}
				held = b
			}
			here := tr.Here()
			if len(here) > sessions.MaxListed {
				a.log.Warn("more persistent clients than one listing holds: the rest are not listed", "clients", len(here), "listed", sessions.MaxListed)
				here = here[:sessions.MaxListed]
			}
			a.sessions.here.Set(float64(len(here)))
			l := sessions.Listing{Clients: here, Subs: map[string]sessions.Subs{}, Ended: tr.Ended(a.d.Now())}
			for _, id := range here {
				if s := tr.Subs(id); len(s) > 0 {
					l.Subs[id] = s
				}
			}
			if c.IsConnectionOpen() && (!l.Same(listed) || time.Since(published) >= sessions.Republish) {
				l.At = time.Now().UnixMilli()
				c.Publish(topic, 1, true, l.Encode())
				listed, published = l, time.Now()
			}
			if tr.Started() {
				a.visitSessions(ctx, t.v, tr, pol)
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

// readHeld reads sessions-held.json: the sessions with their
// subscriptions, or (as the agent wrote it before shadows) their ids.
func readHeld(b []byte) (map[string]sessions.Subs, error) {
	var h map[string]sessions.Subs
	if err := json.Unmarshal(b, &h); err == nil {
		return h, nil
	}
	var ids []string
	if err := json.Unmarshal(b, &ids); err != nil {
		return nil, err
	}
	h = map[string]sessions.Subs{}
	for _, id := range ids {
		h[id] = nil
	}
	return h, nil
}

// visitSessions makes the shadows and drains the copies the policy names,
// and ends the copies of sessions that ended elsewhere, on this broker's
// own mosquitto. A peer that does not accept a connection has its clients'
// copies left alone this round: they may be all that its
// clients, reconnecting, find of their sessions (a dead broker's listing
// is trusted until it is Fresh-old: no will clears it).
func (a *Agent) visitSessions(ctx context.Context, v *View, tr *sessions.Tracker, pol *sessions.Policy) {
	peers, now := a.sessions.listings(), a.d.Now()
	visits, skipped := pol.Decide(tr, peers, now)
	ends := sessions.Ends(tr, peers, now)
	if len(ends) > drainsPerRound {
		ends = ends[:drainsPerRound]
	}
	for _, why := range []string{sessions.Shared, sessions.Reserved, sessions.Invalid} {
		if n := skipped[why]; n != a.sessions.unheldBy[why] {
			if n > a.sessions.unheldBy[why] {
				a.log.Warn("peers list filters no shadow here can hold: their clients lose what those filters match should their broker fail", "reason", why, "filters", n)
			}
			a.sessions.unheldBy[why] = n
		}
		a.sessions.unheld.WithLabelValues(why).Set(float64(skipped[why]))
	}
	serving := map[string]bool{}
	var due []sessions.Visit
	for _, vi := range visits {
		if vi.Shadow {
			due = append(due, vi) // takes nothing: made whatever the peer's state
			continue
		}
		ok, seen := serving[vi.Peer]
		if !seen {
			p, listed := v.Cluster.Node(vi.Peer)
			ok = listed && p.Has(cluster.Broker) && a.d.Serves(ctx, p.At(v.Cluster.Ports.Broker))
			serving[vi.Peer] = ok
			if !ok {
				a.log.Warn("a broker that lists persistent clients does not answer: their sessions here are left alone", "broker", vi.Peer)
			}
		}
		if ok {
			due = append(due, vi)
		}
	}
	if len(due) > drainsPerRound {
		due = due[:drainsPerRound]
	}
	local := cluster.HostPort("127.0.0.1", v.Cluster.Ports.Broker)
	tc := daemon.WithName(v.TLS, v.Node.Address)
	for _, id := range ends {
		ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		err := a.d.EndSession(ctx, local, tc, id)
		cancel()
		if err != nil {
			a.log.Error("end this broker's copy of a session that ended on another broker", "client", id, "err", err)
			continue
		}
		a.sessions.ended.Inc()
		a.log.Info("ended this broker's copy of a persistent session: it ended on another broker (a clean connect, or its expiry)", "client", id)
	}
	type result struct {
		n       int
		present bool
		err     error
	}
	results := make([]result, len(due))
	var wg sync.WaitGroup
	sem := make(chan struct{}, drainsAtOnce)
	for i, vi := range due {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			defer cancel()
			r := &results[i]
			r.n, r.present, r.err = a.d.DrainSession(ctx, local, tc, vi.ID, vi.Subscribe, vi.Unsubscribe, drainQuiet)
		}()
	}
	wg.Wait()
	for i, vi := range due {
		r := results[i]
		what := "drain this broker's copy of a session whose client is connected to another broker"
		if vi.Shadow {
			what = "make a shadow of a session whose client is connected to another broker"
		}
		if r.err != nil {
			a.log.Error(what, "client", vi.ID, "broker", vi.Peer, "err", r.err)
			continue
		}
		pol.Drained(tr, vi.ID)
		if vi.Shadow {
			a.sessions.shadowed.Inc()
			a.log.Info("made a shadow of a persistent session: its client is connected to another broker", "client", vi.ID, "broker", vi.Peer,
				"subscriptions", len(vi.Subscribe), "session_present", r.present)
			continue
		}
		a.sessions.drained.Inc()
		a.sessions.messages.Add(float64(r.n))
		a.log.Info("drained this broker's copy of a persistent session: its client is connected to another broker", "client", vi.ID, "broker", vi.Peer,
			"messages", r.n, "session_present", r.present, "subscribed", len(vi.Subscribe), "unsubscribed", len(vi.Unsubscribe))
	}
}
