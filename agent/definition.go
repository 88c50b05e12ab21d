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

func (c *cmd) defFlags(fs *flag.FlagSet, repo *string) defSource {
	return defSource{repo: repo,
		rev:      fs.String("rev", "HEAD", "read the definition of this commit (when --repo is in a git work tree)"),
		worktree: fs.Bool("worktree", false, "read the files as they are in the working tree, committed or not")}
}

// load reads and checks the definition, saying on stderr which commit it
// read and which .cue files in the working tree differ from it.
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
