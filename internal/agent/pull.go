package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime/debug"
	"time"

	"github.com/mqha/mqha/internal/atomicfile"
	"github.com/mqha/mqha/internal/source"
)

// The pull policy: one pull at a time, off the loop (the network part);
// the loop settles what it found. While the remote is unreachable, pulls
// back off from the poll interval to maxBackoff and the applied commit
// stays enforced; a refused commit is not tried again until the branch
// moves (or the agent restarts, or sync --retry: what refused it may have
// been fixed on the node).

// maxBackoff caps the wait between checks of an unreachable repository.
const maxBackoff = time.Minute

// puller is the pull state the loop keeps.
type puller struct {
	underWay bool           // a pull runs
	again    bool           // and another is wanted right after it
	waiting  []chan<- error // sync requests waiting for the pull under way
	after    []chan<- error // and for the one after it
	backoff  time.Duration
	nextTry  time.Time
}

// wait makes reply wait for a pull that starts after now: the one under
// way may predate the push that made someone ask.
func (p *puller) wait(reply chan<- error) {
	if p.underWay {
		p.after = append(p.after, reply)
		p.again = true
		return
	}
	p.waiting = append(p.waiting, reply)
}

// start reports whether a pull starts now: not while one runs (a forced
// one is queued after it), nor within the back-off unless forced.
func (p *puller) start(force bool, now time.Time) bool {
	if p.underWay {
		p.again = p.again || force
		return false
	}
	if !force && now.Before(p.nextTry) {
		return false
	}
	p.underWay = true
	return true
}

// done ends the pull under way: it returns who waits for its outcome and
// whether another was wanted meanwhile.
func (p *puller) done() (waiting []chan<- error, again bool) {
	waiting, again = p.waiting, p.again
	p.underWay, p.again, p.waiting, p.after = false, false, p.after, nil
	return waiting, again
}

// reached records whether the remote answered: a failure backs off (twice
// the last wait, at least poll, at most maxBackoff), an answer ends it.
func (p *puller) reached(err error, now time.Time, poll time.Duration) {
	if err == nil {
		p.backoff, p.nextTry = 0, time.Time{}
		return
	}
	p.backoff = min(max(2*p.backoff, poll), maxBackoff)
	p.nextTry = now.Add(p.backoff)
}

// pullState is what a pull reads of the loop, copied at its start (a
// reload may change the configuration or the verifier meanwhile).
type pullState struct {
	applied, refused string // refused: the commit held until the branch moves
	cfg              Config
	deps             Deps
}

// pulled is what one look at the remote found, its network work done.
type pulled struct {
	err    error         // asking the remote for the branch head, or fetching it
	target string        // a new head, fetched ("" none)
	terr   error         // checking or evaluating target: refuses it
	took   time.Duration // fetching and checking target
	def    *evaluated    // target evaluated
	eval   time.Duration // reading and evaluating it
}

// startPull pulls off the loop, unless one runs (then a forced one follows
// it) or the back-off holds (then the applied commit is enforced).
func (a *Agent) startPull(ctx context.Context, force bool) {
	if !a.pulls.start(force, a.d.Now()) {
		if !a.pulls.underWay {
			a.enforce(ctx)
		}
		return
	}
	f := a.facts.get()
	st := pullState{f.applied, "", a.cfg, a.d}
	if f.holdRefused {
		st.refused = f.refused
	}
	go func() {
		r := pull(ctx, st, a.log)
		a.post(ctx, func(ctx context.Context) { a.pullDone(ctx, r) })
	}()
}

// pullDone settles a pull in the loop and answers whoever waits for it.
func (a *Agent) pullDone(ctx context.Context, r pulled) {
	waiting, again := a.pulls.done()
	err := a.settle(ctx, r)
	for _, w := range waiting {
		w <- err
	}
	if again {
		a.startPull(ctx, true)
	}
}

// pull does the network part: ls-remote, and for a new head the fetch and
// the ancestry check, each with its own deadline (fetch-timeout), so a git
// server that accepts and never answers costs one deadline, never the
// loop; then the signature, and the bounded read and evaluation.
func pull(ctx context.Context, st pullState, log *slog.Logger) pulled {
	mark := time.Now()
	timeout := st.cfg.FetchTimeout
	bounded := func(f func(context.Context) error) error {
		ctx, cancel := context.WithTimeout(ctx, timeout)
		defer cancel()
		err := f(ctx)
		if err != nil && errors.Is(ctx.Err(), context.DeadlineExceeded) {
			err = fmt.Errorf("%w (no answer within fetch-timeout %s)", err, timeout)
		}
		return err
	}
	src := st.deps.Source
	var head string
	err := bounded(func(ctx context.Context) (err error) { head, err = src.Head(ctx); return err })
	if err != nil || head == st.applied || head == st.refused {
		return pulled{err: err}
	}
	r := pulled{target: head}
	// Fetching, reading and evaluating a commit inflate its objects: a
	// few MiB for an oversized file someone pushed. The runtime would keep
	// that memory for minutes; a new head is rare, so give it back now.
	defer debug.FreeOSMemory()
	if err := bounded(func(ctx context.Context) error { return src.Fetch(ctx, head) }); err != nil {
		// Not the commit's fault (the network, the server, this node's
		// disk): retried with the back-off, never refused. The soak filled
		// a node's state directory: refused, the commit stayed refused
		// once the disk had room again.
		return pulled{err: fmt.Errorf("fetch %s: %w", source.Short(head), err)}
	}
	if st.applied != "" && !st.cfg.AllowRewind {
		var ok bool
		if err := bounded(func(ctx context.Context) (err error) { ok, err = src.Descends(ctx, head, st.applied); return err }); err != nil {
			// Unknown is not "no": retried, never a refusal.
			return pulled{err: fmt.Errorf("check that %s descends from the applied %s: %w", source.Short(head), source.Short(st.applied), err)}
		}
		if !ok {
			r.terr = fmt.Errorf("commit %s does not descend from the applied %s (history rewritten?); set allow-rewind = true to accept", source.Short(head), source.Short(st.applied))
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
		log.Info("signature verified", "commit", source.Short(head), "signer", who)
	}
	r.took = time.Since(mark)
	// Until the evaluation returns a mark says which commit: a load that
	// takes the agent down refuses it at the next start (restore).
	trying := filepath.Join(st.cfg.StateDir, "trying")
	atomicfile.Write(trying, []byte(head+"\n"), 0o644)
	mark = time.Now()
	r.def, r.terr = evaluateCommit(ctx, st.deps, st.cfg, head)
	r.eval = time.Since(mark)
	os.Remove(trying)
	return r
}

// settle is the local part, in the loop: the back-off, then the new commit
// converged or refused, else the applied one enforced.
func (a *Agent) settle(ctx context.Context, r pulled) error {
	a.facts.Fetched(r.err)
	a.pulls.reached(r.err, a.d.Now(), a.cfg.Poll)
	applied := a.facts.Applied()
	if r.err != nil {
		a.log.Warn("cannot reach the cluster repository; enforcing the last good commit", "err", r.err, "retry_in", a.pulls.backoff, "applied", source.Short(applied))
	}
	if a.facts.Suspended() != nil {
		// Seen, said, not applied until resumed.
		if r.target != "" && r.target != applied {
			a.facts.SetPending(r.target)
		}
		return nil
	}
	if r.target == "" || r.target == applied || a.facts.Holds(r.target) {
		return a.enforce(ctx)
	}
	err := r.terr
	if err == nil {
		if err = a.fleetVerdict(r.target); err != nil {
			a.m.verdicts.WithLabelValues("obeyed").Inc()
		}
	}
	if err == nil {
		err = a.convergeNew(ctx, r.def, r.took, r.eval)
		if err != nil && unverified(err) {
			// The commit's doing if the commit before it serves again
			// here: the fleet is told, so that no other node pays for it
			// with a restart.
			a.judgeIfPreviousServes(ctx, r.target, err)
		}
	}
	if err != nil {
		a.facts.Refuse(r.target, err)
		a.enforce(ctx) // the previous files are back; keep them enforced
		return err
	}
	a.m.converges.WithLabelValues("applied").Inc()
	return nil
}

// convergeNew converges on an evaluated commit.
func (a *Agent) convergeNew(ctx context.Context, def *evaluated, fetching, evaluating time.Duration) error {
	a.facts.Stage("fetch+trust", fetching)
	mark := time.Now()
	v, err := a.view0(def)
	if errors.Is(err, errNotInDefinition) {
		return a.startDecommission(ctx, def, err)
	}
	if err != nil {
		return err
	}
	a.facts.Stage("load", evaluating+time.Since(mark))
	return a.apply(ctx, v)
}

// enforce re-applies the applied commit: a no-op unless something drifted
// or a unit is down.
func (a *Agent) enforce(ctx context.Context) error {
	applied := a.facts.Applied()
	if applied == "" || a.facts.Suspended() != nil || a.facts.Decommission() != nil {
		return nil // suspended: hand edits stay; decommissioned: nothing to enforce
	}
	v := a.view
	if v == nil || v.Commit != applied {
		var err error
		if v, err = a.load(ctx, applied); err != nil {
			a.log.Error("cannot enforce the applied commit", "commit", source.Short(applied), "err", err)
			return err
		}
	}
	if err := a.apply(ctx, v); err != nil {
		a.log.Error("cannot enforce the applied commit", "commit", source.Short(applied), "err", err)
		return err
	}
	return nil
}
