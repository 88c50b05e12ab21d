package agent

import (
	"crypto/tls"
	"crypto/x509"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/mqha/mqha/internal/control"
	"github.com/mqha/mqha/internal/render"
)

// Drops mosquitto logs are counted per client and shown in status.
func TestDropsCounted(t *testing.T) {
	h := newHarness(t, "broker1", "", nil)
	h.a.countDrops([]string{"1795746031: New connection from 10.0.0.1",
		"1795746031: Outgoing messages are being dropped for client mqtt-bridge-to-broker1.",
		"1795746040: Outgoing messages are being dropped for client mqtt-bridge-to-broker1.",
		"1795746041: Outgoing messages are being dropped for client alice."})
	d := h.a.Status().Drops
	if len(d) != 2 || d[0].Client != "mqtt-bridge-to-broker1" || d[0].Episodes != 2 || d[1].Client != "alice" || d[1].Episodes != 1 {
		t.Errorf("drops %+v", d)
	}
}

// VRRP adverts keepalived dropped from a foreign source are counted per
// source, shown in status and make it degraded while recent.
func TestForgedAdvertsCounted(t *testing.T) {
	h := newHarness(t, "lb1", "", nil)
	h.a.countForged([]string{"(mqtt) Entering BACKUP STATE",
		"(mqtt) unicast source address 10.0.0.66 not a unicast peer",
		"(mqtt) unicast source address 10.0.0.66 not a unicast peer",
		"(mqtt) unicast source address 10.0.0.67 not a unicast peer"})
	h.a.countForged([]string{"(mqtt) unicast source address 10.0.0.66 not a unicast peer"})
	f := h.a.Status().ForgedAdverts
	if len(f) != 2 {
		t.Fatalf("forged %+v", f)
	}
	for _, want := range []control.Forged{{Source: "10.0.0.66", Adverts: 3}, {Source: "10.0.0.67", Adverts: 1}} {
		if !slices.ContainsFunc(f, func(g control.Forged) bool { return g.Source == want.Source && g.Adverts == want.Adverts }) {
			t.Errorf("forged %+v, want %+v among them", f, want)
		}
	}
	s := h.a.Status()
	if p := strings.Join(s.Problems(h.clock.t), "\n"); !strings.Contains(p, "3 VRRP adverts from 10.0.0.66, not a load balancer of the cluster") {
		t.Errorf("problems: %s", p)
	}
	if p := s.Problems(h.clock.t.Add(time.Hour)); len(p) != 0 {
		t.Errorf("an hour later: %q", p)
	}
}

// On a host that cannot hold limits.clients, status says so, per daemon.
func TestLimitWarnings(t *testing.T) {
	for _, tt := range []struct {
		node string
		host render.Host
		want []string
	}{
		{"lb1", render.Host{}, nil},
		// Processors unknown: one worker per processor is assumed enough.
		{"lb1", render.Host{NoFileMax: 20000}, []string{"nginx holds at most 9488 clients (this host allows 20000 descriptors per process), fewer than limits.clients, 50000"}},
		// Two processors: six workers hold 50,000.
		{"lb1", render.Host{NoFileMax: 20000, CPUs: 2}, nil},
		{"broker1", render.Host{NoFileMax: 20000}, []string{"mosquitto holds at most 18976 clients (this host allows 20000 descriptors per process), fewer than its share of limits.clients (over the brokers), 25000: add brokers"}},
		{"broker1", render.Host{NoFileMax: 1 << 20}, nil},
		// The bridge master holds its connections to the brokers, no clients.
		{"bridge", render.Host{NoFileMax: 20000}, nil},
	} {
		h := newHarness(t, tt.node, "", map[string]string{"c1": ""})
		h.host = tt.host
		h.src.head = "c1"
		h.poll()
		h.onLoop(func() { h.a.checkWarnings(h.ctx) })
		got := h.a.Status().Warnings
		if len(got) != len(tt.want) {
			t.Errorf("%s on %+v: warnings %q, want %q", tt.node, tt.host, got, tt.want)
			continue
		}
		for i := range got {
			if !strings.HasPrefix(got[i], tt.want[i]) {
				t.Errorf("%s: warning %q, want it to start %q", tt.node, got[i], tt.want[i])
			}
		}
	}
}

// A node certificate expiring within 30 days is a warning (degraded).
func TestCertificateExpiryWarned(t *testing.T) {
	for _, tt := range []struct {
		left time.Duration
		want string
	}{{400 * 24 * time.Hour, ""}, {10 * 24 * time.Hour, "expires in 10 days"}, {-time.Hour, "expired on"}} {
		h := newHarness(t, "broker1", "", map[string]string{"c1": ""})
		h.host = render.Host{NoFileMax: 1 << 20}
		leaf := &x509.Certificate{NotAfter: h.clock.t.Add(tt.left)}
		h.a.d.LoadTLS = func(TLSFiles) (*tls.Config, error) {
			return &tls.Config{Certificates: []tls.Certificate{{Leaf: leaf}}}, nil
		}
		h.src.head = "c1"
		h.poll()
		h.onLoop(func() { h.a.checkWarnings(h.ctx) })
		s := h.a.Status()
		got := strings.Join(s.Warnings, "; ")
		if (tt.want == "") != (got == "") || !strings.Contains(got, tt.want) || len(s.Certificates) != 1 {
			t.Errorf("%s left: warnings %q (want %q), certificates %+v", tt.left, got, tt.want, s.Certificates)
		}
	}
}
