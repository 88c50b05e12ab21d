package agent

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"os"

	"github.com/mqha/mqha/internal/cluster"
	"github.com/mqha/mqha/internal/control"
	"github.com/mqha/mqha/internal/daemon"
	"github.com/mqha/mqha/internal/evaluate"
	"github.com/mqha/mqha/internal/health"
	"github.com/mqha/mqha/internal/pki"
	"github.com/mqha/mqha/internal/render"
	"github.com/mqha/mqha/internal/source"
)

// View is one commit as this node sees it, computed once when the commit
// loads and reused by enforce, verify, the health monitor, drift and the
// peer probes: a commit's content never changes.
type View struct {
	Commit, Subject string
	Cluster         *cluster.Cluster
	Node            cluster.Node
	Output          *render.Output // the node's rendered files and units
	TLS             *tls.Config    // the node's certificate as a client of the cluster CA
	// TLSID names TLS's content (its files' digest): clients made with TLS
	// are made anew when it changes, not on every commit (each loads TLS
	// again).
	TLSID  string
	Checks []health.Check // every check of the node's daemons
	Certs  []control.Cert // the node's certificate and the CA, with their expiry
	// GuessableBridgeIDs: a bridge node without the bridge secret (its
	// bridges' client ids can be named by any client).
	GuessableBridgeIDs bool
	// BridgeIDs are the client ids of the node's bridge connections (none
	// on a node without the bridge role), Draining's included.
	BridgeIDs []string
	// Draining are brokers a commit removed that this bridge node still
	// bridges until they stop serving (draining.go).
	Draining []cluster.Node
	checksOf map[string][]health.Check
}

// BridgeSecret reads the bridge nodes' shared secret (tls.bridgeSecret) on
// bridge node n: nil when n is no bridge node or the file is missing (the
// bridges' client ids are then guessable, which status says).
func BridgeSecret(c *cluster.Cluster, n cluster.Node) ([]byte, error) {
	if !n.Has(cluster.Bridge) {
		return nil, nil
	}
	b, err := os.ReadFile(c.TLS.BridgeSecret)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("tls.bridgeSecret: %w", err)
	}
	b = bytes.TrimSpace(b)
	if len(b) < 16 {
		return nil, fmt.Errorf("tls.bridgeSecret %s holds %d bytes: want at least 16 random ones, the same on every bridge node (mqha-agent pki issue writes one)", c.TLS.BridgeSecret, len(b))
	}
	return b, nil
}

// TLSFiles name the node's certificate files (the definition's tls).
type TLSFiles = cluster.TLS

// load reads, checks and renders commit hash for this node. Every failure
// refuses the commit with what failed and where; a node whose certificate
// does not load is refused too, so that the fleet gate and the post-apply
// verification (which need it) never silently turn off.
func (a *Agent) load(ctx context.Context, hash string) (*View, error) {
	def, err := evaluateCommit(ctx, a.d, a.cfg, hash)
	if err != nil {
		return nil, err
	}
	return a.view0(def)
}

// evaluated is a commit's evaluated definition.
type evaluated struct {
	hash, subject string
	cluster       *cluster.Cluster
}

// evaluateCommit reads and evaluates commit hash within cfg's bounds
// (max-definition-size, load-timeout, load-memory). It touches no state of
// the loop, so it may run off it.
func evaluateCommit(ctx context.Context, d Deps, cfg Config, hash string) (*evaluated, error) {
	commit, err := d.Source.Read(hash, cfg.Path, cfg.MaxDefinitionSize)
	if err != nil {
		return nil, err
	}
	c, err := d.LoadDefinition(ctx, commit.Files, evaluate.Limits{Timeout: cfg.LoadTimeout, Memory: cfg.LoadMemory})
	if err != nil {
		return nil, fmt.Errorf("commit %s (%s): %w", source.Short(hash), commit.Subject, err)
	}
	return &evaluated{hash, commit.Subject, c}, nil
}

// view0 is the View of an evaluated definition for this node: its place,
// its certificate, its files and checks.
func (a *Agent) view0(def *evaluated) (*View, error) {
	hash := def.hash
	v := &View{Commit: hash, Subject: def.subject, Cluster: def.cluster}
	wrap := func(err error) error { return fmt.Errorf("commit %s (%s): %w", source.Short(hash), v.Subject, err) }
	var err error
	var ok bool
	if v.Node, ok = v.Cluster.Node(a.node); !ok {
		return nil, wrap(fmt.Errorf("node %q %w", a.node, errNotInDefinition))
	}
	if v.TLS, err = a.d.LoadTLS(v.Cluster.TLS); err != nil {
		return nil, wrap(fmt.Errorf("this node's certificate does not load, so its health cannot be checked: %w (check tls.ca, tls.cert and tls.key of the definition against the files on this node)", err))
	}
	v.Certs = certs(v.TLS, v.Cluster.TLS)
	v.TLSID = tlsID(v.Cluster.TLS)
	if v, err = a.derive(v); err != nil {
		return nil, wrap(err)
	}
	return v, nil
}

// derive renders v's files and checks for this host (what the definition
// cannot say), from v's definition and TLS.
func (a *Agent) derive(v *View) (*View, error) {
	host := a.d.Host()
	secret, err := BridgeSecret(v.Cluster, v.Node)
	if err != nil {
		return nil, err
	}
	host.BridgeSecret = secret
	v.GuessableBridgeIDs = v.Node.Has(cluster.Bridge) && secret == nil
	v.Draining = a.drainingFor(v)
	host.DrainingBrokers = v.Draining
	v.BridgeIDs = nil
	for _, b := range daemon.Bridges(v.Cluster, v.Node, secret) {
		v.BridgeIDs = append(v.BridgeIDs, b.ClientID)
	}
	if v.Node.Has(cluster.Bridge) {
		for _, b := range v.Draining {
			v.BridgeIDs = append(v.BridgeIDs, daemon.BridgeTo(v.Cluster.Name, b, secret).ClientID)
		}
	}
	if v.Node.Has(cluster.LB) {
		host.DownBrokers = a.brokers.down
	}
	out, err := render.NodeOn(v.Cluster, a.node, host)
	if err != nil {
		return nil, err
	}
	v.Output, v.Checks, v.checksOf = out, nil, map[string][]health.Check{}
	for _, d := range daemon.For(v.Cluster, v.Node) {
		cs := d.Checks(v.Cluster, v.Node, v.TLS, host.BridgeSecret)
		if a.d.Probe != nil {
			for i := range cs {
				cs[i].Probe = a.d.Probe(cs[i])
			}
		}
		v.checksOf[d.Unit] = cs
		v.Checks = append(v.Checks, cs...)
	}
	return v, nil
}

// LoadTLS reads the node's certificate and key, trusting the cluster CA;
// with a node CA of its own, the certificate must come from it.
func LoadTLS(f TLSFiles) (*tls.Config, error) {
	tc, err := pki.LoadTLS(f.CA, f.Cert, f.Key)
	if err != nil {
		return nil, err
	}
	if f.NodeCA != "" && f.NodeCA != f.CA {
		if err := checkNodeCA(f, tc.RootCAs, tc.Certificates[0].Leaf); err != nil {
			return nil, err
		}
	}
	return tc, nil
}

// tlsID is a digest of the files f names (a file that does not read counts
// as empty: LoadTLS has read them a moment before).
func tlsID(f TLSFiles) string {
	h := sha256.New()
	for _, name := range []string{f.CA, f.Cert, f.Key, f.NodeCA} {
		b, _ := os.ReadFile(name)
		fmt.Fprintf(h, "%d:", len(b))
		h.Write(b)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// checkNodeCA: with a node CA of its own, this node's certificate must come
// from it (the bridge listeners trust only it), and the cluster CA file
// must trust it too (clients verify the brokers with it, the agents probe).
func checkNodeCA(f TLSFiles, clusterCAs *x509.CertPool, leaf *x509.Certificate) error {
	b, err := os.ReadFile(f.NodeCA)
	if err != nil {
		return fmt.Errorf("tls.nodeCA: %w", err)
	}
	nodeCAs := x509.NewCertPool()
	if !nodeCAs.AppendCertsFromPEM(b) {
		return fmt.Errorf("tls.nodeCA %s holds no certificate", f.NodeCA)
	}
	anyUse := []x509.ExtKeyUsage{x509.ExtKeyUsageAny}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: nodeCAs, KeyUsages: anyUse}); err != nil {
		return fmt.Errorf("%s is not signed by the node CA tls.nodeCA %s (%v): the brokers' bridge listeners would refuse it; issue it from the node CA (mqha-agent pki issue)", f.Cert, f.NodeCA, err)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: clusterCAs, KeyUsages: anyUse}); err != nil {
		return fmt.Errorf("tls.ca %s does not trust the node CA (%v): clients could not verify the brokers; put the node CA in it too (mqha-agent pki issue writes that bundle as ca.crt)", f.CA, err)
	}
	return nil
}

// certs are the expiry dates of the node's certificate (as loaded) and of
// the CA certificate(s) in the CA file.
func certs(tc *tls.Config, f TLSFiles) []control.Cert {
	var out []control.Cert
	if len(tc.Certificates) > 0 && tc.Certificates[0].Leaf != nil {
		out = append(out, control.Cert{Name: "node", File: f.Cert, NotAfter: tc.Certificates[0].Leaf.NotAfter})
	}
	// The CA file may hold several (the clients' and the nodes' CA): each
	// is named by its subject then, so that each has its own expiry.
	var cas []*x509.Certificate
	if b, err := os.ReadFile(f.CA); err == nil {
		for {
			var blk *pem.Block
			if blk, b = pem.Decode(b); blk == nil {
				break
			}
			if c, err := x509.ParseCertificate(blk.Bytes); err == nil {
				cas = append(cas, c)
			}
		}
	}
	for _, c := range cas {
		name := "ca"
		if len(cas) > 1 {
			name = "ca " + c.Subject.CommonName
		}
		out = append(out, control.Cert{Name: name, File: f.CA, NotAfter: c.NotAfter})
	}
	return out
}
