package notify

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"
)

// receiver records what it was sent, checking each signature; down makes
// it answer 503 for that many requests.
type receiver struct {
	mu     sync.Mutex
	got    []Event
	bad    int
	down   int
	hold   time.Duration
	secret []byte
}

func (r *receiver) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	body, _ := io.ReadAll(req.Body)
	time.Sleep(r.hold)
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.down > 0 {
		r.down--
		w.WriteHeader(http.StatusServiceUnavailable)
		return
	}
	if !Verify(r.secret, body, req.Header.Get(SignatureHeader)) {
		r.bad++
		w.WriteHeader(http.StatusUnauthorized)
		return
	}
	var e Event
	json.Unmarshal(body, &e)
	r.got = append(r.got, e)
}

func (r *receiver) events() []Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Event(nil), r.got...)
}

func run(t *testing.T, n *Notifier) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { n.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
}

func TestDeliveredInOrderSignedAndRetried(t *testing.T) {
	secret := []byte("a secret of sixteen bytes or more")
	r := &receiver{secret: secret, down: 2}
	srv := httptest.NewServer(r)
	defer srv.Close()
	var mu sync.Mutex
	results := map[string]int{}
	n := &Notifier{URL: srv.URL, Secret: secret, Backoff: func(int) time.Duration { return 10 * time.Millisecond },
		Result: func(s string) { mu.Lock(); results[s]++; mu.Unlock() }}
	run(t, n)
	for _, k := range []string{Applied, Refused, RolledBack} {
		n.Send(Event{Node: "broker1", Kind: k, Commit: "c-" + k, At: time.Now()})
	}
	deadline := time.Now().Add(5 * time.Second)
	for len(r.events()) < 3 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	got := r.events()
	if len(got) != 3 || got[0].Kind != Applied || got[1].Kind != Refused || got[2].Kind != RolledBack || got[0].ID == "" || got[0].ID == got[1].ID {
		t.Fatalf("got %+v, want applied, refused, rolled back in order with ids", got)
	}
	if r.bad != 0 || results["sent"] != 3 {
		t.Errorf("%d bad signatures, results %v", r.bad, results)
	}
}

// A receiver that never answers in time, or is down: Send never blocks,
// events are given up after Tries, and a full queue drops the oldest.
func TestSlowOrDeadReceiverNeverBlocks(t *testing.T) {
	r := &receiver{secret: []byte("k"), hold: 200 * time.Millisecond}
	srv := httptest.NewServer(r)
	defer srv.Close()
	var mu sync.Mutex
	results := map[string]int{}
	n := &Notifier{URL: srv.URL, Secret: []byte("other"), Client: &http.Client{Timeout: 50 * time.Millisecond},
		Backoff: func(int) time.Duration { return time.Millisecond },
		Result:  func(s string) { mu.Lock(); results[s]++; mu.Unlock() }}
	run(t, n)
	start := time.Now()
	for range Queue + 10 {
		n.Send(Event{Node: "lb1", Kind: Applied})
	}
	if d := time.Since(start); d > 100*time.Millisecond {
		t.Errorf("%d sends took %s", Queue+10, d)
	}
	time.Sleep(time.Second)
	mu.Lock()
	defer mu.Unlock()
	if results["dropped"] < 9 || results["failed"] < 1 || results["sent"] != 0 {
		t.Errorf("results %v, want some dropped (a full queue), some failed, none sent", results)
	}
}

func TestNoURLNoop(t *testing.T) {
	var n *Notifier
	n.Send(Event{Kind: Applied})
	(&Notifier{}).Send(Event{Kind: Applied})
}
