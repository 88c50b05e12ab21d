package sessions

import (
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"time"
)

// Topics is where each broker's agent lists the clients connected to its
// broker with a persistent session (Topics(cluster)/NODE), retained on
// every broker; only the broker node itself may write its own (the ACL),
// and its MQTT will clears it when its agent goes away.
func Topics(cluster string) string { return "$mqha/sessions/" + cluster }

// MaxListed bounds one listing: beyond it the rest is left out (and
// logged), so a broker with more persistent clients still lists most.
const MaxListed = 200_000

// Republish is how often a broker's agent publishes its listing even when
// it did not change: the others take only a listing that is republished
// (a retained one can come back stale from a broker's persistence).
const Republish = 20 * time.Second

// Listing is what a broker's agent publishes.
type Listing struct {
	Clients []string `json:"clients"`
	// Subs are the listed clients' subscriptions (the other brokers keep
	// shadows of their sessions with them); a client without any is left
	// out.
	Subs map[string]Subs `json:"subs,omitempty"`
	// Ended are the clients whose session on this broker ended (a clean
	// connect, or its expiry) within EndedFor, with when (unix ms, the
	// publisher's clock): the other brokers end their copies.
	Ended map[string]int64 `json:"ended,omitempty"`
	// At is when it was published (unix ms, the publisher's clock): a
	// listing older than one already received from that broker is stale.
	At int64 `json:"at"`
}

// Same reports whether l lists what o lists (At aside).
func (l Listing) Same(o Listing) bool {
	if !slices.Equal(l.Clients, o.Clients) || len(l.Subs) != len(o.Subs) || !maps.Equal(l.Ended, o.Ended) {
		return false
	}
	for id, s := range l.Subs {
		if os, ok := o.Subs[id]; !ok || !maps.Equal(s, os) {
			return false
		}
	}
	return true
}

// Encode is l as published (nil: an empty listing's retained clear).
func (l Listing) Encode() []byte {
	b, _ := json.Marshal(l)
	return b
}

// Decode reads a peer's listing; an empty payload is an empty listing (the
// peer's will, or its agent stopped).
func Decode(b []byte) (Listing, error) {
	var l Listing
	if len(b) == 0 {
		return l, nil
	}
	if err := json.Unmarshal(b, &l); err != nil {
		return Listing{}, fmt.Errorf("session listing: %w", err)
	}
	if len(l.Clients) > MaxListed {
		return Listing{}, fmt.Errorf("session listing names %d clients, more than %d", len(l.Clients), MaxListed)
	}
	return l, nil
}
