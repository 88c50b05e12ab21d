//go:build e2e

package e2e

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/mqha/mqha/internal/control"
	"github.com/mqha/mqha/internal/verdict"
)

// TestSchemaErrorRefused (d): a commit that fails the schema is refused by
// every node, nothing restarts, and status names the file and line.
func TestSchemaErrorRefused(t *testing.T) {
	before := unitStart(t, "broker1", "mosquitto")
	head := commit(t, "e2e: a typo", map[string]string{"typo.cue": "package cluster\n\nvip: routerId: 7\n"})
	t.Cleanup(func() { revert(t, "typo.cue") })
	for _, n := range []string{"lb1", "lb2", "bridge", "broker1", "broker2"} {
		waitFor(t, 15*time.Second, n+" refuses the commit", func() bool { return agentStatus(t, n).Refused == head })
	}
	s := agentStatus(t, "broker1")
	if !strings.Contains(s.RefusedReason, "typo.cue:3:6") || !strings.Contains(s.RefusedReason, "field not allowed") {
		t.Errorf("refusal does not point at the typo: %s", s.RefusedReason)
	}
	report(t, "refused everywhere; status says: %s", s.RefusedReason)
	if text, code := statusOf(t, "broker1"); code != 1 || !strings.Contains(text, "degraded: refused commit") {
		t.Errorf("mqha-agent status exits %d for a refused commit (want 1, degraded):\n%s", code, text)
	}
	if unitStart(t, "broker1", "mosquitto") != before {
		t.Error("mosquitto restarted for a refused commit")
	}
}

// TestUnhealthyCommitRolledBack (issue 24): a commit gives the cluster a
// wrong CA (the node certificate as tls.ca). The canary (broker1) applies it, finds it cannot serve, signs a verdict and rolls back;
// every other node refuses it without applying it (for the verdict, or, on
// a load balancer whose nginx.conf does not change, because its checks fail
// with the new TLS files): one node restarts for it, twice, and every node
// stays on the previous commit and visible in the fleet view. Before the
// verdicts each broker and the bridge applied and rolled back in turn, and
// the load balancers kept it.
func TestUnhealthyCommitRolledBack(t *testing.T) {
	nodes := []string{"lb1", "lb2", "bridge", "broker1", "broker2"}
	conf := on(t, "broker1", "cat", "/etc/mosquitto/mosquitto.conf")
	prev, since, head := wrongCAWithCanary(t, nodes)
	start := time.Now()
	for _, n := range nodes {
		waitFor(t, 150*time.Second, n+" refuses the commit", func() bool { return agentStatus(t, n).Refused == head })
	}
	took := time.Since(start)
	var rolledBack []string
	total := 0
	for _, n := range nodes {
		s := agentStatus(t, n)
		r := daemonStarts(t, n, since)
		total += r
		report(t, "%s: %d daemon starts; refused %s: %s", n, r, head[:7], s.RefusedReason)
		if s.Applied != prev {
			t.Errorf("%s is on %s, want the previous commit %s", n, s.Applied, prev)
		}
		if strings.Contains(s.RefusedReason, "rolled back") {
			rolledBack = append(rolledBack, n)
		}
		if r > 0 && !slices.Contains(rolledBack, n) {
			t.Errorf("%s restarted a daemon %d times for a commit it did not apply", n, r)
		}
	}
	report(t, "wrong-CA commit refused by all %d nodes within %s; applied and rolled back on %v; daemon starts it cost the fleet: %d (before the verdicts, as issue 24 measured it: both brokers and the bridge applied and rolled back, 6 by count)",
		len(nodes), took.Round(time.Second), rolledBack, total)
	// The timeline, from the nodes' own records: each node's refusal, and
	// the daemon starts in the journals.
	type mark struct {
		at   time.Duration
		what string
	}
	var tl []mark
	for _, n := range nodes {
		for _, h := range agentStatus(t, n).History {
			if h.Commit == head {
				tl = append(tl, mark{h.At.Sub(since), n + " refused it: " + h.Reason})
				break
			}
		}
		out := onAny(t, n, "sh", "-c", fmt.Sprintf("journalctl -u mosquitto.service -u nginx.service --since @%d -o short-unix | grep ' Started ' || true", since.Unix()))
		for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
			if f := strings.Fields(l); len(f) > 0 {
				if sec, err := strconv.ParseFloat(f[0], 64); err == nil {
					tl = append(tl, mark{time.Unix(0, int64(sec*1e9)).Sub(since), n + ": " + strings.Join(f[2:], " ")})
				}
			}
		}
	}
	slices.SortFunc(tl, func(a, b mark) int { return int(a.at - b.at) })
	var lines []string
	for _, m := range tl {
		lines = append(lines, fmt.Sprintf("t+%5.1fs %s", m.at.Seconds(), m.what))
	}
	report(t, "timeline of the wrong-CA commit (pushed at t+1.0s):\n%s", strings.Join(lines, "\n"))
	if len(rolledBack) != 1 || total > 2 {
		t.Errorf("applied and rolled back on %v with %d daemon starts; want one node, 2 starts (its apply and its rollback)", rolledBack, total)
	}
	if h := agentStatus(t, "broker1").History; len(h) == 0 || h[0].Commit != head || h[0].Result != "refused" {
		t.Errorf("broker1's history does not start with the refused commit: %+v", h)
	}
	if on(t, "broker1", "cat", "/etc/mosquitto/mosquitto.conf") != conf {
		t.Error("broker1's previous configuration is not back")
	}
	// Every node still says its status on the brokers (the fleet view).
	seen := map[string]time.Time{}
	var mu sync.Mutex
	c := client(t, brokerAddr(t, "broker2"), fmt.Sprintf("e2e-fleetview-%d", time.Now().UnixNano()), true)
	c.Subscribe("$mqha/status/+/+", 1, func(_ mqtt.Client, m mqtt.Message) {
		var st control.Status
		if json.Unmarshal(m.Payload(), &st) == nil {
			mu.Lock()
			seen[st.Node] = st.PublishedAt
			mu.Unlock()
		}
	}).WaitTimeout(5 * time.Second)
	waitFor(t, 20*time.Second, "every node's status fresh on broker2", func() bool {
		mu.Lock()
		defer mu.Unlock()
		for _, n := range nodes {
			if time.Since(seen[n]) > 15*time.Second {
				return false
			}
		}
		return true
	})
	topic := fmt.Sprintf("e2e/rollback/%d", time.Now().UnixNano())
	in := subscribe(t, client(t, brokerAddr(t, "broker1"), "sub-rb", true), topic)
	publish(t, client(t, vip(), "pub-rb", true), topic, "served again")
	in.wait(t, "served again", 10*time.Second)
	// The next commit rolls out as usual.
	pushed := time.Now()
	good := commit(t, "e2e: revert the wrong CA", map[string]string{"ca.cue": ""})
	report(t, "the next commit applied on every node %s after its push", appliedAfter(t, good, pushed, 90*time.Second, nodes...).Round(time.Millisecond))
}

// wrongCAWithCanary makes broker1 the canary, then pushes a commit that
// gives the cluster a wrong CA (the node certificate as tls.ca); both are
// reverted after the test. It returns the commit before the bad one, when
// it was pushed, and the bad commit.
func wrongCAWithCanary(t *testing.T, nodes []string) (prev string, since time.Time, head string) {
	t.Helper()
	// Without a canary the bridge would take the commit alongside broker1.
	canary := commit(t, "e2e: broker1 is the canary", map[string]string{"rollout.cue": "package cluster\n\nrollout: canary: \"broker1\"\n"})
	t.Cleanup(func() { revert(t, "rollout.cue") })
	appliedAfter(t, canary, time.Now(), 60*time.Second, nodes...)
	since = time.Now().Add(-time.Second)
	head = commit(t, "e2e: wrong CA", map[string]string{"ca.cue": "package cluster\n\ntls: ca: \"/etc/mqha/tls/node.crt\"\n"})
	t.Cleanup(func() { revert(t, "ca.cue") })
	return canary, since, head
}

// clusterName is the lab's cluster (cluster-repo-example's name).
func clusterName(*testing.T) string { return "mqtt" }

// daemonStarts counts the starts of mosquitto and nginx on node n since.
func daemonStarts(t *testing.T, n string, since time.Time) int {
	t.Helper()
	out := onAny(t, n, "sh", "-c", fmt.Sprintf("journalctl -u mosquitto.service -u nginx.service --since @%d -o cat | grep -c '^Started' || true", since.Unix()))
	c, _ := strconv.Atoi(strings.TrimSpace(out))
	return c
}

// TestVerdictOutlivesItsNode (issue 24): the canary gives its verdict on a
// wrong-CA commit and is powered off right after. The verdict stays
// retained on the other broker, so the nodes that had not applied the
// commit still refuse it without applying it.
func TestVerdictOutlivesItsNode(t *testing.T) {
	nodes := []string{"lb1", "lb2", "bridge", "broker2"}
	prev, since, head := wrongCAWithCanary(t, append([]string{"broker1"}, nodes...))
	topic := fmt.Sprintf("$mqha/verdict/%s/broker1", clusterName(t))
	var mu sync.Mutex
	var said string
	c := client(t, brokerAddr(t, "broker2"), fmt.Sprintf("e2e-verdicts-%d", time.Now().UnixNano()), true)
	c.Subscribe(topic, 1, func(_ mqtt.Client, m mqtt.Message) {
		mu.Lock()
		said = string(m.Payload())
		mu.Unlock()
	}).WaitTimeout(5 * time.Second)
	judged := waitFor(t, 120*time.Second, "broker1's verdict on broker2", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return strings.Contains(said, head)
	})
	if err := cfg.PowerOff(t.Context(), "broker1"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cfg.PowerOn(context.Background(), "broker1")
		cfg.WaitConverged(context.Background(), 120*time.Second)
	})
	for _, n := range nodes {
		waitFor(t, 150*time.Second, n+" refuses the commit with broker1 off", func() bool { return agentStatus(t, n).Refused == head })
	}
	for _, n := range nodes {
		s := agentStatus(t, n)
		r := daemonStarts(t, n, since)
		report(t, "broker1 off after its verdict: %s: %d daemon starts; refused %s: %s", n, r, head[:7], s.RefusedReason)
		if s.Applied != prev || r > 0 || strings.Contains(s.RefusedReason, "rolled back") {
			t.Errorf("%s: applied %s, %d daemon starts, %q; want %s kept, none, not applied", n, s.Applied, r, s.RefusedReason, prev)
		}
	}
	report(t, "broker1's verdict reached broker2 %s after the push; with broker1 powered off, no other node applied the commit", judged.Round(time.Millisecond))
}

// TestForgedVerdictIgnored (issue 24): verdicts on the applied commit that
// no node signed (one signed with the lab's client certificate, one
// unsigned), published where a client may write, change nothing: every
// node keeps the commit and counts them as untrusted.
func TestForgedVerdictIgnored(t *testing.T) {
	nodes := []string{"lb1", "lb2", "bridge", "broker1", "broker2"}
	head := agentStatus(t, "broker1").Applied
	kp, err := tls.LoadX509KeyPair(filepath.Join(cfg.Dir, "pki", "clients", "lab-client.crt"), filepath.Join(cfg.Dir, "pki", "clients", "lab-client.key"))
	if err != nil {
		t.Fatal(err)
	}
	name := clusterName(t)
	signed, err := verdict.Sign(verdict.Verdict{Cluster: name, Commit: head, Node: "lab-client", Reason: "forged", At: time.Now()}, kp)
	if err != nil {
		t.Fatal(err)
	}
	unsigned := verdict.Signed{Verdict: json.RawMessage(fmt.Sprintf(`{"cluster":%q,"commit":%q,"node":"broker1"}`, name, head))}
	payload, _ := json.Marshal([]verdict.Signed{signed, unsigned})
	untrusted := func(n string) int {
		for _, l := range strings.Split(metricsOf(t, n), "\n") {
			if v, ok := strings.CutPrefix(l, `mqha_verdicts_total{what="untrusted"} `); ok {
				f, _ := strconv.ParseFloat(v, 64)
				return int(f)
			}
		}
		return 0
	}
	before := map[string]int{}
	for _, n := range nodes {
		before[n] = untrusted(n)
	}
	c := client(t, brokerAddr(t, "broker1"), fmt.Sprintf("e2e-forger-%d", time.Now().UnixNano()), true)
	topic := fmt.Sprintf("$mqha/verdict/%s/lab-client", name)
	if tok := c.Publish(topic, 1, true, payload); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	t.Cleanup(func() { c.Publish(topic, 1, true, []byte{}).WaitTimeout(5 * time.Second) })
	waitFor(t, 30*time.Second, "every node counting the forged verdicts", func() bool {
		for _, n := range nodes {
			if untrusted(n)-before[n] < 2 {
				return false
			}
		}
		return true
	})
	time.Sleep(3 * time.Second)
	for _, n := range nodes {
		if s := agentStatus(t, n); s.Applied != head || s.Refused == head {
			t.Errorf("%s: applied %s, refused %s after forged verdicts on %s", n, s.Applied, s.Refused, head[:7])
		}
	}
	report(t, "forged verdicts (a client's signature, none) on the applied commit: every node kept it and counted them untrusted")
}

// TestMosquittoKilled (g): kill -9 is repaired within 3 s; a hung broker
// (SIGSTOP) is found by the MQTT probe and restarted (target 9 s, measured
// 3.2-4.6 s; the hard bound is 15 s so that a loaded machine never fails it).
func TestMosquittoKilled(t *testing.T) {
	tc := tlsConfig(t)
	addr := brokerAddr(t, "broker2")
	serving := func() bool { return handshake(addr, tc) }
	on(t, "broker2", "systemctl", "kill", "-s", "SIGKILL", "mosquitto")
	killed := time.Now()
	time.Sleep(50 * time.Millisecond)
	waitFor(t, 10*time.Second, "broker2 serves after kill -9", serving)
	report(t, "kill -9 mosquitto: serving again after %s", time.Since(killed).Round(time.Millisecond))
	if d := time.Since(killed); d > 3*time.Second {
		t.Errorf("took %s, want under 3 s", d)
	}

	d := hangBroker(t, "broker2", "")
	report(t, "kill -STOP mosquitto: detected by the MQTT probe, killed, restarted and serving after %s", d.Round(time.Millisecond))
	if d > 20*time.Second {
		t.Errorf("took %s, hard bound 20 s (3x the typical 4.5-6 s; target 9 s)", d)
	}
	s := agentStatus(t, "broker2")
	for _, c := range s.Checks {
		if c.Name == "mosquitto" && c.Repairs == 0 {
			t.Error("status shows no repair of mosquitto")
		}
	}
}

// TestNginxPreventedVIPMoves (h, l): nginx on the VIP holder is killed and
// cannot start again; keepalived and the agent move the VIP; clients
// reconnect and a persistent QoS1 subscriber loses nothing; once nginx can
// run again it is repaired and the VIP stays put.
func TestNginxPreventedVIPMoves(t *testing.T) {
	holder := waitVIP(t, 15*time.Second)
	other := map[string]string{"lb1": "lb2", "lb2": "lb1"}[holder]
	t.Logf("this host's clients go to %s through either load balancer", lbsAgree(t))
	s := startStream(t, "nginx-prevented")
	time.Sleep(time.Second)
	on(t, holder, "chmod", "-x", "/usr/sbin/nginx")
	t.Cleanup(func() { onAny(t, holder, "chmod", "+x", "/usr/sbin/nginx") })
	killed := time.Now()
	on(t, holder, "systemctl", "kill", "-s", "SIGKILL", "nginx")
	tc := tlsConfig(t)
	waitFor(t, 20*time.Second, "VIP served by "+other, func() bool { return vipHolder(t) == other && handshake(vip(), tc) })
	report(t, "nginx killed and unable to start on %s: VIP serving from %s after %s", holder, other, time.Since(killed).Round(time.Millisecond))
	time.Sleep(3 * time.Second)
	s.finish(t)

	on(t, holder, "chmod", "+x", "/usr/sbin/nginx")
	waitFor(t, 90*time.Second, "nginx repaired on "+holder, func() bool {
		return strings.TrimSpace(onAny(t, holder, "systemctl", "is-active", "nginx")) == "active"
	})
	time.Sleep(3 * time.Second)
	if h := vipHolder(t); h != other {
		t.Errorf("the VIP moved back to %q: a second needless move", h)
	}
	if f := strings.TrimSpace(on(t, holder, "cat", "/run/mqha/lb-fault")); f != "0" {
		t.Errorf("%s still reports a fault to keepalived (%q)", holder, f)
	}
}

// TestGitServerDown (i): with the git server gone nodes keep serving and
// say why they cannot fetch; when it is back they recover.
func TestGitServerDown(t *testing.T) {
	if err := cfg.StopGit(t.Context()); err != nil {
		t.Fatal(err)
	}
	defer cfg.StartGit(t.Context())
	waitFor(t, 30*time.Second, "fetch error in status", func() bool { return agentStatus(t, "broker1").FetchError != "" })
	report(t, "git server down: broker1 status says %q", agentStatus(t, "broker1").FetchError)
	topic := fmt.Sprintf("e2e/gitdown/%d", time.Now().UnixNano())
	in := subscribe(t, client(t, brokerAddr(t, "broker2"), "sub-gd", true), topic)
	publish(t, client(t, vip(), "pub-gd", true), topic, "still serving")
	in.wait(t, "still serving", 10*time.Second)
	if err := cfg.StartGit(t.Context()); err != nil {
		t.Fatal(err)
	}
	d := waitFor(t, 90*time.Second, "fetch recovers", func() bool { return agentStatus(t, "broker1").FetchError == "" })
	report(t, "git server back: fetch recovered after %s (back-off at most 1 min)", d.Round(time.Millisecond))
}

// TestGitServerHangs: a git server that accepts connections and never
// answers. Every pull waits for its deadline off the agent's loop, so
// health repair (a hung broker replaced) and drift revert go on; the status
// says what the server did; the nodes recover when it answers again.
func TestGitServerHangs(t *testing.T) {
	if err := cfg.StopGit(t.Context()); err != nil {
		t.Fatal(err)
	}
	defer cfg.StartGit(context.Background())
	l, err := net.Listen("tcp", net.JoinHostPort(cfg.HostAddr(), "9418"))
	if err != nil {
		t.Fatal(err)
	}
	var held []net.Conn
	var mu sync.Mutex
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			held = append(held, c) // accepted, never answered
			mu.Unlock()
		}
	}()
	hung := time.Now()
	time.Sleep(6 * time.Second) // every node's poll (5 s) is now waiting on the server

	repaired := hangBroker(t, "broker2", " while the git server hangs")

	want := on(t, "lb2", "cat", "/etc/nginx/nginx.conf")
	edited := time.Now()
	on(t, "lb2", "sh", "-c", "sed -i 's/proxy_connect_timeout 2s/proxy_connect_timeout 60s/' /etc/nginx/nginx.conf")
	waitFor(t, 10*time.Second, "hand edit reverted while the git server hangs", func() bool { return on(t, "lb2", "cat", "/etc/nginx/nginx.conf") == want })
	reverted := time.Since(edited)

	waitFor(t, 60*time.Second, "the fetch deadline in status", func() bool {
		return strings.Contains(agentStatus(t, "broker1").FetchError, "fetch-timeout")
	})
	mu.Lock()
	n := len(held)
	mu.Unlock()
	report(t, "git server hanging (%d connections held): hung broker replaced after %s, hand edit reverted after %s; broker1 says %q %s after the hang began",
		n, repaired.Round(time.Millisecond), reverted.Round(time.Millisecond), agentStatus(t, "broker1").FetchError, time.Since(hung).Round(time.Second))
	if repaired > 20*time.Second {
		t.Errorf("hung broker replaced after %s, want within 20 s (3x the typical 5-6 s)", repaired)
	}
	if reverted > 3*time.Second {
		t.Errorf("hand edit reverted after %s, want within 3 s", reverted)
	}
	l.Close()
	mu.Lock()
	for _, c := range held {
		c.Close()
	}
	mu.Unlock()
	if err := cfg.StartGit(t.Context()); err != nil {
		t.Fatal(err)
	}
	d := waitFor(t, 90*time.Second, "fetch recovers", func() bool { return agentStatus(t, "broker1").FetchError == "" })
	report(t, "git server answering again: fetch recovered after %s", d.Round(time.Millisecond))
}

// TestDrift (j): a hand edit of nginx.conf on a load balancer is reverted
// within 3 s.
func TestDrift(t *testing.T) {
	want := on(t, "lb2", "cat", "/etc/nginx/nginx.conf")
	edited := time.Now()
	on(t, "lb2", "sh", "-c", "sed -i 's/proxy_connect_timeout 2s/proxy_connect_timeout 60s/' /etc/nginx/nginx.conf")
	waitFor(t, 10*time.Second, "hand edit reverted", func() bool { return on(t, "lb2", "cat", "/etc/nginx/nginx.conf") == want })
	d := time.Since(edited)
	report(t, "hand edit of nginx.conf on lb2 reverted after %s", d.Round(time.Millisecond))
	if d > 3*time.Second {
		t.Errorf("reverted after %s, want under 3 s", d)
	}
	// journald stores the agent's line asynchronously: wait for it.
	waitFor(t, 10*time.Second, "the revert is logged", func() bool {
		return strings.Contains(on(t, "lb2", "journalctl", "-u", "mqha-agent", "--no-pager", "--since=-1min"), "a managed file changed on disk")
	})
}

// TestSignedCommits (k): with trusted keys configured, an unsigned commit is
// refused and a commit signed by a trusted SSH key is applied.
func TestSignedCommits(t *testing.T) {
	dir := t.TempDir()
	key := filepath.Join(dir, "ops")
	if out, err := exec.Command("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "ops", "-f", key).CombinedOutput(); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	pub, _ := os.ReadFile(key + ".pub")
	n := node(t, "broker2")
	os.WriteFile(filepath.Join(n.Root, "etc/mqha/trusted-keys"), pub, 0o644)
	conf := on(t, "broker2", "cat", "/etc/mqha/agent.conf")
	on(t, "broker2", "sh", "-c", "echo 'trusted-keys = /etc/mqha/trusted-keys' >> /etc/mqha/agent.conf && systemctl restart mqha-agent")
	defer func() {
		os.WriteFile(filepath.Join(n.Root, "etc/mqha/agent.conf"), []byte(conf), 0o644)
		on(t, "broker2", "systemctl", "restart", "mqha-agent")
	}()

	unsigned := commit(t, "e2e: unsigned", map[string]string{"note.cue": "package cluster\n\nmqtt: maxQueuedMessages: 1001\n"})
	t.Cleanup(func() { revert(t, "note.cue") })
	waitFor(t, 20*time.Second, "broker2 refuses the unsigned commit", func() bool { return agentStatus(t, "broker2").Refused == unsigned })
	report(t, "unsigned commit refused: %s", agentStatus(t, "broker2").RefusedReason)
	if !strings.Contains(agentStatus(t, "broker2").RefusedReason, "not signed") {
		t.Error("refusal does not say the commit is unsigned")
	}
	git(t, "config", "gpg.format", "ssh")
	git(t, "config", "user.signingkey", key)
	defer git(t, "config", "--unset", "user.signingkey")
	os.WriteFile(filepath.Join(cfg.Dir, "cluster", "note.cue"), []byte("package cluster\n\nmqtt: maxQueuedMessages: 1002\n"), 0o644)
	git(t, "add", "-A")
	git(t, "commit", "-S", "-qm", "e2e: signed")
	git(t, "push", "-q", "origin", "main")
	signed := git(t, "rev-parse", "HEAD")
	waitFor(t, 20*time.Second, "broker2 applies the signed commit", func() bool { return agentStatus(t, "broker2").Applied == signed })
	if !strings.Contains(on(t, "broker2", "cat", "/etc/mosquitto/mosquitto.conf"), "max_queued_messages 1002") {
		t.Error("the signed commit's change is not live")
	}
}

// TestRewriteRefused (6): a branch force-pushed to a commit that does not
// descend from the applied one is refused; moving it back is accepted.
func TestRewriteRefused(t *testing.T) {
	applied := git(t, "rev-parse", "HEAD")
	git(t, "checkout", "-q", "--orphan", "rewrite")
	git(t, "commit", "-qm", "e2e: rewritten history")
	git(t, "push", "-q", "-f", "origin", "rewrite:main")
	rewritten := git(t, "rev-parse", "HEAD")
	t.Cleanup(func() {
		git(t, "checkout", "-q", "main")
		git(t, "push", "-q", "-f", "origin", "main:main")
		git(t, "branch", "-q", "-D", "rewrite")
	})
	waitFor(t, 20*time.Second, "broker1 refuses the rewrite", func() bool { return agentStatus(t, "broker1").Refused == rewritten })
	s := agentStatus(t, "broker1")
	report(t, "rewrite refused: %s", s.RefusedReason)
	if s.Applied != applied || !strings.Contains(s.RefusedReason, "does not descend") {
		t.Errorf("applied %s, reason %q", s.Applied, s.RefusedReason)
	}
}

// TestMetrics: the agent's Prometheus endpoint reports its checks and the
// applied commit.
func TestMetrics(t *testing.T) {
	body := metricsOf(t, "lb1")
	for _, want := range []string{`mqha_health_check_ok{check="nginx"} 1`, `mqha_health_check_ok{check="keepalived"} 1`, "mqha_applied_commit_info{commit=", "mqha_converges_total"} {
		if !strings.Contains(body, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
}

// TestRollingRestart (3): a change that restarts every broker restarts them
// one at a time, and the bridge master only once they all serve again.
func TestRollingRestart(t *testing.T) {
	window := func(n string) (stopped, started int64) {
		out := strings.Fields(on(t, n, "systemctl", "show", "-p", "InactiveEnterTimestampMonotonic", "-p", "ActiveEnterTimestampMonotonic", "--value", "mosquitto"))
		if len(out) != 2 {
			t.Fatalf("%s: %v", n, out)
		}
		// systemctl prints the properties in the order of its table:
		// ActiveEnter before InactiveEnter.
		fmt.Sscan(out[0], &started)
		fmt.Sscan(out[1], &stopped)
		return stopped, started
	}
	before := map[string]string{}
	for _, n := range []string{"broker1", "broker2", "bridge"} {
		before[n] = unitStart(t, n, "mosquitto")
	}
	head := commit(t, "e2e: move the bridge listener", map[string]string{"bridgeport.cue": "package cluster\n\nports: bridge: 8885\n"})
	t.Cleanup(func() { revert(t, "bridgeport.cue") })
	pushed := time.Now()
	d := appliedAfter(t, head, pushed, 120*time.Second, "broker1", "broker2", "bridge", "lb1", "lb2")
	report(t, "every broker and the bridge master restarted in turn; all applied %s after the push", d.Round(time.Millisecond))
	w := map[string][2]int64{}
	for _, n := range []string{"broker1", "broker2", "bridge"} {
		if unitStart(t, n, "mosquitto") == before[n] {
			t.Fatalf("%s's mosquitto did not restart", n)
		}
		s, e := window(n)
		w[n] = [2]int64{s, e}
		t.Logf("%s: down from %d to %d (µs, monotonic)", n, s, e)
	}
	b1, b2, br := w["broker1"], w["broker2"], w["bridge"]
	if b1[0] < b2[1] && b2[0] < b1[1] {
		t.Errorf("broker1 and broker2 were down at the same time: %v %v", b1, b2)
	}
	if br[0] < max(b1[1], b2[1]) {
		t.Errorf("the bridge master restarted before every broker served again: bridge %v, brokers %v %v", br, b1, b2)
	}
	if !strings.Contains(on(t, "bridge", "cat", "/etc/mosquitto/mosquitto.conf"), ":8885") {
		t.Error("the bridge does not use the new port")
	}
}

// TestReloadAgentConfig (issue 8, 3; issue 20): systemctl reload mqha-agent
// re-reads agent.conf without restarting the agent (it used to kill it):
// what a reload applies takes effect, load-timeout among them (it used to
// be left unchanged silently); a changed branch is named as needing a
// restart and keeps its running value.
func TestReloadAgentConfig(t *testing.T) {
	conf := on(t, "broker1", "cat", "/etc/mqha/agent.conf")
	pid := strings.TrimSpace(on(t, "broker1", "systemctl", "show", "-p", "MainPID", "--value", "mqha-agent"))
	n := node(t, "broker1")
	t.Cleanup(func() {
		os.WriteFile(filepath.Join(n.Root, "etc/mqha/agent.conf"), []byte(conf), 0o644)
		onAny(t, "broker1", "systemctl", "reload", "mqha-agent")
	})
	os.WriteFile(filepath.Join(n.Root, "etc/mqha/agent.conf"), []byte(conf+"poll = 2s\nload-timeout = 25s\nbranch = elsewhere\n"), 0o644)
	on(t, "broker1", "systemctl", "reload", "mqha-agent")
	var journal string
	waitFor(t, 10*time.Second, "the reload is logged", func() bool {
		journal = on(t, "broker1", "journalctl", "-u", "mqha-agent", "--no-pager", "--since=-1min")
		return strings.Contains(journal, `msg="configuration reloaded" changed=poll,load-timeout needs_restart=branch`) &&
			strings.Contains(journal, "branch changed: needs a restart (systemctl restart mqha-agent); kept the running values")
	})
	if st := agentStatus(t, "broker1"); st.Branch != "main" {
		t.Errorf("the branch changed without a restart: %q", st.Branch)
	}
	if now := strings.TrimSpace(on(t, "broker1", "systemctl", "show", "-p", "MainPID", "--value", "mqha-agent")); now != pid {
		t.Errorf("the agent was restarted by a reload (pid %s -> %s)", pid, now)
	}
	report(t, "systemctl reload mqha-agent: poll 5s -> 2s applied by the running agent (pid %s)", pid)
}

// TestDebRemoveReinstall (issue 8, 6): removing the package stops the agent
// and leaves the daemons serving; reinstalling it leaves the agent enabled
// and running again (it used to stay disabled), back on the head commit.
func TestDebRemoveReinstall(t *testing.T) {
	n := node(t, "broker2")
	deb, err := os.ReadFile(cfg.Deb)
	if err != nil {
		t.Fatal(err)
	}
	// Not /tmp: the node mounts a tmpfs over it.
	if err := os.WriteFile(filepath.Join(n.Root, "root/mqha-agent.deb"), deb, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// Whatever happened: the agent installed and running again.
		onAny(t, "broker2", "dpkg", "--force-confold", "-i", "/root/mqha-agent.deb")
		onAny(t, "broker2", "systemctl", "enable", "--now", "mqha-agent")
	})
	on(t, "broker2", "env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "remove", "-y", "-q", "mqha-agent")
	if st := strings.TrimSpace(onAny(t, "broker2", "systemctl", "is-active", "mqha-agent")); st == "active" {
		t.Fatal("the agent still runs after apt-get remove")
	}
	if st := strings.TrimSpace(onAny(t, "broker2", "systemctl", "is-active", "mosquitto")); st != "active" {
		t.Errorf("removing the agent took mosquitto down (%s)", st)
	}
	on(t, "broker2", "dpkg", "--force-confold", "-i", "/root/mqha-agent.deb")
	enabled := strings.TrimSpace(onAny(t, "broker2", "systemctl", "is-enabled", "mqha-agent"))
	active := strings.TrimSpace(onAny(t, "broker2", "systemctl", "is-active", "mqha-agent"))
	if enabled != "enabled" || active != "active" {
		t.Fatalf("after remove and reinstall the agent is %s and %s, want enabled and active", enabled, active)
	}
	head, err := cfg.Head(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, "broker2 applies the head again", func() bool { return agentStatus(t, "broker2").Applied == head })
	report(t, "apt-get remove kept mosquitto serving; dpkg -i again: agent %s and %s, on the head commit", enabled, active)
}

// TestHostileCommit: a commit holding a CUE bomb (461 bytes that computed
// for minutes in the agent) and a 30 MiB blob. Every node refuses it naming
// the bound, keeps serving the applied commit, and repairs a hung broker
// while the evaluation runs; the agents' memory stays far below their
// unit's limit.
func TestHostileCommit(t *testing.T) {
	blob := make([]byte, 30<<20)
	rand.Read(blob)
	if err := os.WriteFile(filepath.Join(cfg.Dir, "cluster", "firmware.bin"), blob, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		os.Remove(filepath.Join(cfg.Dir, "cluster", "firmware.bin"))
		revert(t, "bomb.cue")
	})
	head := commit(t, "e2e: a hostile commit", map[string]string{"bomb.cue": "package cluster\n\nimport \"list\"\n\n_big: [for x in list.Range(0,1000,1) for y in list.Range(0,1000,1) {x*y}]\n"})
	pushed := time.Now()

	time.Sleep(3 * time.Second) // the nodes are evaluating it now
	repaired := hangBroker(t, "broker2", " while the commit is evaluated")

	var reason string
	for _, n := range []string{"lb1", "lb2", "bridge", "broker1", "broker2"} {
		waitFor(t, 90*time.Second, n+" refuses the hostile commit", func() bool { return agentStatus(t, n).Refused == head })
		reason = agentStatus(t, n).RefusedReason
		if !strings.Contains(reason, "raise load-") {
			t.Errorf("%s refused it without naming the bound: %s", n, reason)
		}
	}
	peak := 0
	for _, n := range []string{"lb1", "broker1"} {
		out := on(t, n, "sh", "-c", "grep VmHWM /proc/$(systemctl show -p MainPID --value mqha-agent)/status")
		var kb int
		fmt.Sscanf(strings.TrimSpace(strings.TrimPrefix(out, "VmHWM:")), "%d", &kb)
		peak = max(peak, kb>>10)
	}
	report(t, "hostile commit (CUE bomb + 30 MiB blob): refused everywhere within %s: %q; a hung broker replaced after %s meanwhile; agents' peak RSS %d MiB (unit limit 512 MiB)",
		time.Since(pushed).Round(time.Second), reason, repaired.Round(time.Millisecond), peak)
	if repaired > 20*time.Second {
		t.Errorf("hung broker replaced after %s during the evaluation, want within 20 s (3x the typical 5-6 s)", repaired)
	}
	if peak > 256 {
		t.Errorf("an agent peaked at %d MiB", peak)
	}
}

// TestClientCannotForgeNodeTopics: each node writes only its own facts. A
// client certificate can write neither a node's status ($mqha/status) nor a
// bridge's state ($SYS/broker/connection), and a node's certificate (another
// broker's, a bridge's) cannot write broker1's status; broker1's own can.
func TestClientCannotForgeNodeTopics(t *testing.T) {
	connect := func(tc *tls.Config, id string) mqtt.Client {
		c := mqtt.NewClient(mqtt.NewClientOptions().AddBroker("ssl://" + brokerAddr(t, "broker1")).SetClientID(id).
			SetTLSConfig(tc).SetCleanSession(true).SetConnectTimeout(5 * time.Second))
		if tok := c.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			t.Fatalf("connect as %s: %v", id, tok.Error())
		}
		t.Cleanup(func() { c.Disconnect(100) })
		return c
	}
	observer := connect(nodeTLS(t, "broker1"), "e2e-as-node-broker1")
	got := make(chan string, 100)
	for _, f := range []string{"$mqha/status/mqtt/broker1", "$SYS/broker/connection/#"} {
		if tok := observer.Subscribe(f, 1, func(_ mqtt.Client, m mqtt.Message) { got <- m.Topic() + " " + string(m.Payload()) }); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
			t.Fatalf("subscribing to %s: %v", f, tok.Error())
		}
	}
	drain := func(d time.Duration) []string {
		var out []string
		for end := time.After(d); ; {
			select {
			case m := <-got:
				out = append(out, m)
			case <-end:
				return out
			}
		}
	}
	drain(time.Second) // retained state and status of before

	forgers := map[string]mqtt.Client{
		"a client certificate":     connect(tlsConfig(t), "e2e-forger"),
		"broker2's certificate":    connect(nodeTLS(t, "broker2"), "e2e-as-node-broker2"),
		"the bridge's certificate": connect(nodeTLS(t, "bridge"), "e2e-as-node-bridge"),
	}
	for who, c := range forgers {
		// Not retained: a forgery that got through would not outlive the test.
		c.Publish("$mqha/status/mqtt/broker1", 1, false, "forged by "+who).WaitTimeout(5 * time.Second)
	}
	forgers["a client certificate"].Publish("$SYS/broker/connection/mqtt-bridge-to-broker1/state", 1, false, "forged by a client").WaitTimeout(5 * time.Second)
	for _, m := range drain(2 * time.Second) {
		if strings.Contains(m, "forged") {
			t.Errorf("a forgery reached broker1's subscribers: %s", m)
		}
	}
	// The control: broker1's own certificate writes its own status.
	own := connect(nodeTLS(t, "broker1"), "e2e-as-node-broker1-pub")
	own.Publish("$mqha/status/mqtt/broker1", 1, false, "control from broker1").WaitTimeout(5 * time.Second)
	ok := false
	for _, m := range drain(2 * time.Second) {
		ok = ok || m == "$mqha/status/mqtt/broker1 control from broker1"
	}
	if !ok {
		t.Error("broker1's own status message did not arrive: the test sees nothing")
	}
	report(t, "broker1's status written with a client's, broker2's and the bridge's certificate, and a bridge state written with a client's: all dropped by broker1's ACL; broker1's own status passed")
}

// TestBridgeListenerTakesNodesOnly: the brokers' bridge listener trusts the
// node CA alone (tls.nodeCA; the lab's PKI has two CAs), so a client
// certificate cannot even connect there, whatever client id it gives (it
// could otherwise take a bridge session over); a node's certificate can,
// and clients through the VIP are unchanged (every other test).
func TestBridgeListenerTakesNodesOnly(t *testing.T) {
	bridgeListener := net.JoinHostPort(node(t, "broker1").Addr, "8884")
	connect := func(tc *tls.Config, id string) error {
		c := mqtt.NewClient(mqtt.NewClientOptions().AddBroker("ssl://" + bridgeListener).SetClientID(id).
			SetTLSConfig(tc).SetCleanSession(true).SetConnectTimeout(5 * time.Second).SetAutoReconnect(false))
		tok := c.Connect()
		if !tok.WaitTimeout(10 * time.Second) {
			return errors.New("no answer in 10 s")
		}
		if tok.Error() == nil {
			c.Disconnect(100)
		}
		return tok.Error()
	}
	err := connect(tlsConfig(t), "e2e-client-on-the-bridge-listener")
	if err == nil {
		t.Fatal("a client certificate connected to the bridge listener")
	}
	if err := connect(nodeTLS(t, "bridge"), "e2e-node-on-the-bridge-listener"); err != nil {
		t.Fatalf("a node certificate cannot connect to the bridge listener: %v", err)
	}
	report(t, "client certificate on %s refused (%v); the bridge node's certificate connects", bridgeListener, err)
}

// TestClientCannotNameBridgeSessions: the bridges' client ids end in an HMAC
// of the bridge nodes' shared secret, and no client can read them
// ($SYS/broker/connection is for nodes), so none can connect under one and
// take a bridge's session over. A client under the guessable id of before
// leaves the bridge connected.
func TestClientCannotNameBridgeSessions(t *testing.T) {
	conf := on(t, "bridge", "cat", "/etc/mosquitto/mosquitto.conf")
	m := regexp.MustCompile(`remote_clientid (mqtt-bridge-to-broker1-[0-9a-f]{16})\n`).FindStringSubmatch(conf)
	if m == nil {
		t.Fatalf("the bridge to broker1 has no secret client id:\n%s", conf)
	}
	id := m[1]
	for _, w := range agentStatus(t, "bridge").Insecure {
		if strings.Contains(w, "bridge secret") {
			t.Errorf("bridge status: %s", w)
		}
	}
	watch := func(tc *tls.Config, who string) (mqtt.Client, chan string) {
		got := make(chan string, 1000)
		c := mqtt.NewClient(mqtt.NewClientOptions().AddBroker("ssl://" + brokerAddr(t, "broker1")).SetClientID("e2e-sys-" + who).
			SetTLSConfig(tc).SetCleanSession(true).SetConnectTimeout(5 * time.Second))
		if tok := c.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			t.Fatalf("connect as %s: %v", who, tok.Error())
		}
		t.Cleanup(func() { c.Disconnect(100) })
		for _, f := range []string{"$SYS/#", "$SYS/broker/connection/#"} {
			c.Subscribe(f, 0, func(_ mqtt.Client, m mqtt.Message) {
				select {
				case got <- m.Topic() + " " + string(m.Payload()):
				default:
				}
			}).WaitTimeout(5 * time.Second)
		}
		return c, got
	}
	_, clientGot := watch(tlsConfig(t), "client")
	_, nodeGot := watch(nodeTLS(t, "bridge"), "node")

	// The guessable id: connected through the VIP for 3 s.
	impostor := client(t, vip(), "mqtt-bridge-to-broker1", false)
	time.Sleep(3 * time.Second)
	impostor.Disconnect(100)

	collect := func(ch chan string) (all []string) {
		for {
			select {
			case m := <-ch:
				all = append(all, m)
			default:
				return all
			}
		}
	}
	var sys, leaked []string
	for _, m := range collect(clientGot) {
		sys = append(sys, m)
		if strings.Contains(m, "/connection/") || strings.Contains(m, "bridge-to") {
			leaked = append(leaked, m)
		}
	}
	if len(sys) == 0 {
		t.Fatal("the client read no $SYS statistics at all: the test sees nothing")
	}
	if len(leaked) > 0 {
		t.Errorf("a client read the bridges' connection topics: %q", leaked)
	}
	nodeSaw := strings.Join(collect(nodeGot), "\n")
	if !strings.Contains(nodeSaw, "$SYS/broker/connection/"+id+"/state 1") {
		t.Errorf("a node does not see the bridge's state under %s:\n%s", id, nodeSaw)
	}
	if strings.Contains(nodeSaw, "$SYS/broker/connection/"+id+"/state 0") {
		t.Errorf("the bridge lost its session while a client used the guessable id")
	}
	report(t, "bridge client id %s; a client read %d $SYS messages, none of the bridges' connections; the guessable id left the bridge connected", id, len(sys))
}

// TestSuspendResume (issue 9, 3): a suspended node neither applies a new
// commit nor reverts a hand edit, and says so (status exit 1); resume
// applies the commit and reverts the edit at once.
func TestSuspendResume(t *testing.T) {
	on(t, "broker1", "mqha-agent", "suspend", "--reason", "e2e incident")
	t.Cleanup(func() { onAny(t, "broker1", "mqha-agent", "resume") })
	head := commit(t, "e2e: while broker1 is suspended", map[string]string{"suspend.cue": "package cluster\n\n// nothing for the nodes\n"})
	t.Cleanup(func() { revert(t, "suspend.cue") })
	appliedAfter(t, head, time.Now(), 30*time.Second, "broker2", "lb1")
	conf := "/etc/mosquitto/mosquitto.conf"
	want := on(t, "broker1", "cat", conf)
	on(t, "broker1", "sh", "-c", "echo '# a hand edit during the incident' >> "+conf)
	time.Sleep(6 * time.Second) // a poll and more
	s := agentStatus(t, "broker1")
	if s.Applied == head || s.Pending != head || s.Suspended == nil || s.Suspended.Reason != "e2e incident" {
		t.Errorf("suspended broker1: applied %s, pending %s, suspended %+v", s.Applied, s.Pending, s.Suspended)
	}
	if on(t, "broker1", "cat", conf) == want {
		t.Error("a hand edit was reverted while suspended")
	}
	if text, code := statusOf(t, "broker1"); code != 1 || !strings.Contains(text, "SUSPENDED") {
		t.Errorf("status of a suspended node exits %d:\n%s", code, text)
	}
	resumed := time.Now()
	on(t, "broker1", "mqha-agent", "resume")
	d := waitFor(t, 10*time.Second, "broker1 applies the commit on resume", func() bool { return agentStatus(t, "broker1").Applied == head })
	waitFor(t, 10*time.Second, "the hand edit reverted on resume", func() bool { return on(t, "broker1", "cat", conf) == want })
	report(t, "suspended broker1 kept its commit and a hand edit while the others applied %s; resumed, it applied it %s later and reverted the edit within %s",
		head[:12], d.Round(time.Millisecond), time.Since(resumed).Round(time.Millisecond))
}

// TestFleet (issue 9, 1): `mqha-agent fleet`, run on this host with a client
// certificate, reads every node's status from every broker: every node on
// the head commit, a node whose agent stopped shows as stale, and a commit
// refused on one node shows there.
func TestFleet(t *testing.T) {
	fleet := func() (string, int) {
		cmd := exec.Command(filepath.Join(root, "bin", "mqha-agent"), "fleet", "--repo", filepath.Join(cfg.Dir, "cluster"),
			"--ca", filepath.Join(cfg.Dir, "pki", "clients", "ca.crt"),
			"--cert", filepath.Join(cfg.Dir, "pki", "clients", "lab-client.crt"), "--key", filepath.Join(cfg.Dir, "pki", "clients", "lab-client.key"))
		out, err := cmd.Output()
		code := 0
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		return string(out), code
	}
	head := git(t, "rev-parse", "HEAD")
	var out string
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("the last fleet view:\n%s", out)
		}
	})
	waitFor(t, 60*time.Second, "every node in the fleet view on the head", func() bool {
		out, _ = fleet()
		return strings.Count(out, head[:12]+" ") >= 5 && !strings.Contains(out, "≠") && !strings.Contains(out, "NOT REPORTED")
	})
	t.Logf("fleet:\n%s", out)
	if !strings.Contains(out, "read from "+brokerAddr(t, "broker1")+", "+brokerAddr(t, "broker2")) {
		t.Errorf("fleet did not read every broker directly:\n%s", out)
	}

	// An agent that stopped: its last status is kept on the brokers
	// (retained) and its goodbye beside it; shown as gone, not as ok.
	line := func(node string) string {
		for _, l := range strings.Split(out, "\n") {
			if strings.HasPrefix(l, node+" ") {
				return l
			}
		}
		return ""
	}
	on(t, "lb2", "systemctl", "stop", "mqha-agent")
	t.Cleanup(func() { onAny(t, "lb2", "systemctl", "start", "mqha-agent") })
	stopped := waitFor(t, 90*time.Second, "lb2 shown as stopped", func() bool {
		out, _ = fleet()
		return strings.Contains(line("lb2"), "GONE: agent stopped at")
	})
	if _, code := fleet(); code != 1 {
		t.Errorf("fleet exits %d with a stopped node, want 1", code)
	}
	on(t, "lb2", "systemctl", "start", "mqha-agent")
	back := waitFor(t, 30*time.Second, "lb2 ok again", func() bool {
		out, _ = fleet()
		return strings.HasSuffix(strings.TrimSpace(line("lb2")), " ok")
	})
	// Its link down: its connections drop, the brokers publish its will.
	if err := cfg.Unplug(t.Context(), "lb2"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cfg.Plug(context.Background(), "lb2") })
	away := waitFor(t, 90*time.Second, "lb2 shown as gone away", func() bool {
		out, _ = fleet()
		return strings.Contains(line("lb2"), "GONE: agent went away")
	})
	cfg.Plug(t.Context(), "lb2")
	report(t, "fleet: lb2's agent stopped: shown GONE (stopped) %s later; started: ok again %s later; its link down: shown GONE (went away, the brokers' will) %s later (bounds 90 s: stale after 30 s)",
		stopped.Round(time.Second), back.Round(time.Second), away.Round(time.Second))
	waitFor(t, 60*time.Second, "lb2 ok after its link is back", func() bool {
		out, _ = fleet()
		return strings.HasSuffix(strings.TrimSpace(line("lb2")), " ok")
	})

	// broker1 cannot load its key: it refuses the next commit, the others apply it.
	on(t, "broker1", "mv", "/etc/mqha/tls/node.key", "/etc/mqha/tls/node.key.away")
	t.Cleanup(func() {
		onAny(t, "broker1", "mv", "/etc/mqha/tls/node.key.away", "/etc/mqha/tls/node.key")
		onAny(t, "broker1", "mqha-agent", "sync", "--retry")
		revert(t, "fleet.cue")
	})
	next := commit(t, "e2e: fleet", map[string]string{"fleet.cue": "package cluster\n\n// the fleet view\n"})
	appliedAfter(t, next, time.Now(), 30*time.Second, "broker2", "lb1")
	waitFor(t, 30*time.Second, "broker1's refusal in the fleet view", func() bool {
		out, _ = fleet()
		for _, l := range strings.Split(out, "\n") {
			if strings.HasPrefix(l, "broker1 ") && strings.Contains(l, "≠") && strings.Contains(l, "refused commit "+next[:12]) {
				return true
			}
		}
		return false
	})
	// The commits table: the head, applied on the others, refused on broker1.
	if !strings.Contains(line(next[:12]), "broker2") || !strings.Contains(line(next[:12]), "broker1: ") {
		t.Errorf("the fleet's commits table does not say who applied and who refused %s:\n%s", next[:12], out)
	}
	_, code := fleet()
	report(t, "mqha-agent fleet through the VIP shows every node, and broker1's refusal of %s (exit %d):\n%s", next[:12], code, out)
	if code != 1 {
		t.Errorf("fleet exits %d with a node refusing the head, want 1", code)
	}
}
