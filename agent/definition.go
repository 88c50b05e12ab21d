package main

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/mqha/mqha/internal/render"

	"github.com/mqha/mqha/internal/cluster"
	"github.com/mqha/mqha/internal/source"
	"github.com/mqha/mqha/schema"
)

// defSource says where vet, nodes, render and diff read the definition:
// by default what the agent would read, the committed tree of HEAD when
// --repo is in a git work tree.
type defSource struct {
	repo, rev *string
	worktree  *bool
}

// defCommand makes the flags of a command that reads the definition
// (vet, nodes, render, diff, fleet): --repo, --rev, --worktree.
func (c *cmd) defCommand(name string) (*flag.FlagSet, defSource) {
	fs, repo := c.flags(name)
	return fs, defSource{repo: repo,
		rev:      fs.String("rev", "HEAD", "read the definition of this commit (when --repo is in a git work tree)"),
		worktree: fs.Bool("worktree", false, "read the files as they are in the working tree, committed or not")}
}

// loadAfter is the preamble of those commands: the flags parsed, checked
// (check, if set), then the definition read.
func (c *cmd) loadAfter(fs *flag.FlagSet, s defSource, args []string, check func() error) (*cluster.Cluster, error) {
	if err := parse(fs, args); err != nil {
		return nil, err
	}
	if check != nil {
		if err := check(); err != nil {
			return nil, err
		}
	}
	return c.definition(s)
}

// definition reads and checks the definition, saying on stderr which
// commit it read and which .cue files in the working tree differ from it.
func (c *cmd) definition(s defSource) (*cluster.Cluster, error) {
	if *s.worktree {
		return schema.LoadDir(*s.repo)
	}
	commit, top, ok, err := source.ReadWorkTree(*s.repo, *s.rev)
	if err != nil {
		return nil, err
	}
	if !ok {
		if *s.rev != "HEAD" {
			return nil, fmt.Errorf("--rev %s: %s is not in a git work tree", *s.rev, *s.repo)
		}
		return schema.LoadDir(*s.repo) // a plain directory: its files are the definition
	}
	fmt.Fprintf(c.stderr, "reading commit %s (%s) of %s, as the agents do; --worktree reads uncommitted files\n", source.Short(commit.Hash), *s.rev, top)
	// The working tree is compared with HEAD only: against an older commit
	// (diff --from, --rev) every later change would read as uncommitted.
	if *s.rev == "HEAD" {
		for _, w := range uncommitted(*s.repo, commit.Files) {
			fmt.Fprintf(c.stderr, "warning: %s\n", w)
		}
	}
	return schema.Load(commit.Files, ".")
}

// uncommitted lists the .cue files whose working-tree content is not the
// commit's: the agents will not see those changes.
func uncommitted(dir string, committed fs.FS) []string {
	var out []string
	seen := map[string]bool{}
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		if d.IsDir() && p != dir && strings.HasPrefix(d.Name(), ".") {
			return filepath.SkipDir
		}
		if d.IsDir() || !strings.HasSuffix(p, ".cue") {
			return nil
		}
		rel, _ := filepath.Rel(dir, p)
		rel = filepath.ToSlash(rel)
		seen[rel] = true
		disk, _ := os.ReadFile(p)
		in, err := fs.ReadFile(committed, rel)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			out = append(out, rel+" is not committed: not checked, and no agent will see it")
		case err == nil && !bytes.Equal(in, disk):
			out = append(out, rel+" has uncommitted changes: the committed version is checked")
		}
		return nil
	})
	fs.WalkDir(committed, ".", func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() && strings.HasSuffix(p, ".cue") && !seen[p] {
			out = append(out, p+" is deleted in the working tree but still committed: it is checked")
		}
		return nil
	})
	sort.Strings(out)
	return out
}

func (c *cmd) vet(args []string) error {
	fs, src := c.defCommand("vet")
	cl, err := c.loadAfter(fs, src, args, nil)
	if err != nil {
		return err
	}
	fmt.Fprintf(c.stdout, "%s: cluster %s is valid: %d nodes (%d lb, %d broker, %d bridge)\n", *src.repo, cl.Name,
		len(cl.Nodes), len(cl.WithRole(cluster.LB)), len(cl.WithRole(cluster.Broker)), len(cl.WithRole(cluster.Bridge)))
	return nil
}

func (c *cmd) nodes(args []string) error {
	fs, src := c.defCommand("nodes")
	cl, err := c.loadAfter(fs, src, args, nil)
	if err != nil {
		return err
	}
	for _, n := range cl.Nodes {
		fmt.Fprintf(c.stdout, "%s %s %s\n", n.Name, n.Address, n.RoleList())
	}
	return nil
}

func (c *cmd) render(args []string) error {
	fs, src := c.defCommand("render")
	node := fs.String("node", "", "render this node")
	all := fs.Bool("all", false, "render every node, each under OUT/NAME/")
	out := fs.String("out", "", "output directory (required)")
	cl, err := c.loadAfter(fs, src, args, func() error {
		if *out == "" || (*node == "") == !*all {
			return errors.New("need --out DIR and exactly one of --node NAME or --all")
		}
		return nil
	})
	if err != nil {
		return err
	}
	targets := map[string]string{*node: *out}
	if *all {
		targets = map[string]string{}
		for _, n := range cl.Nodes {
			targets[n.Name] = filepath.Join(*out, n.Name)
		}
	}
	for name, dir := range targets {
		o, err := render.Node(cl, name)
		if err != nil {
			return err
		}
		for _, f := range o.Files {
			p := filepath.Join(dir, f.Path)
			if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
				return err
			}
			if err := os.WriteFile(p, f.Content, f.Mode); err != nil {
				return err
			}
			fmt.Fprintln(c.stdout, p)
		}
	}
	return nil
}
