package main

import (
	"crypto/tls"
	"encoding/json"
	"fmt"
	"maps"
	"net"
	"sort"
	"strings"
	"sync"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/mqha/mqha/internal/agent"
	"github.com/mqha/mqha/internal/control"
)

// Reading the fleet's statuses and goodbyes from the brokers.

// staleAfter is the age past which a node's status is not taken as its
// state: agents publish every 5 s, so six were missed (the agent is down,
// or does not reach the brokers).
const staleAfter = 30 * time.Second

// readAll reads the statuses from every broker at addrs at once and keeps,
// per node, the newest; it returns the brokers it read and what failed.
func readAll(addrs []string, tc *tls.Config, topics string, want int, wait time.Duration) (map[string]control.Status, []string, []error) {
	var mu sync.Mutex
	var wg sync.WaitGroup
	out := map[string]control.Status{}
	wills := map[string]agent.Will{}
	var read []string
	var errs []error
	for _, a := range addrs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			t := tc.Clone()
			t.ServerName, _, _ = net.SplitHostPort(a)
			st, ws, err := readStatuses(a, t, topics, want, wait)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs = append(errs, err)
				return
			}
			read = append(read, a)
			for n, s := range st {
				if old, ok := out[n]; !ok || s.PublishedAt.After(old.PublishedAt) {
					out[n] = s
				}
			}
			for n, w := range ws {
				if old, ok := wills[n]; !ok || w.Reason == "stopped" && old.Reason != "stopped" {
					wills[n] = w
				}
			}
		}()
	}
	wg.Wait()
	sort.Strings(read)
	// A goodbye explains a status that stopped coming; while statuses
	// still come (the agent is back, or reaches other brokers) it is old.
	now := time.Now()
	for n, w := range wills {
		s, ok := out[n]
		if ok && !stale(s, now) {
			continue
		}
		s.Node = n
		switch w.Reason {
		case "stopped":
			s.Gone = "agent stopped at " + w.At.Format(time.RFC3339)
		default:
			s.Gone = "agent went away: its connections to the brokers dropped (the brokers published its MQTT will)"
		}
		out[n] = s
	}
	return out, read, errs
}

// stale reports whether a status is too old to be taken as the node's state.
func stale(s control.Status, now time.Time) bool {
	return !s.PublishedAt.IsZero() && now.Sub(s.PublishedAt) > staleAfter
}

// readStatuses collects the retained statuses under topics until want of
// them arrived or wait passed.
func readStatuses(addr string, tc *tls.Config, topics string, want int, wait time.Duration) (map[string]control.Status, map[string]agent.Will, error) {
	var mu sync.Mutex
	out := map[string]control.Status{}
	wills := map[string]agent.Will{}
	all := make(chan struct{})
	o := mqtt.NewClientOptions().AddBroker("ssl://" + addr).SetClientID(fmt.Sprintf("mqha-fleet-%d", time.Now().UnixNano())).
		SetTLSConfig(tc).SetCleanSession(true).SetConnectTimeout(5 * time.Second)
	cl := mqtt.NewClient(o)
	if tok := cl.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		return nil, nil, fmt.Errorf("connect to %s: %v", addr, tok.Error())
	}
	defer cl.Disconnect(100)
	willOf := cl.Subscribe(topics+"/+/will", 1, func(_ mqtt.Client, m mqtt.Message) {
		var w agent.Will
		if len(m.Payload()) == 0 || json.Unmarshal(m.Payload(), &w) != nil {
			return
		}
		mu.Lock()
		defer mu.Unlock()
		wills[strings.TrimSuffix(m.Topic()[len(topics)+1:], "/will")] = w
	})
	if !willOf.WaitTimeout(10*time.Second) || willOf.Error() != nil {
		return nil, nil, fmt.Errorf("subscribe to %s/+/will: %v", topics, willOf.Error())
	}
	tok := cl.Subscribe(topics+"/+", 1, func(_ mqtt.Client, m mqtt.Message) {
		var s control.Status
		if json.Unmarshal(m.Payload(), &s) != nil {
			return
		}
		mu.Lock()
		defer mu.Unlock()
		out[m.Topic()[len(topics)+1:]] = s
		if len(out) == want {
			select {
			case <-all:
			default:
				close(all)
			}
		}
	})
	if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		return nil, nil, fmt.Errorf("subscribe to %s/+: %v", topics, tok.Error())
	}
	select {
	case <-all:
	case <-time.After(wait):
	}
	mu.Lock()
	defer mu.Unlock()
	return maps.Clone(out), maps.Clone(wills), nil
}
