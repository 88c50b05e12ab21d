// Package sessions keeps the copies of a persistent MQTT session that a
// client left on other brokers short: a client that moved to another
// broker (its broker failed, the load balancers' ring moved) leaves its old
// session behind, which queues everything it subscribed to and hands it
// all over, late and duplicated, when the client comes back (the soak's
// first hour: 299,024 duplicates up to 15 minutes late). Each broker's
// agent learns from mosquitto's journal which clients are connected to its
// broker, lists the persistent ones for the other brokers, and drains its
// own copy of a session whose client is connected to another broker and
// stays away from this one: it takes the copy over, acknowledges what it
// queued, and leaves it, subscriptions kept. The copy is not ended: when
// the client comes back it finds its session, with what was published
// since the last drain, so a move back loses nothing (it costs at most a
// drain period of duplicates).
//
//   - tracker.go: Tracker, who is connected to this broker, from
//     mosquitto's connection log lines, and which sessions it holds.
//   - policy.go: Policy, which copies to drain now.
//   - listing.go: Listing, what a broker's agent publishes.
package sessions

import (
	"maps"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Subs are a session's subscriptions: topic filter -> QoS.
type Subs map[string]byte

// client is what the tracker knows of one client id on this broker.
type client struct {
	connected  bool
	persistent bool      // its last connect kept a session (clean session off, or MQTT 5)
	at         time.Time // its last connect or disconnect
	subs       Subs      // its session's subscriptions here, as logged (log_type subscribe)
	user       string    // the connection's user (its certificate's name)
	left       time.Time // the client's own last departure (not a visit of the agent)
	// tombstone: a clean connect replaced a persistent session, or it
	// expired: kept after its disconnect to say this broker holds no
	// session for the id (ended: since when), which the listing tells the
	// other brokers for EndedFor, so that they end their copies.
	tombstone bool
	ended     time.Time
}

// Tracker follows mosquitto 2.0's connection lines ("New client connected
// from ... as ID (pP, cC, kK...)", "Client ID closed its connection." and
// the other disconnect lines) and subscription lines ("ID QOS FILTER",
// "ID FILTER") from the start of the running mosquitto, and knows which
// clients are connected and what each session here subscribed. It is not
// safe for concurrent use.
type Tracker struct {
	// Self is the user this node's agent connects as: its connections
	// under a client's id are visits (drains, shadows), not the client.
	Self    string
	clients map[string]*client
	start   time.Time // the running mosquitto's start as seen in its log (zero: not seen)
	skipped int       // connection lines whose client id cannot be told apart (a space)
}

// NewTracker starts a tracker that has seen nothing.
func NewTracker() *Tracker { return &Tracker{clients: map[string]*client{}} }

var (
	// mosquitto's log timestamp (log_timestamp true, the default), in
	// seconds of the node's clock.
	stamp = regexp.MustCompile(`^(\d+): `)
	// The client id cannot contain " (p" in a line we trust: ids with a
	// space are skipped.
	connected = regexp.MustCompile(`^New client connected from \S+ as (\S+) \(p(\d), c([01]), k\d+(?:, u'(.*)')?\)\.$`)
	// A duplicate's takeover logs "already connected" and then the new
	// connection's line: the id stays connected.
	disconnects = []string{" closed its connection.", " disconnected.", " has exceeded timeout, disconnecting.",
		" disconnected, not authorised.", " been disconnected by administrative action."}
	disconnectsMid = []string{" disconnected due to ", " disconnected: "}
)

// Observe takes one line of mosquitto's log (with its timestamp prefix).
// A line without a timestamp is taken at now.
func (t *Tracker) Observe(line string, now time.Time) {
	at := now
	if m := stamp.FindStringSubmatch(line); m != nil {
		if s, err := strconv.ParseInt(m[1], 10, 64); err == nil {
			at = time.Unix(s, 0)
		}
		line = line[len(m[0]):]
	}
	switch {
	case strings.HasPrefix(line, "mosquitto version ") && strings.HasSuffix(line, " starting"):
		// A new mosquitto: nobody is connected to it yet.
		for id, c := range t.clients {
			if !c.persistent {
				delete(t.clients, id)
				continue
			}
			c.connected, c.at = false, at
		}
		t.start = at
	case strings.HasPrefix(line, "New client connected from "):
		m := connected.FindStringSubmatch(line)
		if m == nil {
			t.skipped++
			return
		}
		old := t.clients[m[1]]
		c := &client{connected: true, persistent: m[3] == "0" || m[2] == "5", at: at, user: m[4]}
		if old != nil {
			c.left = old.left
		}
		c.tombstone = !c.persistent && old != nil && (old.persistent || old.tombstone)
		if c.tombstone {
			c.ended = at
		}
		if c.persistent && m[3] == "0" && old != nil && old.persistent {
			c.subs = old.subs // the session resumed, its subscriptions with it
		}
		t.clients[m[1]] = c
	case strings.HasPrefix(line, "Expiring client ") && strings.HasSuffix(line, " due to timeout."):
		id, ok := noSpace(strings.TrimSuffix(strings.TrimPrefix(line, "Expiring client "), " due to timeout."))
		if !ok {
			return
		}
		t.clients[id] = &client{tombstone: true, ended: at, at: at}
	case strings.HasPrefix(line, "Client "), strings.HasPrefix(line, "Bad socket read/write on client "):
		id, ok := disconnected(line)
		if !ok {
			return
		}
		c := t.clients[id]
		if c == nil {
			return // connected before the tracker's start: its session, if any, is unknown
		}
		if !c.persistent && !c.tombstone {
			delete(t.clients, id) // a clean session ends with its connection
			return
		}
		if c.connected && c.user != t.Self {
			c.left = at
		}
		c.connected, c.at = false, at
	default:
		t.subscription(line)
	}
}

// subscription takes a subscription line of a connected client: "ID QOS
// FILTER" (log_type subscribe; logged once the ACL allowed it) or "ID
// FILTER" (log_type unsubscribe). Lines of ids that are not connected are
// other lines. An unsubscribe of a filter that starts with "0 ", "1 " or
// "2 " reads as a subscribe: the line does not say which it is.
func (t *Tracker) subscription(line string) {
	id, rest, ok := strings.Cut(line, " ")
	c := t.clients[id]
	if !ok || c == nil || !c.connected {
		return
	}
	if len(rest) > 2 && rest[0] >= '0' && rest[0] <= '2' && rest[1] == ' ' {
		if c.subs == nil {
			c.subs = Subs{}
		}
		c.subs[rest[2:]] = rest[0] - '0'
		return
	}
	delete(c.subs, rest)
}

// disconnected is the client id of a disconnect line.
func disconnected(line string) (string, bool) {
	if rest, ok := strings.CutPrefix(line, "Bad socket read/write on client "); ok {
		i := strings.LastIndex(rest, ": ")
		if i < 0 {
			return "", false
		}
		return noSpace(rest[:i])
	}
	rest := strings.TrimPrefix(line, "Client ")
	for _, s := range disconnects {
		if id, ok := strings.CutSuffix(rest, s); ok {
			return noSpace(id)
		}
	}
	for _, s := range disconnectsMid {
		if i := strings.LastIndex(rest, s); i > 0 {
			return noSpace(rest[:i])
		}
	}
	return "", false
}

func noSpace(id string) (string, bool) { return id, id != "" && !strings.Contains(id, " ") }

// Started reports whether the tracker saw the running mosquitto start, so
// that it knows every client connected to it.
func (t *Tracker) Started() bool { return !t.start.IsZero() }

// Here are the clients connected to this broker with a persistent session,
// sorted.
func (t *Tracker) Here() []string {
	var out []string
	for id, c := range t.clients {
		if c.connected && c.persistent {
			out = append(out, id)
		}
	}
	slices.Sort(out)
	return out
}

// Away reports whether client id is not connected to this broker, and
// since when: its disconnect, or the running mosquitto's start for a
// client not seen since. Before the tracker saw mosquitto start it knows
// of no client that it is away.
func (t *Tracker) Away(id string) (bool, time.Time) {
	c := t.clients[id]
	if c == nil || !t.Started() {
		return t.Started(), t.start
	}
	if c.connected {
		return false, c.at
	}
	if c.at.Before(t.start) {
		return true, t.start
	}
	return true, c.at
}

// Left is when client id itself last left this broker (zero: not since
// the tracker started, or only the agent's visits).
func (t *Tracker) Left(id string) time.Time {
	if c := t.clients[id]; c != nil {
		return c.left
	}
	return time.Time{}
}

// Holds reports whether this broker holds a session for client id, as far
// as the agent knows: after a persistent connect here (seen, or restored),
// until a clean connect under the id.
func (t *Tracker) Holds(id string) bool {
	c := t.clients[id]
	return c != nil && c.persistent
}

// Subs are the subscriptions of the session this broker holds for id, as
// logged (nil: none known).
func (t *Tracker) Subs(id string) Subs {
	c := t.clients[id]
	if c == nil || !c.persistent {
		return nil
	}
	return maps.Clone(c.subs)
}

// Held are the sessions this broker holds, with their subscriptions: what
// the agent keeps across its restarts (Restore), since mosquitto restores
// the sessions from its persistence and does not log them again.
func (t *Tracker) Held() map[string]Subs {
	out := map[string]Subs{}
	for id, c := range t.clients {
		if c.persistent {
			out[id] = maps.Clone(c.subs)
		}
	}
	return out
}

// Restore takes the sessions an earlier run of the agent knew this broker
// holds; their clients count as away since mosquitto's start until seen.
func (t *Tracker) Restore(held map[string]Subs) {
	for id, subs := range held {
		if t.clients[id] == nil {
			t.clients[id] = &client{persistent: true, at: t.start, subs: maps.Clone(subs)}
		}
	}
}

// EndedFor is how long a broker's listing names the sessions that ended on
// it (a clean connect, or their expiry), and how long the tracker keeps
// knowing it held none.
const EndedFor = 10 * time.Minute

// Ended are the client ids whose session here ended within EndedFor of
// now, with when (unix ms of this node's clock); older ends are forgotten.
func (t *Tracker) Ended(now time.Time) map[string]int64 {
	out := map[string]int64{}
	for id, c := range t.clients {
		if !c.tombstone {
			continue
		}
		if now.Sub(c.ended) > EndedFor {
			if !c.connected {
				delete(t.clients, id)
			}
			continue
		}
		out[id] = c.ended.UnixMilli()
	}
	return out
}

// Skipped counts the connection lines whose client id has a space (it
// cannot be told from the rest of the line): their sessions are left alone.
func (t *Tracker) Skipped() int { return t.skipped }
