//go:build e2e

package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mqha/mqha/internal/notify"
)

// TestNotifications (issue 24, item 4): every node posts its events to a
// receiver on this host (notify-url in agent.conf, reloaded): a commit gives
// one "applied" per node, signed with the shared secret, none twice; a
// receiver that answers in 10 s, and then one that is gone, delays no
// node's convergence.
func TestNotifications(t *testing.T) {
	nodes := []string{"lb1", "lb2", "bridge", "broker1", "broker2"}
	secret := "e2e notification secret, 32 bytes"
	var slow atomic.Bool
	var mu sync.Mutex
	var got []notify.Event
	bad := 0
	l, err := net.Listen("tcp", net.JoinHostPort(cfg.HostAddr(), "0"))
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		if slow.Load() {
			time.Sleep(10 * time.Second)
		}
		mu.Lock()
		defer mu.Unlock()
		if !notify.Verify([]byte(secret), body, r.Header.Get(notify.SignatureHeader)) {
			bad++
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		var e notify.Event
		json.Unmarshal(body, &e)
		got = append(got, e)
	})}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	url := "http://" + l.Addr().String() + "/mqha"
	for _, n := range nodes {
		conf := on(t, n, "cat", "/etc/mqha/agent.conf")
		nd := node(t, n)
		os.WriteFile(filepath.Join(nd.Root, "etc/mqha/notify.secret"), []byte(secret+"\n"), 0o600)
		os.WriteFile(filepath.Join(nd.Root, "etc/mqha/agent.conf"), []byte(conf+fmt.Sprintf("\nnotify-url = %s\nnotify-secret-file = /etc/mqha/notify.secret\n", url)), 0o640)
		on(t, n, "systemctl", "reload", "mqha-agent")
		t.Cleanup(func() {
			os.WriteFile(filepath.Join(nd.Root, "etc/mqha/agent.conf"), []byte(conf), 0o640)
			onAny(t, n, "systemctl", "reload", "mqha-agent")
		})
	}
	applied := func(head string) map[string]int {
		mu.Lock()
		defer mu.Unlock()
		out := map[string]int{}
		for _, e := range got {
			if e.Kind == notify.Applied && e.Commit == head {
				out[e.Node]++
			}
		}
		return out
	}
	stamp := time.Now().UnixNano()
	head := commit(t, "e2e: notified", map[string]string{"notify.cue": fmt.Sprintf("package cluster\n\n// %d\n", stamp)})
	t.Cleanup(func() { revert(t, "notify.cue") })
	waitFor(t, 60*time.Second, "an applied event from every node", func() bool { return len(applied(head)) == len(nodes) })
	time.Sleep(2 * time.Second) // a second delivery of one would show now
	per := applied(head)
	for _, n := range nodes {
		if per[n] != 1 {
			t.Errorf("%s: %d applied events for %s, want 1", n, per[n], head[:7])
		}
	}
	mu.Lock()
	if bad > 0 {
		t.Errorf("%d deliveries with a bad signature", bad)
	}
	var order []string
	for _, e := range got {
		if e.Node == "broker1" {
			order = append(order, e.Kind+" "+e.Commit[:7])
		}
	}
	mu.Unlock()
	report(t, "commit %s: one signed applied event from each of %d nodes; broker1 said, in order: %s", head[:7], len(nodes), strings.Join(order, ", "))

	// A receiver that takes 10 s per event: convergence is not held up.
	slow.Store(true)
	pushed := time.Now()
	head = commit(t, "e2e: notified, slow receiver", map[string]string{"notify.cue": fmt.Sprintf("package cluster\n\n// %d slow\n", stamp)})
	took := appliedAfter(t, head, pushed, 30*time.Second, nodes...)
	report(t, "receiver answering in 10 s: every node applied the next commit %s after its push", took.Round(time.Millisecond))
	if took > 5*time.Second {
		t.Errorf("a slow receiver held convergence up: %s", took)
	}
	// Gone: the same.
	srv.Close()
	pushed = time.Now()
	head = commit(t, "e2e: notified, no receiver", map[string]string{"notify.cue": fmt.Sprintf("package cluster\n\n// %d gone\n", stamp)})
	took = appliedAfter(t, head, pushed, 30*time.Second, nodes...)
	report(t, "receiver gone: every node applied the next commit %s after its push", took.Round(time.Millisecond))
	if took > 5*time.Second {
		t.Errorf("a receiver that is gone held convergence up: %s", took)
	}
}
