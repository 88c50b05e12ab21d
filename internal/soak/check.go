package soak

import (
	"fmt"
	"maps"
	"slices"
	"sort"
	"strings"
	"time"
)

// Run is what a soak recorded: the checker's whole input.
type Run struct {
	Config Config    `json:"config"`
	Start  time.Time `json:"start"`
	End    time.Time `json:"end"`
	Events []Done    `json:"events"` // as carried out
	// Samples are taken once a second.
	Samples     []Sample     `json:"samples"`
	Publishers  []Publisher  `json:"publishers"`
	Subscribers []Subscriber `json:"subscribers"`
	// Homes say which broker each client was on since when (the brokers'
	// logs), so that a loss can be told apart from the known limit.
	Homes map[string][]Home `json:"homes"`
	// Acts are what the agents did to daemons (their journals).
	Acts   []Act   `json:"acts"`
	Agents []Usage `json:"agents"`
	// Settled is what the fleet looked like once the last fault ended.
	Settled Settled `json:"settled"`
	// Errors are agent panics and internal errors found in the journals.
	Errors []string `json:"errors,omitempty"`
}

// Done is an event as carried out.
type Done struct {
	Event
	Start time.Time `json:"start"`
	End   time.Time `json:"end"` // the fault healed (a commit: pushed)
	Err   string    `json:"err,omitempty"`
	// A commit: what it must come to on every node ("applied", or
	// "refused": a refused or hostile commit, or one pushed before such a
	// commit was fixed), and what each node made of it: "applied",
	// "refused: why", "superseded" (a later commit came first) or "no
	// answer" (a node under a fault).
	Expect  string            `json:"expect,omitempty"`
	Outcome map[string]string `json:"outcome,omitempty"`
}

// Sample is one second of the run.
type Sample struct {
	At         time.Time           `json:"at"`
	VIPHolders []string            `json:"vipHolders"`
	VIPServed  bool                `json:"vipServed"`
	VIPError   string              `json:"vipError,omitempty"`
	VIPBroker  string              `json:"vipBroker,omitempty"` // where the probe landed
	Bridges    map[string][]string `json:"bridges"`             // broker -> bridge nodes connected to it
	BridgeHold string              `json:"bridgeHolder,omitempty"`
	Delivered  int                 `json:"delivered"` // messages delivered in the second
	P99        time.Duration       `json:"p99"`       // their publish-to-delivery latency
}

// Publisher is one publishing client: Acked[seq] is when its message seq
// was acknowledged (QoS1) or sent (QoS0); zero: never. Published[seq] is
// when it was handed to the client library (before it reached the broker:
// a subscription made after it cannot have been there when the broker
// routed it); absent in older runs.
type Publisher struct {
	Name      string      `json:"name"`
	QoS       byte        `json:"qos"`
	Acked     []time.Time `json:"-"`
	Published []time.Time `json:"-"`
	Sent      int         `json:"sent"`
}

// Subscriber is one subscribing client, following one publisher.
type Subscriber struct {
	Name       string `json:"name"`
	Persistent bool   `json:"persistent"`
	Follows    string `json:"follows"`
	Got        []bool `json:"-"` // by sequence number
	Received   int    `json:"received"`
	Duplicates int    `json:"duplicates"`
	Reordered  int    `json:"reordered"`
	// Up are the intervals it was connected and subscribed.
	Up []Interval `json:"up"`
	// SessionLost are the connects that found no session (persistent
	// subscribers): what was queued for it is gone.
	SessionLost []time.Time `json:"sessionLost,omitempty"`
}

// Interval is [From, To), one connection of a subscriber; Last is the
// highest sequence number it delivered (-1: none).
type Interval struct {
	From time.Time `json:"from"`
	To   time.Time `json:"to"`
	Last int       `json:"last"`
}

// Home is a client's broker from At on.
type Home struct {
	At     time.Time `json:"at"`
	Broker string    `json:"broker"`
}

// Act is something an agent did to a daemon: "killed" (a hung unit) or
// "started" (a unit that was not running).
type Act struct {
	At   time.Time `json:"at"`
	Node string    `json:"node"`
	Unit string    `json:"unit"`
	What string    `json:"what"`
}

// Usage is an agent's resources at the start and the end of the run.
type Usage struct {
	Node                   string `json:"node"`
	RSSStart, RSSEnd       int64  `json:"-"`
	FDsStart, FDsEnd       int    `json:"-"`
	GoroutinesStart, GoEnd int    `json:"-"`
	Started                int64  `json:"-"` // the process's start, unix seconds
	// Restarted: the agent restarted during the run (a fault), so start
	// and end are different processes.
	Restarted bool `json:"restarted"`
}

// Settled is the fleet after the last fault: how long every node took to
// run the head commit with every check ok, and what it said if not.
type Settled struct {
	Head  string        `json:"head"`
	After time.Duration `json:"after"`
	OK    bool          `json:"ok"`
	Fleet string        `json:"fleet,omitempty"`
}

// Breach is an invariant broken, when, and what the run shows of it.
type Breach struct {
	At        time.Time `json:"at"`
	Invariant string    `json:"invariant"`
	What      string    `json:"what"`
}

// Bounds the checker holds the run to.
const (
	settleBound  = 120 * time.Second // every node on the head commit and ok after the last fault
	failoverTail = 15 * time.Second  // a failover window lasts this long after its fault ends
	deliverGrace = 10 * time.Second  // a message acknowledged this close to the end may still be in flight
	// shadowGrace: a persistent session has shadows on the other brokers
	// within two of their agents' rounds (docs/sessions.md); a younger one
	// may die with its broker.
	shadowGrace = 30 * time.Second
	vipTarget   = 0.999
)

// Figures are what the report states.
type Figures struct {
	Faults       map[string]int `json:"faults"`
	Commits      map[string]int `json:"commits"`
	Sent         int            `json:"sent"`
	Acknowledged int            `json:"acknowledged"`
	Delivered    int            `json:"delivered"`
	Lost         int            `json:"lost"`
	LostKnown    int            `json:"lostKnownLimit"` // while the client's broker was down
	// SessionsLost: reconnects of a persistent subscriber that found no
	// session; SessionsYoung of those, the sessions younger than
	// shadowGrace when their connection broke (no shadow yet: the known
	// limit).
	SessionsLost  int           `json:"sessionsLost"`
	SessionsYoung int           `json:"sessionsLostYoung"`
	Duplicated    int           `json:"duplicated"`
	Reordered     int           `json:"reordered"`
	VIPAvailable  float64       `json:"vipAvailability"`
	LongestOutage time.Duration `json:"longestOutage"`
	OutageCause   string        `json:"outageCause,omitempty"`
	Settled       Settled       `json:"settled"`
}

// Check evaluates every invariant over the run.
func Check(r *Run) (Figures, []Breach) {
	f := Figures{Faults: map[string]int{}, Commits: map[string]int{}, Settled: r.Settled}
	for _, e := range r.Events {
		if e.Commit != "" {
			f.Commits[e.Commit]++
		} else {
			f.Faults[e.Fault]++
		}
	}
	var out []Breach
	out = append(out, r.checkMessages(&f)...)
	out = append(out, r.checkVIP(&f)...)
	out = append(out, r.checkBridges()...)
	out = append(out, r.checkActs()...)
	out = append(out, r.checkCommits()...)
	out = append(out, r.checkEnd()...)
	sort.Slice(out, func(i, j int) bool { return out[i].At.Before(out[j].At) })
	return f, out
}

// checkMessages: no QoS1 message acknowledged to its publisher is lost for
// a subscriber whose session was alive; losses while the publisher's or
// the subscriber's broker was down are the known limit, counted apart.
func (r *Run) checkMessages(f *Figures) []Breach {
	pubs := map[string]*Publisher{}
	for i := range r.Publishers {
		p := &r.Publishers[i]
		pubs[p.Name] = p
		f.Sent += p.Sent
		for _, t := range p.Acked {
			if !t.IsZero() && p.QoS > 0 {
				f.Acknowledged++
			}
		}
	}
	var out []Breach
	for _, s := range r.Subscribers {
		f.Delivered += s.Received
		f.Duplicated += s.Duplicates
		f.Reordered += s.Reordered
		if s.Persistent && len(s.Up) > 0 {
			for _, l := range s.SessionLost {
				broke := lastUpBefore(s.Up, l)
				f.SessionsLost++
				if broke.Sub(s.Up[0].From) < shadowGrace {
					f.SessionsYoung++
					continue
				}
				out = append(out, Breach{At: l, Invariant: "a persistent session survives its broker",
					What: fmt.Sprintf("%s reconnected at %s on %s and found no session (it was on %s; its connection broke at %s); open then: %s",
						s.Name, l.Sub(r.Start).Round(100*time.Millisecond), orNone(r.home(s.Name, l)), orNone(r.home(s.Name, broke)),
						broke.Sub(r.Start).Round(100*time.Millisecond), r.cause(broke.Add(-failoverTail), l))})
			}
		}
		p := pubs[s.Follows]
		if p == nil || p.QoS == 0 || len(s.Up) == 0 {
			continue
		}
		var first []time.Time // the first loss of each run of losses
		lost := 0
		for seq, t := range p.Acked {
			if t.IsZero() || seq < len(s.Got) && s.Got[seq] || !r.owed(s, seq, p.published(seq, t), t) {
				continue
			}
			if r.brokerDown(p.Name, t) || r.brokerDown(s.Name, t) {
				f.LostKnown++
				continue
			}
			f.Lost++
			lost++
			if lost == 1 || seq > 0 && (seq-1 >= len(s.Got) || s.Got[seq-1]) {
				first = append(first, t)
			}
		}
		for _, t := range first {
			out = append(out, Breach{At: t, Invariant: "no acknowledged QoS1 message lost",
				What: fmt.Sprintf("%s (%s, on %s) lost messages of %s (on %s) acknowledged from %s (%d in the run; its broker and the publisher's were up); bridged by %s; open then: %s",
					s.Name, map[bool]string{true: "persistent", false: "clean"}[s.Persistent], orNone(r.home(s.Name, t)), s.Follows, orNone(r.home(s.Follows, t)),
					t.Sub(r.Start).Round(100*time.Millisecond), lost, r.bridging(t), r.cause(t.Add(-failoverTail), t.Add(deliverGrace)))})
		}
	}
	return out
}

// owed reports whether subscriber s's session was alive for message seq,
// published at sent and acknowledged at t. A persistent one: for what was
// published after its first subscription (unless a connect found its
// session gone). A clean one: when one connection was up from before the
// message was published until its acknowledgement, and delivered a later
// message of the same publisher (seq below its Last).
//
// A message published before a subscription and acknowledged after it was
// routed before the subscription existed (the third hour counted 8 such as
// losses: a reconnect's SUBACK 0-0.1 s before the publisher's PUBACK).
// QoS1 promises a clean session nothing once its connection breaks, and
// a connection that dies without a FIN (a cut load balancer) is noticed
// only a keepalive later: what it did not deliver before its last message
// is lost by the protocol's rules, what it skipped before one it
// delivered is a loss.
func (r *Run) owed(s Subscriber, seq int, sent, t time.Time) bool {
	if r.End.Sub(t) < deliverGrace {
		return false // still in flight at the end
	}
	if s.Persistent {
		if sent.Before(s.Up[0].From) {
			return false
		}
		for _, l := range s.SessionLost {
			// Lost with the session: what came before the reconnect that
			// found it gone, since the last time it was up before.
			if t.Before(l) && !t.Before(lastUpBefore(s.Up, l)) {
				return false
			}
		}
		return true
	}
	for _, u := range s.Up {
		if !sent.Before(u.From) && t.Before(u.To) && seq < u.Last {
			return true
		}
	}
	return false
}

func lastUpBefore(up []Interval, t time.Time) time.Time {
	last := time.Time{}
	for _, u := range up {
		if u.To.Before(t) {
			last = u.To
		}
	}
	return last
}

// home is client's broker at t ("" unknown).
func (r *Run) home(client string, t time.Time) string {
	b := ""
	for _, h := range r.Homes[client] {
		if !h.At.After(t) {
			b = h.Broker
		}
	}
	return b
}

// brokerDown reports whether client's broker at t had a fault open around
// t (its failover window).
func (r *Run) brokerDown(client string, t time.Time) bool {
	b := r.home(client, t)
	if b == "" {
		return false
	}
	for _, e := range r.Events {
		if e.Node != b || e.Commit != "" || e.Unit != "" && e.Unit != "mosquitto" {
			continue
		}
		if within(t, e.Start.Add(-deliverGrace), e.End.Add(failoverTail)) {
			return true
		}
	}
	return false
}

func within(t, from, to time.Time) bool { return !t.Before(from) && t.Before(to) }

// checkVIP: at most one holder at every sample; served for vipTarget of the
// samples outside the failover windows of load balancer faults and of
// faults on the broker the probe lands on.
func (r *Run) checkVIP(f *Figures) []Breach {
	var out []Breach
	counted, served := 0, 0
	var outageFrom time.Time
	for i, s := range r.Samples {
		if len(s.VIPHolders) > 1 {
			out = append(out, Breach{At: s.At, Invariant: "at most one VIP holder", What: "held by " + strings.Join(s.VIPHolders, " and ")})
		}
		if !s.VIPServed && outageFrom.IsZero() {
			outageFrom = s.At
		}
		if (s.VIPServed || i == len(r.Samples)-1) && !outageFrom.IsZero() {
			if d := s.At.Sub(outageFrom); d > f.LongestOutage {
				f.LongestOutage, f.OutageCause = d, r.cause(outageFrom, s.At)
			}
			outageFrom = time.Time{}
		}
		if r.failover(s) {
			continue
		}
		counted++
		if s.VIPServed {
			served++
		}
	}
	f.VIPAvailable = 1
	if counted > 0 {
		f.VIPAvailable = float64(served) / float64(counted)
	}
	if f.VIPAvailable < vipTarget {
		out = append(out, Breach{At: r.Start, Invariant: "the VIP serves 99.9% of the time outside failovers",
			What: fmt.Sprintf("served %d of %d samples (%.3f%%); longest outage %s (%s)", served, counted, 100*f.VIPAvailable, f.LongestOutage, f.OutageCause)})
	}
	return out
}

// failover reports whether sample s falls in a failover window: a fault on
// a load balancer, or on the broker the probe landed on, open or just
// healed.
func (r *Run) failover(s Sample) bool {
	for _, e := range r.Events {
		if e.Commit != "" || !within(s.At, e.Start, e.End.Add(failoverTail)) {
			continue
		}
		if e.Group(r.Config.Nodes) == "lb" || e.Node != "" && e.Node == s.VIPBroker {
			return true
		}
	}
	return false
}

// cause names the events open between from and to.
func (r *Run) cause(from, to time.Time) string {
	var c []string
	for _, e := range r.Events {
		if e.Start.Before(to) && e.End.Add(failoverTail).After(from) {
			c = append(c, e.String())
		}
	}
	if len(c) == 0 {
		return "no fault open"
	}
	return strings.Join(c, "; ")
}

// published is when message seq was handed to the client (ack: when it
// was acknowledged, for runs that did not record it).
func (p *Publisher) published(seq int, ack time.Time) time.Time {
	if seq < len(p.Published) && !p.Published[seq].IsZero() {
		return p.Published[seq]
	}
	return ack
}

// bridging says which bridge node bridged each broker at the sample
// closest to t.
func (r *Run) bridging(t time.Time) string {
	i := sort.Search(len(r.Samples), func(i int) bool { return !r.Samples[i].At.Before(t) })
	if i == len(r.Samples) {
		i--
	}
	if i < 0 {
		return "no sample"
	}
	var out []string
	for b, nodes := range r.Samples[i].Bridges {
		out = append(out, b+" by "+strings.Join(nodes, "+"))
	}
	slices.Sort(out)
	if len(out) == 0 {
		return "no bridge seen"
	}
	return strings.Join(out, ", ")
}

// flapWithin: a broker's bridge session that goes from one bridge node to
// another and back within this long was taken in turn by two nodes that
// both bridge (they connect with the same client id, so the broker never
// shows both at once). A fail-over moves it once; the old master comes
// back as a standby.
const flapWithin = 15 * time.Second

// checkBridges: at most one bridge connected to each broker at any sample,
// and no broker's bridge session taken back and forth (a tug of war: two
// bridge nodes bridging, one connection at a time).
func (r *Run) checkBridges() []Breach {
	var out []Breach
	type move struct {
		at       time.Time
		from, to string
	}
	moves := map[string][]move{}
	last := map[string]string{}
	for _, s := range r.Samples {
		for b, nodes := range s.Bridges {
			if len(nodes) > 1 {
				out = append(out, Breach{At: s.At, Invariant: "at most one bridge per broker", What: fmt.Sprintf("%s bridged by %s", b, strings.Join(nodes, " and "))})
			}
			if len(nodes) != 1 {
				continue
			}
			if l := last[b]; l != "" && l != nodes[0] {
				moves[b] = append(moves[b], move{s.At, l, nodes[0]})
			}
			last[b] = nodes[0]
		}
	}
	brokers := slices.Sorted(maps.Keys(moves))
	for _, b := range brokers {
		m := moves[b]
		for i := 0; i+1 < len(m); {
			if m[i+1].to != m[i].from || m[i+1].at.Sub(m[i].at) > flapWithin {
				i++
				continue
			}
			// One episode: every back-and-forth until a gap.
			j := i + 1
			for j+1 < len(m) && m[j+1].at.Sub(m[j].at) <= flapWithin {
				j++
			}
			out = append(out, Breach{At: m[i].at, Invariant: "at most one bridge per broker",
				What: fmt.Sprintf("%s's bridge session taken in turn by %s and %s, %d times in %s from %s (two nodes bridging; the broker keeps one connection per client id); open then: %s",
					b, m[i].from, m[i].to, j-i+1, m[j].at.Sub(m[i].at).Round(time.Second), m[i].at.Sub(r.Start).Round(time.Second), r.cause(m[i].at.Add(-failoverTail), m[j].at))})
			i = j + 1
		}
	}
	return out
}

// checkActs: an agent kills or starts a daemon only when a fault of that
// daemon (or its node) was open: never one that served.
func (r *Run) checkActs() []Breach {
	var out []Breach
	for _, a := range r.Acts {
		i := slices.IndexFunc(r.Events, func(e Done) bool {
			if e.Commit != "" || e.Node != a.Node || !within(a.At, e.Start, e.End.Add(failoverTail)) {
				return false
			}
			return e.Unit == a.Unit || e.Fault == PowerOff || e.Fault == Cut
		})
		if i < 0 {
			out = append(out, Breach{At: a.At, Invariant: "the agent acts on failed daemons only",
				What: fmt.Sprintf("%s %s %s with no fault of it open", a.Node, a.What, a.Unit)})
		}
	}
	return out
}

// checkCommits: each commit came to what it would alone: a good one
// applied, a bad one refused, on every node that answered.
func (r *Run) checkCommits() []Breach {
	var out []Breach
	for _, e := range r.Events {
		if e.Commit == "" || e.Expect == "" {
			continue
		}
		nodes := make([]string, 0, len(e.Outcome))
		for n := range e.Outcome {
			nodes = append(nodes, n)
		}
		sort.Strings(nodes)
		for _, n := range nodes {
			o := e.Outcome[n]
			bad := e.Expect == "applied" && strings.HasPrefix(o, "refused") || e.Expect == "refused" && o == "applied"
			if bad {
				out = append(out, Breach{At: e.Start, Invariant: "a commit converges or is refused as it would alone",
					What: fmt.Sprintf("commit %s (want %s) on %s: %s", e.Commit, e.Expect, n, o)})
			}
		}
	}
	return out
}

// checkEnd: the fleet settled on the head commit, no agent leaked or
// failed inside.
func (r *Run) checkEnd() []Breach {
	var out []Breach
	if !r.Settled.OK || r.Settled.After > settleBound {
		out = append(out, Breach{At: r.End, Invariant: fmt.Sprintf("every node on the head commit and ok within %s of the last fault", settleBound),
			What: fmt.Sprintf("after %s: %s", r.Settled.After.Round(time.Second), r.Settled.Fleet)})
	}
	for _, u := range r.Agents {
		if u.Restarted {
			continue
		}
		if u.RSSEnd > u.RSSStart*3/2+16<<20 || u.FDsEnd > u.FDsStart+32 || u.GoEnd > u.GoroutinesStart+20 {
			out = append(out, Breach{At: r.End, Invariant: "no agent leaks",
				What: fmt.Sprintf("%s: RSS %d -> %d MiB, fds %d -> %d, goroutines %d -> %d", u.Node, u.RSSStart>>20, u.RSSEnd>>20,
					u.FDsStart, u.FDsEnd, u.GoroutinesStart, u.GoEnd)})
		}
	}
	for _, e := range r.Errors {
		out = append(out, Breach{At: r.End, Invariant: "no agent panics or fails inside", What: e})
	}
	return out
}
