package main

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/mqha/mqha/internal/atomicfile"
	"github.com/mqha/mqha/internal/cluster"
	"github.com/mqha/mqha/internal/daemon"
	"github.com/mqha/mqha/internal/pki"
	"github.com/mqha/mqha/schema"
)

const pkiUsage = `usage:
  mqha-agent pki init   --dir D [--repo R | --name CLUSTER]   make the cluster CA (D/ca.crt, D/ca.key)
  mqha-agent pki issue  --dir D [--repo R] NODE...            key + certificate per node under D/NODE/
  mqha-agent pki issue  --dir D [--repo R] --address A --role R NODE   the same, for a node not in the definition yet
  mqha-agent pki client --dir D NAME                          client key + certificate under D/clients/
`

// pkiCmd dispatches "mqha-agent pki ...". Keys are written 0600 and never
// replaced silently: the CA refuses to be overwritten.
func (c *cmd) pki(args []string) error {
	if len(args) == 0 {
		return errors.New("need a subcommand\n" + pkiUsage)
	}
	fs, repo := c.flags("pki " + args[0])
	dir := fs.String("dir", "", "PKI directory (required)")
	var name, address, roles *string
	switch args[0] {
	case "init":
		name = fs.String("name", "", "cluster name (default: from --repo)")
	case "issue":
		address = fs.String("address", "", "for a node not yet in the definition: its address")
		roles = fs.String("role", "", "for a node not yet in the definition: its roles, comma-separated")
	}
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	if *dir == "" {
		return errors.New("--dir is required\n" + pkiUsage)
	}
	now := time.Now()
	switch args[0] {
	case "init":
		if fs.NArg() > 0 {
			return fmt.Errorf("unexpected argument %q", fs.Arg(0))
		}
		if *name == "" {
			cl, err := schema.LoadDir(*repo)
			if err != nil {
				return fmt.Errorf("cluster name from %s (or give --name): %w", *repo, err)
			}
			*name = cl.Name
		}
		return c.pkiInit(*dir, *name, now)
	case "issue":
		if fs.NArg() == 0 {
			return errors.New("name at least one node")
		}
		cl, err := schema.LoadDir(*repo)
		if err != nil {
			return err
		}
		ca, err := loadCA(*dir)
		if err != nil {
			return err
		}
		for _, nodeName := range fs.Args() {
			n, ok := cl.Node(nodeName)
			if !ok && *address != "" && fs.NArg() == 1 {
				// Issued ahead of the commit that adds the node.
				if net.ParseIP(*address).To4() == nil {
					return fmt.Errorf("--address %q is not an IPv4 address", *address)
				}
				n = cluster.Node{Name: nodeName, Address: *address}
				for _, r := range strings.Split(*roles, ",") {
					if r != "" {
						n.Roles = append(n.Roles, cluster.Role(r))
					}
				}
				ok = true
			}
			if !ok {
				return fmt.Errorf("node %q is not in cluster %q (for a node not added yet, name only it and give --address and --role)", nodeName, cl.Name)
			}
			if err := c.issue(ca, *dir, filepath.Join(*dir, n.Name), "node", nodeLeaf(cl, n), now); err != nil {
				return err
			}
		}
		return nil
	case "client":
		if fs.NArg() != 1 {
			return errors.New("name exactly one client")
		}
		ca, err := loadCA(*dir)
		if err != nil {
			return err
		}
		return c.issue(ca, *dir, filepath.Join(*dir, "clients"), fs.Arg(0), pki.Leaf{Name: fs.Arg(0), Client: true}, now)
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

func (c *cmd) pkiInit(dir, name string, now time.Time) error {
	keyPath := filepath.Join(dir, "ca.key")
	if _, err := os.Stat(keyPath); err == nil {
		return fmt.Errorf("%s exists; refusing to replace the cluster CA (every certificate depends on it)", keyPath)
	}
	ca, err := pki.NewCA(name, now)
	if err != nil {
		return err
	}
	key, err := ca.KeyPEM()
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	if err := writeNew(keyPath, key, 0o600); err != nil {
		return err
	}
	if err := writeNew(filepath.Join(dir, "ca.crt"), ca.CertPEM(), 0o644); err != nil {
		return err
	}
	fmt.Fprintf(c.stdout, "%s\n%s\n", filepath.Join(dir, "ca.crt"), keyPath)
	return nil
}

func loadCA(dir string) (*pki.CA, error) {
	cert, err := os.ReadFile(filepath.Join(dir, "ca.crt"))
	if err != nil {
		return nil, fmt.Errorf("%w (run `mqha-agent pki init --dir %s` first)", err, dir)
	}
	key, err := os.ReadFile(filepath.Join(dir, "ca.key"))
	if err != nil {
		return nil, err
	}
	return pki.ParseCA(cert, key)
}

// issue writes OUT/BASE.crt, OUT/BASE.key (0600) and OUT/ca.crt.
func (c *cmd) issue(ca *pki.CA, dir, out, base string, l pki.Leaf, now time.Time) error {
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
	}{{base + ".key", key, 0o600}, {base + ".crt", cert, 0o644}, {"ca.crt", ca.CertPEM(), 0o644}} {
		if err := atomicfile.Write(filepath.Join(out, f.name), f.data, f.mode); err != nil {
			return err
		}
	}
	fmt.Fprintf(c.stdout, "%s: %s (%s)\n", l.Name, filepath.Join(out, base+".crt"), filepath.Join(out, base+".key"))
	return nil
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
