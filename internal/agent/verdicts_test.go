package agent

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mqha/mqha/internal/apply"
	"github.com/mqha/mqha/internal/notify"
	"github.com/mqha/mqha/internal/pki"
	"github.com/mqha/mqha/internal/verdict"
)

// fleetPKI is a cluster CA and what it issued: node certificates by name,
// and a client certificate.
type fleetPKI struct {
	ca    *pki.CA
	certs map[string]tls.Certificate
}

// harnessTime is the harness clock's start: certificates valid then.
var harnessTime = time.Date(2026, 11, 27, 0, 0, 0, 0, time.UTC)

func newFleetPKI(t *testing.T, names ...string) fleetPKI {
	t.Helper()
	ca, err := pki.NewCA("mqtt", harnessTime)
	if err != nil {
		t.Fatal(err)
	}
	f := fleetPKI{ca: ca, certs: map[string]tls.Certificate{}}
	for _, n := range append(names, "client") {
		c, k, err := ca.Issue(pki.Leaf{Name: n, Server: n != "client", Client: true}, harnessTime)
		if err != nil {
			t.Fatal(err)
		}
		if f.certs[n], err = tls.X509KeyPair(c, k); err != nil {
			t.Fatal(err)
		}
	}
	return f
}

// tlsOf is node's TLS as LoadTLS gives it.
func (f fleetPKI) tlsOf(node string) *tls.Config {
	p := x509.NewCertPool()
	p.AddCert(f.ca.Cert)
	return &tls.Config{Certificates: []tls.Certificate{f.certs[node]}, RootCAs: p}
}

// publishes is what node publishes on the verdict topic: its verdicts on
// commits, signed with signer's certificate.
func (f fleetPKI) publishes(t *testing.T, signer, node string, commits ...string) []byte {
	t.Helper()
	var out []verdict.Signed
	for _, c := range commits {
		s, err := verdict.Sign(verdict.Verdict{Cluster: "mqtt", Commit: c, Node: node, Reason: "not verified: mosquitto.service is failed after apply", At: harnessTime}, f.certs[signer])
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, s)
	}
	b, _ := json.Marshal(out)
	return b
}

// takes hands h's agent what node published, as its broker connection
// would, and lets the loop act on it.
func (h *harness) takes(node string, payload []byte) {
	h.t.Helper()
	h.onLoop(func() {})
	v := h.a.view
	roots, err := nodeRoots(v)
	if err != nil {
		h.t.Fatal(err)
	}
	h.a.takeVerdicts(v, roots, node, payload)
	h.quiet()
	h.onLoop(func() {}) // the nudge has run
	h.quiet()
}

// A node that applied a commit and could not verify it signs a verdict,
// kept across restarts; the commit's own failure to write gives none.
func TestUnverifiedCommitGivesAVerdict(t *testing.T) {
	f := newFleetPKI(t, "broker1")
	h := newHarness(t, "broker1", "", map[string]string{"c1": "", "c2": "mqtt: maxQueuedMessages: 2000", "c3": "mqtt: maxQueuedMessages: 3000"})
	h.tls = f.tlsOf("broker1")
	h.src.head = "c1"
	h.poll()
	h.conv.fail["c2"] = fmt.Errorf("%w: health check after apply: no MQTT CONNACK (rolled back to the previous files and unit states)", apply.ErrUnverified)
	h.src.head = "c2"
	h.sync(false)
	vs := h.a.facts.Verdicts()
	if len(vs) != 1 {
		t.Fatalf("%d verdicts, want 1", len(vs))
	}
	v, err := vs[0].Open(f.tlsOf("broker1").RootCAs, "mqtt", harnessTime)
	if err != nil || v.Commit != "c2" || v.Node != "broker1" || !strings.Contains(v.Reason, "no MQTT CONNACK") {
		t.Errorf("verdict %+v, %v", v, err)
	}
	h.conv.fail["c3"] = errors.New("write /etc/mosquitto/mosquitto.conf: no space left on device (rolled back)")
	h.src.head = "c3"
	h.sync(false)
	if n := len(h.a.facts.Verdicts()); n != 1 {
		t.Errorf("a failure of the node's own (a full disk) gave a verdict: %d verdicts", n)
	}
	again := newHarness(t, "broker1", h.dir, map[string]string{"c1": ""})
	if n := len(again.a.facts.Verdicts()); n != 1 {
		t.Errorf("after a restart: %d verdicts, want the one recorded", n)
	}
}

// Another node's verdict: a commit not applied yet is refused without an
// apply; one applied already is left for the commit applied before; a
// forged one changes nothing; a withdrawn one lets the commit through.
func TestVerdictsOfOtherNodes(t *testing.T) {
	f := newFleetPKI(t, "lb1", "broker1", "broker2")
	h := newHarness(t, "lb1", "", map[string]string{"c1": "", "c2": "mqtt: maxQueuedMessages: 2000", "c3": "mqtt: maxQueuedMessages: 3000"})
	h.tls = f.tlsOf("lb1")
	h.src.head = "c1"
	h.poll()

	// Forged: a client certificate, a node signing as another, unsigned.
	h.takes("client", f.publishes(t, "client", "client", "c2"))
	h.takes("broker2", f.publishes(t, "broker1", "broker1", "c2"))
	h.takes("broker1", []byte(`[{"verdict":{"cluster":"mqtt","commit":"c2","node":"broker1"}}]`))
	h.conv.calls = nil
	h.src.head = "c2"
	h.poll()
	if s := h.a.Status(); s.Applied != "c2" || h.a.verdicts.Forged() != 3 {
		t.Fatalf("forged verdicts: applied %s, %d untrusted; want c2 applied, 3 untrusted", s.Applied, h.a.verdicts.Forged())
	}

	// broker1's verdict on c2, which this load balancer applied already:
	// back to c1, c2 refused.
	h.conv.calls = nil
	h.takes("broker1", f.publishes(t, "broker1", "broker1", "c2"))
	s := h.a.Status()
	if s.Applied != "c1" || s.Refused != "c2" || !strings.Contains(s.RefusedReason, "refused by the fleet: node broker1") {
		t.Fatalf("after a verdict on the applied commit: %+v", s)
	}
	if got := strings.Join(h.conv.calls, " "); got != "c1" {
		t.Errorf("converged %q, want c1 (back to the commit applied before)", got)
	}

	// broker2's verdict on c3 before this node saw c3: never applied.
	h.takes("broker2", f.publishes(t, "broker2", "broker2", "c3"))
	h.conv.calls = nil
	h.src.head = "c3"
	h.poll()
	if s := h.a.Status(); s.Applied != "c1" || s.Refused != "c3" || strings.Contains(strings.Join(h.conv.calls, " "), "c3") {
		t.Fatalf("a commit with a verdict was applied: %+v, converged %v", s, h.conv.calls)
	}
	// broker2 withdraws it (sync --retry there): c3 goes through.
	h.takes("broker2", f.publishes(t, "broker2", "broker2"))
	if s := h.a.Status(); s.Applied != "c3" {
		t.Errorf("after the verdict was withdrawn: %+v", s)
	}
}

// With a canary in the applied definition, a node holds a new commit until
// the canary's status says it applied it, or a verdict on it comes, or the
// wait runs out; the canary itself and a definition without one wait for
// nothing.
func TestWaitForTheCanary(t *testing.T) {
	f := newFleetPKI(t, "lb1", "broker1")
	h := newHarness(t, "lb1", "", map[string]string{"c1": "rollout: {canary: \"broker1\", canaryWait: 5}"})
	h.tls = f.tlsOf("lb1")
	h.src.head = "c1"
	h.poll()
	ctx := context.Background()
	var a *Agent
	h.onLoop(func() { a = h.a })

	h.a.canary.Store("c2")
	if why := a.waitCanary(ctx, "c2"); !strings.Contains(why, "canary broker1 applied it") {
		t.Errorf("canary applied c2: waited until %q", why)
	}
	h.takes("broker1", f.publishes(t, "broker1", "broker1", "c3"))
	if why := a.waitCanary(ctx, "c3"); why != "a verdict" {
		t.Errorf("verdict on c3: waited until %q", why)
	}
	start := time.Now()
	if why := a.waitCanary(ctx, "c4"); !strings.Contains(why, "ran out") || time.Since(start) < 5*time.Second {
		t.Errorf("nothing on c4: waited %s until %q, want the 5 s wait", time.Since(start), why)
	}

	canary := newHarness(t, "broker1", "", map[string]string{"c1": "rollout: canary: \"broker1\""})
	canary.src.head = "c1"
	canary.poll()
	if why := canary.a.waitCanary(ctx, "c2"); why != "" {
		t.Errorf("the canary waited for itself: %q", why)
	}
}

// A node whose daemons do not serve with the previous commit either after
// the rollback (its own trouble: killed daemons, a cut network) gives no
// verdict: the fleet must not refuse a good commit for one node's fault.
func TestNoVerdictWhenThePreviousCommitFailsToo(t *testing.T) {
	f := newFleetPKI(t, "broker1")
	h := newHarness(t, "broker1", "", map[string]string{"c1": "", "c2": "mqtt: maxQueuedMessages: 2000"})
	h.tls = f.tlsOf("broker1")
	h.a.cfg.VerifyTimeout = 300 * time.Millisecond
	h.src.head = "c1"
	h.poll()
	h.mu.Lock()
	h.probeErr = errors.New("connection refused: this node's own trouble")
	h.mu.Unlock()
	h.conv.fail["c2"] = fmt.Errorf("%w: health check after apply: connection refused", apply.ErrUnverified)
	h.src.head = "c2"
	h.sync(false)
	if s := h.a.Status(); s.Refused != "c2" || len(h.a.facts.Verdicts()) != 0 {
		t.Errorf("refused %q, %d verdicts; want c2 refused here and no verdict", s.Refused, len(h.a.facts.Verdicts()))
	}
}

// The node's events reach the notify-url webhook, signed, in order: a
// commit applied, one refused; agent.conf without a secret sends none.
func TestEventsNotified(t *testing.T) {
	secret := []byte("sixteen bytes at least, random")
	var mu sync.Mutex
	var got []notify.Event
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		if !notify.Verify(secret, body, r.Header.Get(notify.SignatureHeader)) {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		var e notify.Event
		json.Unmarshal(body, &e)
		mu.Lock()
		got = append(got, e)
		mu.Unlock()
	}))
	defer srv.Close()
	file := filepath.Join(t.TempDir(), "notify.secret")
	os.WriteFile(file, secret, 0o600)
	h := newHarness(t, "broker1", "", map[string]string{"c1": "", "c2": "mqtt: maxQueuedMessages: 2000"})
	h.a.cfg.NotifyURL, h.a.cfg.NotifySecretFile = srv.URL, file
	if err := h.a.setNotify(); err != nil {
		t.Fatal(err)
	}
	h.src.head = "c1"
	h.poll()
	h.conv.fail["c2"] = errors.New("write /etc/mosquitto/mosquitto.conf: no space left on device (rolled back to the previous files and unit states)")
	h.src.head = "c2"
	h.sync(false)
	deadline := time.Now().Add(5 * time.Second)
	for {
		mu.Lock()
		n := len(got)
		mu.Unlock()
		if n >= 2 || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(got) != 2 || got[0].Kind != notify.Applied || got[0].Commit != "c1" || got[1].Kind != notify.RolledBack || got[1].Commit != "c2" || got[0].Node != "broker1" || got[0].Cluster != "mqtt" {
		t.Errorf("events %+v, want c1 applied then c2 rolled back, from broker1 of mqtt", got)
	}
	h.a.cfg.NotifySecretFile = ""
	if err := h.a.setNotify(); err == nil || !strings.Contains(err.Error(), "notify-secret-file") {
		t.Errorf("no secret: %v", err)
	}
}
