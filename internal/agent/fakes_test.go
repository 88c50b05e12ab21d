package agent

import (
	"context"
	"fmt"
	"os"
	"sync"
	"syscall"
	"testing"
	"testing/fstest"
	"time"

	"github.com/mqha/mqha/internal/plan"
	"github.com/mqha/mqha/internal/source"
	"github.com/mqha/mqha/internal/unit"
)

// fakeSource is a repository whose commits are cluster definitions held in
// memory; head is where the branch points, headErr makes the remote
// unreachable.
type fakeSource struct {
	mu       sync.Mutex
	head     string
	headErr  error
	commits  map[string]fstest.MapFS
	descends func(hash, ancestor string) bool
	heads    int // calls of Head
	reads    []string
	maxBytes []int64 // of each Read
	hang     bool    // Head waits for its deadline, as a server that never answers
	hung     int     // Heads that hung
	fetchErr error   // Fetch fails so (a full disk, a dropped connection)
	descErr  error   // Descends cannot tell
}

func (f *fakeSource) Head(ctx context.Context) (string, error) {
	f.mu.Lock()
	f.heads++
	hang := f.hang
	if hang {
		f.hung++
	}
	f.mu.Unlock()
	if hang {
		<-ctx.Done()
		return "", ctx.Err()
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.head, f.headErr
}
func (f *fakeSource) Fetch(_ context.Context, hash string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fetchErr != nil {
		return f.fetchErr
	}
	if _, ok := f.commits[hash]; !ok {
		return fmt.Errorf("commit %s not found", hash)
	}
	return nil
}
func (f *fakeSource) Descends(_ context.Context, hash, ancestor string) (bool, error) {
	f.mu.Lock()
	err := f.descErr
	f.mu.Unlock()
	if err != nil {
		return false, err
	}
	if f.descends != nil {
		return f.descends(hash, ancestor), nil
	}
	return true, nil
}
func (f *fakeSource) Read(hash, _ string, maxBytes int64) (*source.Commit, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.reads = append(f.reads, hash)
	f.maxBytes = append(f.maxBytes, maxBytes)
	files, ok := f.commits[hash]
	if !ok {
		return nil, fmt.Errorf("commit %s not found", hash)
	}
	return &source.Commit{Hash: hash, Subject: "subject of " + hash, Files: files}, nil
}

// definition is the example cluster with one setting varied per commit.
func definition(t *testing.T, extra string) fstest.MapFS {
	t.Helper()
	b, err := os.ReadFile("../../cluster-repo-example/cluster.cue")
	if err != nil {
		t.Fatal(err)
	}
	return fstest.MapFS{"cluster.cue": {Data: b}, "extra.cue": {Data: []byte("package cluster\n\n" + extra + "\n")}}
}

// fakeConverger records what it was asked to converge and fails on demand.
// The loop calls it; the test reads it after the loop answered (quiet).
type fakeConverger struct {
	calls []string // commits, in order
	fail  map[string]error
}

func (f *fakeConverger) converge(_ context.Context, v *View, h Hooks) (*plan.Plan, error) {
	f.calls = append(f.calls, v.Commit)
	if h.Timing != nil {
		h.Timing("units", 42*time.Millisecond)
	}
	return &plan.Plan{Node: v.Node.Name}, f.fail[v.Commit]
}

type fakeSystemd struct{}

func (fakeSystemd) State(context.Context, string) (unit.State, error) {
	return unit.State{ActiveState: "active", LoadState: "loaded"}, nil
}
func (fakeSystemd) DaemonReload(context.Context) error                 { return nil }
func (fakeSystemd) Do(context.Context, unit.Action, string) error      { return nil }
func (fakeSystemd) Enable(context.Context, string) error               { return nil }
func (fakeSystemd) Disable(context.Context, string) error              { return nil }
func (fakeSystemd) Kill(context.Context, string, syscall.Signal) error { return nil }
func (fakeSystemd) MainPID(context.Context, string) (int, error)       { return 0, nil }

// clock is the policies' clock; the test moves it between loop rounds.
type clock struct{ t time.Time }

func (c *clock) now() time.Time          { return c.t }
func (c *clock) advance(d time.Duration) { c.t = c.t.Add(d) }

// fakeTicker is a round of the loop the test fires: the send returns once
// the loop took it.
type fakeTicker struct{ ch chan time.Time }

func (f *fakeTicker) C() <-chan time.Time   { return f.ch }
func (f *fakeTicker) Reset(d time.Duration) {}
func (f *fakeTicker) Stop()                 {}
