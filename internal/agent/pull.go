package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/mqha/mqha/internal/atomicfile"
	"github.com/mqha/mqha/internal/control"
	"github.com/mqha/mqha/internal/source"
)

// maxBackoff caps the wait between checks of an unreachable repository.
const maxBackoff = time.Minute

// tick looks for a new commit and converges on it, or keeps enforcing the
// applied one. force skips the fetch back-off (a push trigger, sync). It is
// pull and settle in one call; the running agent does pull off its loop.
//
// The pull policy: while the remote is unreachable, checks back off from
// the poll interval to maxBackoff and the applied commit stays enforced; a
// refused commit is not retried until the branch moves (or the agent
// restarts: what refused it may have been fixed on the node).
func (a *Agent) tick(ctx context.Context, force bool) error {
	if !force && a.d.Now().Before(a.nextTry) {
		return a.enforce(ctx)
	}
	return a.settle(ctx, a.pull(ctx, a.pullFrom()))
}

// pullFrom is what a pull needs to know of the loop's state.
type pullState struct {
	applied, refused string
	allowRewind      bool
	timeout          time.Duration
	deps             Deps // as of the pull's start (a reload may change the verifier)
	path, stateDir   string
}

func (a *Agent) pullFrom() pullState {
	return pullState{a.applied, a.refused, a.cfg.AllowRewind, a.cfg.FetchTimeout, a.d, a.cfg.Path, a.cfg.StateDir}
}

// pulled is what one look at the remote found, its network work done.
type pulled struct {
	err    error         // asking the remote for the branch head
	target string        // a new head, fetched ("" none)
	terr   error         // fetching, checking or evaluating target: refuses it
	took   time.Duration // fetching and checking target
	def    *evaluated    // target evaluated
	eval   time.Duration // reading and evaluating it
}

// pull does the network part of a tick: ls-remote, and for a new head the
// fetch and the ancestry check, each with its own deadline (fetch-timeout),
// so a git server that accepts and never answers costs one deadline, never
// the loop. It reads only what st says and may run off the loop.
func (a *Agent) pull(ctx context.Context, st pullState) pulled {
	mark := time.Now()
	bounded := func(f func(context.Context) error) error {
		ctx, cancel := context.WithTimeout(ctx, st.timeout)
		defer cancel()
		err := f(ctx)
		if err != nil && errors.Is(ctx.Err(), context.DeadlineExceeded) {
			err = fmt.Errorf("%w (no answer within fetch-timeout %s)", err, st.timeout)
		}
		return err
	}
	var head string
	err := bounded(func(ctx context.Context) (err error) { head, err = st.deps.Source.Head(ctx); return err })
	if err != nil || head == st.applied || head == st.refused {
		return pulled{err: err}
	}
	r := pulled{target: head}
	if r.terr = bounded(func(ctx context.Context) error { return st.deps.Source.Fetch(ctx, head) }); r.terr != nil {
		return r
	}
	if st.applied != "" && !st.allowRewind {
		var ok bool
		r.terr = bounded(func(ctx context.Context) (err error) {
			ok, err = st.deps.Source.Descends(ctx, head, st.applied)
			return err
		})
		if r.terr == nil && !ok {
			r.terr = fmt.Errorf("commit %s does not descend from the applied %s (history rewritten?); set allow-rewind = true to accept", source.Short(head), source.Short(st.applied))
		}
		if r.terr != nil {
			return r
		}
	}
	// The signature before anything of the commit is read.
	if st.deps.Verifier != nil {
		who, err := st.deps.Verifier.Verify(head)
		if err != nil {
			r.terr = fmt.Errorf("commit %s: untrusted: %w", source.Short(head), err)
			return r
		}
		a.log.Info("signature verified", "commit", source.Short(head), "signer", who)
	}
	r.took = time.Since(mark)
	// Reading and evaluating, bounded, off the loop too. Until it returns
	// a mark says which commit: a load that takes the agent down refuses
	// it at the next start (restoreState).
	trying := filepath.Join(st.stateDir, "trying")
	atomicfile.Write(trying, []byte(head+"\n"), 0o644)
	mark = time.Now()
	r.def, r.terr = evaluateCommit(st.deps, st.path, head)
	r.eval = time.Since(mark)
	os.Remove(trying)
	return r
}

// settle is the local part of a tick, in the loop: the back-off, then the
// new commit (checked and evaluated by pull) converged or refused, else the
// applied one enforced.
func (a *Agent) settle(ctx context.Context, r pulled) error {
	a.fetched(r.err)
	if r.err != nil {
		a.backoff = min(max(2*a.backoff, a.cfg.Poll), maxBackoff)
		a.nextTry = a.d.Now().Add(a.backoff)
		a.log.Warn("cannot reach the cluster repository; enforcing the last good commit", "err", r.err, "retry_in", a.backoff, "applied", source.Short(a.applied))
	} else {
		a.backoff, a.nextTry = 0, time.Time{}
	}
	if a.suspended != nil {
		// Seen, said, not applied until resumed.
		if r.target != "" && r.target != a.applied {
			a.update(func(s *control.Status) { s.Pending = r.target })
		}
		return nil
	}
	if r.target == "" || r.target == a.applied || r.target == a.refused {
		return a.enforce(ctx)
	}
	err := r.terr
	if err == nil {
		err = a.convergeNew(ctx, r.def, r.took, r.eval)
	}
	if err != nil {
		a.refuse(r.target, err)
		a.enforce(ctx) // the previous files are back; keep them enforced
		return err
	}
	a.m.converges.WithLabelValues("applied").Inc()
	return nil
}

// convergeNew converges on an evaluated commit (checked, read and
// evaluated off the loop by pull).
func (a *Agent) convergeNew(ctx context.Context, def *evaluated, fetching, evaluating time.Duration) error {
	a.stages = nil
	a.timing("fetch+trust", fetching)
	mark := time.Now()
	v, err := a.view0(def)
	if errors.Is(err, errNotInDefinition) {
		return a.startDecommission(ctx, def, err)
	}
	if err != nil {
		return err
	}
	a.timing("load", evaluating+time.Since(mark))
	return a.apply(ctx, v)
}

// startPull pulls in a goroutine of its own; the loop settles the result
// (a.pulls). One pull at a time: a forced one asked for meanwhile runs
// right after.
func (a *Agent) startPull(ctx context.Context, force bool) {
	if a.pulling {
		a.pullAgain = a.pullAgain || force
		return
	}
	if !force && a.d.Now().Before(a.nextTry) {
		a.enforce(ctx)
		return
	}
	a.pulling = true
	st := a.pullFrom()
	go func() {
		r := a.pull(ctx, st)
		select {
		case a.pulls <- r:
		case <-ctx.Done():
		}
	}()
}

// pullDone settles a pull in the loop and answers whoever waits for it.
func (a *Agent) pullDone(ctx context.Context, r pulled) {
	a.pulling = false
	err := a.settle(ctx, r)
	for _, w := range a.waiting {
		w <- err
	}
	a.waiting = nil
	if a.pullAgain {
		a.pullAgain = false
		a.startPull(ctx, true)
	}
}

// enforce re-applies the applied commit: a no-op unless something drifted
// or a unit is down.
func (a *Agent) enforce(ctx context.Context) error {
	if a.applied == "" || a.suspended != nil || a.decom != nil {
		return nil // suspended: hand edits stay; decommissioned: nothing to enforce
	}
	v := a.view
	if v == nil || v.Commit != a.applied {
		var err error
		if v, err = a.load(a.applied); err != nil {
			a.log.Error("cannot enforce the applied commit", "commit", source.Short(a.applied), "err", err)
			return err
		}
	}
	if err := a.apply(ctx, v); err != nil {
		a.log.Error("cannot enforce the applied commit", "commit", source.Short(a.applied), "err", err)
		return err
	}
	return nil
}
