package sessions

import (
	"slices"
	"time"
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
	Received time.Time // this node's clock
	// Live: it superseded an earlier listing of the same broker received
	// by this agent, so that broker's agent is publishing now (a retained
	// listing received alone may be a stale one a broker brought back).
	Live bool
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
	return Listed{Clients: l.Clients, Received: now, Live: prevAt != 0}, l.At, true
}

// Policy decides which sessions of this broker to drain: those of clients
// a peer lists as connected there that are not connected here, have stayed
// away Quiet, and left before the peer's listing came. It remembers the
// departure it judged, so one departure is drained once (the drain's own
// visit is the next departure).
type Policy struct {
	ended map[string]time.Time // id -> the departure from here it was drained after
}

// NewPolicy is a policy that has drained nothing.
func NewPolicy() *Policy { return &Policy{ended: map[string]time.Time{}} }

// Decide returns the client ids whose session here to drain now, sorted.
func (p *Policy) Decide(t *Tracker, peers map[string]Listed, now time.Time) []string {
	listed := map[string]bool{}
	var out []string
	for _, l := range peers {
		if !l.Live || now.Sub(l.Received) > Fresh {
			continue
		}
		for _, id := range l.Clients {
			listed[id] = true
			away, since := t.Away(id)
			switch {
			case !away, !t.Holds(id), p.ended[id].Equal(since):
			case now.Sub(since) < Quiet:
			case !l.Received.After(since):
				// The listing is older than the client's departure from
				// here: it may be stale (a dead peer's last word).
			default:
				if !slices.Contains(out, id) {
					out = append(out, id)
				}
			}
		}
	}
	// Forget what no peer lists any more.
	for id := range p.ended {
		if !listed[id] {
			delete(p.ended, id)
		}
	}
	slices.Sort(out)
	return out
}

// Drained records that the session of id here was drained, after its
// client's departure as t knows it.
func (p *Policy) Drained(t *Tracker, id string) {
	_, since := t.Away(id)
	p.ended[id] = since
}
