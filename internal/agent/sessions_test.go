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

// A broker's agent drains, on its own mosquitto, the copies of sessions
// whose clients a peer lists (live) and that stayed away from it; the
// metrics count the drains and the messages.
func TestDrainSessionsWiring(t *testing.T) {
	h := newHarness(t, "broker1", "", map[string]string{"c1": ""})
	h.src.head = "c1"
	h.poll()
	now := h.clock.now()
	tr := sessions.NewTracker()
	stamp := func(d time.Duration) string { return strconv.FormatInt(now.Add(d).Unix(), 10) }
	for _, l := range []string{
		stamp(-10*time.Minute) + ": mosquitto version 2.0.11 starting",
		stamp(-9*time.Minute) + ": New client connected from 10.0.0.1:1 as moved (p2, c0, k30, u'client').",
		stamp(-8*time.Minute) + ": Client moved closed its connection.",
		stamp(-9*time.Minute) + ": New client connected from 10.0.0.1:2 as here (p2, c0, k30, u'client').",
	} {
		tr.Observe(l, now)
	}
	listing := func(at int64) []byte {
		return sessions.Listing{Clients: []string{"moved", "here"}, At: at}.Encode()
	}
	// One listing alone is not trusted (it may be a stale retained one).
	h.a.sessions.received("broker2", listing(1), now)
	pol := sessions.NewPolicy()
	h.onLoop(func() { h.a.drainSessions(context.Background(), h.a.view, tr, pol) })
	if d := h.drainedSessions(); len(d) != 0 {
		t.Fatalf("drained %v on a listing not republished", d)
	}
	h.a.sessions.received("broker2", listing(2), now)
	h.onLoop(func() { h.a.drainSessions(context.Background(), h.a.view, tr, pol) })
	if got := strings.Join(h.drainedSessions(), " "); got != "127.0.0.1:8883 moved" {
		t.Errorf("drained %q, want the moved client's copy on this broker only", got)
	}
	if n := testutil.ToFloat64(h.a.sessions.drained); n != 1 {
		t.Errorf("mqha_sessions_drained_total %v, want 1", n)
	}
	if n := testutil.ToFloat64(h.a.sessions.messages); n != 3 {
		t.Errorf("mqha_sessions_drained_messages_total %v, want 3", n)
	}
}
