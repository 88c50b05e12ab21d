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
	"testing/fstest"
	"time"

	"github.com/mqha/mqha/internal/agent"
	"github.com/mqha/mqha/internal/cluster"
	"github.com/mqha/mqha/internal/evaluate"
	"github.com/mqha/mqha/internal/source"
)

// defSource says where vet, nodes, render and diff read the definition:
// by default what the agent would read, the committed tree of HEAD when
// --repo is in a git work tree.
type defSource struct {
	repo, rev *string
	worktree  *bool
	// The bounds of the evaluation, as the agent's (a definition is input
	// from whoever can push; vet runs in CI on every pull request).
	loadTimeout *time.Duration
	loadMemory  *int64
}

// defCommand makes the flags of a command that reads the definition
// (vet, nodes, render, diff, fleet): --repo, --rev, --worktree.
func (c *cmd) defCommand(name string) (*flag.FlagSet, defSource) {
	fs, repo := c.flags(name)
	s := defSource{repo: repo,
		rev:         fs.String("rev", "HEAD", "read the definition of this commit (when --repo is in a git work tree)"),
		worktree:    fs.Bool("worktree", false, "read the files as they are in the working tree, committed or not"),
		loadTimeout: fs.Duration("load-timeout", evaluate.DefaultLimits.Timeout, "refuse a definition that takes longer to evaluate"),
		loadMemory:  new(int64)}
	*s.loadMemory = evaluate.DefaultLimits.Memory
	fs.Func("load-memory", fmt.Sprintf("refuse a definition that needs more memory to evaluate (default %dM)", evaluate.DefaultLimits.Memory>>20), func(v string) (err error) {
		*s.loadMemory, err = agent.ParseSize(v)
		return err
	})
	return fs, s
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
		return c.evaluate(s, nil)
	}
	commit, top, ok, err := source.ReadWorkTree(*s.repo, *s.rev)
	if err != nil {
		return nil, err
	}
	if !ok {
		if *s.rev != "HEAD" {
			return nil, fmt.Errorf("--rev %s: %s is not in a git work tree", *s.rev, *s.repo)
		}
		return c.evaluate(s, nil) // a plain directory: its files are the definition
	}
	fmt.Fprintf(c.stderr, "reading commit %s (%s) of %s, as the agents do; --worktree reads uncommitted files\n", source.Short(commit.Hash), *s.rev, top)
	// The working tree is compared with HEAD only: against an older commit
	// (diff --from, --rev) every later change would read as uncommitted.
	if *s.rev == "HEAD" {
		for _, w := range uncommitted(*s.repo, commit.Files) {
			fmt.Fprintf(c.stderr, "warning: %s\n", w)
		}
	}
	return c.evaluate(s, commit.Files)
}

// evaluate evaluates files (nil: the .cue files under --repo) in a child
// of this binary, within --load-timeout and --load-memory, as the agent
// does; SIGINT or SIGTERM stops it at once.
func (c *cmd) evaluate(s defSource, files fs.FS) (*cluster.Cluster, error) {
	if files == nil {
		disk, err := cueFiles(*s.repo)
		if err != nil {
			return nil, err
		}
		files = disk
	}
	exe, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("find this binary to evaluate the definition in a child: %w", err)
	}
	lim := evaluate.DefaultLimits // apply has no flags for them
	lim.TimeoutKnob, lim.MemoryKnob = "--load-timeout", "--load-memory"
	if s.loadTimeout != nil {
		lim.Timeout, lim.Memory = *s.loadTimeout, *s.loadMemory
	}
	return evaluate.Child(c.ctx, exe, files, lim)
}

// cueFiles are the .cue files under dir (what the schema reads; a file in
// a subdirectory is read to say it is misplaced), hidden directories left
// out.
func cueFiles(dir string) (fstest.MapFS, error) {
	st, err := os.Stat(dir)
	if err != nil {
		return nil, fmt.Errorf("cluster repository %s: %w", dir, err)
	}
	if !st.IsDir() {
		return nil, fmt.Errorf("cluster repository %s is not a directory", dir)
	}
	out := fstest.MapFS{}
	err = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && p != dir && strings.HasPrefix(d.Name(), ".") {
			return filepath.SkipDir
		}
		if d.IsDir() || !strings.HasSuffix(p, ".cue") {
			return nil
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		out[filepath.ToSlash(rel)] = &fstest.MapFile{Data: b, Mode: 0o644}
		return nil
	})
	return out, err
}

// uncommitted lists the .cue files whose working-tree content is not the
// commit's: the agents will not see those changes.
func uncommitted(dir string, committed fs.FS) []string {
	disk, err := cueFiles(dir)
	if err != nil {
		return nil // the commit was read: the definition is checked as committed
	}
	var out []string
	for rel, f := range disk {
		in, err := fs.ReadFile(committed, rel)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			out = append(out, rel+" is not committed: not checked, and no agent will see it")
		case err == nil && !bytes.Equal(in, f.Data):
			out = append(out, rel+" has uncommitted changes: the committed version is checked")
		}
	}
	fs.WalkDir(committed, ".", func(p string, d fs.DirEntry, err error) error {
		if _, onDisk := disk[p]; err == nil && !d.IsDir() && strings.HasSuffix(p, ".cue") && !onDisk {
			out = append(out, p+" is deleted in the working tree but still committed: it is checked")
		}
		return nil
	})
	sort.Strings(out)
	return out
}
