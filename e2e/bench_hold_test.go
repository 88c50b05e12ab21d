//go:build e2e && benchlab

package e2e

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mqha/mqha/internal/lab"
)

// TestBenchHold holds MQHA_BENCH_HOLD (50,000) mutual-TLS MQTT clients
// through the VIP for 60 s, from 50 source addresses in five child
// processes (this host caps every process at 20,000 descriptors), on four
// brokers (one mosquitto holds at most ~19,000 here): no kill, no VIP move,
// no client dropped; it prints the ramp, the spread over the brokers and
// the memory per connection, and writes reports/bench-hold.json.
func TestBenchHold(t *testing.T) {
	total := 50000
	if v, err := strconv.Atoi(os.Getenv("MQHA_BENCH_HOLD")); err == nil && v > 0 {
		total = v
	}
	const holders, srcsPer = 5, 10
	per := (total + holders*srcsPer - 1) / (holders * srcsPer)

	// Four brokers: broker3 and broker4 join by commit, with the clients'
	// limit raised in the same commit.
	brokers := []string{"broker1", "broker2", "broker3", "broker4"}
	own, _ := os.ReadFile(filepath.Join(cfg.Dir, "cluster", lab.LimitsFile))
	fourBrokers(t, map[string]string{lab.LimitsFile: fmt.Sprintf("package cluster\n\nlimits: clients: %d\n", total)},
		map[string]string{lab.LimitsFile: string(own)})
	holder := waitVIP(t, 15*time.Second)
	nodes := append([]string{"lb1", "lb2", "bridge"}, brokers...)
	repairs := func() int {
		n := 0
		for _, name := range nodes {
			for _, c := range agentStatus(t, name).Checks {
				n += c.Repairs
			}
		}
		return n
	}
	before := repairs()
	rssBefore := rss(t, holder, "nginx")

	srcs := sourceAddrs(t, holders*srcsPer)
	exe, _ := os.Executable()
	type child struct {
		cmd   *exec.Cmd
		stdin io.WriteCloser
		mu    sync.Mutex
		last  string
		lines chan string
	}
	var kids []*child
	start := time.Now()
	for h := range holders {
		cmd := exec.Command(exe, "-test.run", "^$")
		cmd.Env = append(os.Environ(), "MQHA_E2E_HOLDER=1", "MQHA_E2E_HOLD_PER="+strconv.Itoa(per),
			"MQHA_E2E_HOLD_SRCS="+strings.Join(srcs[h*srcsPer:(h+1)*srcsPer], ","), "MQHA_E2E_HOLD_PKI="+filepath.Join(cfg.Dir, "pki"))
		in, _ := cmd.StdinPipe()
		out, _ := cmd.StdoutPipe()
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		k := &child{cmd: cmd, stdin: in, lines: make(chan string, 1000)}
		go func() {
			sc := bufio.NewScanner(out)
			for sc.Scan() {
				k.mu.Lock()
				k.last = sc.Text()
				k.mu.Unlock()
				if !strings.HasPrefix(sc.Text(), "progress") {
					k.lines <- sc.Text()
				}
			}
			close(k.lines)
		}()
		kids = append(kids, k)
		t.Cleanup(func() { in.Close(); cmd.Process.Kill(); cmd.Wait() })
	}
	var ramped []string
	for _, k := range kids {
		select {
		case l := <-k.lines:
			ramped = append(ramped, l)
		case <-time.After(15 * time.Minute):
			t.Fatal("a holder did not finish connecting within 15 min")
		}
	}
	ramp := time.Since(start)
	connected, failed := 0, 0
	spread := map[string]int{}
	for _, l := range ramped {
		var c, f int
		var b string
		fmt.Sscanf(l, "ramped connected %d failed %d brokers %s", &c, &f, &b)
		connected += c
		failed += f
		for _, kv := range strings.Split(b, ",") {
			if k, v, ok := strings.Cut(kv, "="); ok {
				n, _ := strconv.Atoi(v)
				spread[k] += n
			}
		}
	}
	t.Logf("ramp: %d connected, %d failed in %s; per broker %v", connected, failed, ramp.Round(time.Second), spread)

	time.Sleep(60 * time.Second)
	rssHeld := rss(t, holder, "nginx")
	brokerRSS := map[string]int{}
	for _, b := range brokers {
		brokerRSS[b] = rss(t, b, "mosquitto")
	}
	for _, k := range kids {
		k.stdin.Close()
	}
	dropped := 0
	for _, k := range kids {
		for l := range k.lines {
			var c, f, d int
			if n, _ := fmt.Sscanf(l, "done connected %d failed %d dropped %d", &c, &f, &d); n == 3 {
				dropped += d
			}
		}
		k.cmd.Wait()
	}
	after := repairs()
	moved := waitVIP(t, 15*time.Second) != holder

	nginxPer := float64(rssHeld-rssBefore) / float64(max(connected, 1))
	var mqTotal int
	for _, v := range brokerRSS {
		mqTotal += v
	}
	fmt.Printf("\nBENCH hold through the VIP: %d of %d mutual-TLS clients connected (%d failed) in %s (%.0f/s), held 60 s: %d dropped, %d repairs (kills), VIP moved: %v\n",
		connected, total, failed, ramp.Round(time.Second), float64(connected)/ramp.Seconds(), dropped, after-before, moved)
	fmt.Printf("BENCH per broker: %v (each mosquitto holds at most %d here)\n", spread, 18976)
	fmt.Printf("BENCH RSS: nginx on %s %d MiB (+%.1f KiB per connection); mosquitto %v KiB (%.1f KiB per connection)\n",
		holder, rssHeld/1024, nginxPer, brokerRSS, float64(mqTotal)/float64(max(connected, 1)))
	out, _ := json.MarshalIndent(map[string]any{"at": time.Now().UTC(), "target": total, "connected": connected, "failed": failed,
		"ramp_s": ramp.Seconds(), "dropped": dropped, "repairs": after - before, "vip_moved": moved, "per_broker": spread,
		"nginx_rss_kib": rssHeld, "nginx_kib_per_conn": nginxPer, "mosquitto_rss_kib": brokerRSS}, "", "  ")
	os.WriteFile(reportPath("bench-hold.json"), out, 0o644)
	if dropped > 0 || after != before || moved || connected < total {
		t.Errorf("held %d of %d: %d dropped, %d repairs, VIP moved %v", connected, total, dropped, after-before, moved)
	}
}

func mustState(t *testing.T) *lab.State {
	t.Helper()
	s, err := cfg.Load()
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// rss is the resident memory (KiB) of every process named comm on node.
func rss(t *testing.T, node, comm string) int {
	t.Helper()
	out := onAny(t, node, "sh", "-c", `for d in /proc/[0-9]*; do [ "$(cat $d/comm 2>/dev/null)" = "`+comm+`" ] && grep VmRSS $d/status; done`)
	total := 0
	for _, l := range strings.Split(out, "\n") {
		f := strings.Fields(l)
		if len(f) >= 2 {
			n, _ := strconv.Atoi(f[1])
			total += n
		}
	}
	return total
}
