//go:build e2e

package e2e

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/mqha/mqha/internal/lab"
)

// mqttConnect opens a TLS connection to addr and completes an MQTT 3.1.1
// CONNECT/CONNACK as client id, without a client library: a storm of
// thousands must cost the test little.
func mqttConnect(ctx context.Context, addr string, tc *tls.Config, id string) (net.Conn, error) {
	d := tls.Dialer{NetDialer: &net.Dialer{}, Config: tc}
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	// Variable header: "MQTT", level 4, clean session, keepalive 60 s.
	body := append([]byte{0, 4, 'M', 'Q', 'T', 'T', 4, 0x02, 0, 60}, byte(len(id)>>8), byte(len(id)))
	body = append(body, id...)
	pkt := append([]byte{0x10}, remainingLength(len(body))...)
	if _, err := c.Write(append(pkt, body...)); err != nil {
		c.Close()
		return nil, err
	}
	ack := make([]byte, 4)
	if _, err := io.ReadFull(c, ack); err != nil {
		c.Close()
		return nil, fmt.Errorf("no CONNACK: %w", err)
	}
	if ack[0] != 0x20 || ack[3] != 0 {
		c.Close()
		return nil, fmt.Errorf("CONNACK refused: % x", ack)
	}
	c.SetDeadline(time.Time{})
	return c, nil
}

func remainingLength(n int) []byte {
	var out []byte
	for {
		b := byte(n % 128)
		n /= 128
		if n > 0 {
			b |= 0x80
		}
		out = append(out, b)
		if n == 0 {
			return out
		}
	}
}

// storm connects n clients through addr with at most inFlight handshakes at
// once and returns the open connections, the connect latencies and the
// failures (first few errors kept).
func storm(t *testing.T, addr string, n, inFlight int, prefix string) ([]net.Conn, []time.Duration, int, []string) {
	t.Helper()
	tc := tlsConfig(t)
	tc.ServerName = cfg.VIP()
	tc.ClientSessionCache = nil // every client a full handshake, as after a failover
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var (
		mu    sync.Mutex
		conns []net.Conn
		lat   []time.Duration
		errs  []string
		fails atomic.Int32
		wg    sync.WaitGroup
	)
	sem := make(chan struct{}, inFlight)
	for i := range n {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			cctx, ccancel := context.WithTimeout(ctx, 30*time.Second)
			defer ccancel()
			start := time.Now()
			c, err := mqttConnect(cctx, addr, tc, fmt.Sprintf("%s-%05d", prefix, i))
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				fails.Add(1)
				if len(errs) < 5 {
					errs = append(errs, err.Error())
				}
				return
			}
			conns = append(conns, c)
			lat = append(lat, time.Since(start))
		}()
	}
	wg.Wait()
	t.Cleanup(func() {
		for _, c := range conns {
			c.Close()
		}
	})
	return conns, lat, int(fails.Load()), errs
}

func pct(ds []time.Duration, p int) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[min(len(s)-1, (p*len(s)+99)/100-1)]
}

// TestReconnectStorm (issue 12, 1 and 8): 5,000 mutual-TLS clients connect
// through the VIP at full speed, first with 300 handshakes in flight (the
// burst that used to end in a full outage), then with 1,500, which drives
// the brokers' health probes past their deadline. Overloaded is not hung: no
// daemon is killed, the VIP does not move, nginx never finds every broker
// down, and at most 1% of the first storm's connects fail (measured 0-11 of
// 5,000: accept queues overflowing on the loaded machine).
func TestReconnectStorm(t *testing.T) {
	// At 1,500 in flight the brokers' accept queues (mosquitto 2.0 listens
	// with a fixed backlog of 100) overflow and nginx's connects time out:
	// those clients are refused (measured 6-300 of 5,000), which is
	// reported; what is asserted is that nothing the agents do makes it worse.
	for _, phase := range []struct {
		inFlight, maxFailed int
	}{{300, 5000 / 100}, {1500, 5000}} {
		t.Run(fmt.Sprintf("%d-in-flight", phase.inFlight), func(t *testing.T) {
			reconnectStorm(t, 5000, phase.inFlight, phase.maxFailed)
		})
	}
}

func reconnectStorm(t *testing.T, clients, inFlight, maxFailed int) {
	holder := waitVIP(t, 15*time.Second)
	daemons := map[string]string{"broker1": "mosquitto", "broker2": "mosquitto", "bridge": "mosquitto", "lb1": "nginx", "lb2": "nginx"}
	before := map[string]string{}
	for n, u := range daemons {
		before[n] = unitStart(t, n, u)
	}
	logLines := map[string]int{}
	for _, lb := range []string{"lb1", "lb2"} {
		logLines[lb] = len(strings.Split(onAny(t, lb, "cat", "/var/log/nginx/error.log"), "\n"))
	}

	// Watch the VIP all along, from before the first connect to 10 s after
	// the last.
	stop := make(chan struct{})
	moved := make(chan string, 1)
	go func() {
		for {
			select {
			case <-stop:
				return
			case <-time.After(200 * time.Millisecond):
			}
			if h := vipHolder(t); h != holder {
				select {
				case moved <- h:
				default:
				}
			}
		}
	}()
	start := time.Now()
	conns, lat, fails, errs := storm(t, vip(), clients, inFlight, fmt.Sprintf("storm%d", inFlight))
	took := time.Since(start)
	report(t, "%d of %d clients connected through the VIP in %s (%d in flight): %.0f connects/s, connect p50 %s p95 %s p99 %s, %d failed %v",
		len(conns), clients, took.Round(time.Millisecond), inFlight, float64(len(conns))/took.Seconds(),
		pct(lat, 50).Round(time.Millisecond), pct(lat, 95).Round(time.Millisecond), pct(lat, 99).Round(time.Millisecond), fails, errs)
	time.Sleep(10 * time.Second) // the health loops keep checking under the held load
	close(stop)
	for _, c := range conns {
		c.Close()
	}

	select {
	case h := <-moved:
		t.Errorf("the VIP moved from %s to %q during the storm", holder, h)
	default:
	}
	for n, u := range daemons {
		if now := unitStart(t, n, u); now != before[n] {
			t.Errorf("%s on %s was restarted or killed during the storm (%q -> %q)", u, n, before[n], now)
		}
	}
	for _, lb := range []string{"lb1", "lb2"} {
		lines := strings.Split(onAny(t, lb, "cat", "/var/log/nginx/error.log"), "\n")
		for _, l := range lines[min(logLines[lb]-1, len(lines)):] {
			if strings.Contains(l, "no live upstreams") {
				t.Errorf("%s: %s", lb, l)
				break
			}
		}
	}
	since := "--since=@" + fmt.Sprint(start.Unix())
	for _, n := range []string{"broker1", "broker2", "lb1", "lb2"} {
		journal := onAny(t, n, "journalctl", "-u", "mqha-agent", since, "--no-pager", "-o", "cat")
		silent, spared := strings.Count(journal, "err=\"no answer"), strings.Count(journal, "no answer, not killed")
		if silent > 0 {
			report(t, "%s: %d probes got no answer in time, %d times judged busy (or waited for evidence) and not killed", n, silent, spared)
		}
		if strings.Contains(journal, "killing it") {
			t.Errorf("%s's agent killed a daemon during the storm", n)
		}
	}
	if fails > maxFailed {
		t.Errorf("%d of %d connects failed (at most %d allowed): %v", fails, clients, maxFailed, errs)
	}
}

// held is a set of idle MQTT clients that notices every one the far end
// drops, pinging each every 20 s (their keepalive is 60 s).
type held struct {
	conns   []net.Conn
	dropped atomic.Int32
	stop    chan struct{}
	stopped atomic.Bool
}

func hold(t *testing.T, n int, prefix string) *held {
	t.Helper()
	conns, _, fails, errs := storm(t, vip(), n, 100, prefix)
	if fails > 0 {
		t.Fatalf("%d of %d clients could not connect: %v", fails, n, errs)
	}
	h := &held{conns: conns, stop: make(chan struct{})}
	for _, c := range conns {
		go func() {
			buf := make([]byte, 2)
			for {
				if _, err := io.ReadFull(c, buf); err != nil {
					if !h.stopped.Load() {
						h.dropped.Add(1)
					}
					return
				}
			}
		}()
	}
	go func() {
		for {
			select {
			case <-h.stop:
				return
			case <-time.After(20 * time.Second):
			}
			for _, c := range h.conns {
				c.Write([]byte{0xc0, 0}) // PINGREQ
			}
		}
	}()
	t.Cleanup(h.close)
	return h
}

func (h *held) close() {
	if h.stopped.Swap(true) {
		return
	}
	close(h.stop)
	for _, c := range h.conns {
		c.Close()
	}
}

// TestCommitDropsNoClient (issue 12, 4 and 8): a commit that adds a broker
// reloads nginx on both load balancers; the 1,000 clients held through the
// VIP stay connected for 60 s after the reload (old workers keep their
// connections; they used to cut them all at worker_shutdown_timeout, 30 s).
func TestCommitDropsNoClient(t *testing.T) {
	addr := spareBroker3(t)
	const n = 1000
	h := hold(t, n, "held")
	nginx := map[string]string{"lb1": unitStart(t, "lb1", "nginx"), "lb2": unitStart(t, "lb2", "nginx")}
	pushed := time.Now()
	head := commit(t, "e2e: add broker3 under held clients", map[string]string{"broker3.cue": fmt.Sprintf("package cluster\n\nnodes: broker3: {address: %q, roles: [\"broker\"]}\n", addr)})
	t.Cleanup(func() {
		// broker3 leaves the definition again (and says so); the others apply.
		gone := commit(t, "e2e: remove broker3", map[string]string{"broker3.cue": ""})
		appliedAfter(t, gone, time.Now(), 60*time.Second, "lb1", "lb2", "bridge", "broker1", "broker2")
	})
	d := appliedAfter(t, head, pushed, 60*time.Second, "lb1", "lb2", "bridge", "broker1", "broker2", "broker3")
	for lb, before := range nginx {
		if unitStart(t, lb, "nginx") != before {
			t.Fatalf("nginx on %s was restarted, not reloaded", lb)
		}
		if !strings.Contains(on(t, lb, "cat", "/etc/nginx/nginx.conf"), addr+":8883") {
			t.Fatalf("%s did not take broker3 into its upstream", lb)
		}
	}
	time.Sleep(60 * time.Second)
	dropped := int(h.dropped.Load())
	report(t, "nginx reloaded on both load balancers (every node applied %s after the push); %d of %d held clients dropped in the 60 s after", d.Round(time.Millisecond), dropped, n)
	if dropped != 0 {
		t.Errorf("%d of %d held clients were dropped by a commit that only added a broker", dropped, n)
	}
}

// sourceAddrs adds n addresses of the lab subnet to the lab bridge for the
// test (clients from several addresses spread over the brokers: nginx
// hashes the client address) and removes them after.
func sourceAddrs(t *testing.T, n int) []string {
	t.Helper()
	var out []string
	// .200 and up: clear of the nodes (.11-.2x), the VIP (.100) and the host (.1).
	for i := 200; i < 200+n; i++ {
		a := cfg.Addr(i)
		b, err := exec.Command("ip", "addr", "add", a+"/24", "dev", cfg.Bridge).CombinedOutput()
		switch {
		case err != nil && strings.Contains(string(b), "already assigned"):
			// an earlier step of this test added it and removes it
		case err != nil:
			t.Fatalf("add %s to %s: %v %s", a, cfg.Bridge, err, b)
		default:
			t.Cleanup(func() { exec.Command("ip", "addr", "del", a+"/24", "dev", cfg.Bridge).Run() })
		}
		out = append(out, a)
	}
	return out
}

// connectFrom connects an MQTT client to the VIP from source address src
// and returns it with the name of the broker it reached.
func connectFrom(t *testing.T, src, id string) (net.Conn, string) {
	t.Helper()
	c, broker, err := dialFrom(tlsConfig(t), src, id, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c, broker
}

// dialFrom is connectFrom for goroutines: it returns its error.
func dialFrom(tc *tls.Config, src, id string, timeout time.Duration) (net.Conn, string, error) {
	tc = tc.Clone()
	tc.ServerName = cfg.VIP()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	d := tls.Dialer{NetDialer: &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}, Config: tc}
	c, err := d.DialContext(ctx, "tcp", vip())
	if err != nil {
		return nil, "", fmt.Errorf("connect from %s: %w", src, err)
	}
	broker := c.(*tls.Conn).ConnectionState().PeerCertificates[0].Subject.CommonName
	body := append([]byte{0, 4, 'M', 'Q', 'T', 'T', 4, 0x02, 0, 60, 0, byte(len(id))}, id...)
	c.SetDeadline(time.Now().Add(timeout))
	c.Write(append([]byte{0x10, byte(len(body))}, body...))
	ack := make([]byte, 4)
	if _, err := io.ReadFull(c, ack); err != nil || ack[0] != 0x20 || ack[3] != 0 {
		c.Close()
		return nil, "", fmt.Errorf("CONNACK from %s: % x %v", broker, ack, err)
	}
	c.SetDeadline(time.Time{})
	return c, broker, nil
}

// TestRemovedBrokerClientsMove (issue 12, 4): a commit removing a broker
// closes the connections to it, and only those; their clients reconnect to
// the brokers that remain.
func TestRemovedBrokerClientsMove(t *testing.T) {
	addr := spareBroker3(t)
	srcs := sourceAddrs(t, 12)
	leave := func() {
		if _, err := os.Stat(filepath.Join(cfg.Dir, "cluster", "broker3.cue")); err == nil {
			gone := commit(t, "e2e: broker3 leaves", map[string]string{"broker3.cue": ""})
			appliedAfter(t, gone, time.Now(), 60*time.Second, "lb1", "lb2", "bridge", "broker1", "broker2")
		}
	}
	leave() // whatever an earlier scenario left
	t.Cleanup(leave)
	head := commit(t, "e2e: broker3 joins", map[string]string{"broker3.cue": fmt.Sprintf("package cluster\n\nnodes: broker3: {address: %q, roles: [\"broker\"]}\n", addr)})
	appliedAfter(t, head, time.Now(), 60*time.Second, "lb1", "lb2", "bridge", "broker1", "broker2", "broker3")

	type client struct {
		src, broker string
		closed      chan struct{}
	}
	var clients []client
	on3 := 0
	for i, src := range srcs {
		c, broker := connectFrom(t, src, fmt.Sprintf("move-%d", i))
		cl := client{src, broker, make(chan struct{})}
		go func() {
			io.Copy(io.Discard, c)
			close(cl.closed)
		}()
		clients = append(clients, cl)
		if broker == "broker3" {
			on3++
		}
	}
	if on3 == 0 || on3 == len(clients) {
		t.Fatalf("clients from %d addresses: %d on broker3; need some on it and some elsewhere", len(srcs), on3)
	}
	pushed := time.Now()
	gone := commit(t, "e2e: broker3 leaves", map[string]string{"broker3.cue": ""})
	appliedAfter(t, gone, pushed, 60*time.Second, "lb1", "lb2", "bridge", "broker1", "broker2")
	deadline := time.After(10 * time.Second)
	for _, cl := range clients {
		if cl.broker != "broker3" {
			continue
		}
		select {
		case <-cl.closed:
		case <-deadline:
			t.Fatalf("the connection from %s to the removed broker3 is still open", cl.src)
		}
	}
	took := time.Since(pushed)
	time.Sleep(2 * time.Second)
	kept := 0
	for _, cl := range clients {
		select {
		case <-cl.closed:
			if cl.broker != "broker3" {
				t.Errorf("the connection from %s to %s was closed too", cl.src, cl.broker)
			}
		default:
			kept++
		}
	}
	for i, cl := range clients {
		if cl.broker == "broker3" {
			if _, b := connectFrom(t, cl.src, fmt.Sprintf("moved-%d", i)); b == "broker3" {
				t.Errorf("a client from %s reconnected to the removed broker3", cl.src)
			}
		}
	}
	report(t, "broker3 removed: its %d clients were disconnected within %s of the push and reconnected to the others; %d clients of other brokers kept their connections",
		on3, took.Round(time.Millisecond), kept)
}

// TestBridgeBurst (issue 12, 3 and 8): a 20,000-message QoS1 burst published
// on broker1, each acknowledged to the publisher, arrives complete at a
// subscriber on broker2, across the bridge master.
func TestBridgeBurst(t *testing.T) {
	const total = 20000
	topic := fmt.Sprintf("e2e/burst/%d", time.Now().UnixNano())
	in := subscribe(t, client(t, brokerAddr(t, "broker2"), "burst-sub", true), topic)
	time.Sleep(500 * time.Millisecond) // the subscription crosses the bridge
	pub := client(t, brokerAddr(t, "broker1"), "burst-pub", true)
	start := time.Now()
	toks := make(chan mqtt.Token, 200) // at most 200 unacknowledged at once
	var acked atomic.Int32
	done := make(chan struct{})
	go func() {
		defer close(done)
		for tok := range toks {
			if tok.WaitTimeout(30*time.Second) && tok.Error() == nil {
				acked.Add(1)
			}
		}
	}()
	for i := range total {
		toks <- pub.Publish(topic, 1, false, fmt.Sprintf("b%05d", i))
	}
	close(toks)
	<-done
	pubTook := time.Since(start)
	deadline := time.Now().Add(60 * time.Second)
	for in.unique() < total && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	got := in.unique()
	report(t, "QoS1 burst across the bridge: %d published and acknowledged in %s (%.0f msg/s), %d received on broker2, %d lost",
		acked.Load(), pubTook.Round(time.Millisecond), float64(acked.Load())/pubTook.Seconds(), got, int(acked.Load())-got)
	if int(acked.Load()) != total || got != total {
		t.Errorf("acknowledged %d of %d, received %d", acked.Load(), total, got)
	}
}

// TestBridgeDropsReported (issue 12, 3): when a queue is too small after all
// (here squeezed to 100 by a commit), mosquitto drops acknowledged messages;
// the agent of that broker counts it and says so in status and metrics.
func TestBridgeDropsReported(t *testing.T) {
	head := commit(t, "e2e: tiny queues", map[string]string{"queues.cue": "package cluster\n\nmqtt: maxQueuedMessages: 100\n"})
	t.Cleanup(func() { revert(t, "queues.cue") })
	appliedAfter(t, head, time.Now(), 60*time.Second, "broker1", "broker2", "bridge")
	topic := fmt.Sprintf("e2e/drops/%d", time.Now().UnixNano())
	in := subscribe(t, client(t, brokerAddr(t, "broker2"), "drops-sub", true), topic)
	time.Sleep(500 * time.Millisecond)
	pub := client(t, brokerAddr(t, "broker1"), "drops-pub", true)
	const total = 20000
	toks := make(chan mqtt.Token, 200)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for tok := range toks {
			tok.WaitTimeout(30 * time.Second)
		}
	}()
	for i := range total {
		toks <- pub.Publish(topic, 1, false, fmt.Sprintf("d%05d", i))
	}
	close(toks)
	<-done
	time.Sleep(3 * time.Second)
	t.Logf("queues of 100: %d of %d received across the bridge", in.unique(), total)
	var drops []string
	waitFor(t, 30*time.Second, "broker1's status reports the drops", func() bool {
		drops = nil
		for _, d := range agentStatus(t, "broker1").Drops {
			drops = append(drops, fmt.Sprintf("%s x%d", d.Client, d.Episodes))
		}
		return len(drops) > 0
	})
	report(t, "queues of 100: %d of %d received across the bridge; broker1's agent reports drops for %v", in.unique(), total, drops)
	text, code := statusOf(t, "broker1")
	if !strings.Contains(text, "DROPPED") || code != 1 {
		t.Errorf("mqha-agent status exits %d and does not show the drops as degraded:\n%s", code, text)
	}
	body := metricsOf(t, "broker1")
	if !strings.Contains(body, "mqha_mosquitto_drop_episodes_total{client=") {
		t.Error("the metrics do not count the drops")
	}
}

// TestLimitsHold (issue 12, 2): the agents size nginx and mosquitto for
// the descriptors this host grants (the sandbox caps every process at
// 20,000), so the configured limits are in force (nginx no longer fails
// setrlimit), and say in status and metrics that a daemon cannot hold
// limits.clients here.
func TestLimitsHold(t *testing.T) {
	// The lab plans for what this machine holds; ask for 50,000, as the
	// example does, to see the brokers say they cannot.
	own, _ := os.ReadFile(filepath.Join(cfg.Dir, "cluster", lab.LimitsFile))
	t.Cleanup(func() {
		back := commit(t, "e2e: the lab's own plan again", map[string]string{lab.LimitsFile: string(own)})
		appliedAfter(t, back, time.Now(), 60*time.Second, "lb1", "lb2", "bridge", "broker1", "broker2")
	})
	head := commit(t, "e2e: plan for 50,000 clients", map[string]string{lab.LimitsFile: "package cluster\n\nlimits: clients: 50000\n"})
	appliedAfter(t, head, time.Now(), 60*time.Second, "lb1", "lb2", "bridge", "broker1", "broker2")
	waitFor(t, 30*time.Second, "broker1's warning", func() bool { return len(agentStatus(t, "broker1").Warnings) > 0 })
	conf := on(t, "lb1", "cat", "/etc/nginx/nginx.conf")
	hard := strings.TrimSpace(on(t, "lb1", "sh", "-c", "ulimit -Hn"))
	if !strings.Contains(conf, "worker_rlimit_nofile "+hard+";") {
		t.Errorf("nginx is not sized for this host's %s descriptors:\n%s", hard, conf)
	}
	on(t, "lb1", "systemctl", "reload", "nginx")
	time.Sleep(time.Second)
	if log := onAny(t, "lb1", "sh", "-c", "tail -n 20 /var/log/nginx/error.log"); strings.Contains(log, "setrlimit") {
		t.Errorf("nginx still fails to set its descriptor limit:\n%s", log)
	}
	// nginx: more workers than processors, each within the host's limit,
	// hold limits.clients (50,000) together; reuseport spreads them.
	if !strings.Contains(conf, "reuseport") || strings.Contains(conf, "worker_processes auto;") {
		t.Errorf("nginx does not run enough workers for 50,000 clients with %s descriptors each:\n%s", hard, conf)
	}
	if w := agentStatus(t, "lb1").Warnings; len(w) != 0 {
		t.Errorf("lb1 warns although its workers hold limits.clients: %q", w)
	}
	// mosquitto: one process per broker; two brokers cannot hold 50,000.
	s := agentStatus(t, "broker1")
	report(t, "host allows %s descriptors per process; lb1 runs %s; broker1 warns: %q", hard,
		strings.TrimSpace(on(t, "lb1", "sh", "-c", "grep worker_processes /etc/nginx/nginx.conf")), s.Warnings)
	if len(s.Warnings) == 0 {
		t.Errorf("broker1: no warning that its share of limits.clients cannot be held with %s descriptors", hard)
	}
	for _, w := range s.Warnings {
		if strings.Contains(w, "not in force") {
			t.Errorf("broker1: %s", w)
		}
	}
	body := metricsOf(t, "lb1")
	if !strings.Contains(body, `mqha_limit_ok{unit="nginx.service"} 1`) {
		t.Error("mqha_limit_ok does not say nginx's limits hold")
	}
	if !strings.Contains(metricsOf(t, "broker1"), `mqha_limit_ok{unit="mosquitto.service"} 0`) {
		t.Error("mqha_limit_ok does not report mosquitto's shortfall")
	}
	// Certificates and their expiry, in status and metrics (issue 8, 2).
	// The lab's ca.crt holds two CAs (clients' and nodes'): each its own.
	certs := agentStatus(t, "lb1").Certificates
	if len(certs) != 3 || certs[1].Name == certs[2].Name || !strings.Contains(body, `mqha_certificate_expiry_timestamp_seconds{cert="node"}`) ||
		!strings.Contains(body, `mqha_certificate_expiry_timestamp_seconds{cert="`+certs[2].Name+`"}`) {
		t.Errorf("certificates in status %+v, or no expiry metric for each", certs)
	}
	for _, c := range certs {
		report(t, "lb1's %s certificate %s expires %s", c.Name, c.File, c.NotAfter.Format("2006-01-02"))
	}
}
