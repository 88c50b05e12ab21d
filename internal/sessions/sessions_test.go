package sessions

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"
)

// Lines as mosquitto 2.0.11 logs them (its source, and the lab's journals).
func feed(t *Tracker, lines ...string) {
	for _, l := range lines {
		t.Observe(l, time.Unix(999, 0))
	}
}

func TestTrackerConnections(t *testing.T) {
	for _, tt := range []struct {
		name  string
		lines []string
		here  []string
		away  map[string]int64 // id -> since (unix s); -1: connected
	}{
		{"persistent connects and stays", []string{
			"1000: mosquitto version 2.0.11 starting",
			"1001: New client connected from 10.0.0.1:4000 as p1 (p2, c0, k30, u'client').",
		}, []string{"p1"}, map[string]int64{"p1": -1, "unknown": 1000}},
		{"clean clients are not listed, mqtt 5 ones are", []string{
			"1000: mosquitto version 2.0.11 starting",
			"1001: New client connected from 10.0.0.1:4000 as clean (p2, c1, k30, u'client').",
			"1001: New client connected from [::1]:4000 as v5 (p5, c1, k30).",
		}, []string{"v5"}, map[string]int64{"clean": -1}},
		{"every disconnect line", []string{
			"1000: mosquitto version 2.0.11 starting",
			"1001: New client connected from 10.0.0.1:1 as a (p2, c0, k30, u'client').",
			"1001: New client connected from 10.0.0.1:2 as b (p2, c0, k30, u'client').",
			"1001: New client connected from 10.0.0.1:3 as c (p2, c0, k30, u'client').",
			"1001: New client connected from 10.0.0.1:4 as d (p2, c0, k30, u'client').",
			"1001: New client connected from 10.0.0.1:5 as e (p2, c0, k30, u'client').",
			"1001: New client connected from 10.0.0.1:6 as f (p2, c0, k30, u'client').",
			"1002: Client a closed its connection.",
			"1003: Client b disconnected.",
			"1004: Client c has exceeded timeout, disconnecting.",
			"1005: Client d disconnected due to protocol error.",
			"1006: Bad socket read/write on client e: Connection reset",
			"1007: Client f disconnected: Broken pipe.",
		}, nil, map[string]int64{"a": 1002, "b": 1003, "c": 1004, "d": 1005, "e": 1006, "f": 1007}},
		{"a takeover keeps the id connected", []string{
			"1000: mosquitto version 2.0.11 starting",
			"1001: New client connected from 10.0.0.1:1 as a (p2, c0, k30, u'client').",
			"1002: Client a already connected, closing old connection.",
			"1002: New client connected from 10.0.0.1:2 as a (p2, c0, k30, u'client').",
		}, []string{"a"}, map[string]int64{"a": -1}},
		{"a restart disconnects everyone", []string{
			"1000: mosquitto version 2.0.11 starting",
			"1001: New client connected from 10.0.0.1:1 as a (p2, c0, k30, u'client').",
			"1100: mosquitto version 2.0.11 starting",
		}, nil, map[string]int64{"a": 1100, "b": 1100}},
		{"ids with a space are skipped", []string{
			"1000: mosquitto version 2.0.11 starting",
			"1001: New client connected from 10.0.0.1:1 as a b (p2, c0, k30, u'client').",
			"1002: Client a b closed its connection.",
		}, nil, map[string]int64{"a": 1000, "a b": 1000}},
		{"bridges are not clients", []string{
			"1000: mosquitto version 2.0.11 starting",
			"1001: New bridge connected from 10.0.0.20:1 as mqtt-bridge-to-broker1 (p2, c0, k10, u'bridge').",
		}, nil, map[string]int64{"mqtt-bridge-to-broker1": 1000}},
		{"before the start nothing is known", []string{
			"1001: New client connected from 10.0.0.1:1 as a (p2, c0, k30, u'client').",
		}, []string{"a"}, map[string]int64{"b": -2}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			tr := NewTracker()
			feed(tr, tt.lines...)
			if got := tr.Here(); !slices.Equal(got, tt.here) {
				t.Errorf("here %v, want %v", got, tt.here)
			}
			for id, want := range tt.away {
				away, since := tr.Away(id)
				switch want {
				case -1:
					if away {
						t.Errorf("%s away, want connected", id)
					}
				case -2:
					if away {
						t.Errorf("%s away before the tracker saw mosquitto start", id)
					}
				default:
					if !away || since.Unix() != want {
						t.Errorf("%s: away %v since %d, want since %d", id, away, since.Unix(), want)
					}
				}
			}
		})
	}
	tr := NewTracker()
	feed(tr, "1001: New client connected from 10.0.0.1:1 as a b (p2, c0, k30, u'client').")
	if tr.Skipped() != 1 {
		t.Errorf("skipped %d, want 1", tr.Skipped())
	}
}

// ids are the client ids of visits.
func ids(v []Visit, _ map[string]int) string {
	var out []string
	for _, x := range v {
		out = append(out, x.ID)
	}
	return strings.Join(out, " ")
}

func TestPolicy(t *testing.T) {
	start := time.Unix(1000, 0)
	tr := NewTracker()
	feed(tr, "1000: mosquitto version 2.0.11 starting",
		"1001: New client connected from 10.0.0.1:1 as here (p2, c0, k30, u'client').",
		"1001: New client connected from 10.0.0.1:2 as left (p2, c0, k30, u'client').",
		"1050: Client left closed its connection.",
		"1001: New client connected from 10.0.0.1:3 as leftlong (p2, c0, k30, u'client').",
		"1010: Client leftlong closed its connection.")
	tr.Restore(map[string]Subs{"restored": nil, "here": nil})
	at := func(s int64) time.Time { return time.Unix(s, 0) }
	for _, tt := range []struct {
		name  string
		peers map[string]Listed
		now   time.Time
		want  string
	}{
		{"nothing listed", nil, at(2000), ""},
		{"connected here is never ended", map[string]Listed{"b": {[]string{"here"}, nil, nil, at(1100), true}}, at(1120), ""},
		{"away less than Quiet", map[string]Listed{"b": {[]string{"left", "leftlong"}, nil, nil, at(1060), true}}, at(1070), "leftlong"},
		{"away long enough", map[string]Listed{"b": {[]string{"left", "leftlong"}, nil, nil, at(1060), true}}, at(1090), "left leftlong"},
		{"a listing older than the departure", map[string]Listed{"b": {[]string{"left"}, nil, nil, at(1040), true}}, at(1200), ""},
		{"unknown here: held nowhere here", map[string]Listed{"b": {[]string{"other"}, nil, nil, at(1001), true}}, at(start.Add(Quiet).Unix() + 1), ""},
		{"restored: away since the start", map[string]Listed{"b": {[]string{"restored"}, nil, nil, at(1001), true}}, at(start.Add(Quiet).Unix() + 1), "restored"},
		{"listed by two peers, ended once", map[string]Listed{"b": {[]string{"left"}, nil, nil, at(1100), true}, "c": {[]string{"left"}, nil, nil, at(1100), true}}, at(1120), "left"},
		{"a listing not republished yet", map[string]Listed{"b": {[]string{"left"}, nil, nil, at(1100), false}}, at(1120), ""},
		{"a listing no longer republished", map[string]Listed{"b": {[]string{"left"}, nil, nil, at(1100), true}}, at(1100).Add(Fresh + time.Second), ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			p := NewPolicy()
			if got := ids(p.Decide(tr, tt.peers, tt.now)); got != tt.want {
				t.Errorf("ended %q, want %q", got, tt.want)
			}
		})
	}

	// Once ended, a session is not ended again until its client came back
	// here and left again.
	p := NewPolicy()
	peers := map[string]Listed{"b": {[]string{"left"}, nil, nil, at(1060), true}}
	if got := ids(p.Decide(tr, peers, at(1100))); got != "left" {
		t.Fatalf("ended %v, want left", got)
	}
	p.Drained(tr, "left")
	peers["b"] = Listed{[]string{"left"}, nil, nil, at(1199), true}
	if got := ids(p.Decide(tr, peers, at(1200))); got != "" {
		t.Errorf("ended %v again", got)
	}
	feed(tr, "1300: New client connected from 10.0.0.1:2 as left (p2, c0, k30, u'client').",
		"1301: Client left closed its connection.")
	peers["b"] = Listed{[]string{"left"}, nil, nil, at(1302), true}
	p.Decide(tr, peers, at(1302))
	peers["b"] = Listed{[]string{"left"}, nil, nil, at(1400), true}
	if got := ids(p.Decide(tr, peers, at(1400))); got != "left" {
		t.Errorf("ended %v after the client came back and left, want left", got)
	}

	// The drain is a visit: the next drain comes Quiet after it.
	p.Drained(tr, "left")
	feed(tr, "1401: New client connected from 127.0.0.1:9 as left (p2, c0, k30, u'broker1').",
		"1401: Client left disconnected.")
	peers["b"] = Listed{[]string{"left"}, nil, nil, at(1420), true}
	if got := ids(p.Decide(tr, peers, at(1420))); got != "" {
		t.Errorf("drained %v again within Quiet of the last drain", got)
	}
	peers["b"] = Listed{[]string{"left"}, nil, nil, at(1440), true}
	if got := ids(p.Decide(tr, peers, at(1440))); got != "left" {
		t.Errorf("drained %v Quiet after the last drain, want left", got)
	}
	// A clean connect under the id ended the session: nothing to drain.
	feed(tr, "1441: New client connected from 10.0.0.1:9 as left (p2, c1, k30, u'client').",
		"1441: Client left disconnected.")
	peers["b"] = Listed{[]string{"left"}, nil, nil, at(1500), true}
	if got := ids(p.Decide(tr, peers, at(1500))); got != "" {
		t.Errorf("drained %v after a clean connect ended the session", got)
	}

	// A tracker that did not see mosquitto start ends nothing.
	blind := NewTracker()
	blind.Restore(map[string]Subs{"x": nil})
	if got := ids(NewPolicy().Decide(blind, map[string]Listed{"b": {[]string{"x"}, nil, nil, at(5000), true}}, at(9000))); got != "" {
		t.Errorf("ended %v without knowing who is connected", got)
	}
}

// What the agent keeps across its restarts: the sessions held, not the
// clean clients nor those a clean connect ended.
func TestTrackerHeld(t *testing.T) {
	tr := NewTracker()
	feed(tr, "1000: mosquitto version 2.0.11 starting",
		"1001: New client connected from 10.0.0.1:1 as a (p2, c0, k30, u'client').",
		"1001: New client connected from 10.0.0.1:2 as b (p2, c0, k30, u'client').",
		"1001: New client connected from 10.0.0.1:3 as clean (p2, c1, k30, u'client').",
		"1002: Client b closed its connection.",
		"1003: New client connected from 127.0.0.1:4 as b (p2, c1, k30, u'broker1').",
		"1003: Client b disconnected.",
		"1004: a 1 t/#")
	tr.Restore(map[string]Subs{"r": {"x": 0}})
	held := func() string { b, _ := json.Marshal(tr.Held()); return string(b) }
	want := `{"a":{"t/#":1},"r":{"x":0}}`
	if got := held(); got != want {
		t.Errorf("held %s, want %s", got, want)
	}
	feed(tr, "1100: mosquitto version 2.0.11 starting")
	if got := held(); got != want {
		t.Errorf("held after a restart %s, want %s (restored from mosquitto's persistence)", got, want)
	}
}

// Subscriptions follow the log lines of connected clients; a clean
// connect starts a new session without them, a persistent one resumes.
func TestTrackerSubscriptions(t *testing.T) {
	tr := NewTracker()
	feed(tr, "1000: mosquitto version 2.0.11 starting",
		"1001: New client connected from 10.0.0.1:1 as a (p2, c0, k30, u'client').",
		"1001: a 1 t/#",
		"1001: a 0 with space/+",
		"1001: a 2 gone",
		"1002: a gone",
		"1002: nobody 1 x", // not a connected client: another line
		"1003: Client a closed its connection.",
		"1004: a 1 late", // a is not connected: not a subscription
		"1005: New client connected from 10.0.0.1:2 as a (p2, c0, k30, u'client').")
	if got := fmt.Sprint(tr.Subs("a")); got != "map[t/#:1 with space/+:0]" {
		t.Errorf("subs %s after a resumed session", got)
	}
	feed(tr, "1006: New client connected from 10.0.0.1:2 as a (p2, c1, k30, u'client').")
	if got := tr.Subs("a"); len(got) != 0 {
		t.Errorf("subs %v after a clean connect", got)
	}
}

// Shadows: a client a live peer lists with subscriptions gets a shadow at
// once on a broker without its session; a copy here gets the listed
// subscriptions on its next drain; filters a shadow cannot hold are
// counted, never subscribed; a client connected here is never visited.
func TestPolicyShadows(t *testing.T) {
	tr := NewTracker()
	feed(tr, "1000: mosquitto version 2.0.11 starting",
		"1001: New client connected from 10.0.0.1:1 as copy (p2, c0, k30, u'client').",
		"1001: copy 1 old",
		"1001: copy 1 kept",
		"1002: Client copy closed its connection.",
		"1001: New client connected from 10.0.0.1:2 as here (p2, c0, k30, u'client').")
	at := func(s int64) time.Time { return time.Unix(s, 0) }
	peers := map[string]Listed{"b": {
		Clients: []string{"new", "copy", "here", "nosubs", "shared"},
		Subs: map[string]Subs{
			"new":    {"a/+": 1, "b": 0},
			"copy":   {"kept": 1, "added": 1},
			"here":   {"x": 1},
			"shared": {"$share/g/t": 1, "$mqha/sessions/mqtt/b": 1, "bad/#/x": 1},
		},
		Received: at(1010), Live: true}}
	p := NewPolicy()
	got, skipped := p.Decide(tr, peers, at(1011))
	if s := fmt.Sprint(got); s != "[{new b map[a/+:1 b:0] [] true}]" {
		t.Errorf("visits %s, want a shadow of new only (copy left 9 s ago)", s)
	}
	if s := fmt.Sprint(skipped); s != "map[invalid filter:1 reserved topic:1 shared subscription:1]" {
		t.Errorf("skipped %s", s)
	}
	// A listing not republished yet makes the shadow too, drains nothing.
	notLive := map[string]Listed{"b": {Clients: peers["b"].Clients, Subs: peers["b"].Subs, Received: at(1100)}}
	if got, _ := NewPolicy().Decide(tr, notLive, at(1100)); fmt.Sprint(got) != "[{new b map[a/+:1 b:0] [] true}]" {
		t.Errorf("visits on a listing not live %v, want the shadow of new only", got)
	}
	p.Drained(tr, "new")
	feed(tr, "1012: New client connected from 127.0.0.1:3 as new (p2, c0, k30, u'broker1').",
		"1012: new 1 a/+", "1012: new 0 b", "1012: Client new disconnected.")
	peers["b"] = Listed{Clients: peers["b"].Clients, Subs: peers["b"].Subs, Received: at(1040), Live: true}
	got, _ = p.Decide(tr, peers, at(1040))
	if s := fmt.Sprint(got); s != "[{copy b map[added:1] [old] false}]" {
		t.Errorf("visits %s, want the copy drained and moved to the listed filters (new is Quiet since its shadow)", s)
	}
}

func TestListingSame(t *testing.T) {
	a := Listing{Clients: []string{"x"}, Subs: map[string]Subs{"x": {"t": 1}}, At: 1}
	b := Listing{Clients: []string{"x"}, Subs: map[string]Subs{"x": {"t": 1}}, At: 2}
	if !a.Same(b) {
		t.Error("same listing at another time differs")
	}
	b.Subs["x"]["t"] = 0
	if a.Same(b) {
		t.Error("another QoS is the same")
	}
}

// A peer's listing counts once its agent republished it; an older one
// (a stale retained copy a broker brought back) changes nothing; an empty
// one (its will) clears it.
func TestReceive(t *testing.T) {
	now := time.Unix(5000, 0)
	l, at, changed := Receive(Listed{}, Listing{Clients: []string{"a"}, At: 100}, now, 0)
	if !changed || l.Live || at != 100 {
		t.Fatalf("first: %+v %d %v, want taken, not live", l, at, changed)
	}
	l, at, _ = Receive(l, Listing{Clients: []string{"a", "b"}, At: 200}, now, at)
	if !l.Live || at != 200 || len(l.Clients) != 2 {
		t.Fatalf("republished: %+v %d, want live", l, at)
	}
	if l2, at2, changed := Receive(l, Listing{Clients: []string{"stale"}, At: 150}, now, at); changed || at2 != 200 || len(l2.Clients) != 2 {
		t.Errorf("an older listing was taken: %+v %d", l2, at2)
	}
	if l2, at2, changed := Receive(l, Listing{}, now, at); !changed || at2 != 0 || l2.Live || len(l2.Clients) != 0 {
		t.Errorf("the will did not clear the listing: %+v %d", l2, at2)
	}
}

func TestListingDecode(t *testing.T) {
	if l, err := Decode(nil); err != nil || len(l.Clients) != 0 {
		t.Errorf("empty: %v %v", l, err)
	}
	if _, err := Decode([]byte("{")); err == nil {
		t.Error("bad JSON taken")
	}
	l, err := Decode(Listing{Clients: []string{"a", "b"}, At: 7}.Encode())
	if err != nil || !slices.Equal(l.Clients, []string{"a", "b"}) || l.At != 7 {
		t.Errorf("round trip: %v %v", l, err)
	}
}

// A clean connect or an expiry ends a session: listed for EndedFor, then
// forgotten.
func TestTrackerEnded(t *testing.T) {
	tr := NewTracker()
	feed(tr, "1000: mosquitto version 2.0.11 starting",
		"1001: New client connected from 10.0.0.1:1 as cleaned (p2, c0, k30, u'client').",
		"1002: Client cleaned closed its connection.",
		"1003: New client connected from 10.0.0.1:1 as cleaned (p2, c1, k30, u'client').",
		"1004: Client cleaned closed its connection.",
		"1001: New client connected from 10.0.0.1:2 as expired (p5, c0, k30, u'client').",
		"1002: Client expired closed its connection.",
		"1500: Expiring client expired due to timeout.",
		"1001: New client connected from 10.0.0.1:3 as clean (p2, c1, k30, u'client').")
	if got := fmt.Sprint(tr.Ended(time.Unix(1600, 0))); got != "map[cleaned:1003000 expired:1500000]" {
		t.Errorf("ended %s", got)
	}
	if tr.Holds("cleaned") || tr.Holds("expired") {
		t.Error("an ended session is held")
	}
	if got := tr.Ended(time.Unix(1500, 0).Add(EndedFor + time.Second)); len(got) != 0 {
		t.Errorf("ended %v after EndedFor", got)
	}
}

// A copy here is ended when a live peer lists the session's end, news and
// end both after its client left here, and no live peer lists the client
// connected.
func TestEnds(t *testing.T) {
	tr := NewTracker()
	tr.Self = "broker1"
	feed(tr, "1000: mosquitto version 2.0.11 starting",
		"1100: New client connected from 127.0.0.1:9 as shadow (p2, c0, k30, u'broker1').",
		"1100: Client shadow disconnected.",
		"1001: New client connected from 10.0.0.1:1 as old (p2, c0, k30, u'client').",
		"1002: Client old closed its connection.",
		"1001: New client connected from 10.0.0.1:1 as moved (p2, c0, k30, u'client').",
		"1002: Client moved closed its connection.",
		"1001: New client connected from 10.0.0.1:1 as here (p2, c0, k30, u'client').",
		"1001: New client connected from 10.0.0.1:1 as newer (p2, c0, k30, u'client').",
		"1100: Client newer closed its connection.")
	at := func(s int64) time.Time { return time.Unix(s, 0) }
	ended := func(id string, endedAt, seen int64) map[string]EndedOn {
		return map[string]EndedOn{id: {At: endedAt * 1000, Seen: at(seen)}}
	}
	for _, tt := range []struct {
		name  string
		peers map[string]Listed
		want  string
	}{
		{"ended elsewhere after it left", map[string]Listed{"b": {Ended: ended("old", 1050, 1055), Received: at(1060), Live: true}}, "old"},
		{"connected here", map[string]Listed{"b": {Ended: ended("here", 1050, 1055), Received: at(1060), Live: true}}, ""},
		{"a newer session here", map[string]Listed{"b": {Ended: ended("newer", 1050, 1055), Received: at(1060), Live: true}}, ""},
		{"connected to a third broker", map[string]Listed{"b": {Ended: ended("moved", 1050, 1055), Received: at(1060), Live: true},
			"c": {Clients: []string{"moved"}, Received: at(1060), Live: true}}, ""},
		{"the agent's visit after the end", map[string]Listed{"b": {Ended: ended("shadow", 1050, 1055), Received: at(1060), Live: true}}, "shadow"},
		{"a listing not live", map[string]Listed{"b": {Ended: ended("old", 1050, 1055), Received: at(1060)}}, ""},
		{"the peer's clock behind", map[string]Listed{"b": {Ended: ended("old", 1000, 1055), Received: at(1060), Live: true}}, ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if got := strings.Join(Ends(tr, tt.peers, at(1070)), " "); got != tt.want {
				t.Errorf("ends %q, want %q", got, tt.want)
			}
		})
	}
}

// The first time a peer's end was received is kept across its
// republishing.
func TestReceiveKeepsWhenAnEndWasSeen(t *testing.T) {
	l, at, _ := Receive(Listed{}, Listing{Ended: map[string]int64{"x": 5}, At: 1}, time.Unix(100, 0), 0)
	l, _, _ = Receive(l, Listing{Ended: map[string]int64{"x": 5}, At: 2}, time.Unix(120, 0), at)
	if got := l.Ended["x"].Seen; !got.Equal(time.Unix(100, 0)) {
		t.Errorf("seen %v, want the first receipt", got)
	}
}
