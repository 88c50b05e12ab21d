//go:build e2e

package e2e

import (
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
)

// TestFromNothing: the lab as `make lab` leaves it serves MQTT over verified
// TLS through the VIP, and the bridge joins every broker.
func TestFromNothing(t *testing.T) {
	holder := waitVIP(t, 15*time.Second)
	t.Logf("VIP held by %s", holder)
	topic := fmt.Sprintf("e2e/nothing/%d", time.Now().UnixNano())

	// A subscriber on every broker and on the bridge node, each directly.
	subs := map[string]*inbox{}
	for _, n := range []string{"broker1", "broker2", "bridge"} {
		subs[n] = subscribe(t, client(t, brokerAddr(t, n), "sub-"+n, true), topic)
	}
	viaVIP := subscribe(t, client(t, vip(), "sub-vip", true), topic+"/back")
	time.Sleep(300 * time.Millisecond) // subscriptions propagate over the bridges

	start := time.Now()
	publish(t, client(t, vip(), "pub-vip", true), topic, "through the VIP")
	for n, in := range subs {
		in.wait(t, "through the VIP", 10*time.Second)
		t.Logf("%s received the message published through the VIP", n)
	}
	report(t, "QoS1 message through the VIP reached broker1, broker2 and the bridge node in %s", time.Since(start).Round(time.Millisecond))

	start = time.Now()
	publish(t, client(t, brokerAddr(t, "broker2"), "pub-broker2", true), topic+"/back", "published on broker2")
	viaVIP.wait(t, "published on broker2", 10*time.Second)
	report(t, "message published on broker2 reached the subscriber behind the VIP in %s", time.Since(start).Round(time.Millisecond))
}

// TestRejectedNginxConfigNeverLive: a commit whose nginx.conf nginx rejects
// on one load balancer (its stream module is gone) is never written there;
// nginx keeps serving the old configuration, the other nodes converge.
func TestRejectedNginxConfigNeverLive(t *testing.T) {
	const module = "/etc/nginx/modules-enabled/50-mod-stream.conf"
	before := on(t, "lb2", "cat", "/etc/nginx/nginx.conf")
	const away = "/root/50-mod-stream.conf.away"
	restore := func() { onAny(t, "lb2", "sh", "-c", "test -e "+away+" && mv "+away+" "+module) }
	on(t, "lb2", "mv", module, away)
	t.Cleanup(restore)

	head := commit(t, "e2e: shorter nginx connect timeout", map[string]string{"timeouts.cue": "package cluster\n\ntimeouts: connect: 3\n"})
	deadline := time.Now().Add(30 * time.Second)
	var status string
	for time.Now().Before(deadline) {
		if status = strings.TrimSpace(on(t, "lb2", "systemctl", "show", "-p", "StatusText", "--value", "mqha-agent")); strings.Contains(status, "refused "+head[:12]) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if !strings.Contains(status, "refused "+head[:12]) || !strings.Contains(status, "nginx") {
		t.Fatalf("lb2 did not refuse %s; status %q", head[:12], status)
	}
	t.Logf("lb2 agent: %s", status)
	if after := on(t, "lb2", "cat", "/etc/nginx/nginx.conf"); after != before {
		t.Fatal("the rejected nginx.conf was written on lb2")
	}
	if st := strings.TrimSpace(onAny(t, "lb2", "systemctl", "is-active", "nginx")); st != "active" {
		t.Fatalf("nginx on lb2 is %s", st)
	}
	// Straight to lb2 (not the VIP): the broker behind it presents a
	// certificate for the VIP, which is what clients connect to.
	viaLB2 := tlsConfig(t)
	viaLB2.ServerName = cfg.VIP()
	if !handshake(node(t, "lb2").Addr+":9000", viaLB2) {
		t.Fatal("nginx on lb2 no longer passes TLS through to a broker")
	}
	if !strings.Contains(on(t, "lb1", "cat", "/etc/nginx/nginx.conf"), "proxy_connect_timeout 3s;") {
		t.Fatal("lb1 did not converge on the commit")
	}
	// Put the module back and revert: the next commit converges everyone.
	restore()
	commit(t, "e2e: revert the connect timeout", map[string]string{"timeouts.cue": ""})
	report(t, "rejected on lb2 by nginx -t, never live; all nodes converged on the revert in %s", converged(t, 30*time.Second).Round(time.Millisecond))
}

// TestAddBroker (b, l): one commit adds a broker; the push trigger makes
// every node converge on its own; the new broker receives what is published
// through the VIP; the LB upstream and the bridge include it; nothing else
// restarted; a steady QoS1 stream through the VIP loses nothing.
func TestAddBroker(t *testing.T) {
	addr := cfg.Addr(23)
	start := time.Now()
	if _, err := cfg.AddNode(t.Context(), labProject(), "broker3", addr, "broker"); err != nil {
		t.Fatal(err)
	}
	report(t, "spare node broker3 booted in %s", time.Since(start).Round(time.Millisecond))

	untouched := map[string]string{}
	for _, u := range [][2]string{{"broker1", "mosquitto"}, {"broker2", "mosquitto"}, {"lb1", "nginx"}, {"lb2", "nginx"}, {"lb1", "keepalived"}, {"lb2", "keepalived"}} {
		untouched[u[0]+"/"+u[1]] = unitStart(t, u[0], u[1])
	}
	bridgeBefore := unitStart(t, "bridge", "mosquitto")
	s := startStream(t, "add-broker")
	// Retained before broker3 exists: a client of broker3 must find it.
	retained := fmt.Sprintf("e2e/add/retained/%d", time.Now().UnixNano())
	keeper := client(t, vip(), "pub-retained", true)
	if tok := keeper.Publish(retained, 1, true, "kept for broker3"); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("publish retained: %v", tok.Error())
	}
	t.Cleanup(func() { keeper.Publish(retained, 1, true, "").WaitTimeout(5 * time.Second) }) // cleared
	time.Sleep(time.Second)

	pushed := time.Now()
	head := commit(t, "add broker3", map[string]string{"broker3.cue": fmt.Sprintf("package cluster\n\nnodes: broker3: {address: %q, roles: [\"broker\"]}\n", addr)})
	d := appliedAfter(t, head, pushed, 60*time.Second, "lb1", "lb2", "bridge", "broker1", "broker2", "broker3")
	report(t, "all 6 nodes applied the commit adding broker3 %s after the push (push trigger; target 3 s, measured over repeated pushes by make bench-lab)", d.Round(time.Millisecond))
	// A hard bound, 3x the typical 1.8-3.0 s: the target is the bench's.
	if d > 10*time.Second {
		t.Errorf("took %s, hard bound 10 s", d)
	}

	for _, lb := range []string{"lb1", "lb2"} {
		if !strings.Contains(on(t, lb, "cat", "/etc/nginx/nginx.conf"), "server "+addr+":8883") {
			t.Errorf("%s's upstream lacks broker3", lb)
		}
	}
	if !strings.Contains(on(t, "bridge", "cat", "/etc/mosquitto/mosquitto.conf"), "connection mqha-broker3\naddress "+addr+":8884") {
		t.Error("the bridge has no connection to broker3")
	}
	for k, v := range untouched {
		parts := strings.SplitN(k, "/", 2)
		if now := unitStart(t, parts[0], parts[1]); now != v {
			t.Errorf("%s was restarted (%q -> %q)", k, v, now)
		}
	}
	if unitStart(t, "bridge", "mosquitto") == bridgeBefore {
		t.Error("the bridge master was not restarted, so it cannot have the new bridge")
	}

	topic := fmt.Sprintf("e2e/add/%d", time.Now().UnixNano())
	in := subscribe(t, client(t, brokerAddr(t, "broker3"), "sub-broker3", true), topic)
	deadline := time.Now().Add(20 * time.Second)
	pub := client(t, vip(), "pub-add", true)
	for !in.has("hello broker3") {
		if time.Now().After(deadline) {
			t.Fatal("nothing published through the VIP reached broker3")
		}
		publish(t, pub, topic, "hello broker3")
		time.Sleep(200 * time.Millisecond)
	}
	joined := time.Now()
	old := subscribe(t, client(t, brokerAddr(t, "broker3"), "sub-broker3-retained", true), retained)
	old.wait(t, "kept for broker3", 10*time.Second)
	report(t, "broker3 serves the message retained before it joined (%s after it served)", time.Since(joined).Round(time.Millisecond))
	s.finish(t)
}

// TestRemoveBroker (c): one commit removes broker3 again; without the push
// trigger every node converges within the poll interval + 5 s (the target;
// the hard bound is 3x the typical figure). A client still on broker3
// loses nothing: the bridge keeps bridging broker3 until it stops serving.
// broker3 decommissions itself once the others have let go of it; then the
// bridge drops it and ends that connection's local session.
func TestRemoveBroker(t *testing.T) {
	bridgeID := bridgeClientID(t, "bridge", "broker3")
	topic := fmt.Sprintf("e2e/remove/%d", time.Now().UnixNano())
	in := subscribe(t, client(t, brokerAddr(t, "broker1"), "sub-remove", true), topic)
	o := mqtt.NewClientOptions().AddBroker("ssl://" + brokerAddr(t, "broker3")).SetClientID("pub-remove").SetTLSConfig(tlsConfig(t)).
		SetAutoReconnect(false).SetConnectTimeout(3 * time.Second)
	pub := mqtt.NewClient(o)
	if tok := pub.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("connect to broker3: %v", tok.Error())
	}
	defer pub.Disconnect(50)

	var pushed time.Time
	var head string
	withoutPushTrigger(t, func() {
		pushed = time.Now()
		head = commit(t, "remove broker3", map[string]string{"broker3.cue": ""})
	})
	d := appliedAfter(t, head, pushed, 30*time.Second, "lb1", "lb2", "bridge", "broker1", "broker2")
	report(t, "all nodes applied the removal %s after the push (no push trigger, polling every 5 s; target 10 s)", d.Round(time.Millisecond))
	// A hard bound, 3x the typical 4.2-4.8 s: the target is the bench's.
	if d > 15*time.Second {
		t.Errorf("took %s, hard bound 15 s", d)
	}
	for _, lb := range []string{"lb1", "lb2"} {
		if strings.Contains(on(t, lb, "cat", "/etc/nginx/nginx.conf"), "# broker3") {
			t.Errorf("%s still sends clients to broker3", lb)
		}
	}
	// The client still on broker3 publishes after every node applied the
	// removal: all of it reaches broker1.
	for i := range 40 {
		if tok := pub.Publish(topic, 1, false, fmt.Sprintf("late-%02d", i)); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
			t.Fatalf("publish on broker3: %v", tok.Error())
		}
		time.Sleep(25 * time.Millisecond)
	}
	waitFor(t, 10*time.Second, "what a client still on broker3 published after the removal reached broker1", func() bool { return in.unique() == 40 })
	if !strings.Contains(on(t, "bridge", "cat", "/etc/mosquitto/mosquitto.conf"), "connection mqha-broker3\n") {
		t.Error("the bridge dropped broker3 while a client was still on it")
	}
	report(t, "a client left on broker3 after the removal: 40/40 of its messages reached broker1 (bridged until broker3 stops)")
	pub.Disconnect(50)

	// broker3 leaves once the others let go of it: the LBs took it out of
	// nginx and closed its clients' connections, every agent stopped
	// publishing to it; then its mosquitto is stopped and disabled, and
	// status says so (exit 0: that is what the commit says).
	dd := waitFor(t, 30*time.Second, "broker3 decommissioned", func() bool {
		d := agentStatus(t, "broker3").Decommission
		return d != nil && !d.Done.IsZero()
	})
	dc := agentStatus(t, "broker3").Decommission
	if !strings.Contains(dc.State, "no other host was connected") {
		t.Errorf("broker3 did not wait for the others to let go: %s", dc.State)
	}
	if a, e := strings.TrimSpace(onAny(t, "broker3", "systemctl", "is-active", "mosquitto")), strings.TrimSpace(onAny(t, "broker3", "systemctl", "is-enabled", "mosquitto")); a != "inactive" || e != "disabled" {
		t.Errorf("broker3's mosquitto is %s and %s, want inactive and disabled", a, e)
	}
	out, code := statusOf(t, "broker3")
	if code != 0 || !strings.Contains(out, "DECOMMISSIONED") {
		t.Errorf("status exit %d:\n%s", code, out)
	}
	report(t, "broker3 decommissioned %s after the others applied its removal: %s", dd.Round(time.Millisecond), dc.State)

	// Then the bridge drops it (typically 4 s: three probes a second).
	dropped := waitFor(t, 30*time.Second, "the bridge drops broker3 once it stopped", func() bool {
		return !strings.Contains(on(t, "bridge", "cat", "/etc/mosquitto/mosquitto.conf"), "broker3")
	})
	report(t, "the bridge dropped broker3 %s after it was decommissioned", dropped.Round(time.Millisecond))
	// mosquitto restores the removed connection's local session
	// (local.<client id>) from its persistence; left, it queues every
	// message for broker3 for ever. The agent ends it once it dropped the
	// connection: the bridge's mosquitto then keeps no disconnected
	// session. ($SYS comes every 10 s.)
	waitFor(t, 15*time.Second, "the bridge's agent says it ended the session local."+bridgeID, func() bool {
		return strings.Contains(onAny(t, "bridge", "journalctl", "-u", "mqha-agent", "--since", "-2min", "--no-pager"), "local."+bridgeID)
	})
	waitFor(t, 30*time.Second, "the bridge's mosquitto keeps no session for a removed connection", func() bool {
		return sysValue(t, brokerAddr(t, "bridge"), "$SYS/broker/clients/disconnected") == "0"
	})
}

// TestNginxStoppedOnVIPHolder: nginx SIGSTOPped on the VIP holder (hung:
// systemd still says active, the port still accepts TCP). The agent sees
// its process stopped (it reads /proc every 0.5 s), confirms with one short
// probe through it that nothing answers, gives up the VIP and replaces
// nginx, instead of waiting for a second failed round.
func TestNginxStoppedOnVIPHolder(t *testing.T) {
	holder := waitVIP(t, 15*time.Second)
	other := map[string]string{"lb1": "lb2", "lb2": "lb1"}[holder]
	t0 := time.Now()
	on(t, holder, "systemctl", "kill", "-s", "STOP", "nginx")
	t.Cleanup(func() { onAny(t, holder, "systemctl", "kill", "-s", "CONT", "nginx") })
	back := vipServesFrom(t, t0, other)
	report(t, "nginx SIGSTOPped on VIP holder %s: VIP serving from %s after %s", holder, other, back.Round(time.Millisecond))
	// Bound: over 3x the 2.1 s seen (the stopped state read within 0.5 s,
	// a 0.3 s probe, VRRP's move); before, it took 3.9-5.1 s (two failed
	// rounds).
	if back > 7*time.Second {
		t.Errorf("VIP served again %s after nginx was stopped, want within 7 s", back)
	}
	waitFor(t, 30*time.Second, "nginx on "+holder+" replaced and serving", func() bool {
		st := agentStatus(t, holder)
		return len(st.Checks) > 0 && st.Checks[0].OK
	})
}

// TestLBFailover: nginx killed on the VIP holder; the VIP moves to the
// other load balancer and a QoS1 subscriber with a persistent session loses
// none of the messages a publisher sends through the failover.
func TestLBFailover(t *testing.T) {
	holder := waitVIP(t, 15*time.Second)
	other := map[string]string{"lb1": "lb2", "lb2": "lb1"}[holder]
	t.Logf("this host's clients go to %s through either load balancer", lbsAgree(t))
	topic := fmt.Sprintf("e2e/failover/%d", time.Now().UnixNano())
	in := subscribe(t, client(t, vip(), "e2e-failover-sub", false), topic)
	pub := client(t, vip(), "e2e-failover-pub", false)

	const total = 300
	var sent atomic.Int32
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range total {
			// QoS1 with the client's store: a message sent while the VIP
			// moves is kept and resent after reconnecting.
			pub.Publish(topic, 1, false, fmt.Sprintf("m%03d", i))
			sent.Add(1)
			time.Sleep(20 * time.Millisecond)
		}
	}()
	time.Sleep(1 * time.Second)

	// Probe the VIP concurrently with the fault: killing takes time itself.
	killed := time.Now()
	holderNode := node(t, holder)
	go holderNode.Exec(t.Context(), "systemctl", "kill", "-s", "SIGKILL", "nginx")
	cfgTLS := tlsConfig(t)
	var lost time.Duration
	for {
		if time.Since(killed) > 200*time.Millisecond && vipHolder(t) == other && handshake(vip(), cfgTLS) {
			lost = time.Since(killed)
			break
		}
		if time.Since(killed) > 20*time.Second {
			t.Fatalf("the VIP did not move to %s", other)
		}
		time.Sleep(20 * time.Millisecond)
	}
	report(t, "nginx killed on %s: VIP serving TLS from %s after %s", holder, other, lost.Round(time.Millisecond))

	<-done
	deadline := time.Now().Add(30 * time.Second)
	for in.unique() < total && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	report(t, "persistent QoS1 subscriber received %d/%d messages sent through the failover", in.unique(), total)
	if in.unique() != total {
		t.Fatalf("lost %d messages", total-in.unique())
	}
	// nginx on the old holder comes back (Restart=on-failure) and the VIP
	// stays where it is (nopreempt): no second move.
	time.Sleep(4 * time.Second)
	if st := strings.TrimSpace(onAny(t, holder, "systemctl", "is-active", "nginx")); st != "active" {
		t.Errorf("nginx on %s is %s", holder, st)
	}
	if h := vipHolder(t); h != other {
		t.Errorf("the VIP moved again, to %q", h)
	}
}
