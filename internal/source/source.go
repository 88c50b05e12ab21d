// Package source pulls the cluster repository with go-git: a cheap check of
// whether the branch moved, a shallow fetch without tags, and the files of
// one commit read straight from its tree (no worktree).
package source

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"path"
	"path/filepath"
	"strings"
	"sync"
	"testing/fstest"

	"github.com/go-git/go-billy/v5/osfs"
	"github.com/go-git/go-git/v5"
	"github.com/go-git/go-git/v5/config"
	"github.com/go-git/go-git/v5/plumbing"
	"github.com/go-git/go-git/v5/plumbing/cache"
	"github.com/go-git/go-git/v5/plumbing/object"
	"github.com/go-git/go-git/v5/plumbing/transport"
	"github.com/go-git/go-git/v5/storage/filesystem"
)

// Repo is a local bare mirror of one branch of a remote repository. go-git
// is not safe for concurrent use, so every method holds mu.
type Repo struct {
	URL    string
	Branch string
	Auth   transport.AuthMethod // nil for file:// and git:// or anonymous https
	// CABundle: certificates trusted for an https server besides the
	// system's (agent.conf ca-file).
	CABundle []byte

	mu   sync.Mutex
	repo *git.Repository
}

const remoteName = "origin"

// The mirror keeps little in memory: go-git's default object cache holds
// up to 96 MiB of decoded objects, and objects are read whole. A commit's
// definition is a few small files read once, so 1 MiB of cache does; an
// object over 1 MiB (an oversized file someone pushed, which the size
// check refuses) is read from disk when needed, never held. The soak saw
// agents go from 28 to 62 MiB after one such commit.
const (
	objectCache      = 1 * cache.MiByte
	largeObjectBytes = 1 << 20
	maxOpenPackFiles = 4
)

// Open opens (or creates) the bare mirror in dir.
func Open(dir, url, branch string, auth transport.AuthMethod) (*Repo, error) {
	st := filesystem.NewStorageWithOptions(osfs.New(dir), cache.NewObjectLRU(objectCache),
		filesystem.Options{LargeObjectThreshold: largeObjectBytes, MaxOpenDescriptors: maxOpenPackFiles})
	r, err := git.Open(st, nil)
	if errors.Is(err, git.ErrRepositoryNotExists) {
		r, err = git.Init(st, nil) // no worktree: bare
	}
	if err != nil {
		return nil, fmt.Errorf("open local mirror %s: %w", dir, err)
	}
	// The URL may have changed in the agent's configuration since last time.
	_ = r.DeleteRemote(remoteName)
	if _, err := r.CreateRemote(&config.RemoteConfig{Name: remoteName, URLs: []string{url}}); err != nil {
		return nil, fmt.Errorf("set remote %s: %w", url, err)
	}
	return &Repo{URL: url, Branch: branch, Auth: auth, repo: r}, nil
}

// Head asks the remote where the branch points, without fetching.
func (r *Repo) Head(ctx context.Context) (string, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	rem, err := r.repo.Remote(remoteName)
	if err != nil {
		return "", err
	}
	refs, err := rem.ListContext(ctx, &git.ListOptions{Auth: r.Auth, CABundle: r.CABundle})
	if err != nil {
		return "", fmt.Errorf("list %s: %w", r.URL, err)
	}
	want := plumbing.NewBranchReferenceName(r.Branch)
	for _, ref := range refs {
		if ref.Name() == want {
			return ref.Hash().String(), nil
		}
	}
	return "", fmt.Errorf("%s has no branch %q", r.URL, r.Branch)
}

// Fetch brings commit hash (the branch tip) into the mirror: depth 1, no tags.
func (r *Repo) Fetch(ctx context.Context, hash string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, err := r.repo.CommitObject(plumbing.NewHash(hash)); err == nil {
		return nil // already here
	}
	if err := r.fetch(ctx, 1); err != nil {
		return err
	}
	if _, err := r.repo.CommitObject(plumbing.NewHash(hash)); err != nil {
		return fmt.Errorf("commit %s not found after fetching %s (the branch moved again?): %w", Short(hash), r.Branch, err)
	}
	return nil
}

// fetch fetches the branch to depth commits (0: all of it). Callers hold mu.
func (r *Repo) fetch(ctx context.Context, depth int) error {
	spec := config.RefSpec(fmt.Sprintf("+refs/heads/%s:refs/remotes/%s/%s", r.Branch, remoteName, r.Branch))
	err := r.repo.FetchContext(ctx, &git.FetchOptions{
		RemoteName: remoteName, RefSpecs: []config.RefSpec{spec},
		Depth: depth, Tags: git.NoTags, Force: true, Auth: r.Auth, CABundle: r.CABundle,
	})
	if err != nil && !errors.Is(err, git.NoErrAlreadyUpToDate) {
		return fmt.Errorf("fetch %s from %s: %w", r.Branch, r.URL, err)
	}
	return nil
}

// Commit describes a fetched commit.
type Commit struct {
	Hash    string
	Subject string
	Author  string
	Files   fs.FS // the files under the requested directory, read from the tree
}

// Read returns the commit's files under dir ("" or "." for the root),
// refusing more than maxBytes of .cue files together (0: DefaultMaxBytes).
func (r *Repo) Read(hash, dir string, maxBytes int64) (*Commit, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	c, err := r.repo.CommitObject(plumbing.NewHash(hash))
	if err != nil {
		return nil, fmt.Errorf("commit %s: %w", Short(hash), err)
	}
	return readCommit(c, dir, maxBytes)
}

// ReadWorkTree reads revision rev (HEAD, a branch, a hash) of the git work
// tree that holds dir, and returns the files of dir in that commit: what
// the agent reads, not what the working tree holds. ok is false when dir is
// not in a git work tree.
func ReadWorkTree(dir, rev string) (c *Commit, top string, ok bool, err error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, "", false, err
	}
	// EnableDotGitCommonDir: a `git worktree` checkout reads its refs from
	// the main repository (without it HEAD is "reference not found").
	repo, err := git.PlainOpenWithOptions(abs, &git.PlainOpenOptions{DetectDotGit: true, EnableDotGitCommonDir: true})
	if errors.Is(err, git.ErrRepositoryNotExists) {
		return nil, "", false, nil
	}
	if err != nil {
		return nil, "", false, fmt.Errorf("open the git repository of %s: %w", dir, err)
	}
	wt, err := repo.Worktree()
	if err != nil {
		return nil, "", false, fmt.Errorf("%s: %w", dir, err)
	}
	top = wt.Filesystem.Root()
	rel, err := filepath.Rel(top, abs)
	if err != nil {
		return nil, "", false, err
	}
	h, err := repo.ResolveRevision(plumbing.Revision(rev))
	if err != nil {
		return nil, top, true, fmt.Errorf("revision %q of %s: %w (commit first, or use --worktree for uncommitted work)", rev, top, err)
	}
	obj, err := repo.CommitObject(*h)
	if err != nil {
		return nil, top, true, err
	}
	c, err = readCommit(obj, filepath.ToSlash(rel), 0)
	return c, top, true, err
}

// Bounds on what a commit makes the agent read: only .cue files are read
// (the definition is nothing else), at most MaxFiles of them and
// DefaultMaxBytes together (agent.conf max-definition-size), checked from
// the tree before any content is read: a 512 MiB blob in the repository
// costs nothing.
const (
	MaxFiles        = 1000
	DefaultMaxBytes = 8 << 20
)

func readCommit(c *object.Commit, dir string, maxBytes int64) (*Commit, error) {
	if maxBytes <= 0 {
		maxBytes = DefaultMaxBytes
	}
	hash := c.Hash.String()
	tree, err := c.Tree()
	if err != nil {
		return nil, err
	}
	dir = strings.Trim(path.Clean("/"+dir), "/")
	if dir != "" {
		if tree, err = tree.Tree(dir); err != nil {
			return nil, fmt.Errorf("commit %s has no directory %q: %w", Short(hash), dir, err)
		}
	}
	// First the sizes, from the tree and the objects' headers.
	var cue []*object.File
	var total int64
	err = tree.Files().ForEach(func(f *object.File) error {
		if !f.Mode.IsFile() || !strings.HasSuffix(f.Name, ".cue") {
			return nil
		}
		cue = append(cue, f)
		total += f.Size
		switch {
		case len(cue) > MaxFiles:
			return fmt.Errorf("more than %d .cue files under %q: a definition is a handful of files; refused", MaxFiles, dir)
		case total > maxBytes:
			return fmt.Errorf("the .cue files under %q exceed %d bytes together (%s alone is %d bytes): refused; raise max-definition-size in agent.conf if the definition really is that large", dir, maxBytes, f.Name, f.Size)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read commit %s: %w", Short(hash), err)
	}
	files := fstest.MapFS{}
	for _, f := range cue {
		rd, err := f.Reader()
		if err != nil {
			return nil, fmt.Errorf("read commit %s: %w", Short(hash), err)
		}
		b, err := io.ReadAll(io.LimitReader(rd, f.Size+1))
		rd.Close()
		if err != nil {
			return nil, fmt.Errorf("read commit %s: %s: %w", Short(hash), f.Name, err)
		}
		files[f.Name] = &fstest.MapFile{Data: b, Mode: 0o644}
	}
	subject, _, _ := strings.Cut(c.Message, "\n")
	return &Commit{Hash: hash, Subject: subject, Author: c.Author.Name, Files: files}, nil
}

// Short is the abbreviated commit hash used in logs and messages.
func Short(h string) string {
	if len(h) > 12 {
		return h[:12]
	}
	return h
}
