// Package notify posts a node's events (a commit applied, refused, rolled
// back; the node decommissioned; a role failed over) to a webhook: JSON,
// signed with an HMAC-SHA256 of a secret kept outside git, one at a time in
// the order they happened, retried with back-off. Sending never blocks: the
// events wait in a queue, and when a receiver is down for long the oldest
// are dropped and counted, so a slow or dead receiver never holds up the
// agent.
package notify

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"sync"
	"time"
)

// Kinds of events.
const (
	Applied        = "applied"
	Refused        = "refused"
	RolledBack     = "rolled back"
	Decommissioned = "decommissioned"
	FailedOver     = "failed over"
)

// Event is one thing that happened on a node.
type Event struct {
	ID      string    `json:"id"` // unique: a receiver drops a delivery it has seen
	Cluster string    `json:"cluster"`
	Node    string    `json:"node"`
	Kind    string    `json:"event"`
	Commit  string    `json:"commit,omitempty"`
	Reason  string    `json:"reason,omitempty"`
	At      time.Time `json:"at"`
}

// Headers of a delivery.
const (
	SignatureHeader = "X-Mqha-Signature" // "sha256=" and the hex HMAC of the body
	EventHeader     = "X-Mqha-Event"
	DeliveryHeader  = "X-Mqha-Delivery"
)

// Sign is the signature header's value for body.
func Sign(secret, body []byte) string {
	m := hmac.New(sha256.New, secret)
	m.Write(body)
	return "sha256=" + hex.EncodeToString(m.Sum(nil))
}

// Verify checks a delivery's signature (for receivers, and the tests).
func Verify(secret, body []byte, signature string) bool {
	return hmac.Equal([]byte(Sign(secret, body)), []byte(signature))
}

// Queue is how many events wait at most; Tries how often one is posted
// before it is given up.
const (
	Queue = 256
	Tries = 5
)

// Notifier posts events to URL. Zero URL: events are dropped silently (no
// webhook configured). Set changes both while it runs (a reload).
type Notifier struct {
	URL    string
	Secret []byte
	Client *http.Client // nil: 5 s timeout
	Log    *slog.Logger
	// Result is told what became of each event: sent, failed (given up
	// after Tries), dropped (the queue was full).
	Result func(result string)
	// Backoff is the wait before try n+1 (nil: 1 s doubling).
	Backoff func(n int) time.Duration

	mu      sync.Mutex
	pending []Event
	wake    chan struct{}
}

// Set points the notifier at url, signing with secret ("" url: off).
func (n *Notifier) Set(url string, secret []byte) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.URL, n.Secret = url, secret
}

func (n *Notifier) target() (string, []byte) {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.URL, n.Secret
}

// Send queues e; it never blocks.
func (n *Notifier) Send(e Event) {
	if n == nil {
		return
	}
	if url, _ := n.target(); url == "" {
		return
	}
	if e.ID == "" {
		b := make([]byte, 12)
		rand.Read(b)
		e.ID = hex.EncodeToString(b)
	}
	n.mu.Lock()
	if n.wake == nil {
		n.wake = make(chan struct{}, 1)
	}
	dropped := len(n.pending) >= Queue
	if dropped {
		n.pending = n.pending[1:]
	}
	n.pending = append(n.pending, e)
	n.mu.Unlock()
	if dropped {
		n.result("dropped")
	}
	select {
	case n.wake <- struct{}{}:
	default:
	}
}

func (n *Notifier) result(r string) {
	if n.Result != nil {
		n.Result(r)
	}
}

// Run posts the queued events in order until ctx ends.
func (n *Notifier) Run(ctx context.Context) {
	n.mu.Lock()
	if n.wake == nil {
		n.wake = make(chan struct{}, 1)
	}
	wake := n.wake
	n.mu.Unlock()
	for {
		n.mu.Lock()
		var e *Event
		if len(n.pending) > 0 {
			e = &n.pending[0]
		}
		n.mu.Unlock()
		if e == nil {
			select {
			case <-ctx.Done():
				return
			case <-wake:
				continue
			}
		}
		ev := *e
		ok := n.deliver(ctx, ev)
		if ctx.Err() != nil {
			return
		}
		n.mu.Lock()
		if len(n.pending) > 0 && n.pending[0].ID == ev.ID {
			n.pending = n.pending[1:]
		}
		n.mu.Unlock()
		if ok {
			n.result("sent")
		} else {
			n.result("failed")
		}
	}
}

// deliver posts e up to Tries times; it reports whether a 2xx came back.
func (n *Notifier) deliver(ctx context.Context, e Event) bool {
	body, _ := json.Marshal(e)
	url, secret := n.target()
	if url == "" {
		return false
	}
	client := n.Client
	if client == nil {
		client = &http.Client{Timeout: 5 * time.Second}
	}
	var last error
	for try := 1; try <= Tries; try++ {
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
		if err != nil {
			last = err
			break // a URL that does not parse will not get better
		}
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set(SignatureHeader, Sign(secret, body))
		req.Header.Set(EventHeader, e.Kind)
		req.Header.Set(DeliveryHeader, e.ID)
		resp, err := client.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode/100 == 2 {
				return true
			}
			err = fmt.Errorf("HTTP %s", resp.Status)
		}
		last = err
		if try == Tries {
			break
		}
		wait := time.Second << (try - 1)
		if n.Backoff != nil {
			wait = n.Backoff(try)
		}
		select {
		case <-ctx.Done():
			return false
		case <-time.After(wait):
		}
	}
	if n.Log != nil {
		n.Log.Warn("webhook notification given up", "event", e.Kind, "commit", e.Commit, "url", url, "tries", Tries, "err", last)
	}
	return false
}
