package agent

import (
	"context"
	"time"

	"github.com/mqha/mqha/internal/apply"
	"github.com/mqha/mqha/internal/daemon"
	"github.com/mqha/mqha/internal/source"
)

// maxOperation bounds one round of the loop: waiting for this node's turn
// (patience 1 min), applying, verifying (verify-timeout). A loop silent for
// longer is hung, and the watchdog lets systemd restart the agent.
const maxOperation = 3 * time.Minute

// Ticker is the loop's view of a time.Ticker (a fake in tests).
type Ticker interface {
	C() <-chan time.Time
	Reset(d time.Duration)
	Stop()
}

type timeTicker struct{ *time.Ticker }

func (t timeTicker) C() <-chan time.Time { return t.Ticker.C }

func realTicker(_ string, d time.Duration) Ticker { return timeTicker{time.NewTicker(d)} }

// tickers are the loop's rounds: a pull every poll, the health checks
// every health-interval (a reload resets both).
type tickers struct{ poll, health Ticker }

// Run converges once, says READY, and then loops until ctx ends. Whatever
// else asks something of the loop (the control socket, the webhook, a
// reload, a pull's result, the brokers watch) posts it to the mailbox.
func (a *Agent) Run(ctx context.Context) error {
	var units <-chan string
	if a.d.WatchUnits != nil {
		var err error
		if units, err = a.d.WatchUnits(a.daemons.runs); err != nil {
			return err
		}
	}
	go a.watchdog(ctx)
	go a.notifier.Run(ctx)
	go a.daemons.guard.Run(ctx)
	go a.followJournal(ctx, daemon.Keepalived.Unit, "forged VRRP adverts", a.countForged)
	a.log.Info("agent started", "node", a.node, "repo", a.cfg.Repo, "branch", a.cfg.Branch, "applied", source.Short(a.facts.Applied()),
		"signatures", a.d.Verifier != nil, "version", a.d.Version)

	a.beat.Store(time.Now().UnixNano())
	// An apply a crash interrupted is finished first (its files are on
	// disk, its units may still run the old ones); then the recorded
	// commit from the local mirror, then READY: the first pull runs off
	// the loop, so a git server that does not answer holds up neither the
	// start nor the repairs.
	if did, err := apply.Replay(ctx, JournalPath(a.cfg.StateDir), a.d.Systemd); err != nil {
		a.log.Error("finish the apply an earlier run left half done", "err", err)
	} else if len(did) > 0 {
		a.log.Warn("finished the apply an earlier run left half done", "did", did)
	}
	a.enforce(ctx)
	a.checkWarnings(ctx)
	a.d.Notify("READY=1")
	a.startPull(ctx, true)
	a.ticks = tickers{a.d.Ticker("poll", a.cfg.Poll), a.d.Ticker("health", a.cfg.HealthInterval)}
	defer a.ticks.poll.Stop()
	defer a.ticks.health.Stop()
	for {
		select {
		case <-ctx.Done():
			a.d.Notify("STOPPING=1")
			return nil
		case <-a.ticks.poll.C():
			a.startPull(ctx, false)
			// Limits in force and certificate dates change slowly: checked
			// every poll, not every health round.
			a.checkWarnings(ctx)
		case <-a.ticks.health.C():
			a.checkHealth(ctx)
			a.stepDecommission(ctx)
		case f := <-a.mail:
			f(ctx)
		case u := <-units:
			a.log.Info("unit changed state; checking now", "unit", u)
			a.checkHealth(ctx)
		case path := <-a.drift.ch:
			a.log.Warn("a managed file changed on disk; reverting it", "path", path)
			a.m.drift.Inc()
			a.enforce(ctx)
		}
		a.beat.Store(time.Now().UnixNano())
	}
}

// post hands f to the loop; false when ctx ended first.
func (a *Agent) post(ctx context.Context, f func(context.Context)) bool {
	select {
	case a.mail <- f:
		return true
	case <-ctx.Done():
		return false
	}
}

// ask runs f on the loop and waits for the answer f sends on reply, which
// may come later (a sync is answered once its pull settles).
func (a *Agent) ask(ctx context.Context, f func(ctx context.Context, reply chan<- error)) error {
	reply := make(chan error, 1)
	if !a.post(ctx, func(ctx context.Context) { f(ctx, reply) }) {
		return ctx.Err()
	}
	select {
	case err := <-reply:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// nudge posts f without waiting, unless a nudge of the same kind is still
// in the mailbox: requests that need no answer (a webhook delivery, a
// recheck) and mean the same when several come at once.
func (a *Agent) nudge(kind string, f func(context.Context)) {
	if _, dup := a.nudged.LoadOrStore(kind, true); dup {
		return
	}
	g := func(ctx context.Context) {
		a.nudged.Delete(kind)
		f(ctx)
	}
	select {
	case a.mail <- g:
	default: // a full mailbox: the nudge waits its turn without holding its sender
		go func() { a.mail <- g }()
	}
}

// watchdog pings systemd while the loop is alive: it finished a round
// recently, or the round it is in has not run past maxOperation.
func (a *Agent) watchdog(ctx context.Context) {
	t := time.NewTicker(5 * time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			last := time.Unix(0, a.beat.Load())
			if time.Since(last) < maxOperation {
				a.d.Notify("WATCHDOG=1")
			} else {
				a.log.Error("the agent loop has not finished a round for too long; letting the watchdog restart it", "since", last)
			}
		}
	}
}

func (a *Agent) checkHealth(ctx context.Context) {
	if m := a.daemons.get(); m != nil {
		m.Once(ctx)
	}
}
