package agent

import (
	"crypto/tls"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mqha/mqha/internal/cluster"
	"github.com/mqha/mqha/internal/pki"
)

func TestBridgeSecret(t *testing.T) {
	dir := t.TempDir()
	c := &cluster.Cluster{TLS: cluster.TLS{BridgeSecret: filepath.Join(dir, "bridge.secret")}}
	bridge := cluster.Node{Name: "bridge", Roles: []cluster.Role{cluster.Bridge}}
	broker := cluster.Node{Name: "broker1", Roles: []cluster.Role{cluster.Broker}}
	if s, err := BridgeSecret(c, bridge); s != nil || err != nil {
		t.Errorf("no file: %q %v, want none (guessable ids, said in status)", s, err)
	}
	os.WriteFile(c.TLS.BridgeSecret, []byte("short\n"), 0o600)
	if _, err := BridgeSecret(c, bridge); err == nil || !strings.Contains(err.Error(), "want at least 16 random ones") {
		t.Errorf("a short secret: %v", err)
	}
	os.WriteFile(c.TLS.BridgeSecret, []byte("0123456789abcdef0123456789abcdef\n"), 0o600)
	if s, err := BridgeSecret(c, bridge); string(s) != "0123456789abcdef0123456789abcdef" || err != nil {
		t.Errorf("a secret: %q %v", s, err)
	}
	if s, err := BridgeSecret(c, broker); s != nil || err != nil {
		t.Errorf("a broker reads no bridge secret: %q %v", s, err)
	}
}

// TestGuessableBridgeIDsAreInsecure: a bridge node without the secret says
// so in status.
func TestGuessableBridgeIDsAreInsecure(t *testing.T) {
	h := newHarness(t, "bridge", "", map[string]string{"c1": `tls: bridgeSecret: "/nonexistent/bridge.secret"`})
	h.src.head = "c1"
	h.poll()
	if ins := strings.Join(h.a.Status().Insecure, "\n"); !strings.Contains(ins, "no bridge secret (/nonexistent/bridge.secret)") {
		t.Errorf("status INSECURE lines: %q", ins)
	}
}

// TestEachCAHasItsExpiry: a CA file with the clients' and the nodes' CA
// lists both, under names of their own (one metric label each).
func TestEachCAHasItsExpiry(t *testing.T) {
	dir := t.TempDir()
	now := time.Now()
	clients, _ := pki.NewCA("mqtt", now)
	nodes, _ := pki.NewCA("nodes mqtt", now.Add(time.Hour))
	f := TLSFiles{CA: filepath.Join(dir, "ca.crt"), Cert: "node.crt"}
	os.WriteFile(f.CA, append(clients.CertPEM(), nodes.CertPEM()...), 0o644)
	got := certs(&tls.Config{}, f)
	if len(got) != 2 || got[0].Name != "ca mqha CA mqtt" || got[1].Name != "ca mqha CA nodes mqtt" || !got[1].NotAfter.After(got[0].NotAfter) {
		t.Errorf("two CAs: %+v", got)
	}
	os.WriteFile(f.CA, clients.CertPEM(), 0o644)
	if got := certs(&tls.Config{}, f); len(got) != 1 || got[0].Name != "ca" {
		t.Errorf("one CA: %+v", got)
	}
}
