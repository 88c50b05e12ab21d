package agent

import (
	"context"
	"fmt"
	"time"

	"github.com/mqha/mqha/internal/source"
)

// maxBackoff caps the wait between checks of an unreachable repository.
const maxBackoff = time.Minute

// tick looks for a new commit and converges on it, or keeps enforcing the
// applied one. force skips the fetch back-off (a push trigger, sync).
//
// The pull policy: while the remote is unreachable, checks back off from
// the poll interval to maxBackoff and the applied commit stays enforced; a
// refused commit is not retried until the branch moves (or the agent
// restarts: what refused it may have been fixed on the node).
func (a *Agent) tick(ctx context.Context, force bool) error {
	target := ""
	if force || a.d.Now().After(a.nextTry) {
		head, err := a.d.Source.Head(ctx)
		a.fetched(err)
		if err != nil {
			a.backoff = min(max(2*a.backoff, a.cfg.Poll), maxBackoff)
			a.nextTry = a.d.Now().Add(a.backoff)
			a.log.Warn("cannot reach the cluster repository; enforcing the last good commit", "err", err, "retry_in", a.backoff, "applied", source.Short(a.applied))
		} else {
			a.backoff, a.nextTry = 0, time.Time{}
			if head != a.applied && head != a.refused {
				target = head
			}
		}
	}
	if target == "" {
		return a.enforce(ctx)
	}
	if err := a.convergeNew(ctx, target); err != nil {
		a.refuse(target, err)
		a.enforce(ctx) // the previous files are back; keep them enforced
		return err
	}
	a.m.converges.WithLabelValues("applied").Inc()
	return nil
}

// convergeNew checks a new commit (signature, history) before anything of
// it is read, then loads and applies it.
func (a *Agent) convergeNew(ctx context.Context, hash string) error {
	a.stages = nil
	mark := time.Now()
	if err := a.d.Source.Fetch(ctx, hash); err != nil {
		return err
	}
	if a.d.Verifier != nil {
		who, err := a.d.Verifier.Verify(hash)
		if err != nil {
			return fmt.Errorf("commit %s: untrusted: %w", source.Short(hash), err)
		}
		a.log.Info("signature verified", "commit", source.Short(hash), "signer", who)
	}
	if a.applied != "" && !a.cfg.AllowRewind {
		ok, err := a.d.Source.Descends(ctx, hash, a.applied)
		if err != nil {
			return err
		}
		if !ok {
			return fmt.Errorf("commit %s does not descend from the applied %s (history rewritten?); set allow-rewind = true to accept", source.Short(hash), source.Short(a.applied))
		}
	}
	a.timing("fetch+trust", time.Since(mark))
	mark = time.Now()
	v, err := a.load(hash)
	if err != nil {
		return err
	}
	a.timing("load", time.Since(mark))
	return a.apply(ctx, v)
}

// enforce re-applies the applied commit: a no-op unless something drifted
// or a unit is down.
func (a *Agent) enforce(ctx context.Context) error {
	if a.applied == "" {
		return nil
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
