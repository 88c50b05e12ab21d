package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"

	"github.com/mqha/mqha/internal/apply"
	"github.com/mqha/mqha/internal/cluster"
	"github.com/mqha/mqha/internal/plan"
	"github.com/mqha/mqha/internal/render"
	"github.com/mqha/mqha/internal/source"
	"github.com/mqha/mqha/internal/systemd"
	"github.com/mqha/mqha/internal/validate"
	"github.com/mqha/mqha/schema"
)

// converge renders node from cl, plans against the live system and applies.
func converge(ctx context.Context, cl *cluster.Cluster, node string, sd apply.Systemd, stateDir string, settle time.Duration, log *slog.Logger) (*plan.Plan, error) {
	out, err := render.Node(cl, node)
	if err != nil {
		return nil, err
	}
	states, err := unitStates(ctx, sd)
	if err != nil {
		return nil, err
	}
	p, err := plan.Make(out, os.DirFS("/"), states)
	if err != nil {
		return nil, err
	}
	a := &apply.Applier{Root: "/", BackupDir: filepath.Join(stateDir, "backup"),
		Systemd: sd, Validator: validate.Tools{}, Settle: settle, Log: log}
	return p, a.Apply(ctx, p)
}

// agent is the state of `mqha-agent run`.
type agent struct {
	cfg     agentConfig
	node    string
	repo    *source.Repo
	sd      *systemd.DBus
	log     *slog.Logger
	applied string // last commit applied successfully
	bad     string // last commit that failed; not retried until the branch moves
	badWhy  string
	backoff time.Duration // while the remote is unreachable
	nextTry time.Time
}

func (c *cmd) run(args []string) error {
	fs, _ := c.flags("run")
	conf := fs.String("config", "/etc/mqha/agent.conf", "agent configuration file")
	if err := parse(fs, args); err != nil {
		return err
	}
	data, err := os.ReadFile(*conf)
	if err != nil {
		return err
	}
	cfg, err := parseConfig(*conf, data)
	if err != nil {
		return err
	}
	if cfg.Repo == "" {
		// Installed but not configured yet: stay up and say so, instead of
		// failing in a restart loop.
		msg := "not configured: set repo in " + *conf + ", then systemctl restart mqha-agent"
		c.log.Warn(msg)
		daemon.SdNotify(false, daemon.SdNotifyReady+"\nSTATUS="+msg)
		return c.idle()
	}
	a := &agent{cfg: cfg, node: cfg.Node, log: c.log}
	if a.node == "" {
		h, err := os.Hostname()
		if err != nil {
			return err
		}
		a.node, _, _ = strings.Cut(h, ".")
	}
	auth, err := cfg.auth()
	if err != nil {
		return err
	}
	if err := os.MkdirAll(cfg.StateDir, 0o750); err != nil {
		return err
	}
	if a.repo, err = source.Open(filepath.Join(cfg.StateDir, "repo.git"), cfg.Repo, cfg.Branch, auth); err != nil {
		return err
	}
	a.applied = a.readState("applied")
	a.bad, a.badWhy, _ = strings.Cut(a.readState("bad"), " ")
	if a.sd, err = systemd.Connect(c.ctx, 30*time.Second); err != nil {
		return err
	}
	defer a.sd.Close()
	c.log.Info("agent started", "node", a.node, "repo", cfg.Repo, "branch", cfg.Branch, "applied", short(a.applied), "version", version)

	a.tick(c.ctx)
	daemon.SdNotify(false, daemon.SdNotifyReady)
	t := time.NewTicker(cfg.Poll)
	defer t.Stop()
	for {
		select {
		case <-c.ctx.Done():
			daemon.SdNotify(false, daemon.SdNotifyStopping)
			return nil
		case <-t.C:
			a.tick(c.ctx)
		}
	}
}

func (c *cmd) idle() error {
	t := time.NewTicker(10 * time.Second)
	defer t.Stop()
	for {
		select {
		case <-c.ctx.Done():
			return nil
		case <-t.C:
			daemon.SdNotify(false, daemon.SdNotifyWatchdog)
		}
	}
}

// tick is one round: look for a new commit, converge on it or keep
// enforcing the last good one, and tell systemd we are alive.
func (a *agent) tick(ctx context.Context) {
	defer daemon.SdNotify(false, daemon.SdNotifyWatchdog)
	target := a.applied
	if time.Now().After(a.nextTry) {
		head, err := a.repo.Head(ctx)
		if err != nil {
			a.backoff = min(max(2*a.backoff, a.cfg.Poll), time.Minute)
			a.nextTry = time.Now().Add(a.backoff)
			a.log.Warn("cannot reach the cluster repository; enforcing the last good commit", "err", err, "retry_in", a.backoff, "applied", short(a.applied))
			a.status("fetch error: %v; enforcing %s", err, short(a.applied))
		} else {
			a.backoff, a.nextTry = 0, time.Time{}
			if head != a.applied && head != a.bad {
				target = head
			}
		}
	}
	if target == "" {
		return
	}
	if err := a.converge(ctx, target); err != nil {
		if target == a.applied {
			a.log.Error("cannot enforce the applied commit", "commit", short(target), "err", err)
			a.status("applied %s; enforcing failed: %v", short(target), err)
			return
		}
		a.bad, a.badWhy = target, oneLine(err.Error())
		a.writeState("bad", a.bad+" "+a.badWhy)
		a.log.Error("commit refused", "commit", short(target), "err", err)
		a.status("applied %s; refused %s: %s", short(a.applied), short(target), a.badWhy)
		return
	}
	if target != a.applied {
		a.applied = target
		a.writeState("applied", target)
	}
	a.status("applied %s", short(a.applied))
}

func (a *agent) converge(ctx context.Context, hash string) error {
	if err := a.repo.Fetch(ctx, hash); err != nil {
		return err
	}
	commit, err := a.repo.Read(hash, a.cfg.Path)
	if err != nil {
		return err
	}
	cl, err := schema.Load(commit.Files, ".")
	if err != nil {
		return fmt.Errorf("commit %s (%s): %w", short(hash), commit.Subject, err)
	}
	p, err := converge(ctx, cl, a.node, a.sd, a.cfg.StateDir, a.cfg.Settle, a.log)
	if err != nil {
		return fmt.Errorf("commit %s (%s): %w", short(hash), commit.Subject, err)
	}
	if !p.Empty() {
		a.log.Info("converged", "commit", short(hash), "subject", commit.Subject)
	}
	return nil
}

func (a *agent) status(format string, args ...any) {
	daemon.SdNotify(false, "STATUS="+fmt.Sprintf(format, args...))
}

func (a *agent) readState(name string) string {
	b, err := os.ReadFile(filepath.Join(a.cfg.StateDir, name))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		a.log.Warn("read state", "file", name, "err", err)
	}
	return strings.TrimSpace(string(b))
}

func (a *agent) writeState(name, value string) {
	if err := writeFile(filepath.Join(a.cfg.StateDir, name), []byte(value+"\n"), 0o644); err != nil {
		a.log.Error("write state", "file", name, "err", err)
	}
}

func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }

func short(h string) string {
	if len(h) > 12 {
		return h[:12]
	}
	return h
}
