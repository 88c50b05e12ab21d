// Package apply carries out a plan on a node: it validates the candidate
// files with the daemons' own tools, writes them atomically (keeping the
// previous ones), drives the units through systemd and checks that they come
// up. If anything fails after the first write, the previous files and unit
// states are put back.
package apply

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/mqha/mqha/internal/atomicfile"
	"github.com/mqha/mqha/internal/plan"
	"github.com/mqha/mqha/internal/render"
	"github.com/mqha/mqha/internal/unit"
)

// Systemd is what apply needs of systemd; internal/systemd implements it
// over D-Bus.
type Systemd interface {
	State(ctx context.Context, name string) (unit.State, error)
	DaemonReload(ctx context.Context) error
	Do(ctx context.Context, action unit.Action, name string) error
	Enable(ctx context.Context, name string) error
	Disable(ctx context.Context, name string) error
}

// Validator checks a candidate configuration file before it is written.
type Validator interface {
	Config(ctx context.Context, path string, content []byte) error
}

// Applier applies plans to one node.
type Applier struct {
	Root      string // the node's root: "/" on a node, a directory in tests
	BackupDir string // previous versions of written files, under their absolute paths
	Systemd   Systemd
	Validator Validator
	// Settle is how long units must stay up after they were started,
	// restarted or reloaded before the apply counts as done.
	Settle time.Duration
	// Gate, if set, runs after validation and before anything is written:
	// it waits for this node's turn in a fleet-wide change.
	Gate func(ctx context.Context, p *plan.Plan) error
	// Verify, if set, runs after the units are up: a failure (the daemons
	// run but do not serve) rolls the change back like a failed unit.
	Verify func(ctx context.Context, p *plan.Plan) error
	// Timing, if set, is told how long each stage took: validate, gate,
	// units (writes, daemon-reload, unit jobs), settle, verify.
	Timing func(stage string, d time.Duration)
	// Journal, if set, is a file that lists the unit actions of an apply
	// from before its first write until it is done or rolled back: an
	// agent killed in between finds it at start and Replays it, so that
	// the daemons run the files on disk (which already match the commit,
	// so the next plan would do nothing) before anything is recorded.
	Journal string
	Log     *slog.Logger
}

// since reports the time since start as stage and returns now.
func (a *Applier) since(stage string, start time.Time) time.Time {
	now := time.Now()
	if a.Timing != nil {
		a.Timing(stage, now.Sub(start))
	}
	return now
}

// ErrInvalid wraps validation failures: nothing was written.
var ErrInvalid = errors.New("candidate configuration rejected; nothing was written")

// ErrUnverified marks an apply that wrote everything and whose daemons
// then did not run or serve: the commit's doing, not this node's (a write
// that failed, a full disk, is the node's), so the fleet may share it.
var ErrUnverified = errors.New("not verified")

// Apply carries out p. On error the node is as it was before, unless the
// error says the rollback failed too.
func (a *Applier) Apply(ctx context.Context, p *plan.Plan) error {
	log := a.Log
	if log == nil {
		log = slog.Default()
	}
	if p.Empty() {
		log.Debug("nothing to do", "node", p.Node)
		return nil
	}
	mark := time.Now()
	var invalid []error
	for _, c := range p.Changes {
		if c.File.Kind != render.Config {
			continue // drop-ins are systemd's, no daemon checks them
		}
		if err := a.Validator.Config(ctx, c.File.Path, c.File.Content); err != nil {
			invalid = append(invalid, fmt.Errorf("candidate %s rejected: %w", c.File.Path, err))
		}
	}
	if err := errors.Join(invalid...); err != nil {
		return fmt.Errorf("%w:\n%v", ErrInvalid, err)
	}

	mark = a.since("validate", mark)
	if a.Gate != nil {
		if err := a.Gate(ctx, p); err != nil {
			return fmt.Errorf("waiting for this node's turn: %w (nothing was written)", err)
		}
	}
	a.since("gate", mark)

	// What each touched unit was doing before, to restore it on failure.
	before := map[string]unit.State{}
	for _, u := range p.Units {
		if u.Action == unit.None {
			continue
		}
		st, err := a.Systemd.State(ctx, u.Name)
		if err != nil {
			return err // nothing written yet
		}
		before[u.Name] = st
	}

	if err := a.journal(p); err != nil {
		return fmt.Errorf("journal the unit actions before writing: %w (nothing was written)", err)
	}
	var written []plan.Change
	err := a.forward(ctx, p, log, &written)
	if err == nil {
		a.journalDone(log)
		return nil
	}
	log.Error("apply failed, rolling back", "node", p.Node, "err", err)
	// The rollback runs to its end even when ctx ended (SIGTERM while
	// applying): the previous files and unit states must be back before
	// the agent exits. Bounded on its own.
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), rollbackTimeout)
	defer cancel()
	if rerr := a.rollback(rctx, p, written, before, log); rerr != nil {
		return fmt.Errorf("%w; ROLLBACK FAILED too, the node needs attention: %v", err, rerr)
	}
	a.journalDone(log)
	return fmt.Errorf("%w (rolled back to the previous files and unit states)", err)
}

// pending is the journal's content.
type pending struct {
	Node         string   `json:"node"`
	DaemonReload bool     `json:"daemonReload"`
	Units        []string `json:"units"` // units a step of the apply touches
}

func (a *Applier) journal(p *plan.Plan) error {
	if a.Journal == "" {
		return nil
	}
	j := pending{Node: p.Node, DaemonReload: p.DaemonReload}
	for _, u := range p.Units {
		if u.Action != unit.None {
			j.Units = append(j.Units, u.Name)
		}
	}
	b, err := json.Marshal(j)
	if err != nil {
		return err
	}
	return atomicfile.Write(a.Journal, b, 0o644)
}

func (a *Applier) journalDone(log *slog.Logger) {
	if a.Journal == "" {
		return
	}
	if err := os.Remove(a.Journal); err != nil && !errors.Is(err, os.ErrNotExist) {
		log.Error("remove the apply journal", "file", a.Journal, "err", err)
	}
}

// Replay finishes an apply that a crash interrupted, from its journal:
// daemon-reload if it needed one, and every unit it touched restarted if it
// runs (so it reads the files on disk) or left as it is. It returns what it
// did; no journal, nothing.
func Replay(ctx context.Context, journal string, sd Systemd) ([]string, error) {
	b, err := os.ReadFile(journal)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var j pending
	if err := json.Unmarshal(b, &j); err != nil {
		os.Remove(journal)
		return nil, fmt.Errorf("apply journal %s unreadable (%w); removed", journal, err)
	}
	var did []string
	var errs []error
	if j.DaemonReload {
		if err := sd.DaemonReload(ctx); err != nil {
			errs = append(errs, err)
		}
		did = append(did, "daemon-reload")
	}
	for _, u := range j.Units {
		st, err := sd.State(ctx, u)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if !st.Running() {
			continue // the enforce that follows starts what must run
		}
		if err := sd.Do(ctx, unit.Restart, u); err != nil {
			errs = append(errs, err)
			continue
		}
		did = append(did, "restart "+u)
	}
	if err := errors.Join(errs...); err != nil {
		return did, fmt.Errorf("replay the apply journal %s: %w", journal, err)
	}
	return did, os.Remove(journal)
}

func (a *Applier) forward(ctx context.Context, p *plan.Plan, log *slog.Logger, written *[]plan.Change) error {
	mark := time.Now()
	for _, c := range p.Changes {
		if c.Existed {
			if err := atomicfile.Write(a.path(filepath.Join(a.BackupDir, c.File.Path)), c.Old, c.File.Mode); err != nil {
				return fmt.Errorf("keep previous %s: %w", c.File.Path, err)
			}
		}
		*written = append(*written, c) // before the write: a half-done write is rolled back too
		if err := atomicfile.Write(a.path(c.File.Path), c.File.Content, c.File.Mode); err != nil {
			return fmt.Errorf("write %s: %w", c.File.Path, err)
		}
		log.Info("wrote", "path", c.File.Path, "unit", c.File.Unit)
	}
	if p.DaemonReload {
		if err := a.Systemd.DaemonReload(ctx); err != nil {
			return err
		}
	}
	var check []string
	started := false // a process was (re)started, not only reloaded
	for _, u := range p.Units {
		if u.Action == unit.None {
			continue
		}
		log.Info("unit", "unit", u.Name, "action", u.Action, "reason", u.Reason)
		switch u.Action {
		case unit.Start:
			if err := a.Systemd.Enable(ctx, u.Name); err != nil {
				return err
			}
		case unit.Stop:
			if err := a.Systemd.Disable(ctx, u.Name); err != nil {
				return err
			}
		}
		if err := a.Systemd.Do(ctx, u.Action, u.Name); err != nil {
			return err
		}
		if u.Action != unit.Stop {
			check = append(check, u.Name)
		}
		started = started || u.Action == unit.Start || u.Action == unit.Restart
	}
	mark = a.since("units", mark)
	// A daemon can start on a configuration and still die on it a moment
	// later (a bridge, a certificate it loads late). A reload starts no
	// process: the health checks right after (Verify) are enough, and the
	// change is live half a second sooner.
	if started && a.Settle > 0 {
		select {
		case <-time.After(a.Settle):
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	for _, u := range check {
		st, err := a.Systemd.State(ctx, u)
		// "reloading" (and "activating") is on the way to active: a reload
		// the apply asked for may still be running (the soak saw a refusal
		// of keepalived "reloading after apply"). Waited for, bounded by
		// ctx and transientWait.
		for end := time.Now().Add(transientWait); err == nil && (st.ActiveState == "reloading" || st.ActiveState == "activating") && time.Now().Before(end); {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(100 * time.Millisecond):
			}
			st, err = a.Systemd.State(ctx, u)
		}
		if err != nil {
			return err
		}
		if st.ActiveState != "active" {
			return fmt.Errorf("%w: %s is %s after apply (see journalctl -u %s)", ErrUnverified, u, st.ActiveState, u)
		}
	}
	mark = a.since("settle", mark)
	if a.Verify != nil && len(check) > 0 {
		if err := a.Verify(ctx, p); err != nil {
			return fmt.Errorf("%w: health check after apply: %w", ErrUnverified, err)
		}
	}
	a.since("verify", mark)
	return nil
}

// transientWait bounds how long a unit may stay reloading or activating
// after an apply before it counts as failed.
const transientWait = 10 * time.Second

// rollbackTimeout bounds a rollback (unit restarts of up to 10 s each).
const rollbackTimeout = 2 * time.Minute

func (a *Applier) rollback(ctx context.Context, p *plan.Plan, written []plan.Change, before map[string]unit.State, log *slog.Logger) error {
	var errs []error
	dropIn := false
	for _, c := range written {
		var err error
		if c.Existed {
			err = atomicfile.Write(a.path(c.File.Path), c.Old, c.File.Mode)
		} else if err = os.Remove(a.path(c.File.Path)); errors.Is(err, os.ErrNotExist) {
			err = nil
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("restore %s: %w", c.File.Path, err))
			continue
		}
		dropIn = dropIn || c.File.Kind == render.DropIn
		log.Info("restored", "path", c.File.Path)
	}
	if dropIn || p.DaemonReload {
		if err := a.Systemd.DaemonReload(ctx); err != nil {
			errs = append(errs, err)
		}
	}
	for _, u := range p.Units {
		st, touched := before[u.Name]
		if !touched {
			continue
		}
		// A restart puts a unit back on its previous files whatever the
		// failed step did to it; a unit that was down stays down.
		action := unit.Restart
		if !st.Running() {
			action = unit.Stop
		}
		if u.Action == unit.Stop {
			if err := a.Systemd.Enable(ctx, u.Name); err != nil {
				errs = append(errs, err)
			}
		}
		if err := a.Systemd.Do(ctx, action, u.Name); err != nil {
			errs = append(errs, err)
		}
		log.Info("unit restored", "unit", u.Name, "action", action)
	}
	return errors.Join(errs...)
}

func (a *Applier) path(abs string) string { return filepath.Join(a.Root, abs) }
