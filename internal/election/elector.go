package election

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"log/slog"
	"regexp"
	"strings"
	"sync"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
)

// Endpoint is a mosquitto the elector connects to.
type Endpoint struct {
	Addr string
	TLS  *tls.Config
}

// Config is what an Elector needs.
type Config struct {
	Cluster string
	// Topics is the parent of every candidate's beat topic (Topics/node):
	// daemon.BeatTopics, which the bridge master's configuration carries
	// out to the brokers.
	Topics  string
	Me      Candidate
	Local   Endpoint   // this node's own mosquitto: beats are published here
	Brokers []Endpoint // where the bridge master's beats arrive
	Peers   []Endpoint // the other candidates' mosquittos: their own beats
	Timing  Timing
	Every   time.Duration // between beats
	Log     *slog.Logger
	// Active and Since are the role the node runs when the elector starts
	// (its bridge connections are in place or not).
	Active bool
	Since  time.Time
	// Apply makes the node run the role decided (bridge connections
	// written, mosquitto restarted) and returns when it does.
	Apply func(ctx context.Context, active bool, reason string) error
	// LocalServes says whether this node's own mosquitto serves, from the
	// health checks' evidence (busy is serving). nil: the beat connection
	// to it is open; a busy mosquitto can drop that connection, and a
	// master must not stand down (and restart mosquitto) for being busy.
	LocalServes func() bool
	Now         func() time.Time
}

// Status is the elector's view, for status and metrics.
type Status struct {
	Active     bool      `json:"active"`
	Since      time.Time `json:"since,omitzero"`
	Master     string    `json:"master,omitempty"`
	Reason     string    `json:"reason"`
	Brokers    int       `json:"brokersReached"`
	Takeovers  int       `json:"takeovers"`
	StandDowns int       `json:"standDowns"`
	Conflicts  int       `json:"conflicts"`
	// Conflict: a tug of war is going on now.
	Conflict     bool      `json:"conflict,omitempty"`
	LastConflict time.Time `json:"lastConflict,omitzero"`
}

// Elector runs the election for one node.
type Elector struct {
	cfg Config

	mu      sync.Mutex
	active  bool
	since   time.Time
	start   time.Time
	peers   map[string]Seen
	lastBrk time.Time
	lastLoc time.Time
	st      Status // the counters and the last verdict; Active and Since are the fields above
	brokers []mqtt.Client
	local   mqtt.Client
	clients []mqtt.Client
}

// New prepares an elector; Run runs it.
func New(cfg Config) *Elector {
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Every == 0 {
		cfg.Every = 500 * time.Millisecond
	}
	if cfg.Timing == (Timing{}) {
		cfg.Timing = DefaultTiming
	}
	return &Elector{cfg: cfg, active: cfg.Active, since: cfg.Since, peers: map[string]Seen{}}
}

// Status returns the elector's current view.
func (e *Elector) Status() Status {
	e.mu.Lock()
	defer e.mu.Unlock()
	s := e.st
	s.Active, s.Since = e.active, e.since
	return s
}

// Run connects, beats and decides until ctx ends.
func (e *Elector) Run(ctx context.Context) {
	now := e.cfg.Now()
	e.mu.Lock()
	e.start, e.lastBrk, e.lastLoc = now, now, now
	e.mu.Unlock()
	id := "mqha-" + e.cfg.Cluster + "-election-" + e.cfg.Me.Name + "-" + nonce()
	sub := func(c mqtt.Client) {
		c.Subscribe(e.cfg.Topics+"/+", 0, e.onBeat)
	}
	for _, b := range e.cfg.Brokers {
		c := dial(b, id, sub)
		e.brokers = append(e.brokers, c)
		e.clients = append(e.clients, c)
	}
	for _, p := range e.cfg.Peers {
		e.clients = append(e.clients, dial(p, id, sub))
	}
	e.local = dial(e.cfg.Local, "mqha-"+e.cfg.Cluster+"-beat-"+e.cfg.Me.Name, nil)
	e.clients = append(e.clients, e.local)
	defer func() {
		for _, c := range e.clients {
			c.Disconnect(100)
		}
	}()

	tick := time.NewTicker(e.cfg.Every / 2)
	defer tick.Stop()
	var lastBeat time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		now := e.cfg.Now()
		if now.Sub(lastBeat) >= e.cfg.Every {
			e.beat()
			lastBeat = now
		}
		v := e.decide(now)
		switch v.Decision {
		case TakeOver:
			e.flip(ctx, true, v.Reason)
			lastBeat = time.Time{}
		case StandDown:
			e.flip(ctx, false, v.Reason)
			lastBeat = time.Time{}
		}
	}
}

func (e *Elector) decide(now time.Time) Verdict {
	brokers := 0
	for _, c := range e.brokers {
		if c.IsConnectionOpen() {
			brokers++
		}
	}
	local := e.local.IsConnectionOpen()
	if e.cfg.LocalServes != nil {
		local = e.cfg.LocalServes()
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if brokers > 0 {
		e.lastBrk = now
	}
	if local {
		e.lastLoc = now
	}
	o := Obs{Now: now, Start: e.start, Peers: map[string]Seen{}, Brokers: brokers, LastBroker: e.lastBrk,
		Local: local, LastLocal: e.lastLoc, Active: e.active, Since: e.since}
	for k, v := range e.peers {
		o.Peers[k] = v
	}
	v := Decide(e.cfg.Me, o, e.cfg.Timing)
	if v.Conflict && !e.st.Conflict {
		e.st.Conflicts++
		e.st.LastConflict = now
		e.cfg.Log.Warn("bridge election: tug of war", "reason", v.Reason)
	}
	e.st.Conflict = v.Conflict
	e.st.Master, e.st.Brokers = v.Master, brokers
	// Said when it changes, not when only its figures do.
	if kind := figures.ReplaceAllString(v.Reason, "N"); kind != figures.ReplaceAllString(e.st.Reason, "N") && v.Decision == Stay {
		e.cfg.Log.Info("bridge election", "state", v.Reason)
	}
	e.st.Reason = v.Reason
	return v
}

// flip claims or gives up the role at once (the next beat says so, so that
// the other candidates know before mosquitto restarts), then makes the node
// run it. A failed take-over goes back to standby and listens again.
func (e *Elector) flip(ctx context.Context, active bool, reason string) {
	now := e.cfg.Now()
	e.mu.Lock()
	e.active = active
	if active {
		e.since = now
		e.st.Takeovers++
	} else {
		e.since = time.Time{}
		e.st.StandDowns++
	}
	e.mu.Unlock()
	e.beat()
	e.cfg.Log.Warn("bridge election: "+map[bool]string{true: "taking over as bridge master", false: "standing down"}[active], "reason", reason)
	err := e.cfg.Apply(ctx, active, reason)
	if err == nil || !active {
		if err != nil {
			e.cfg.Log.Error("bridge election: standing down failed; retrying", "err", err)
			e.mu.Lock()
			e.active = true // still bridging: decide again
			e.mu.Unlock()
		}
		return
	}
	e.cfg.Log.Error("bridge election: taking over failed; standing by", "err", err)
	e.mu.Lock()
	e.active, e.since, e.start = false, time.Time{}, e.cfg.Now()
	e.mu.Unlock()
	e.beat()
	if aerr := e.cfg.Apply(ctx, false, "taking over failed"); aerr != nil {
		e.cfg.Log.Error("bridge election: back to standby failed", "err", aerr)
	}
}

func (e *Elector) beat() {
	e.mu.Lock()
	b := Beat{Node: e.cfg.Me.Name, Priority: e.cfg.Me.Priority, Active: e.active, Since: e.since}
	e.mu.Unlock()
	payload, _ := json.Marshal(b)
	if e.local.IsConnectionOpen() {
		e.local.Publish(e.cfg.Topics+"/"+e.cfg.Me.Name, 0, false, payload)
	}
}

func (e *Elector) onBeat(_ mqtt.Client, m mqtt.Message) {
	var b Beat
	if err := json.Unmarshal(m.Payload(), &b); err != nil || b.Node == "" || b.Node == e.cfg.Me.Name ||
		!strings.HasSuffix(m.Topic(), "/"+b.Node) {
		return
	}
	now := e.cfg.Now()
	e.mu.Lock()
	defer e.mu.Unlock()
	e.peers[b.Node] = Seen{Beat: b, At: now}
}

// dial connects to ep and keeps reconnecting; a dead link is noticed within
// about three seconds (keepalive 2 s, ping timeout 1 s).
func dial(ep Endpoint, id string, onConnect func(mqtt.Client)) mqtt.Client {
	o := mqtt.NewClientOptions().AddBroker("ssl://" + ep.Addr).SetClientID(id).SetTLSConfig(ep.TLS).
		SetCleanSession(true).SetAutoReconnect(true).SetConnectRetry(true).
		SetConnectRetryInterval(time.Second).SetMaxReconnectInterval(time.Second).
		SetConnectTimeout(2 * time.Second).SetWriteTimeout(time.Second).
		SetKeepAlive(2 * time.Second).SetPingTimeout(time.Second)
	if onConnect != nil {
		o.SetOnConnectHandler(func(c mqtt.Client) { onConnect(c) })
	}
	c := mqtt.NewClient(o)
	c.Connect() // with ConnectRetry it keeps trying in the background
	return c
}

func nonce() string {
	b := make([]byte, 4)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// figures are the numbers, durations and times in a reason.
var figures = regexp.MustCompile(`[0-9][0-9.:TZ+-]*(ms|µs|s|m)?`)
