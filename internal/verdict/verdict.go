// Package verdict is a commit's fate shared by the fleet. A node that
// applied a commit and could not verify it (its daemons did not serve
// after the apply, and it rolled back) signs a verdict with its node key;
// every agent reads the others' verdicts and neither applies a commit the
// fleet refused nor keeps one it applied before the verdict came.
//
// A verdict is trusted only when its certificate chains to the cluster's
// node CA, was issued to a node (server and client use, as the node
// certificates are; a client certificate has client use only), names the
// node the verdict says, and signed the verdict's exact bytes. Anything
// else is forged and counted, never obeyed.
//
// Files: verdict.go owns the signed form, signing and checking; known.go
// the verdicts an agent holds.
package verdict

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// Verdict says that Node could not verify Commit of Cluster, and why.
type Verdict struct {
	Cluster string    `json:"cluster"`
	Commit  string    `json:"commit"`
	Node    string    `json:"node"`
	Reason  string    `json:"reason"`
	At      time.Time `json:"at"`
}

// Signed is a verdict as published: the exact bytes signed, the signer's
// certificate, and the signature.
type Signed struct {
	Verdict   json.RawMessage `json:"verdict"`
	Cert      []byte          `json:"cert"` // DER
	Signature []byte          `json:"sig"`
}

// maxReason bounds what a verdict carries of the error that made it.
const maxReason = 512

// Sign signs v with the node's certificate and key.
func Sign(v Verdict, cert tls.Certificate) (Signed, error) {
	if len(cert.Certificate) == 0 {
		return Signed{}, errors.New("no certificate to sign the verdict with")
	}
	if len(v.Reason) > maxReason {
		v.Reason = v.Reason[:maxReason] + "..."
	}
	body, err := json.Marshal(v)
	if err != nil {
		return Signed{}, err
	}
	signer, ok := cert.PrivateKey.(crypto.Signer)
	if !ok {
		return Signed{}, fmt.Errorf("the node key (%T) cannot sign", cert.PrivateKey)
	}
	var sig []byte
	switch signer.Public().(type) {
	case ed25519.PublicKey:
		sig, err = signer.Sign(rand.Reader, body, crypto.Hash(0))
	case *ecdsa.PublicKey, *rsa.PublicKey:
		d := sha256.Sum256(body)
		sig, err = signer.Sign(rand.Reader, d[:], crypto.SHA256)
	default:
		return Signed{}, fmt.Errorf("the node key (%T) is of no kind this signs with", signer.Public())
	}
	if err != nil {
		return Signed{}, fmt.Errorf("sign the verdict: %w", err)
	}
	return Signed{Verdict: body, Cert: cert.Certificate[0], Signature: sig}, nil
}

// Open checks s against the node CA roots for cluster and returns its
// verdict; an error says why it is not to be trusted.
func (s Signed) Open(roots *x509.CertPool, cluster string, now time.Time) (Verdict, error) {
	var v Verdict
	if len(s.Signature) == 0 || len(s.Cert) == 0 {
		return v, errors.New("unsigned")
	}
	c, err := x509.ParseCertificate(s.Cert)
	if err != nil {
		return v, fmt.Errorf("its certificate does not parse: %w", err)
	}
	if _, err := c.Verify(x509.VerifyOptions{Roots: roots, CurrentTime: now,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
		return v, fmt.Errorf("its certificate (%s) is not a node certificate of this cluster: %w", c.Subject.CommonName, err)
	}
	var algo x509.SignatureAlgorithm
	switch c.PublicKey.(type) {
	case *ecdsa.PublicKey:
		algo = x509.ECDSAWithSHA256
	case *rsa.PublicKey:
		algo = x509.SHA256WithRSA
	case ed25519.PublicKey:
		algo = x509.PureEd25519
	default:
		return v, fmt.Errorf("its certificate's key (%T) is of no kind verdicts are signed with", c.PublicKey)
	}
	if err := c.CheckSignature(algo, s.Verdict, s.Signature); err != nil {
		return v, fmt.Errorf("its signature does not match (%s): %w", c.Subject.CommonName, err)
	}
	if err := json.Unmarshal(s.Verdict, &v); err != nil {
		return Verdict{}, fmt.Errorf("signed, but not a verdict: %w", err)
	}
	switch {
	case v.Node != c.Subject.CommonName:
		return Verdict{}, fmt.Errorf("node %s's certificate signed a verdict in the name of %q", c.Subject.CommonName, v.Node)
	case v.Cluster != cluster:
		return Verdict{}, fmt.Errorf("a verdict of cluster %q, not %q", v.Cluster, cluster)
	case v.Commit == "":
		return Verdict{}, errors.New("a verdict on no commit")
	}
	return v, nil
}
