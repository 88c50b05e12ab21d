//go:build e2e && benchlab

package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
)

// scaleSizes are the broker counts of TestBenchScale; MQHA_BENCH_SCALE_DOCS
// names a directory to draw the curves into (docs/ for make scale-curves).
var scaleSizes = []int{2, 4, 8, 16}

// scaleAddr is broker i's host number in the lab subnet: broker3 and
// broker4 where the other benches put them, then .41 and up (clear of the
// nodes, bridge2 at .24, the VIPs at .100 and .101, the sources at .200).
func scaleAddr(i int) int {
	switch i {
	case 3:
		return 23
	case 4:
		return 25
	}
	return 36 + i
}

// scaleRow is what the fleet costs at one size.
type scaleRow struct {
	Brokers         int     `json:"brokers"`
	Nodes           int     `json:"nodes"`
	ApplyP50s       float64 `json:"commit_to_all_applied_p50_s"`
	ApplyP95s       float64 `json:"commit_to_all_applied_p95_s"`
	BridgeQoS1      float64 `json:"bridge_qos1_msg_per_s"`
	BridgeLost      int     `json:"bridge_qos1_lost"`
	LatencyP50ms    float64 `json:"bridge_latency_p50_ms"`
	LatencyP99ms    float64 `json:"bridge_latency_p99_ms"`
	StatusBytesPerS float64 `json:"mqha_bytes_per_s_on_broker1"`
	StatusMsgsPerS  float64 `json:"mqha_msgs_per_s_on_broker1"`
	AgentCPUBroker  float64 `json:"agent_cpu_percent_broker1"`
	AgentCPUBridge  float64 `json:"agent_cpu_percent_bridge"`
	AgentCPULB      float64 `json:"agent_cpu_percent_lb1"`
	MosquittoBridge float64 `json:"mosquitto_cpu_percent_bridge"`
}

// TestBenchScale grows the lab from 2 to 16 brokers and measures at each
// size what grows with the fleet: commit -> every node applied (pushes that
// take the last broker out and back: the bridge restarts, the load
// balancers reload), the bridge's cross-broker QoS 1 throughput and
// latency, the cluster's own traffic ($mqha: status, session listings,
// bridge marks) on one broker, and the agents' CPU at rest. It prints a
// table and writes reports/bench-scale.json; with MQHA_BENCH_SCALE_DOCS it
// draws the curves there.
func TestBenchScale(t *testing.T) {
	t.Cleanup(func() {
		back := map[string]string{}
		for i := 3; i <= scaleSizes[len(scaleSizes)-1]; i++ {
			back[fmt.Sprintf("broker%d.cue", i)] = ""
		}
		head := commit(t, "bench: back to two brokers", back)
		appliedAfter(t, head, time.Now(), 180*time.Second, "lb1", "lb2", "bridge", "broker1", "broker2")
	})
	var rows []scaleRow
	for _, n := range scaleSizes {
		rows = append(rows, scaleAt(t, n))
		r := rows[len(rows)-1]
		t.Logf("%2d brokers: applied p50 %.2fs p95 %.2fs; bridge %.0f msg/s (lost %d), latency p50 %.1f ms p99 %.1f ms; $mqha %.0f B/s %.1f msg/s; agent CPU broker1 %.1f%% bridge %.1f%% lb1 %.1f%%; bridge mosquitto %.1f%%",
			n, r.ApplyP50s, r.ApplyP95s, r.BridgeQoS1, r.BridgeLost, r.LatencyP50ms, r.LatencyP99ms, r.StatusBytesPerS, r.StatusMsgsPerS,
			r.AgentCPUBroker, r.AgentCPUBridge, r.AgentCPULB, r.MosquittoBridge)
	}
	fmt.Printf("\nBENCH scale: the lab from 2 to 16 brokers (2 LBs, 1 bridge)\n")
	fmt.Printf("BENCH %7s %5s %9s %9s %10s %5s %8s %8s %9s %7s %7s %7s %7s %7s\n", "brokers", "nodes", "apply p50", "apply p95",
		"bridge q1/s", "lost", "lat p50", "lat p99", "$mqha B/s", "msg/s", "agt b1", "agt br", "agt lb", "mosq br")
	for _, r := range rows {
		fmt.Printf("BENCH %7d %5d %8.2fs %8.2fs %10.0f %5d %6.1fms %6.1fms %9.0f %7.1f %6.1f%% %6.1f%% %6.1f%% %6.1f%%\n", r.Brokers, r.Nodes,
			r.ApplyP50s, r.ApplyP95s, r.BridgeQoS1, r.BridgeLost, r.LatencyP50ms, r.LatencyP99ms, r.StatusBytesPerS, r.StatusMsgsPerS,
			r.AgentCPUBroker, r.AgentCPUBridge, r.AgentCPULB, r.MosquittoBridge)
	}
	host, _ := os.Hostname()
	out, _ := json.MarshalIndent(map[string]any{"at": time.Now().UTC(), "host": host, "scale": rows}, "", "  ")
	path := reportPath("bench-scale.json")
	if err := os.WriteFile(path, out, 0o644); err != nil {
		t.Fatal(err)
	}
	fmt.Printf("BENCH written to %s\n", path)
	if dir := os.Getenv("MQHA_BENCH_SCALE_DOCS"); dir != "" {
		drawScale(t, dir, rows)
	}
}

// scaleAt brings the definition to n brokers (booting the nodes it lacks)
// and measures.
func scaleAt(t *testing.T, n int) scaleRow {
	t.Helper()
	files := map[string]string{}
	nodes := []string{"lb1", "lb2", "bridge", "broker1", "broker2"}
	for i := 3; i <= n; i++ {
		b := fmt.Sprintf("broker%d", i)
		addr := cfg.Addr(scaleAddr(i))
		if _, ok := mustState(t).Node(b); !ok {
			if _, err := cfg.AddNode(t.Context(), labProject(), b, addr, "broker"); err != nil {
				t.Fatal(err)
			}
		}
		files[b+".cue"] = fmt.Sprintf("package cluster\n\nnodes: %s: {address: %q, roles: [\"broker\"]}\n", b, addr)
		nodes = append(nodes, b)
	}
	head := commit(t, fmt.Sprintf("bench: %d brokers", n), files)
	appliedAfter(t, head, time.Now(), 180*time.Second, nodes...)
	time.Sleep(5 * time.Second) // the bridge connects to every broker

	// Commit -> every node applied: the last broker out, then back.
	last := fmt.Sprintf("broker%d", n)
	var applied []time.Duration
	for i := range 4 {
		content, members := files[last+".cue"], nodes
		if i%2 == 0 {
			content, members = "", slices.DeleteFunc(slices.Clone(nodes), func(s string) bool { return s == last })
		}
		pushed := time.Now()
		h := commit(t, fmt.Sprintf("bench: %d brokers, push %d", n, i+1), map[string]string{last + ".cue": content})
		var slowest time.Duration
		for _, m := range members {
			waitFor(t, 120*time.Second, m+" applies "+h[:12], func() bool { return agentStatus(t, m).Applied == h })
			slowest = max(slowest, agentStatus(t, m).AppliedAt.Sub(pushed))
		}
		applied = append(applied, slowest)
		time.Sleep(3 * time.Second) // the bridge reconnects before the next push
	}
	row := scaleRow{Brokers: n, Nodes: len(nodes), ApplyP50s: percentile(applied, 50).Seconds(), ApplyP95s: percentile(applied, 95).Seconds()}
	time.Sleep(5 * time.Second)

	across := benchPaths()[2]
	row.BridgeQoS1, row.BridgeLost = throughput(t, across, 1, 10000)
	p50, p99 := latency(t, across, 1, 200, 10*time.Second)
	row.LatencyP50ms, row.LatencyP99ms = float64(p50.Microseconds())/1000, float64(p99.Microseconds())/1000

	// At rest: the cluster's own traffic on broker1 and the agents' CPU.
	var bytes, msgs atomic.Int64
	c := nodeClient(t, brokerAddr(t, "broker1"), "bridge")
	for _, tp := range []string{"$mqha/status/#", "$mqha/sessions/#", "$mqha/bridge/#"} {
		if tok := c.Subscribe(tp, 0, func(_ mqtt.Client, m mqtt.Message) {
			if !m.Retained() {
				bytes.Add(int64(len(m.Topic()) + len(m.Payload())))
				msgs.Add(1)
			}
		}); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			t.Fatalf("subscribe %s: %v", tp, tok.Error())
		}
	}
	before := map[string]int{}
	for _, node := range []string{"broker1", "bridge", "lb1"} {
		before[node] = cpuTicks(t, node, "mqha-agent")
	}
	mosq := cpuTicks(t, "bridge", "mosquitto")
	start := time.Now()
	time.Sleep(30 * time.Second)
	secs := time.Since(start).Seconds()
	c.Disconnect(50)
	row.StatusBytesPerS, row.StatusMsgsPerS = float64(bytes.Load())/secs, float64(msgs.Load())/secs
	row.AgentCPUBroker = float64(cpuTicks(t, "broker1", "mqha-agent")-before["broker1"]) / secs
	row.AgentCPUBridge = float64(cpuTicks(t, "bridge", "mqha-agent")-before["bridge"]) / secs
	row.AgentCPULB = float64(cpuTicks(t, "lb1", "mqha-agent")-before["lb1"]) / secs
	row.MosquittoBridge = float64(cpuTicks(t, "bridge", "mosquitto")-mosq) / secs
	return row
}

// nodeClient connects to addr with node name's certificate (a node may read
// the cluster's $mqha topics that clients may not).
func nodeClient(t *testing.T, addr, name string) mqtt.Client {
	t.Helper()
	o := mqtt.NewClientOptions().AddBroker("ssl://" + addr).SetClientID(fmt.Sprintf("bench-%s-%d", name, time.Now().UnixNano())).
		SetTLSConfig(nodeTLS(t, name)).SetCleanSession(true).SetConnectTimeout(5 * time.Second)
	c := mqtt.NewClient(o)
	if tok := c.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("connect %s as node %s: %v", addr, name, tok.Error())
	}
	return c
}

// drawScale draws the scale curves into dir.
func drawScale(t *testing.T, dir string, rows []scaleRow) {
	t.Helper()
	line := func(f func(scaleRow) float64) plotter.XYs {
		var xy plotter.XYs
		for _, r := range rows {
			xy = append(xy, plotter.XY{X: float64(r.Brokers), Y: f(r)})
		}
		return xy
	}
	for _, fig := range []struct {
		file, title, y string
		lines          []any
	}{
		{"scale-apply.png", "Commit -> every node applied, by brokers (p50, p95 of 4 pushes)", "seconds", []any{
			"p50", line(func(r scaleRow) float64 { return r.ApplyP50s }),
			"p95", line(func(r scaleRow) float64 { return r.ApplyP95s })}},
		{"scale-bridge.png", "The bridge across brokers, by brokers", "QoS 1 msg/s (broker1 -> broker2)", []any{
			"throughput, QoS 1, 100 in flight", line(func(r scaleRow) float64 { return r.BridgeQoS1 })}},
		{"scale-latency.png", "Cross-broker latency at 200 msg/s QoS 1, by brokers", "milliseconds", []any{
			"p50", line(func(r scaleRow) float64 { return r.LatencyP50ms }),
			"p99", line(func(r scaleRow) float64 { return r.LatencyP99ms })}},
		{"scale-rest.png", "The cluster at rest, by brokers", "bytes/s, or CPU % x 100", []any{
			"$mqha traffic on broker1 (bytes/s)", line(func(r scaleRow) float64 { return r.StatusBytesPerS }),
			"agent CPU on broker1 (% x 100)", line(func(r scaleRow) float64 { return 100 * r.AgentCPUBroker }),
			"agent CPU on the bridge (% x 100)", line(func(r scaleRow) float64 { return 100 * r.AgentCPUBridge }),
			"agent CPU on lb1 (% x 100)", line(func(r scaleRow) float64 { return 100 * r.AgentCPULB })}},
	} {
		p := plot.New()
		p.Title.Text = fig.title
		p.X.Label.Text = "brokers"
		p.Y.Label.Text = fig.y
		if err := plotutil.AddLinePoints(p, fig.lines...); err != nil {
			t.Fatal(err)
		}
		p.Legend.Top, p.Legend.Left = true, true
		if err := p.Save(7*vg.Inch, 4*vg.Inch, filepath.Join(dir, fig.file)); err != nil {
			t.Fatal(err)
		}
	}
}
