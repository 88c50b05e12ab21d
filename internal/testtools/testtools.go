// Package testtools helps tests that use the real daemons. Where a binary is
// missing they skip under a plain `go test` on a developer's machine, but
// fail under `make test` (MQHA_REQUIRE_REAL=1) and CI (CI=true): a green
// make test always means they ran.
package testtools

import (
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/mqha/mqha/internal/cluster"
	"github.com/mqha/mqha/internal/pki"
)

// Require stops the test unless every binary is on PATH.
func Require(t testing.TB, bins ...string) {
	t.Helper()
	for _, b := range bins {
		if _, err := exec.LookPath(b); err != nil {
			missing(t, "%s is not installed (apt-get install mosquitto nginx libnginx-mod-stream keepalived)", b)
		}
	}
}

// RequireRoot stops the test unless it runs as root.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		missing(t, "needs root")
	}
}

func missing(t testing.TB, format string, args ...any) {
	t.Helper()
	if os.Getenv("CI") != "" || os.Getenv("MQHA_REQUIRE_REAL") != "" {
		t.Fatalf("make test and CI must run this test: "+format+" (make test-deps installs what it needs, as root)", args...)
	}
	t.Skipf(format, args...)
}

// Interface returns an up, non-loopback interface of this host, for
// keepalived configurations (its config test rejects unknown interfaces).
func Interface(t testing.TB) string {
	t.Helper()
	ifs, err := net.Interfaces()
	if err != nil {
		t.Fatal(err)
	}
	for _, i := range ifs {
		if i.Flags&net.FlagUp != 0 && i.Flags&net.FlagLoopback == 0 {
			return i.Name
		}
	}
	missing(t, "no network interface other than loopback")
	return ""
}

// TLS writes a CA and, for each node, a certificate and key into a fresh
// directory readable by the mosquitto user, and returns the file names for
// node as a cluster.TLS. Every node gets its own key; the SANs hold the
// node's name and address.
func TLS(t testing.TB, c *cluster.Cluster) map[string]cluster.TLS {
	t.Helper()
	dir, err := os.MkdirTemp("", "mqha-tls-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	// mosquitto drops to its own user before it loads certificates.
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	ca, err := pki.NewCA(c.Name, now)
	if err != nil {
		t.Fatal(err)
	}
	caPath := filepath.Join(dir, "ca.crt")
	write(t, caPath, ca.CertPEM())
	out := map[string]cluster.TLS{}
	for _, n := range c.Nodes {
		cert, key, err := ca.Issue(pki.Leaf{Name: n.Name, DNS: []string{n.Name},
			IPs: []net.IP{net.ParseIP(n.Address), net.IPv4(127, 0, 0, 1)}, Server: true, Client: true}, now)
		if err != nil {
			t.Fatal(err)
		}
		tls := cluster.TLS{CA: caPath, NodeCA: caPath, Cert: filepath.Join(dir, n.Name+".crt"), Key: filepath.Join(dir, n.Name+".key")}
		write(t, tls.Cert, cert)
		write(t, tls.Key, key)
		out[n.Name] = tls
	}
	return out
}

func write(t testing.TB, p string, b []byte) {
	t.Helper()
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
}
