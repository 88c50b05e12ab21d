package main

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
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
	"github.com/mqha/mqha/internal/pki"
	"github.com/mqha/mqha/schema"
)

const pkiUsage = `usage:
  mqha-agent pki init   --dir D [--repo R | --name CLUSTER] [--node-ca]
                                                              make the cluster CA (D/ca.crt, D/ca.key);
                                                              --node-ca: and a CA for nodes only (D/node-ca.*)
  mqha-agent pki issue  --dir D [--repo R] (NODE... | --all)  key + certificate per node under D/NODE/,
                                                              and bridge.secret for bridge nodes
  mqha-agent pki issue  --dir D [--repo R] --address A --role R NODE   the same, for a node not in the definition yet
  mqha-agent pki client --dir D NAME                          client key + certificate under D/clients/
flags go anywhere on the line; an existing key is replaced only with --force.
Private keys are never written inside a git work tree unless git ignores them:
keep D outside the cluster repository (which every node pulls).
`

// pkiCmd dispatches "mqha-agent pki ...". Keys are written 0600 and never
// replaced silently: the CA refuses to be overwritten.
func (c *cmd) pki(args []string) error {
	if len(args) == 0 {
		return errors.New("need a subcommand\n" + pkiUsage)
	}
	fs, repo := c.flags("pki " + args[0])
	dir := fs.String("dir", "", "PKI directory (required)")
	force := fs.Bool("force", false, "replace an existing key and certificate")
	var name, address, roles *string
	var all, nodeCA *bool
	switch args[0] {
	case "init":
		name = fs.String("name", "", "cluster name (default: from --repo)")
		nodeCA = fs.Bool("node-ca", false, "also a CA that signs node certificates only (set tls.nodeCA)")
	case "issue":
		address = fs.String("address", "", "for a node not yet in the definition: its address")
		roles = fs.String("role", "", "for a node not yet in the definition: its roles, comma-separated")
		all = fs.Bool("all", false, "every node of the definition")
	}
	names, err := parseInterspersed(fs, args[1:])
	if err != nil {
		return err
	}
	if *dir == "" {
		return errors.New("--dir is required\n" + pkiUsage)
	}
	if err := keysOutsideGit(*dir); err != nil {
		return err
	}
	now := time.Now()
	switch args[0] {
	case "init":
		if len(names) > 0 {
			return fmt.Errorf("unexpected argument %q", names[0])
		}
		if *name == "" {
			cl, err := schema.LoadDir(*repo)
			if err != nil {
				return fmt.Errorf("cluster name from %s (or give --name): %w", *repo, err)
			}
			*name = cl.Name
		}
		return c.pkiInit(*dir, *name, *nodeCA, now)
	case "issue":
		cl, err := schema.LoadDir(*repo)
		if err != nil {
			return err
		}
		if *all {
			if len(names) > 0 || *address != "" {
				return errors.New("--all issues every node of the definition: name no node and give no --address")
			}
			for _, n := range cl.Nodes {
				names = append(names, n.Name)
			}
		}
		if len(names) == 0 {
			return errors.New("name at least one node, or give --all")
		}
		ca, err := loadCA(*dir, "ca")
		if err != nil {
			return err
		}
		signer, trust, err := loadSigners(*dir, ca)
		if err != nil {
			return err
		}
		for _, nodeName := range names {
			n, ok := cl.Node(nodeName)
			if ok && (*address != "" || *roles != "") {
				return fmt.Errorf("node %q is in the definition (address %s, roles %s): --address and --role are only for a node not added yet; its certificate follows the definition",
					nodeName, n.Address, n.RoleList())
			}
			if !ok && *address != "" && len(names) == 1 {
				// Issued ahead of the commit that adds the node.
				if net.ParseIP(*address).To4() == nil {
					return fmt.Errorf("--address %q is not an IPv4 address", *address)
				}
				n = cluster.Node{Name: nodeName, Address: *address}
				for _, r := range strings.Split(*roles, ",") {
					if r == "" {
						continue
					}
					if !slices.Contains(cluster.Roles, cluster.Role(r)) {
						return fmt.Errorf("--role %q: no such role; the roles are %v (a broker's certificate carries the VIP)", r, cluster.Roles)
					}
					n.Roles = append(n.Roles, cluster.Role(r))
				}
				if len(n.Roles) == 0 {
					return errors.New("--address needs --role: the roles decide what the certificate carries (a broker's carries the VIP)")
				}
				ok = true
			}
			if !ok {
				return fmt.Errorf("node %q is not in cluster %q (for a node not added yet, name only it and give --address and --role)", nodeName, cl.Name)
			}
			if err := c.issue(signer, trust, filepath.Join(*dir, n.Name), "node", nodeLeaf(cl, n), now, *force); err != nil {
				return err
			}
			if err := atomicfile.Write(filepath.Join(*dir, n.Name, "node-ca.crt"), signer.CertPEM(), 0o644); err != nil {
				return err
			}
			if n.Has(cluster.Bridge) {
				if err := bridgeSecret(*dir, n.Name); err != nil {
					return err
				}
			}
		}
		return nil
	case "client":
		if len(names) != 1 {
			return errors.New("name exactly one client")
		}
		// The brokers' access list gives a certificate named like a node
		// that node's topics ($mqha, its status): no client may carry one.
		if cl, err := schema.LoadDir(*repo); err != nil {
			fmt.Fprintf(c.stderr, "note: %s not checked against the definition in %s (%v)\n", names[0], *repo, err)
		} else if _, isNode := cl.Node(names[0]); isNode {
			return fmt.Errorf("client %q has the name of a node of cluster %q: the brokers would let it use that node's topics; pick another name", names[0], cl.Name)
		}
		ca, err := loadCA(*dir, "ca")
		if err != nil {
			return err
		}
		_, trust, err := loadSigners(*dir, ca)
		if err != nil {
			return err
		}
		return c.issue(ca, trust, filepath.Join(*dir, "clients"), names[0], pki.Leaf{Name: names[0], Client: true}, now, *force)
	}
	return fmt.Errorf("unknown pki subcommand %q\n%s", args[0], pkiUsage)
}

// nodeLeaf names a node's certificate. Brokers also carry the VIP and the
// names clients use for it: TLS passes through nginx, so a client talking to
// the VIP verifies the broker's certificate.
func nodeLeaf(cl *cluster.Cluster, n cluster.Node) pki.Leaf {
	l := pki.Leaf{Name: n.Name, DNS: []string{n.Name}, IPs: []net.IP{net.ParseIP(n.Address)}, Server: true, Client: true}
	if daemon.BehindVIP(n) && cl.VIP != nil {
		l.IPs = append(l.IPs, net.ParseIP(cl.VIP.Address))
		l.DNS = append(l.DNS, cl.VIP.DNSNames...)
	}
	return l
}

// pkiInit makes the cluster CA, and with nodeCA a second one that signs
// node certificates only: the brokers' bridge listeners then trust it alone
// (tls.nodeCA), so no client certificate reaches them. An existing CA is
// never replaced; --node-ca on a directory that has the cluster CA adds the
// node CA.
func (c *cmd) pkiInit(dir, name string, nodeCA bool, now time.Time) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	exists := func(base string) bool { _, err := os.Stat(filepath.Join(dir, base+".key")); return err == nil }
	switch {
	case exists("ca") && !nodeCA:
		return fmt.Errorf("%s exists; refusing to replace the cluster CA (every certificate depends on it)", filepath.Join(dir, "ca.key"))
	case !exists("ca"):
		if err := c.newCA(dir, "ca", name, now); err != nil {
			return err
		}
	}
	if !nodeCA {
		return nil
	}
	if exists("node-ca") {
		return fmt.Errorf("%s exists; refusing to replace the node CA (every node certificate depends on it)", filepath.Join(dir, "node-ca.key"))
	}
	return c.newCA(dir, "node-ca", "nodes "+name, now)
}

func (c *cmd) newCA(dir, base, name string, now time.Time) error {
	ca, err := pki.NewCA(name, now)
	if err != nil {
		return err
	}
	key, err := ca.KeyPEM()
	if err != nil {
		return err
	}
	keyPath := filepath.Join(dir, base+".key")
	if err := writeNew(keyPath, key, 0o600); err != nil {
		return err
	}
	if err := writeNew(filepath.Join(dir, base+".crt"), ca.CertPEM(), 0o644); err != nil {
		return err
	}
	fmt.Fprintf(c.stdout, "%s\n%s\n", filepath.Join(dir, base+".crt"), keyPath)
	return nil
}

// loadSigners returns what signs node certificates (the node CA if there
// is one, else the cluster CA) and what nodes and clients trust (ca.crt
// they get: the cluster CA, and the node CA when there is one).
func loadSigners(dir string, ca *pki.CA) (*pki.CA, []byte, error) {
	if _, err := os.Stat(filepath.Join(dir, "node-ca.crt")); errors.Is(err, os.ErrNotExist) {
		return ca, ca.CertPEM(), nil
	}
	node, err := loadCA(dir, "node-ca")
	if err != nil {
		return nil, nil, err
	}
	return node, append(ca.CertPEM(), node.CertPEM()...), nil
}

// loadCA reads DIR/BASE.crt and DIR/BASE.key: the cluster CA ("ca") or
// the node CA ("node-ca").
func loadCA(dir, base string) (*pki.CA, error) {
	cert, err := os.ReadFile(filepath.Join(dir, base+".crt"))
	if err != nil {
		return nil, fmt.Errorf("%w (run `mqha-agent pki init --dir %s` first)", err, dir)
	}
	key, err := os.ReadFile(filepath.Join(dir, base+".key"))
	if err != nil {
		return nil, err
	}
	ca, err := pki.ParseCA(cert, key)
	if err != nil {
		return nil, fmt.Errorf("%s in %s: %w", base, dir, err)
	}
	return ca, nil
}

// issue writes OUT/BASE.crt, OUT/BASE.key (0600) signed by ca, and
// OUT/ca.crt (trust); an existing key is replaced only with --force.
func (c *cmd) issue(ca *pki.CA, trust []byte, out, base string, l pki.Leaf, now time.Time, force bool) error {
	keyPath := filepath.Join(out, base+".key")
	if _, err := os.Stat(keyPath); err == nil && !force {
		return fmt.Errorf("%s exists: %s has a key already; give --force to replace it (then deploy the new key and certificate where %s runs)", keyPath, l.Name, l.Name)
	}
	cert, key, err := ca.Issue(l, now)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(out, 0o700); err != nil {
		return err
	}
	for _, f := range []struct {
		name string
		data []byte
		mode os.FileMode
	}{{base + ".key", key, 0o600}, {base + ".crt", cert, 0o644}, {"ca.crt", trust, 0o644}} {
		if err := atomicfile.Write(filepath.Join(out, f.name), f.data, f.mode); err != nil {
			return err
		}
	}
	fmt.Fprintf(c.stdout, "%s: %s (%s)\n", l.Name, filepath.Join(out, base+".crt"), filepath.Join(out, base+".key"))
	return nil
}

// bridgeSecret copies the cluster's bridge secret (made once, DIR/
// bridge.secret) to DIR/NODE/bridge.secret: every bridge node has the same
// (tls.bridgeSecret).
func bridgeSecret(dir, node string) error {
	p := filepath.Join(dir, "bridge.secret")
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
	return atomicfile.Write(filepath.Join(dir, node, "bridge.secret"), b, 0o600)
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

// parseInterspersed parses flags anywhere among the positional arguments
// (Go's flag package stops at the first one) and returns the positionals.
func parseInterspersed(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		if fs.NArg() == 0 {
			return pos, nil
		}
		pos = append(pos, fs.Arg(0))
		args = fs.Args()[1:]
	}
}

// keysOutsideGit refuses a PKI directory inside a git work tree unless git
// ignores it: private keys there are one `git add -A` away from every node
// that pulls the repository.
func keysOutsideGit(dir string) error {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	top := ""
	for d := abs; ; d = filepath.Dir(d) {
		if _, err := os.Stat(filepath.Join(d, ".git")); err == nil {
			top = d
			break
		}
		if filepath.Dir(d) == d {
			return nil // not in a work tree
		}
	}
	probe := filepath.Join(abs, "ca.key")
	cmd := exec.Command("git", "-C", top, "check-ignore", "-q", "--no-index", probe)
	if err := cmd.Run(); err == nil {
		return nil // ignored: never committed by git add
	}
	return fmt.Errorf("--dir %s is inside the git work tree %s and git does not ignore it: private keys there are one `git add -A` away from every node that pulls the repository; keep the PKI elsewhere (e.g. --dir ~/mqha-pki), or add it to .gitignore", dir, top)
}
