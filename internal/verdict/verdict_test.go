package verdict

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/mqha/mqha/internal/pki"
)

var now = time.Date(2026, 12, 8, 2, 0, 0, 0, time.UTC)

func ca(t *testing.T) *pki.CA {
	t.Helper()
	c, err := pki.NewCA("mqtt", now)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func leaf(t *testing.T, c *pki.CA, name string, server bool) tls.Certificate {
	t.Helper()
	cert, key, err := c.Issue(pki.Leaf{Name: name, Server: server, Client: true}, now)
	if err != nil {
		t.Fatal(err)
	}
	kp, err := tls.X509KeyPair(cert, key)
	if err != nil {
		t.Fatal(err)
	}
	return kp
}

func pool(c *pki.CA) *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(c.Cert)
	return p
}

func TestSignAndOpen(t *testing.T) {
	nodes, other := ca(t), ca(t)
	broker1 := leaf(t, nodes, "broker1", true)
	v := Verdict{Cluster: "mqtt", Commit: "abc123", Node: "broker1", Reason: "health check after apply: no TLS answer", At: now}
	good, err := Sign(v, broker1)
	if err != nil {
		t.Fatal(err)
	}
	tampered := good
	tampered.Verdict = json.RawMessage(strings.Replace(string(good.Verdict), "abc123", "def456", 1))
	impostor, _ := Sign(Verdict{Cluster: "mqtt", Commit: "abc123", Node: "broker2", At: now}, broker1)
	client, _ := Sign(Verdict{Cluster: "mqtt", Commit: "abc123", Node: "lab-client", At: now}, leaf(t, nodes, "lab-client", false))
	foreign, _ := Sign(v, leaf(t, other, "broker1", true))
	otherCluster, _ := Sign(Verdict{Cluster: "else", Commit: "abc123", Node: "broker1", At: now}, broker1)
	for _, tc := range []struct {
		name string
		s    Signed
		err  string
	}{
		{"signed by the node it names", good, ""},
		{"unsigned", Signed{Verdict: good.Verdict}, "unsigned"},
		{"changed after signing", tampered, "signature does not match"},
		{"a node signing in another's name", impostor, "in the name of \"broker2\""},
		{"a client certificate", client, "not a node certificate"},
		{"another CA's certificate", foreign, "not a node certificate"},
		{"another cluster's verdict", otherCluster, "cluster \"else\""},
		{"garbage certificate", Signed{Verdict: good.Verdict, Cert: []byte("x"), Signature: good.Signature}, "does not parse"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := tc.s.Open(pool(nodes), "mqtt", now)
			switch {
			case tc.err == "" && (err != nil || got != v):
				t.Errorf("got %+v, %v; want %+v", got, err, v)
			case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
				t.Errorf("err %v, want one with %q", err, tc.err)
			}
		})
	}
}

func TestKnown(t *testing.T) {
	nodes := ca(t)
	broker1 := leaf(t, nodes, "broker1", true)
	s1, _ := Sign(Verdict{Cluster: "mqtt", Commit: "c1", Node: "broker1", At: now}, broker1)
	s2, _ := Sign(Verdict{Cluster: "mqtt", Commit: "c2", Node: "broker1", At: now}, broker1)
	var k Known
	fresh, forged := k.Take("broker1", []Signed{s1, {Verdict: s2.Verdict}}, pool(nodes), "mqtt", now)
	if len(fresh) != 1 || fresh[0].Commit != "c1" || len(forged) != 1 || k.Forged() != 1 {
		t.Fatalf("fresh %v, forged %v", fresh, forged)
	}
	if fresh, _ := k.Take("broker1", []Signed{s1}, pool(nodes), "mqtt", now); len(fresh) != 0 {
		t.Error("a known verdict came back as fresh (the same from another broker)")
	}
	// broker2 publishing broker1's verdict: not its to say.
	if _, forged := k.Take("broker2", []Signed{s2}, pool(nodes), "mqtt", now); len(forged) != 1 {
		t.Error("a verdict relayed as another node's was trusted")
	}
	if _, ok := k.Against("c1"); !ok {
		t.Error("c1's verdict is not known")
	}
	// broker1 withdraws it (an operator's retry there).
	k.Take("broker1", nil, pool(nodes), "mqtt", now)
	if _, ok := k.Against("c1"); ok {
		t.Error("a withdrawn verdict is still known")
	}
}
