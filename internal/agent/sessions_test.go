package agent

import (
	"context"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/mqha/mqha/internal/sessions"
)

// brokerWithLog is broker1's agent on commit c1 and a tracker that read
// mosquitto's start 10 minutes ago, then lines (each "AGO: rest", AGO in
// minutes before now).
func brokerWithLog(t *testing.T, lines ...string) (*harness, *sessions.Tracker, time.Time) {
	h := newHarness(t, "broker1", "", map[string]string{"c1": ""})
	h.src.head = "c1"
	h.poll()
	now := h.clock.now()
	tr := sessions.NewTracker()
	tr.Self = "broker1"
	tr.Observe(strconv.FormatInt(now.Add(-10*time.Minute).Unix(), 10)+": mosquitto version 2.0.11 starting", now)
	for _, l := range lines {
		ago, rest, _ := strings.Cut(l, ": ")
		m, _ := strconv.Atoi(ago)
		tr.Observe(strconv.FormatInt(now.Add(-time.Duration(m)*time.Minute).Unix(), 10)+": "+rest, now)
	}
	return h, tr, now
}

// A broker's agent drains, on its own mosquitto, the copies of sessions
// whose clients a peer lists (live) and that stayed away from it; the
// metrics count the drains and the messages.
func TestDrainSessionsWiring(t *testing.T) {
	h, tr, now := brokerWithLog(t,
		"9: New client connected from 10.0.0.1:1 as moved (p2, c0, k30, u'client').",
		"8: Client moved closed its connection.",
		"9: New client connected from 10.0.0.1:2 as here (p2, c0, k30, u'client').")
	stamp := func(d time.Duration) string { return strconv.FormatInt(now.Add(d).Unix(), 10) }
	listing := func(at int64) []byte {
		return sessions.Listing{Clients: []string{"moved", "here", "new"}, At: at,
			Subs: map[string]sessions.Subs{"new": {"t/#": 1}}}.Encode()
	}
	// One listing alone is not trusted (it may be a stale retained one).
	h.a.sessions.received("broker2", listing(1), now)
	pol := sessions.NewPolicy()
	h.onLoop(func() { h.a.visitSessions(context.Background(), h.a.view, tr, pol) })
	// It makes shadows: they take nothing from anyone.
	if d := strings.Join(h.drainedSessions(), ", "); d != "127.0.0.1:8883 new +t/#" {
		t.Fatalf("visited %q on a listing not republished; want only the shadow of new", d)
	}
	h.mu.Lock()
	h.drained = nil
	h.mu.Unlock()
	tr.Observe(stamp(0)+": New client connected from 127.0.0.1:9 as new (p2, c0, k30, u'broker1').", now)
	tr.Observe(stamp(0)+": new 1 t/#", now)
	tr.Observe(stamp(0)+": Client new disconnected.", now)
	h.a.sessions.received("broker2", listing(2), now)
	h.onLoop(func() { h.a.visitSessions(context.Background(), h.a.view, tr, pol) })
	// The visits run at once: in any order.
	if got := strings.Join(h.drainedSessions(), ", "); got != "127.0.0.1:8883 moved" {
		t.Errorf("visited %q, want the moved client's copy drained, on this broker only", got)
	}
	if n := testutil.ToFloat64(h.a.sessions.drained); n != 1 {
		t.Errorf("mqha_sessions_drained_total %v, want 1", n)
	}
	if n := testutil.ToFloat64(h.a.sessions.messages); n != 3 {
		t.Errorf("mqha_sessions_drained_messages_total %v, want 3", n)
	}
	if n := testutil.ToFloat64(h.a.sessions.shadowed); n != 1 {
		t.Errorf("mqha_sessions_shadowed_total %v, want 1", n)
	}
}

// The copies of a broker's clients are not drained while that broker does
// not answer: they may be all its clients find when they reconnect here.
func TestVisitSessionsSparesADeadBrokersClients(t *testing.T) {
	h, tr, now := brokerWithLog(t,
		"9: New client connected from 10.0.0.1:1 as moved (p2, c0, k30, u'client').",
		"8: Client moved closed its connection.")
	b2, _ := h.a.view.Cluster.Node("broker2")
	h.stop(b2.At(h.a.view.Cluster.Ports.Broker))
	for at := range int64(2) {
		h.a.sessions.received("broker2", sessions.Listing{Clients: []string{"moved", "new"}, At: at + 1,
			Subs: map[string]sessions.Subs{"new": {"t": 1}}}.Encode(), now)
	}
	pol := sessions.NewPolicy()
	h.onLoop(func() { h.a.visitSessions(context.Background(), h.a.view, tr, pol) })
	if d := strings.Join(h.drainedSessions(), ", "); d != "127.0.0.1:8883 new +t" {
		t.Errorf("visited %q for a broker that does not answer; want only the shadow of new (it takes nothing)", d)
	}
}

// A session a peer lists as ended (a clean connect there) is ended here.
func TestEndSessionsWiring(t *testing.T) {
	h, tr, now := brokerWithLog(t,
		"9: New client connected from 10.0.0.1:1 as cleaned (p2, c0, k30, u'client').",
		"8: Client cleaned closed its connection.")
	for at := range int64(2) {
		h.a.sessions.received("broker2", sessions.Listing{Ended: map[string]int64{"cleaned": now.Add(-time.Minute).UnixMilli()}, At: at + 1}.Encode(), now)
	}
	h.onLoop(func() { h.a.visitSessions(context.Background(), h.a.view, tr, sessions.NewPolicy()) })
	h.mu.Lock()
	ended := strings.Join(h.ended, " ")
	h.mu.Unlock()
	if ended != "127.0.0.1:8883 cleaned" {
		t.Errorf("ended %q, want the copy of cleaned on this broker", ended)
	}
	if n := testutil.ToFloat64(h.a.sessions.ended); n != 1 {
		t.Errorf("mqha_sessions_ended_total %v, want 1", n)
	}
}
