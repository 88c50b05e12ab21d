package pki

import (
	"crypto/x509"
	"encoding/pem"
	"testing"
	"time"
)

// A certificate issued now is valid on a node whose clock runs up to a day
// behind (the soak's broker an hour behind refused the bridge's and the
// clients' certificates when they were backdated 5 minutes), and not on
// one more than a day behind.
func TestIssuedNowValidOnANodeBehind(t *testing.T) {
	now := time.Now()
	ca, err := NewCA("mqtt", now)
	if err != nil {
		t.Fatal(err)
	}
	certPEM, _, err := ca.Issue(Leaf{Name: "bridge", Client: true, Server: true}, now)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := pem.Decode(certPEM)
	cert, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca.Cert)
	for _, tc := range []struct {
		behind time.Duration
		ok     bool
	}{{0, true}, {time.Hour, true}, {23 * time.Hour, true}, {25 * time.Hour, false}} {
		_, err := cert.Verify(x509.VerifyOptions{Roots: roots, CurrentTime: now.Add(-tc.behind), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
		if (err == nil) != tc.ok {
			t.Errorf("a clock %s behind: %v, want valid %v", tc.behind, err, tc.ok)
		}
	}
}
