//go:build e2e && benchlab

package e2e

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"sort"
	"strconv"
	"sync"
	"testing"
	"time"
)

// heldClients are idle MQTT clients through the VIP, from several source
// addresses (nginx hashes by address), each sending a PINGREQ every ping
// and reconnecting from its address as soon as its connection fails.
type heldClients struct {
	mu   sync.Mutex
	lost map[int]time.Time // client -> when its connection failed
	back map[int]time.Time // client -> when it was connected again
	stop chan struct{}
	wg   sync.WaitGroup
}

func holdClients(t *testing.T, srcs []string, perSrc int, ping time.Duration) *heldClients {
	t.Helper()
	tc := tlsConfig(t)
	h := &heldClients{lost: map[int]time.Time{}, back: map[int]time.Time{}, stop: make(chan struct{})}
	var mu sync.Mutex
	var failed error
	sem := make(chan struct{}, 50)
	var start sync.WaitGroup
	for i := range len(srcs) * perSrc {
		src := srcs[i%len(srcs)]
		start.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem }()
			c, _, err := dialFrom(tc, src, fmt.Sprintf("held-%d", i), 10*time.Second)
			start.Done()
			if err != nil {
				mu.Lock()
				failed = err
				mu.Unlock()
				return
			}
			h.wg.Add(1)
			go h.run(tc, i, src, c, ping)
		}()
	}
	start.Wait()
	if failed != nil {
		t.Fatal(failed)
	}
	t.Cleanup(h.close)
	return h
}

func (h *heldClients) run(tc *tls.Config, i int, src string, c net.Conn, ping time.Duration) {
	defer h.wg.Done()
	buf := make([]byte, 64)
	for {
		select {
		case <-h.stop:
			c.Close()
			return
		default:
		}
		c.SetReadDeadline(time.Now().Add(ping))
		_, err := c.Read(buf)
		if ne, ok := err.(net.Error); ok && ne.Timeout() {
			c.SetWriteDeadline(time.Now().Add(ping))
			if _, err = c.Write([]byte{0xC0, 0}); err == nil {
				continue
			}
		}
		if err == nil {
			continue
		}
		c.Close()
		h.mu.Lock()
		h.lost[i] = time.Now()
		h.mu.Unlock()
		for {
			select {
			case <-h.stop:
				return
			default:
			}
			nc, _, err := dialFrom(tc, src, fmt.Sprintf("held-%d", i), 5*time.Second)
			if err == nil {
				c = nc
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		h.mu.Lock()
		h.back[i] = time.Now()
		h.mu.Unlock()
	}
}

func (h *heldClients) close() {
	select {
	case <-h.stop:
	default:
		close(h.stop)
	}
	h.wg.Wait()
}

// backAfter is how long after t0 the given share of all clients were
// connected again (those never cut count as back at t0), and how many were
// cut.
func (h *heldClients) backAfter(t0 time.Time, n, pct int) (time.Duration, int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	var ds []time.Duration
	for i := range n {
		if _, cut := h.lost[i]; !cut {
			ds = append(ds, 0)
			continue
		}
		if b, ok := h.back[i]; ok {
			ds = append(ds, b.Sub(t0))
		} else {
			ds = append(ds, time.Hour)
		}
	}
	sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
	return ds[(pct*len(ds)+99)/100-1], len(h.lost)
}

// lbLoss is an LB failing under 1,000 idle clients (PINGREQ every 5 s) and
// a 200 msg/s QoS1 stream through the VIP: nginx killed or stopped
// (SIGSTOP) on the VIP holder, or the holder powered off. It returns when the VIP served again, when
// 95% of the clients were connected again, and the QoS1 messages lost.
func lbLoss(t *testing.T, how string) (vip, clients95 time.Duration, lost int) {
	holder := waitVIP(t, 15*time.Second)
	other := map[string]string{"lb1": "lb2", "lb2": "lb1"}[holder]
	lbsAgree(t)
	const perSrc = 50
	srcs := sourceAddrs(t, 20)
	h := holdClients(t, srcs, perSrc, 5*time.Second)
	s := startStreamEvery(t, "lbloss-"+how, 5*time.Millisecond)
	time.Sleep(2 * time.Second)

	t0 := time.Now()
	switch how {
	case "nginx":
		go node(t, holder).Exec(context.Background(), "systemctl", "kill", "-s", "SIGKILL", "nginx")
	case "nginx SIGSTOP":
		// Hung, not dead: systemd still says active; only the data path
		// (and the stopped state in /proc) shows it.
		go node(t, holder).Exec(context.Background(), "systemctl", "kill", "-s", "STOP", "nginx")
		t.Cleanup(func() { node(t, holder).Exec(context.Background(), "systemctl", "kill", "-s", "CONT", "nginx") })
	case "poweroff":
		go cfg.PowerOff(context.Background(), holder)
		t.Cleanup(func() { cfg.PowerOn(context.Background(), holder) })
	}
	vip = vipServesFrom(t, t0, other)
	n := len(srcs) * perSrc
	// A client learns that its connection is dead when it next sends
	// (its PINGREQ, within 5 s): only then is it counted as cut or not.
	time.Sleep(time.Until(t0.Add(7 * time.Second)))
	waitFor(t, 60*time.Second, "95% of the held clients back", func() bool {
		d, _ := h.backAfter(t0, n, 95)
		return d < time.Hour
	})
	clients95, cut := h.backAfter(t0, n, 95)
	time.Sleep(2 * time.Second)
	lost = s.finish(t)
	h.close()
	report(t, "%s on the VIP holder %s under %d idle clients + 200 msg/s: VIP serving from %s after %s; %d clients cut, 95%% of all back after %s; QoS1 lost %d",
		how, holder, n, other, vip.Round(time.Millisecond), cut, clients95.Round(time.Millisecond), lost)
	if how == "poweroff" {
		if err := cfg.PowerOn(t.Context(), holder); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, 90*time.Second, holder+" serves again", func() bool {
		st := agentStatus(t, holder)
		return st.Applied != "" && len(st.Checks) > 0 && st.Checks[0].OK
	})
	return vip, clients95, lost
}

// TestBenchNodeLoss runs the node-loss scenarios MQHA_BENCH_RUNS times
// (3) and prints p50/p95 of their figures; JSON in reports/bench-nodeloss.json.
func TestBenchNodeLoss(t *testing.T) {
	runs := 3
	if v, err := strconv.Atoi(os.Getenv("MQHA_BENCH_RUNS")); err == nil && v > 0 {
		runs = v
	}
	series := map[string][]time.Duration{}
	counts := map[string][]int{}
	var order []string
	add := func(k string, d time.Duration) {
		if _, ok := series[k]; !ok {
			order = append(order, k)
		}
		series[k] = append(series[k], d)
	}
	count := func(k string, n int) { counts[k] = append(counts[k], n) }
	for i := range runs {
		t.Run(fmt.Sprintf("run%d", i+1), func(t *testing.T) {
			for _, fault := range []struct {
				name string
				run  func(*testing.T) lossFigures
			}{{"bridge master off", bridgeMasterPowerOff}, {"bridge mosquitto SIGSTOP", bridgeMosquittoStopped},
				{"bridge cert untrusted", bridgeCannotConnect}} {
				f := fault.run(t)
				add(fault.name+": standby active", f.Takeover)
				add(fault.name+": delivery restored", f.Restored)
				count(fault.name+": QoS1 lost", f.Lost)
				count(fault.name+": QoS1 duplicated", f.Dups)
			}
			if os.Getenv("MQHA_BENCH_BRIDGE_LONG") != "" {
				// 60 s and more each: on request.
				add("bridge master's agent SIGSTOP 60 s: longest delivery gap", bridgeAgentStopped(t))
				add("bridge nodes cut off from each other: two masters for", bridgeNodesCutOff(t))
			}
			add("VIP holder off: VIP serves", vipHolderPowerOff(t))
			add("broker off: 95% of its clients back", brokerPowerOff(t))
			for _, how := range []string{"nginx", "nginx SIGSTOP", "poweroff"} {
				v, c, l := lbLoss(t, how)
				add("LB "+how+" (1,000 idle + 200 msg/s): VIP serves", v)
				add("LB "+how+" (1,000 idle + 200 msg/s): 95% of clients back", c)
				count("LB "+how+": QoS1 lost", l)
			}
		})
	}
	type row struct {
		What    string  `json:"what"`
		Samples int     `json:"samples"`
		P50s    float64 `json:"p50_s,omitempty"`
		P95s    float64 `json:"p95_s,omitempty"`
		Counts  []int   `json:"counts,omitempty"`
	}
	var rows []row
	fmt.Printf("\nBENCH node loss, %d runs (targets: bridge delivery restored: power-off 1 s, SIGSTOP 2 s, untrusted certificate 5 s; VIP 1 s, 95%% of a broker's clients 5 s; QoS1 lost 0)\n", runs)
	fmt.Printf("BENCH %-58s %7s %8s %8s\n", "scenario", "samples", "p50", "p95")
	for _, k := range order {
		ds := series[k]
		r := row{What: k, Samples: len(ds), P50s: percentile(ds, 50).Seconds(), P95s: percentile(ds, 95).Seconds()}
		rows = append(rows, r)
		fmt.Printf("BENCH %-58s %7d %7.2fs %7.2fs\n", k, r.Samples, r.P50s, r.P95s)
	}
	var keys []string
	for k := range counts {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		rows = append(rows, row{What: k, Samples: len(counts[k]), Counts: counts[k]})
		fmt.Printf("BENCH %-58s %7d   per run: %v\n", k, len(counts[k]), counts[k])
	}
	out, _ := json.MarshalIndent(map[string]any{"runs": runs, "at": time.Now().UTC(), "nodeloss": rows}, "", "  ")
	path := reportPath("bench-nodeloss.json")
	if err := os.WriteFile(path, out, 0o644); err != nil {
		t.Fatal(err)
	}
	fmt.Printf("BENCH written to %s\n", path)
}
