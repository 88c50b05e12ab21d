package main

import (
	"errors"
	"flag"
	"fmt"
	"strings"

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

// pki dispatches "mqha-agent pki ...": the flags here, the certificate
// rules in internal/pki.
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
	d := pki.Dir{Path: *dir}
	if err := d.OutsideGit(); err != nil {
		return err
	}
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
		wrote, err := d.Init(*name, *nodeCA)
		for _, f := range wrote {
			fmt.Fprintln(c.stdout, f)
		}
		return err
	case "issue":
		return c.issueNodes(d, *repo, names, *all, *address, *roles, *force)
	case "client":
		if len(names) != 1 {
			return errors.New("name exactly one client")
		}
		cl, err := schema.LoadDir(*repo)
		if err != nil {
			fmt.Fprintf(c.stderr, "note: %s not checked against the definition in %s (%v)\n", names[0], *repo, err)
		}
		s, err := d.Signers()
		if err != nil {
			return err
		}
		crt, err := s.IssueClient(cl, names[0], *force)
		if err == nil {
			c.issued(names[0], crt)
		}
		return err
	}
	return fmt.Errorf("unknown pki subcommand %q\n%s", args[0], pkiUsage)
}

// issueNodes issues the named nodes of the definition in repo (every node
// with all), or one node not in it yet (address, roles).
func (c *cmd) issueNodes(d pki.Dir, repo string, names []string, all bool, address, roles string, force bool) error {
	cl, err := schema.LoadDir(repo)
	if err != nil {
		return err
	}
	if all {
		if len(names) > 0 || address != "" {
			return errors.New("--all issues every node of the definition: name no node and give no --address")
		}
		for _, n := range cl.Nodes {
			names = append(names, n.Name)
		}
	}
	if len(names) == 0 {
		return errors.New("name at least one node, or give --all")
	}
	s, err := d.Signers()
	if err != nil {
		return err
	}
	for _, name := range names {
		n, ok := cl.Node(name)
		switch {
		case ok && (address != "" || roles != ""):
			return fmt.Errorf("node %q is in the definition (address %s, roles %s): --address and --role are only for a node not added yet; its certificate follows the definition",
				name, n.Address, n.RoleList())
		case !ok && address != "" && len(names) == 1:
			if n, err = pki.AheadNode(name, address, roles); err != nil {
				return err
			}
		case !ok:
			return fmt.Errorf("node %q is not in cluster %q (for a node not added yet, name only it and give --address and --role)", name, cl.Name)
		}
		crt, err := s.IssueNode(cl, n, force)
		if err != nil {
			return err
		}
		c.issued(n.Name, crt)
	}
	return nil
}

// issued says where the certificate crt of name and its key are.
func (c *cmd) issued(name, crt string) {
	fmt.Fprintf(c.stdout, "%s: %s (%s)\n", name, crt, strings.TrimSuffix(crt, ".crt")+".key")
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
