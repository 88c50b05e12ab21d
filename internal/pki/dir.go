package pki

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/mqha/mqha/internal/atomicfile"
	"github.com/mqha/mqha/internal/cluster"
	"github.com/mqha/mqha/internal/daemon"
)

// Dir is a PKI directory and its rules: DIR/ca.{crt,key} the cluster CA;
// DIR/node-ca.{crt,key} a CA that signs node certificates only (optional);
// DIR/bridge.secret the bridge nodes' shared secret; DIR/NODE/ a node's
// key, certificate, trust bundle (ca.crt), node CA and bridge secret;
// DIR/clients/ the client certificates. Keys are written 0600, and an
// existing CA or key is never replaced silently.
type Dir struct {
	Path string
	Now  func() time.Time // nil: time.Now
}

func (d Dir) now() time.Time {
	if d.Now == nil {
		return time.Now()
	}
	return d.Now()
}

func (d Dir) file(name ...string) string { return filepath.Join(append([]string{d.Path}, name...)...) }

// Init makes the cluster CA named after the cluster, and with nodeCA a
// second one that signs node certificates only: the brokers' bridge
// listeners then trust it alone (tls.nodeCA), so no client certificate
// reaches them. --node-ca on a directory that has the cluster CA adds the
// node CA. It returns the files it wrote.
func (d Dir) Init(name string, nodeCA bool) ([]string, error) {
	if err := os.MkdirAll(d.Path, 0o700); err != nil {
		return nil, err
	}
	exists := func(base string) bool { _, err := os.Stat(d.file(base + ".key")); return err == nil }
	var wrote []string
	switch {
	case exists("ca") && !nodeCA:
		return nil, fmt.Errorf("%s exists; refusing to replace the cluster CA (every certificate depends on it)", d.file("ca.key"))
	case !exists("ca"):
		w, err := d.newCA("ca", name)
		if err != nil {
			return nil, err
		}
		wrote = append(wrote, w...)
	}
	if !nodeCA {
		return wrote, nil
	}
	if exists("node-ca") {
		return wrote, fmt.Errorf("%s exists; refusing to replace the node CA (every node certificate depends on it)", d.file("node-ca.key"))
	}
	w, err := d.newCA("node-ca", "nodes "+name)
	return append(wrote, w...), err
}

func (d Dir) newCA(base, name string) ([]string, error) {
	ca, err := NewCA(name, d.now())
	if err != nil {
		return nil, err
	}
	key, err := ca.KeyPEM()
	if err != nil {
		return nil, err
	}
	crt, keyPath := d.file(base+".crt"), d.file(base+".key")
	if err := writeNew(keyPath, key, 0o600); err != nil {
		return nil, err
	}
	return []string{crt, keyPath}, writeNew(crt, ca.CertPEM(), 0o644)
}

// Signers are a directory's CAs, read once: the cluster CA, what signs
// node certificates (the node CA if there is one, else the cluster CA) and
// what nodes and clients trust (the cluster CA, and the node CA when there
// is one).
type Signers struct {
	dir   Dir
	CA    *CA
	Nodes *CA
	Trust []byte
}

// Signers reads the directory's CAs.
func (d Dir) Signers() (*Signers, error) {
	ca, err := d.loadCA("ca")
	if err != nil {
		return nil, err
	}
	s := &Signers{dir: d, CA: ca, Nodes: ca, Trust: ca.CertPEM()}
	if _, err := os.Stat(d.file("node-ca.crt")); errors.Is(err, os.ErrNotExist) {
		return s, nil
	}
	if s.Nodes, err = d.loadCA("node-ca"); err != nil {
		return nil, err
	}
	s.Trust = append(ca.CertPEM(), s.Nodes.CertPEM()...)
	return s, nil
}

func (d Dir) loadCA(base string) (*CA, error) {
	cert, err := os.ReadFile(d.file(base + ".crt"))
	if err != nil {
		return nil, fmt.Errorf("%w (run `mqha-agent pki init --dir %s` first)", err, d.Path)
	}
	key, err := os.ReadFile(d.file(base + ".key"))
	if err != nil {
		return nil, err
	}
	ca, err := ParseCA(cert, key)
	if err != nil {
		return nil, fmt.Errorf("%s in %s: %w", base, d.Path, err)
	}
	return ca, nil
}

// IssueNode writes node n's key and certificate (from the node signer),
// the trust bundle and the node CA under DIR/NODE/, and on bridge nodes
// the bridge secret (made once for the cluster). It returns the
// certificate's path.
func (s *Signers) IssueNode(cl *cluster.Cluster, n cluster.Node, force bool) (string, error) {
	out := s.dir.file(n.Name)
	crt, err := s.issue(s.Nodes, out, "node", NodeLeaf(cl, n), force)
	if err != nil {
		return "", err
	}
	if err := atomicfile.Write(filepath.Join(out, "node-ca.crt"), s.Nodes.CertPEM(), 0o644); err != nil {
		return "", err
	}
	if n.Has(cluster.Bridge) {
		return crt, s.dir.bridgeSecret(n.Name)
	}
	return crt, nil
}

// IssueClient writes a client's key and certificate under DIR/clients/,
// signed by the cluster CA. A client may not carry a node's name: the
// brokers' access list gives that name the node's topics.
func (s *Signers) IssueClient(cl *cluster.Cluster, name string, force bool) (string, error) {
	if cl == nil {
		// No definition to check against: the caller says so.
	} else if _, isNode := cl.Node(name); isNode {
		return "", fmt.Errorf("client %q has the name of a node of cluster %q: the brokers would let it use that node's topics; pick another name", name, cl.Name)
	}
	return s.issue(s.CA, s.dir.file("clients"), name, Leaf{Name: name, Client: true}, force)
}

// issue writes OUT/BASE.crt, OUT/BASE.key (0600) signed by ca, and
// OUT/ca.crt (the trust bundle); an existing key only with force.
func (s *Signers) issue(ca *CA, out, base string, l Leaf, force bool) (string, error) {
	keyPath := filepath.Join(out, base+".key")
	if _, err := os.Stat(keyPath); err == nil && !force {
		return "", fmt.Errorf("%s exists: %s has a key already; give --force to replace it (then deploy the new key and certificate where %s runs)", keyPath, l.Name, l.Name)
	}
	cert, key, err := ca.Issue(l, s.dir.now())
	if err != nil {
		return "", err
	}
	if err := os.MkdirAll(out, 0o700); err != nil {
		return "", err
	}
	for _, f := range []struct {
		name string
		data []byte
		mode os.FileMode
	}{{base + ".key", key, 0o600}, {base + ".crt", cert, 0o644}, {"ca.crt", s.Trust, 0o644}} {
		if err := atomicfile.Write(filepath.Join(out, f.name), f.data, f.mode); err != nil {
			return "", err
		}
	}
	return filepath.Join(out, base+".crt"), nil
}

// NodeLeaf names a node's certificate. Brokers also carry the VIP and the
// names clients use for it: TLS passes through nginx, so a client talking
// to the VIP verifies the broker's certificate.
func NodeLeaf(cl *cluster.Cluster, n cluster.Node) Leaf {
	l := Leaf{Name: n.Name, DNS: []string{n.Name}, IPs: []net.IP{net.ParseIP(n.Address)}, Server: true, Client: true}
	if daemon.BehindVIP(n) && cl.VIP != nil {
		l.IPs = append(l.IPs, net.ParseIP(cl.VIP.Address))
		l.DNS = append(l.DNS, cl.VIP.DNSNames...)
	}
	return l
}

// AheadNode is a node not in the definition yet, for a certificate issued
// ahead of the commit that adds it: its roles decide what the certificate
// carries (a broker's carries the VIP).
func AheadNode(name, address, roles string) (cluster.Node, error) {
	if net.ParseIP(address).To4() == nil {
		return cluster.Node{}, fmt.Errorf("--address %q is not an IPv4 address", address)
	}
	n := cluster.Node{Name: name, Address: address}
	for _, r := range strings.Split(roles, ",") {
		if r == "" {
			continue
		}
		if !slices.Contains(cluster.Roles, cluster.Role(r)) {
			return n, fmt.Errorf("--role %q: no such role; the roles are %v (a broker's certificate carries the VIP)", r, cluster.Roles)
		}
		n.Roles = append(n.Roles, cluster.Role(r))
	}
	if len(n.Roles) == 0 {
		return n, errors.New("--address needs --role: the roles decide what the certificate carries (a broker's carries the VIP)")
	}
	return n, nil
}

// bridgeSecret copies the cluster's bridge secret (made once, DIR/
// bridge.secret) to DIR/NODE/bridge.secret: every bridge node has the same
// (tls.bridgeSecret).
func (d Dir) bridgeSecret(node string) error {
	p := d.file("bridge.secret")
	b, err := os.ReadFile(p)
	if errors.Is(err, os.ErrNotExist) {
		r := make([]byte, 32)
		rand.Read(r)
		b = []byte(hex.EncodeToString(r) + "\n")
		err = writeNew(p, b, 0o600)
	}
	if err != nil {
		return err
	}
	return atomicfile.Write(d.file(node, "bridge.secret"), b, 0o600)
}

func writeNew(path string, data []byte, mode os.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// OutsideGit refuses a PKI directory inside a git work tree unless git
// ignores it: private keys there are one `git add -A` away from every node
// that pulls the repository.
func (d Dir) OutsideGit() error {
	abs, err := filepath.Abs(d.Path)
	if err != nil {
		return err
	}
	top := ""
	for dir := abs; ; dir = filepath.Dir(dir) {
		if _, err := os.Stat(filepath.Join(dir, ".git")); err == nil {
			top = dir
			break
		}
		if filepath.Dir(dir) == dir {
			return nil // not in a work tree
		}
	}
	probe := filepath.Join(abs, "ca.key")
	if err := exec.Command("git", "-C", top, "check-ignore", "-q", "--no-index", probe).Run(); err == nil {
		return nil // ignored: never committed by git add
	}
	return fmt.Errorf("--dir %s is inside the git work tree %s and git does not ignore it: private keys there are one `git add -A` away from every node that pulls the repository; keep the PKI elsewhere (e.g. --dir ~/mqha-pki), or add it to .gitignore", d.Path, top)
}
