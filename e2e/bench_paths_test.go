//go:build e2e && benchlab

package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
)

// path is one way a message goes: published at pub, received at sub.
type path struct {
	name     string
	pub, sub func(t *testing.T) string
}

func benchPaths() []path {
	b1 := func(t *testing.T) string { return brokerAddr(t, "broker1") }
	b2 := func(t *testing.T) string { return brokerAddr(t, "broker2") }
	v := func(*testing.T) string { return vip() }
	return []path{
		{"direct (broker1)", b1, b1},
		{"through the VIP", v, v},
		{"across the bridge (broker1 -> broker2)", b1, b2},
	}
}

// throughput publishes n messages of 64 bytes at qos as fast as the window
// of 100 unacknowledged allows and returns msg/s at the subscriber and the
// messages lost.
func throughput(t *testing.T, p path, qos byte, n int) (float64, int) {
	t.Helper()
	topic := fmt.Sprintf("bench/tp/%d", time.Now().UnixNano())
	var got atomic.Int32
	seen := sync.Map{}
	last := make(chan struct{}, 1)
	sub := client(t, p.sub(t), fmt.Sprintf("bench-sub-%d", time.Now().UnixNano()), true)
	tok := sub.Subscribe(topic, qos, func(_ mqtt.Client, m mqtt.Message) {
		if _, dup := seen.LoadOrStore(string(m.Payload()), true); !dup && int(got.Add(1)) == n {
			last <- struct{}{}
		}
	})
	tok.Wait()
	time.Sleep(300 * time.Millisecond) // the subscription crosses the bridge
	pub := client(t, p.pub(t), fmt.Sprintf("bench-pub-%d", time.Now().UnixNano()), true)
	payload := make([]byte, 64)
	start := time.Now()
	window := make(chan mqtt.Token, 100)
	done := make(chan struct{})
	go func() {
		for tk := range window {
			tk.WaitTimeout(10 * time.Second)
		}
		close(done)
	}()
	for i := range n {
		copy(payload, fmt.Sprintf("%08d", i))
		window <- pub.Publish(topic, qos, false, append([]byte(nil), payload...))
	}
	close(window)
	<-done
	select {
	case <-last:
	case <-time.After(15 * time.Second):
	}
	took := time.Since(start)
	sub.Unsubscribe(topic).Wait()
	return float64(got.Load()) / took.Seconds(), n - int(got.Load())
}

// latency sends rate msg/s for d at qos, each stamped, and returns the
// delivery latency p50 and p99.
func latency(t *testing.T, p path, qos byte, rate int, d time.Duration) (time.Duration, time.Duration) {
	t.Helper()
	topic := fmt.Sprintf("bench/lat/%d", time.Now().UnixNano())
	var mu sync.Mutex
	var lat []time.Duration
	sub := client(t, p.sub(t), fmt.Sprintf("bench-lsub-%d", time.Now().UnixNano()), true)
	sub.Subscribe(topic, qos, func(_ mqtt.Client, m mqtt.Message) {
		ns, err := strconv.ParseInt(string(m.Payload()), 10, 64)
		if err == nil {
			mu.Lock()
			lat = append(lat, time.Since(time.Unix(0, ns)))
			mu.Unlock()
		}
	}).Wait()
	time.Sleep(300 * time.Millisecond)
	pub := client(t, p.pub(t), fmt.Sprintf("bench-lpub-%d", time.Now().UnixNano()), true)
	tick := time.NewTicker(time.Second / time.Duration(rate))
	defer tick.Stop()
	for end := time.Now().Add(d); time.Now().Before(end); {
		<-tick.C
		pub.Publish(topic, qos, false, strconv.FormatInt(time.Now().UnixNano(), 10))
	}
	time.Sleep(time.Second)
	sub.Unsubscribe(topic).Wait()
	mu.Lock()
	defer mu.Unlock()
	return pct(lat, 50), pct(lat, 99)
}

// TestBenchPaths prints, side by side over repeated runs (p50/p95 of the
// runs), what each path costs: QoS0/QoS1 msg/s and messages lost, latency
// p50/p99 at 1,000 msg/s, and mutual-TLS handshakes/s direct vs through the
// VIP. Run by `make bench-lab`; JSON in reports/bench-paths.json.
func TestBenchPaths(t *testing.T) {
	runs := 3
	if v, err := strconv.Atoi(os.Getenv("MQHA_BENCH_RUNS")); err == nil && v > 0 {
		runs = v
	}
	type row struct {
		Path   string    `json:"path"`
		Metric string    `json:"metric"`
		Values []float64 `json:"values"`
		P50    float64   `json:"p50"`
		P95    float64   `json:"p95"`
	}
	rows := map[string]*row{}
	var order []string
	add := func(p, metric string, v float64) {
		k := p + "|" + metric
		if rows[k] == nil {
			rows[k] = &row{Path: p, Metric: metric}
			order = append(order, k)
		}
		rows[k].Values = append(rows[k].Values, v)
	}
	for run := range runs {
		// Interleaved: the machine's noise (about +-30% here) hits every
		// path alike within a run.
		for _, p := range benchPaths() {
			for _, qos := range []byte{0, 1} {
				mps, lost := throughput(t, p, qos, 20000)
				add(p.name, fmt.Sprintf("QoS%d msg/s", qos), mps)
				add(p.name, fmt.Sprintf("QoS%d lost of 20000", qos), float64(lost))
			}
			p50, p99 := latency(t, p, 1, 1000, 2*time.Second)
			add(p.name, "QoS1 latency p50 ms @1000/s", float64(p50.Microseconds())/1000)
			add(p.name, "QoS1 latency p99 ms @1000/s", float64(p99.Microseconds())/1000)
		}
		for _, hs := range []struct{ name, addr string }{{"direct (broker1)", brokerAddr(t, "broker1")}, {"through the VIP", vip()}} {
			start := time.Now()
			conns, _, fails, _ := storm(t, hs.addr, 2000, 100, fmt.Sprintf("hs%d", run)) // brokers' certificates carry the VIP
			add(hs.name, "mTLS connects/s (2000, 100 in flight)", float64(len(conns))/time.Since(start).Seconds())
			add(hs.name, "connects failed of 2000", float64(fails))
			for _, c := range conns {
				c.Close()
			}
		}
		t.Logf("run %d of %d done", run+1, runs)
	}
	fmt.Printf("\nBENCH paths, %d runs interleaved (p50 / p95 of the runs)\n", runs)
	fmt.Printf("BENCH %-42s %-40s %12s %12s\n", "path", "metric", "p50", "p95")
	var out []row
	for _, k := range order {
		r := rows[k]
		s := slices.Clone(r.Values)
		slices.Sort(s)
		r.P50, r.P95 = s[(len(s)-1)/2], s[min(len(s)-1, (95*len(s)+99)/100-1)]
		fmt.Printf("BENCH %-42s %-40s %12.1f %12.1f\n", r.Path, r.Metric, r.P50, r.P95)
		out = append(out, *r)
	}
	b, _ := json.MarshalIndent(map[string]any{"runs": runs, "at": time.Now().UTC(), "paths": out}, "", "  ")
	file := reportPath("bench-paths.json")
	if err := os.WriteFile(file, b, 0o644); err != nil {
		t.Fatal(err)
	}
	fmt.Printf("BENCH written to %s\n", file)
}
