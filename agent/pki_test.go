package main

import (
	"crypto/x509"
	"encoding/pem"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/mqha/mqha/internal/agent"
)

func readCert(t *testing.T, path string) *x509.Certificate {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		t.Fatalf("%s is not PEM", path)
	}
	c, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestPKI(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "pki")
	repo := t.TempDir()
	src := `package cluster
name: "mqtt"
vip: {address: "10.20.0.100/24", routerID: 42, dnsNames: ["mqtt.example.net"]}
nodes: {
	lb1: {address: "10.20.0.11", roles: ["lb"], priority: 150}
	lb2: {address: "10.20.0.12", roles: ["lb"], priority: 100}
	bridge: {address: "10.20.0.20", roles: ["bridge"]}
	broker1: {address: "10.20.0.21", roles: ["broker"]}
	broker2: {address: "10.20.0.22", roles: ["broker"]}
}
`
	os.WriteFile(filepath.Join(repo, "c.cue"), []byte(src), 0o644)
	steps := []struct {
		args []string
		code int
		out  string
	}{
		{[]string{"pki", "issue", "--dir", dir, "--repo", repo, "broker1"}, 2, "pki init"},
		{[]string{"pki", "init", "--dir", dir, "--repo", repo}, 0, "ca.crt"},
		{[]string{"pki", "init", "--dir", dir, "--repo", repo}, 2, "refusing to replace the cluster CA"},
		{[]string{"pki", "issue", "--dir", dir, "--repo", repo, "broker1", "bridge", "lb1"}, 0, "broker1:"},
		{[]string{"pki", "issue", "--dir", dir, "--repo", repo, "nope"}, 2, `node "nope" is not in cluster`},
		{[]string{"pki", "client", "--dir", dir, "alice"}, 0, "alice:"},
		{[]string{"pki", "client", "--dir", dir, "--repo", repo, "broker1"}, 2, `client "broker1" has the name of a node`},
		{[]string{"pki", "issue", "--dir", dir, "--repo", repo, "--address", "10.20.0.23", "--role", "broker", "broker3"}, 0, "broker3:"},
		{[]string{"pki", "issue", "--dir", dir, "--repo", repo, "--address", "nope", "--role", "broker", "broker4"}, 2, "not an IPv4 address"},
		// Never replaced silently; flags anywhere on the line.
		{[]string{"pki", "issue", "--dir", dir, "--repo", repo, "broker1"}, 2, "broker1/node.key exists"},
		{[]string{"pki", "client", "--dir", dir, "alice"}, 2, "alice.key exists"},
		{[]string{"pki", "issue", "broker2", "--dir", dir, "--repo", repo}, 0, "broker2:"},
		{[]string{"pki", "issue", "--dir", dir, "--repo", repo, "--force", "broker1"}, 0, "broker1:"},
		// What the operator asks must make sense.
		{[]string{"pki", "issue", "--dir", dir, "--repo", repo, "--address", "10.20.0.24", "--role", "brokr", "broker4"}, 2, `--role "brokr": no such role`},
		{[]string{"pki", "issue", "--dir", dir, "--repo", repo, "--address", "10.20.0.24", "broker4"}, 2, "--address needs --role"},
		{[]string{"pki", "issue", "--dir", dir, "--repo", repo, "--address", "10.20.0.99", "broker2"}, 2, `node "broker2" is in the definition (address 10.20.0.22`},
		{[]string{"pki", "issue", "--dir", dir, "--repo", repo, "--all"}, 2, "exists"},
		{[]string{"pki", "issue", "--dir", dir, "--repo", repo, "--all", "--force"}, 0, "lb2:"},
	}
	for _, s := range steps {
		code, out, errs := mqha(t, s.args...)
		if code != s.code || !strings.Contains(out+errs, s.out) {
			t.Fatalf("%v: exit %d, want %d; output %s%s; want %q", s.args, code, s.code, out, errs, s.out)
		}
	}
	roots := x509.NewCertPool()
	roots.AddCert(readCert(t, filepath.Join(dir, "ca.crt")))
	tests := []struct {
		cert    string
		usage   x509.ExtKeyUsage
		ips     []string
		dns     []string
		keyPath string
	}{
		{"broker1/node.crt", x509.ExtKeyUsageServerAuth, []string{"10.20.0.21", "10.20.0.100"}, []string{"broker1", "mqtt.example.net"}, "broker1/node.key"},
		{"bridge/node.crt", x509.ExtKeyUsageClientAuth, []string{"10.20.0.20"}, []string{"bridge"}, "bridge/node.key"},
		{"lb1/node.crt", x509.ExtKeyUsageServerAuth, []string{"10.20.0.11"}, []string{"lb1"}, "lb1/node.key"},
		{"clients/alice.crt", x509.ExtKeyUsageClientAuth, nil, nil, "clients/alice.key"},
		{"broker3/node.crt", x509.ExtKeyUsageServerAuth, []string{"10.20.0.23", "10.20.0.100"}, []string{"broker3", "mqtt.example.net"}, "broker3/node.key"},
	}
	for _, tt := range tests {
		c := readCert(t, filepath.Join(dir, tt.cert))
		if _, err := c.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{tt.usage}}); err != nil {
			t.Errorf("%s: %v", tt.cert, err)
		}
		var ips []string
		for _, ip := range c.IPAddresses {
			ips = append(ips, ip.String())
		}
		if !slices.Equal(ips, tt.ips) || !slices.Equal(c.DNSNames, tt.dns) {
			t.Errorf("%s: SANs %v %v, want %v %v", tt.cert, ips, c.DNSNames, tt.ips, tt.dns)
		}
		st, err := os.Stat(filepath.Join(dir, tt.keyPath))
		if err != nil || st.Mode().Perm() != 0o600 {
			t.Errorf("%s: mode %v, want 0600 (%v)", tt.keyPath, st.Mode().Perm(), err)
		}
	}
	// Every node has its own key.
	a, _ := os.ReadFile(filepath.Join(dir, "broker1/node.key"))
	b, _ := os.ReadFile(filepath.Join(dir, "bridge/node.key"))
	if string(a) == string(b) {
		t.Error("two nodes share a key")
	}
	// A client certificate does not serve TLS.
	alice := readCert(t, filepath.Join(dir, "clients/alice.crt"))
	if _, err := alice.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err == nil {
		t.Error("client certificate valid for servers")
	}
	if st, _ := os.Stat(filepath.Join(dir, "ca.key")); st.Mode().Perm() != 0o600 {
		t.Errorf("ca.key mode %v", st.Mode().Perm())
	}
}

// Private keys are never written where `git add -A` would take them into
// the repository every node pulls, unless git ignores the directory.
func TestPKIRefusesGitWorkTree(t *testing.T) {
	if _, err := exec.LookPath("git"); err != nil {
		t.Skip("git is not installed")
	}
	repo := t.TempDir()
	if out, err := exec.Command("git", "init", "-q", repo).CombinedOutput(); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	code, out, errs := mqha(t, "pki", "init", "--dir", filepath.Join(repo, "pki"), "--name", "mqtt")
	if code != 2 || !strings.Contains(out+errs, "inside the git work tree") {
		t.Fatalf("exit %d: %s%s", code, out, errs)
	}
	if _, err := os.Stat(filepath.Join(repo, "pki", "ca.key")); err == nil {
		t.Fatal("ca.key written inside the work tree")
	}
	os.WriteFile(filepath.Join(repo, ".gitignore"), []byte("/pki/\n"), 0o644)
	if code, out, errs := mqha(t, "pki", "init", "--dir", filepath.Join(repo, "pki"), "--name", "mqtt"); code != 0 {
		t.Fatalf("ignored directory refused: exit %d: %s%s", code, out, errs)
	}
}

// TestPKINodeCA: with --node-ca, node certificates come from a CA of their
// own, which client certificates do not chain to (the bridge listeners
// trust it alone), and what nodes and clients trust (ca.crt) holds both;
// the agent checks a node's files against tls.nodeCA at load.
func TestPKINodeCA(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "pki")
	repo := t.TempDir()
	os.WriteFile(filepath.Join(repo, "c.cue"), []byte(`package cluster
name: "mqtt"
vip: {address: "10.20.0.100/24", routerID: 42}
nodes: {
	lb1: {address: "10.20.0.11", roles: ["lb"], priority: 150}
	lb2: {address: "10.20.0.12", roles: ["lb"], priority: 100}
	bridge: {address: "10.20.0.20", roles: ["bridge"]}
	broker1: {address: "10.20.0.21", roles: ["broker"]}
}
tls: nodeCA: "/etc/mqha/tls/node-ca.crt"
`), 0o644)
	for _, s := range []struct {
		args []string
		code int
		out  string
	}{
		{[]string{"pki", "init", "--dir", dir, "--repo", repo}, 0, "ca.crt"},
		// Added to an existing PKI, once.
		{[]string{"pki", "init", "--dir", dir, "--repo", repo, "--node-ca"}, 0, "node-ca.crt"},
		{[]string{"pki", "init", "--dir", dir, "--repo", repo, "--node-ca"}, 2, "node-ca.key exists"},
		{[]string{"pki", "issue", "--dir", dir, "--repo", repo, "bridge", "broker1"}, 0, "broker1:"},
		{[]string{"pki", "issue", "--dir", dir, "--repo", repo, "--address", "10.20.0.24", "--role", "bridge", "bridge2"}, 0, "bridge2:"},
		{[]string{"pki", "client", "--dir", dir, "alice"}, 0, "alice:"},
	} {
		if code, out, errs := mqha(t, s.args...); code != s.code || !strings.Contains(out+errs, s.out) {
			t.Fatalf("%v: exit %d, want %d; output %s%s; want %q", s.args, code, s.code, out, errs, s.out)
		}
	}
	pool := func(files ...string) *x509.CertPool {
		p := x509.NewCertPool()
		for _, f := range files {
			b, _ := os.ReadFile(filepath.Join(dir, f))
			if !p.AppendCertsFromPEM(b) {
				t.Fatalf("%s holds no certificate", f)
			}
		}
		return p
	}
	verifies := func(cert string, roots *x509.CertPool) bool {
		_, err := readCert(t, filepath.Join(dir, cert)).Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
		return err == nil
	}
	nodeCA, clusterCA := pool("node-ca.crt"), pool("ca.crt")
	for _, tt := range []struct {
		cert        string
		byNodeCA    bool
		byClusterCA bool
	}{
		{"broker1/node.crt", true, false},
		{"bridge/node.crt", true, false},
		{"clients/alice.crt", false, true},
	} {
		if got := verifies(tt.cert, nodeCA); got != tt.byNodeCA {
			t.Errorf("%s chains to the node CA: %v, want %v", tt.cert, got, tt.byNodeCA)
		}
		if got := verifies(tt.cert, clusterCA); got != tt.byClusterCA {
			t.Errorf("%s chains to the cluster CA: %v, want %v", tt.cert, got, tt.byClusterCA)
		}
	}
	for _, trust := range []string{"broker1/ca.crt", "clients/ca.crt"} {
		if !verifies("broker1/node.crt", pool(trust)) || !verifies("clients/alice.crt", pool(trust)) {
			t.Errorf("%s does not trust both CAs", trust)
		}
	}
	// The bridge nodes share one secret (their bridges' client ids), made
	// once; other nodes get none.
	s1, err1 := os.ReadFile(filepath.Join(dir, "bridge", "bridge.secret"))
	s2, err2 := os.ReadFile(filepath.Join(dir, "bridge2", "bridge.secret"))
	if err1 != nil || err2 != nil || len(s1) < 33 || string(s1) != string(s2) {
		t.Errorf("bridge secrets: %q (%v), %q (%v)", s1, err1, s2, err2)
	}
	if _, err := os.Stat(filepath.Join(dir, "broker1", "bridge.secret")); err == nil {
		t.Error("a broker got the bridge secret")
	}
	// The agent's check of a node's files.
	files := func(ca, nodeCA string) agent.TLSFiles {
		return agent.TLSFiles{CA: filepath.Join(dir, ca), NodeCA: filepath.Join(dir, nodeCA),
			Cert: filepath.Join(dir, "broker1/node.crt"), Key: filepath.Join(dir, "broker1/node.key")}
	}
	if _, err := agent.LoadTLS(files("broker1/ca.crt", "broker1/node-ca.crt")); err != nil {
		t.Errorf("a node issued from the node CA: %v", err)
	}
	if _, err := agent.LoadTLS(files("broker1/ca.crt", "ca.crt")); err == nil || !strings.Contains(err.Error(), "is not signed by the node CA") {
		t.Errorf("tls.nodeCA that did not sign the node: %v", err)
	}
	if _, err := agent.LoadTLS(files("ca.crt", "node-ca.crt")); err == nil || !strings.Contains(err.Error(), "does not trust the node CA") {
		t.Errorf("tls.ca without the node CA: %v", err)
	}
}
