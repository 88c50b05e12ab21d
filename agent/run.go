package main

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	sdnotify "github.com/coreos/go-systemd/v22/daemon"

	"github.com/mqha/mqha/internal/agent"
	"github.com/mqha/mqha/internal/cluster"
	"github.com/mqha/mqha/internal/control"
	"github.com/mqha/mqha/internal/drift"
	"github.com/mqha/mqha/internal/evaluate"
	"github.com/mqha/mqha/internal/health"
	"github.com/mqha/mqha/internal/source"
	"github.com/mqha/mqha/internal/systemd"
	"github.com/mqha/mqha/internal/vipguard"
)

// run wires `mqha-agent run`: configuration, repository, systemd, and the
// agent (internal/agent), which does the rest.
func (c *cmd) run(args []string) error {
	flags, _ := c.flags("run")
	conf := flags.String("config", "/etc/mqha/agent.conf", "agent configuration file")
	if err := parse(flags, args); err != nil {
		return err
	}
	data, err := os.ReadFile(*conf)
	if err != nil {
		return err
	}
	cfg, err := agent.ParseConfig(*conf, data)
	if err != nil {
		return err
	}
	if cfg.Repo == "" {
		// Installed but not configured yet: stay up and say so, on the
		// STATUS line and the control socket, instead of failing in a
		// restart loop.
		missing := "set repo in " + *conf + ", then systemctl restart mqha-agent"
		c.log.Warn("not configured: " + missing)
		sdnotify.SdNotify(false, sdnotify.SdNotifyReady+"\nSTATUS=not configured: "+missing)
		node, _ := agent.NodeName(cfg.Node)
		go func() {
			u := unconfigured{control.Status{Node: node, Version: version, Unconfigured: missing}}
			if err := control.Serve(c.ctx, cfg.Socket, u); err != nil {
				c.log.Error("control socket", "path", cfg.Socket, "err", err)
			}
		}()
		return c.idle()
	}
	node, err := agent.NodeName(cfg.Node)
	if err != nil {
		return err
	}
	deps := agent.Deps{Log: c.log, Version: version,
		Notify: func(state string) { sdnotify.SdNotify(false, state) },
		WatchFiles: func(ctx context.Context, files []string) (<-chan string, error) {
			return drift.Watch(ctx, files, 200*time.Millisecond)
		}}
	// Each commit's definition is evaluated in a child of this binary,
	// bounded in time and memory: a commit is input from whoever can push.
	if exe, err := os.Executable(); err == nil {
		deps.LoadDefinition = func(ctx context.Context, files fs.FS, lim evaluate.Limits) (*cluster.Cluster, error) {
			return evaluate.Child(ctx, exe, files, lim)
		}
	} else {
		c.log.Warn("cannot find this binary: definitions are evaluated in the agent itself, without bounds", "err", err)
	}
	var trust *source.Trust
	if cfg.TrustedKeys != "" {
		if trust, err = source.LoadTrust(cfg.TrustedKeys); err != nil {
			return err
		}
	}
	auth, err := cfg.Auth()
	if err != nil {
		return err
	}
	if err := os.MkdirAll(cfg.StateDir, 0o750); err != nil {
		return err
	}
	repo, err := source.Open(filepath.Join(cfg.StateDir, "repo.git"), cfg.Repo, cfg.Branch, auth)
	if err != nil {
		return err
	}
	if repo.CABundle, err = cfg.CABundle(); err != nil {
		return err
	}
	deps.Source = repo
	if trust != nil {
		deps.Verifier = trustedRepo{repo, trust}
	}
	sd, err := systemd.Connect(c.ctx, 30*time.Second)
	if err != nil {
		return err
	}
	defer sd.Close()
	deps.Systemd = sd
	// systemd's unit events, and a daemon whose process is stopped
	// (SIGSTOP), which systemd does not report: both check at once.
	deps.WatchUnits = func(watch func() []string) (<-chan string, error) {
		events, err := sd.WatchUnits(watch)
		if err != nil {
			return nil, err
		}
		return health.WithStopped(c.ctx, events, watch, sd.MainPID, "/proc", health.StoppedEvery), nil
	}
	deps.Guard = &vipguard.Guard{Log: c.log, Kill: func(ctx context.Context) error {
		return sd.Kill(ctx, vipguard.Unit, syscall.SIGKILL)
	}}

	a := agent.New(cfg, node, deps)
	go a.ServeControl(c.ctx)
	go a.ServeHTTP(c.ctx)
	published := make(chan struct{})
	go func() {
		defer close(published)
		a.PublishStatus(c.ctx)
	}()
	kept := make(chan struct{})
	go func() {
		defer close(kept)
		a.FollowMosquitto(c.ctx)
	}()
	go c.reloadOnHUP(*conf, a, repo)
	err = a.Run(c.ctx)
	// The publishers say goodbye ("stopped", an empty session listing)
	// before the process ends.
	deadline := time.After(3 * time.Second)
	for _, done := range []chan struct{}{published, kept} {
		select {
		case <-done:
		case <-deadline:
		}
	}
	return err
}

// reloadOnHUP re-reads the configuration on SIGHUP (systemctl reload
// mqha-agent) and hands it to the agent; a file that does not parse
// changes nothing.
func (c *cmd) reloadOnHUP(path string, a *agent.Agent, repo *source.Repo) {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	for {
		select {
		case <-c.ctx.Done():
			return
		case <-hup:
		}
		sdnotify.SdNotify(false, "RELOADING=1")
		err := func() error {
			data, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			cfg, err := agent.ParseConfig(path, data)
			if err != nil {
				return err
			}
			var v agent.Verifier
			if cfg.TrustedKeys != "" {
				trust, err := source.LoadTrust(cfg.TrustedKeys)
				if err != nil {
					return err
				}
				v = trustedRepo{repo, trust}
			}
			return a.Reload(c.ctx, cfg, v)
		}()
		if err != nil {
			c.log.Error("reload the configuration", "path", path, "err", err)
		}
		sdnotify.SdNotify(false, sdnotify.SdNotifyReady)
	}
}

// unconfigured answers the control socket of an agent with no repository.
type unconfigured struct{ status control.Status }

func (u unconfigured) Status() control.Status { return u.status }
func (u unconfigured) Sync(context.Context, bool) error {
	return errors.New("not configured: " + u.status.Unconfigured)
}
func (u unconfigured) Suspend(context.Context, string, bool) error {
	return errors.New("not configured: " + u.status.Unconfigured)
}
func (u unconfigured) Resume(context.Context) error {
	return errors.New("not configured: " + u.status.Unconfigured)
}

// trustedRepo verifies commits of repo against the trusted keys.
type trustedRepo struct {
	repo  *source.Repo
	trust *source.Trust
}

func (t trustedRepo) Verify(hash string) (string, error) { return t.repo.Verify(hash, t.trust) }

func (c *cmd) idle() error {
	t := time.NewTicker(10 * time.Second)
	defer t.Stop()
	for {
		select {
		case <-c.ctx.Done():
			return nil
		case <-t.C:
			sdnotify.SdNotify(false, sdnotify.SdNotifyWatchdog)
		}
	}
}
