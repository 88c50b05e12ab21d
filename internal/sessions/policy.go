package sessions

import (
	"maps"
	"slices"
	"strings"
	"time"
	"unicode/utf8"
)

// Quiet is how long a client must have stayed away from this broker before
// its session here is drained, and so the period of the drains (a drain's
// own connection counts as a visit): a client that just dropped is most
// likely coming back here (the ring did not move), and a peer's listing may
// still name it for a few seconds after it left that peer.
const Quiet = 30 * time.Second

// Fresh is how recently a peer's listing must have come to count: it is
// republished every Republish while its agent runs.
const Fresh = 3 * Republish

// Listed is a peer broker's listing as this agent received it.
type Listed struct {
	Clients  []string
	Subs     map[string]Subs
	Ended    map[string]EndedOn
	Received time.Time // this node's clock
	// Live: it superseded an earlier listing of the same broker received
	// by this agent, so that broker's agent is publishing now (a retained
	// listing received alone may be a stale one a broker brought back).
	Live bool
}

// EndedOn is a session end a peer listed: when it ended (unix ms, the
// peer's clock) and when this agent first received it (its clock).
type EndedOn struct {
	At   int64
	Seen time.Time
}

// Receive is the listing of a peer after l came: l supersedes the one it
// had (prev) when it is newer; an empty payload (the peer's will, or its
// agent stopped) clears it.
func Receive(prev Listed, l Listing, now time.Time, prevAt int64) (Listed, int64, bool) {
	if l.At == 0 {
		return Listed{}, 0, true
	}
	if l.At <= prevAt {
		return prev, prevAt, false
	}
	ended := map[string]EndedOn{}
	for id, at := range l.Ended {
		e := EndedOn{At: at, Seen: now}
		if p, ok := prev.Ended[id]; ok && p.At == at {
			e.Seen = p.Seen
		}
		ended[id] = e
	}
	return Listed{Clients: l.Clients, Subs: l.Subs, Ended: ended, Received: now, Live: prevAt != 0}, l.At, true
}

// Visit is what the agent does to this broker's session of one client
// connected to a peer broker: it connects under the client's id with clean
// session off, makes the session's subscriptions those the peer listed,
// acknowledges what the session queued, and leaves. On a broker that held
// no session for the id, that makes its shadow.
type Visit struct {
	ID          string
	Peer        string // the broker that lists the client connected
	Subscribe   Subs   // filters to subscribe (new, or at another QoS)
	Unsubscribe []string
	Shadow      bool // this broker held no session for the id
}

// Policy decides which sessions of this broker to visit: those of clients
// a peer lists as connected there that are not connected here and either
// have no session here yet (a shadow is made at once, so this broker
// queues for the client should its broker fail) or, on a live listing,
// have stayed away Quiet and left before the listing came (their copy is
// drained). It
// remembers the departure it judged, so one departure is visited once
// (the visit itself is the next departure).
type Policy struct {
	ended map[string]time.Time // id -> the departure from here it was drained after
}

// NewPolicy is a policy that has drained nothing.
func NewPolicy() *Policy { return &Policy{ended: map[string]time.Time{}} }

// Decide returns the visits due now, sorted by client id, and the listed
// filters no shadow can hold (Shadowable), by reason.
func (p *Policy) Decide(t *Tracker, peers map[string]Listed, now time.Time) ([]Visit, map[string]int) {
	listed := map[string]bool{}
	skipped := map[string]int{}
	byID := map[string]Visit{}
	names := slices.Sorted(maps.Keys(peers))
	for _, peer := range names {
		l := peers[peer]
		if now.Sub(l.Received) > Fresh {
			continue
		}
		for _, id := range l.Clients {
			listed[id] = true
			if _, ok := byID[id]; ok {
				continue
			}
			// A listing not republished yet (a retained one, maybe stale)
			// makes shadows, never drains: a shadow takes nothing from
			// anyone, and a broker that just started (added by a commit)
			// has them before clients land on it.
			if !l.Live && t.Holds(id) {
				continue
			}
			away, since := t.Away(id)
			if !away {
				continue // connected here: never taken over
			}
			want := Subs{}
			for f, q := range l.Subs[id] {
				if why := Shadowable(f, q); why != "" {
					skipped[why]++
					continue
				}
				want[f] = q
			}
			v := Visit{ID: id, Peer: peer}
			have := t.Subs(id)
			for f, q := range want {
				if hq, ok := have[f]; !ok || hq != q {
					if v.Subscribe == nil {
						v.Subscribe = Subs{}
					}
					v.Subscribe[f] = q
				}
			}
			for f := range have {
				if _, ok := want[f]; !ok {
					v.Unsubscribe = append(v.Unsubscribe, f)
				}
			}
			slices.Sort(v.Unsubscribe)
			switch {
			case !t.Holds(id):
				if len(want) == 0 {
					continue // nothing to queue for
				}
				v.Shadow = true
			case p.ended[id].Equal(since):
			case now.Sub(since) < Quiet:
			case !l.Received.After(since):
				// The listing is older than the client's departure from
				// here: it may be stale (a dead peer's last word).
			default:
				byID[id] = v
				continue
			}
			if v.Shadow {
				byID[id] = v
			}
		}
	}
	// Forget what no peer lists any more.
	for id := range p.ended {
		if !listed[id] {
			delete(p.ended, id)
		}
	}
	out := make([]Visit, 0, len(byID))
	for _, id := range slices.Sorted(maps.Keys(byID)) {
		out = append(out, byID[id])
	}
	return out, skipped
}

// Ends returns the client ids whose session here to end, sorted: a live
// peer listed its end (a clean connect there, or its expiry), its client
// (not the agent's visits) left here before both that end and its news
// came, and no live peer lists it connected. MQTT discards a session on a clean connect; the
// copies here would otherwise queue for it for ever.
func Ends(t *Tracker, peers map[string]Listed, now time.Time) []string {
	connected := map[string]bool{}
	for _, l := range peers {
		if l.Live && now.Sub(l.Received) <= Fresh {
			for _, id := range l.Clients {
				connected[id] = true
			}
		}
	}
	var out []string
	for _, l := range peers {
		if !l.Live || now.Sub(l.Received) > Fresh {
			continue
		}
		for id, e := range l.Ended {
			away, _ := t.Away(id)
			if !away || !t.Holds(id) || connected[id] || slices.Contains(out, id) {
				continue
			}
			// Both clocks: the news came after the client left here, and
			// the end (the peer's clock) too; a step of either clock
			// leaves the copy rather than end a newer session. The log's
			// times are whole seconds: the same second counts as before.
			if left := t.Left(id); !left.IsZero() && (!left.Before(e.Seen) || left.UnixMilli() > e.At) {
				continue
			}
			out = append(out, id)
		}
	}
	slices.Sort(out)
	return out
}

// Shadowable says why a listed filter cannot be held by a shadow ("": it
// can): a shared subscription would make the shadow a member of the group
// here and take its messages from the live members; $mqha is the cluster's
// own; anything else must be a valid MQTT filter at QoS 0-2.
func Shadowable(filter string, qos byte) string {
	switch {
	case strings.HasPrefix(filter, "$share/"):
		return Shared
	case strings.HasPrefix(filter, "$mqha/"):
		return Reserved
	case qos > 2, !validFilter(filter):
		return Invalid
	}
	return ""
}

// Why Shadowable refuses a filter.
const (
	Shared   = "shared subscription"
	Reserved = "reserved topic"
	Invalid  = "invalid filter"
)

// validFilter: MQTT's rules for a topic filter (UTF-8 without NUL, at most
// 65535 bytes; '#' alone and last in its level; '+' alone in its level).
func validFilter(f string) bool {
	if f == "" || len(f) > 65535 || !utf8.ValidString(f) || strings.ContainsRune(f, 0) {
		return false
	}
	levels := strings.Split(f, "/")
	for i, l := range levels {
		if strings.Contains(l, "#") && (l != "#" || i != len(levels)-1) {
			return false
		}
		if strings.Contains(l, "+") && l != "+" {
			return false
		}
	}
	return true
}

// Drained records that the session of id here was visited, after its
// client's departure as t knows it.
func (p *Policy) Drained(t *Tracker, id string) {
	_, since := t.Away(id)
	p.ended[id] = since
}
