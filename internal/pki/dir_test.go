package pki

import (
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/mqha/mqha/internal/cluster"
)

func TestDir(t *testing.T) {
	d := Dir{Path: filepath.Join(t.TempDir(), "pki")}
	cl := &cluster.Cluster{Name: "mqtt", VIP: &cluster.VIP{Address: "10.0.0.10"}, Nodes: []cluster.Node{
		{Name: "bridge", Address: "10.0.0.30", Roles: []cluster.Role{cluster.Bridge}},
		{Name: "broker1", Address: "10.0.0.21", Roles: []cluster.Role{cluster.Broker}},
		{Name: "standby", Address: "10.0.0.31", Roles: []cluster.Role{cluster.Bridge}}}}
	if wrote, err := d.Init("mqtt", true); err != nil || len(wrote) != 4 {
		t.Fatalf("init: %v %v", wrote, err)
	}
	if _, err := d.Init("mqtt", false); err == nil || !strings.Contains(err.Error(), "refusing to replace the cluster CA") {
		t.Errorf("a second init: %v", err)
	}
	s, err := d.Signers()
	if err != nil {
		t.Fatal(err)
	}
	if s.Nodes == s.CA || strings.Count(string(s.Trust), "BEGIN CERTIFICATE") != 2 {
		t.Fatalf("with a node CA: nodes signed by the cluster CA, or trust %d certificates", strings.Count(string(s.Trust), "BEGIN CERTIFICATE"))
	}
	for _, n := range cl.Nodes {
		if _, err := s.IssueNode(cl, n, false); err != nil {
			t.Fatal(err)
		}
	}
	b1, _ := cl.Node("broker1")
	if _, err := s.IssueNode(cl, b1, false); err == nil || !strings.Contains(err.Error(), "give --force") {
		t.Errorf("issued over an existing key: %v", err)
	}
	crt, _ := os.ReadFile(filepath.Join(d.Path, "broker1", "node.crt"))
	blk, _ := pem.Decode(crt)
	c, err := x509.ParseCertificate(blk.Bytes)
	if err != nil || c.Issuer.CommonName != s.Nodes.Cert.Subject.CommonName || len(c.IPAddresses) != 2 {
		t.Errorf("broker1's certificate: issuer %q, IPs %v (want the node CA, its address and the VIP)", c.Issuer.CommonName, c.IPAddresses)
	}
	one, _ := os.ReadFile(filepath.Join(d.Path, "bridge", "bridge.secret"))
	two, _ := os.ReadFile(filepath.Join(d.Path, "standby", "bridge.secret"))
	if len(one) < 32 || string(one) != string(two) {
		t.Errorf("the bridge nodes' secrets: %q %q, want one shared secret", one, two)
	}
	if _, err := os.Stat(filepath.Join(d.Path, "broker1", "bridge.secret")); !os.IsNotExist(err) {
		t.Error("a broker got the bridge secret")
	}
	if _, err := s.IssueClient(cl, "broker1", false); err == nil || !strings.Contains(err.Error(), "name of a node") {
		t.Errorf("a client named like a node: %v", err)
	}
	if _, err := s.IssueClient(nil, "alice", false); err != nil {
		t.Error(err)
	}
}

func TestAheadNode(t *testing.T) {
	for _, tt := range []struct{ address, roles, err string }{
		{"10.0.0.40", "broker", ""},
		{"10.0.0.40", "broker,lb", ""},
		{"fd00::1", "broker", "not an IPv4 address"},
		{"10.0.0.40", "", "--address needs --role"},
		{"10.0.0.40", "master", `--role "master": no such role`},
	} {
		_, err := AheadNode("broker9", tt.address, tt.roles)
		if (err == nil) != (tt.err == "") || err != nil && !strings.Contains(err.Error(), tt.err) {
			t.Errorf("%s %s: %v, want %q", tt.address, tt.roles, err, tt.err)
		}
	}
}
