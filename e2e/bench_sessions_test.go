//go:build e2e && benchlab

package e2e

import (
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
)

// TestBenchSessions measures what the shadows of persistent sessions cost
// (issue 22): MQHA_BENCH_SESSIONS (1,000) persistent QoS 1 subscribers,
// each on two filters (its own topic and one all share), under a stream of
// 2 messages/s on the shared topic; first all on broker1 of the lab's two
// brokers (broker1 holds the sessions, as a lone broker would, broker2
// their shadows), then spread over four brokers (each holds a quarter and
// shadows the rest). Per broker it prints mosquitto's resident memory and
// mosquitto's and the agent's CPU over a minute, against the same minute
// without the sessions; and the bridge's traffic, which carries the
// listings. It writes reports/bench-sessions.json.
func TestBenchSessions(t *testing.T) {
	n := 1000
	if v, err := strconv.Atoi(os.Getenv("MQHA_BENCH_SESSIONS")); err == nil && v > 0 {
		n = v
	}
	var results []map[string]any
	for _, brokers := range [][]string{{"broker1", "broker2"}, {"broker1", "broker2", "broker3", "broker4"}} {
		if len(brokers) == 4 {
			fourBrokers(t, nil, nil)
		}
		results = append(results, sessionCost(t, brokers, n))
	}
	out, _ := json.MarshalIndent(map[string]any{"at": time.Now().UTC(), "sessions": n, "runs": results}, "", "  ")
	if err := os.WriteFile(reportPath("bench-sessions.json"), out, 0o644); err != nil {
		t.Error(err)
	}
}

// fourBrokers adds broker3 and broker4 by commit, with extra files,
// until the test ends; then they leave with restore's files.
func fourBrokers(t *testing.T, extra, restore map[string]string) {
	files := map[string]string{}
	for i, b := range []string{"broker3", "broker4"} {
		addr := cfg.Addr([]int{23, 25}[i])
		if _, ok := mustState(t).Node(b); !ok {
			if _, err := cfg.AddNode(t.Context(), labProject(), b, addr, "broker"); err != nil {
				t.Fatal(err)
			}
		}
		files[b+".cue"] = fmt.Sprintf("package cluster\n\nnodes: %s: {address: %q, roles: [\"broker\"]}\n", b, addr)
	}
	maps.Copy(files, extra)
	head := commit(t, "bench: four brokers", files)
	appliedAfter(t, head, time.Now(), 120*time.Second, "lb1", "lb2", "bridge", "broker1", "broker2", "broker3", "broker4")
	t.Cleanup(func() {
		back := map[string]string{"broker3.cue": "", "broker4.cue": ""}
		maps.Copy(back, restore)
		gone := commit(t, "bench: back to two brokers", back)
		appliedAfter(t, gone, time.Now(), 120*time.Second, "lb1", "lb2", "bridge", "broker1", "broker2")
	})
}

// cpuTicks is the CPU time (clock ticks) of every process named comm on
// node.
func cpuTicks(t *testing.T, node, comm string) int {
	t.Helper()
	out := onAny(t, node, "sh", "-c", `for d in /proc/[0-9]*; do [ "$(cat $d/comm 2>/dev/null)" = "`+comm+`" ] && cut -d' ' -f14,15 $d/stat; done`)
	total := 0
	for _, f := range strings.Fields(out) {
		v, _ := strconv.Atoi(f)
		total += v
	}
	return total
}

// usage is what one broker node spent over a window.
type usage struct {
	RSSKiB       int     `json:"mosquitto_rss_kib"`
	MosquittoCPU float64 `json:"mosquitto_cpu_percent"`
	AgentCPU     float64 `json:"agent_cpu_percent"`
}

// window measures brokers (and the bridge's bytes) over d.
func window(t *testing.T, brokers []string, d time.Duration) (map[string]usage, float64) {
	t.Helper()
	before := map[string][2]int{}
	for _, b := range brokers {
		before[b] = [2]int{cpuTicks(t, b, "mosquitto"), cpuTicks(t, b, "mqha-agent")}
	}
	bytes0 := bridgeBytes(t)
	start := time.Now()
	time.Sleep(d)
	secs := time.Since(start).Seconds()
	out := map[string]usage{}
	for _, b := range brokers {
		out[b] = usage{
			RSSKiB:       rss(t, b, "mosquitto"),
			MosquittoCPU: float64(cpuTicks(t, b, "mosquitto")-before[b][0]) / secs, // 100 ticks/s: percent
			AgentCPU:     float64(cpuTicks(t, b, "mqha-agent")-before[b][1]) / secs,
		}
	}
	return out, (bridgeBytes(t) - bytes0) / secs
}

// bridgeBytes is what the bridge node's mosquitto sent and received, as
// its $SYS says.
func bridgeBytes(t *testing.T) float64 {
	t.Helper()
	addr := brokerAddr(t, "bridge") // its local listener
	s, _ := strconv.ParseFloat(sysValue(t, addr, "$SYS/broker/bytes/sent"), 64)
	r, _ := strconv.ParseFloat(sysValue(t, addr, "$SYS/broker/bytes/received"), 64)
	return s + r
}

func sessionCost(t *testing.T, brokers []string, n int) map[string]any {
	stamp := time.Now().UnixNano()
	all := fmt.Sprintf("bench/sessions/%d/all", stamp)
	pub := client(t, brokerAddr(t, "broker1"), fmt.Sprintf("bench-sessions-pub-%d", stamp), true)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			case <-time.After(500 * time.Millisecond):
				pub.Publish(all, 1, false, strconv.Itoa(i))
			}
		}
	}()
	defer func() { close(stop); wg.Wait() }()

	// Placement: all on broker1 with two brokers, spread with four.
	on := func(i int) string {
		if len(brokers) == 2 {
			return "broker1"
		}
		return brokers[i%len(brokers)]
	}
	time.Sleep(10 * time.Second)
	base, baseBridge := window(t, brokers, 60*time.Second)

	ids := make([]string, n)
	clients := make([]mqtt.Client, n)
	var got sync.Map
	start := time.Now()
	for i := range n {
		ids[i] = fmt.Sprintf("bench-sess-%d-%d", stamp, i)
		o := mqtt.NewClientOptions().AddBroker("ssl://" + brokerAddr(t, on(i))).SetClientID(ids[i]).SetTLSConfig(tlsConfig(t)).
			SetCleanSession(false).SetAutoReconnect(false).SetConnectTimeout(10 * time.Second).SetKeepAlive(60 * time.Second).
			SetDefaultPublishHandler(func(mqtt.Client, mqtt.Message) { got.Store(i, true) })
		c := mqtt.NewClient(o)
		if tok := c.Connect(); !tok.WaitTimeout(20*time.Second) || tok.Error() != nil {
			t.Fatalf("connect %s: %v", ids[i], tok.Error())
		}
		if tok := c.SubscribeMultiple(map[string]byte{all: 1, fmt.Sprintf("bench/sessions/%d/%d", stamp, i): 1}, nil); !tok.WaitTimeout(20*time.Second) || tok.Error() != nil {
			t.Fatalf("subscribe %s: %v", ids[i], tok.Error())
		}
		clients[i] = c
	}
	connected := time.Since(start)
	// Every broker shadows the sessions of the others.
	want := map[string]int{}
	for _, b := range brokers {
		for i := range n {
			if on(i) != b {
				want[b]++
			}
		}
	}
	shadowedIn := waitFor(t, 5*time.Minute, "every broker shadowing the others' sessions", func() bool {
		time.Sleep(2 * time.Second)
		for _, b := range brokers {
			if c := countShadows(t, b, stamp); c < want[b] {
				return false
			}
		}
		return true
	})
	// Past a drain round of every shadow (Quiet + a round).
	time.Sleep(40 * time.Second)
	with, withBridge := window(t, brokers, 60*time.Second)

	// The sessions end with a clean connect on their broker; the agents
	// end the shadows.
	for i, c := range clients {
		c.Disconnect(20)
		cl := mqtt.NewClient(mqtt.NewClientOptions().AddBroker("ssl://" + brokerAddr(t, on(i))).SetClientID(ids[i]).
			SetTLSConfig(tlsConfig(t)).SetCleanSession(true).SetConnectTimeout(10 * time.Second))
		if tok := cl.Connect(); tok.WaitTimeout(20*time.Second) && tok.Error() == nil {
			cl.Disconnect(20)
		}
	}
	endedIn := waitFor(t, 5*time.Minute, "the shadows ended", func() bool {
		time.Sleep(2 * time.Second)
		for _, b := range brokers {
			if countEnded(t, b, stamp) < want[b] {
				return false
			}
		}
		return true
	})

	per := map[string]any{}
	for _, b := range brokers {
		held := n - want[b]
		d := map[string]any{
			"sessions": held, "shadows": want[b],
			"rss_kib_without": base[b].RSSKiB, "rss_kib_with": with[b].RSSKiB,
			"mosquitto_cpu_without": base[b].MosquittoCPU, "mosquitto_cpu_with": with[b].MosquittoCPU,
			"agent_cpu_without": base[b].AgentCPU, "agent_cpu_with": with[b].AgentCPU,
		}
		per[b] = d
		report(t, "%d brokers, %s: %d sessions, %d shadows: mosquitto %d -> %d KiB (+%.1f MiB), mosquitto CPU %.1f%% -> %.1f%%, agent CPU %.1f%% -> %.1f%% of a core",
			len(brokers), b, held, want[b], base[b].RSSKiB, with[b].RSSKiB, float64(with[b].RSSKiB-base[b].RSSKiB)/1024,
			base[b].MosquittoCPU, with[b].MosquittoCPU, base[b].AgentCPU, with[b].AgentCPU)
	}
	report(t, "%d brokers, %d persistent sessions: connected in %s, shadowed everywhere %s later, shadows ended %s after the sessions; bridge traffic %.1f -> %.1f KB/s",
		len(brokers), n, connected.Round(100*time.Millisecond), shadowedIn.Round(time.Second), endedIn.Round(time.Second), baseBridge/1000, withBridge/1000)
	return map[string]any{"brokers": len(brokers), "per_broker": per, "bridge_bytes_per_s_without": baseBridge, "bridge_bytes_per_s_with": withBridge,
		"shadowed_after_s": shadowedIn.Seconds(), "ended_after_s": endedIn.Seconds()}
}

// countShadows counts the shadows broker's agent made of this run's
// sessions.
func countShadows(t *testing.T, broker string, stamp int64) int {
	return strings.Count(onAny(t, broker, "journalctl", "-u", "mqha-agent", "--since", "-15min", "--no-pager", "-o", "cat", "--grep", "made a shadow"),
		fmt.Sprintf("client=bench-sess-%d-", stamp))
}

func countEnded(t *testing.T, broker string, stamp int64) int {
	return strings.Count(onAny(t, broker, "journalctl", "-u", "mqha-agent", "--since", "-15min", "--no-pager", "-o", "cat", "--grep", "ended this broker's copy"),
		fmt.Sprintf("client=bench-sess-%d-", stamp))
}
