package agent

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strings"

	"github.com/mqha/mqha/internal/control"
	"github.com/mqha/mqha/internal/source"
)

// What the control socket asks (control.Agent): Status reads the owners;
// the rest runs on the loop, through the mailbox.

// Status is the node's status, derived from its facts, its checks and its
// bridge role.
func (a *Agent) Status() control.Status {
	s := a.facts.get().status(control.Status{Node: a.node, Version: a.d.Version, Repo: a.cfg.Repo, Branch: a.cfg.Branch})
	if m := a.daemons.get(); m != nil {
		s.Checks = m.Results()
	}
	s.Bridge = a.bridge.status()
	return s
}

// Sync pulls and converges now, answering once that pull is settled; retry
// first forgets the refused commit (the operator fixed what refused it).
func (a *Agent) Sync(ctx context.Context, retry bool) error {
	return a.ask(ctx, func(ctx context.Context, reply chan<- error) {
		if retry {
			if was := a.facts.Retry(); was != "" {
				a.log.Info("retrying the refused commit on request", "commit", source.Short(was))
			}
		}
		a.pulls.wait(reply)
		a.startPull(ctx, true)
	})
}

// Suspend and Resume: the operator's pause (suspend.go).
func (a *Agent) Suspend(ctx context.Context, reason string, noRepair bool) error {
	return a.ask(ctx, func(ctx context.Context, reply chan<- error) { reply <- a.suspend(reason, noRepair) })
}

func (a *Agent) Resume(ctx context.Context) error {
	return a.ask(ctx, func(ctx context.Context, reply chan<- error) { reply <- a.resume(ctx) })
}

// Reload applies a re-read agent.conf (systemctl reload mqha-agent) in the
// loop, between two rounds: the keys a reload applies take effect, the
// others keep their running value and the error names them.
func (a *Agent) Reload(ctx context.Context, cfg Config, verifier Verifier) error {
	return a.ask(ctx, func(ctx context.Context, reply chan<- error) { reply <- a.applyConfig(cfg, verifier) })
}

// applyConfig takes the keys of cfg that a reload applies (keys, in
// config.go, says which).
func (a *Agent) applyConfig(cfg Config, verifier Verifier) error {
	took, restart := reloadKeys(&a.cfg, &cfg)
	a.d.Verifier = verifier
	a.hook.setFile(a.cfg.WebhookSecretFile)
	nerr := a.setNotify()
	if a.ticks.poll != nil {
		a.ticks.poll.Reset(a.cfg.Poll)
		a.ticks.health.Reset(a.cfg.HealthInterval)
	}
	a.facts.SetInsecure(a.insecurity())
	a.log.Info("configuration reloaded", "changed", strings.Join(took, ","), "needs_restart", strings.Join(restart, ","),
		"signatures", verifier != nil)
	if len(restart) > 0 {
		return errors.Join(nerr, fmt.Errorf("%s changed: needs a restart (systemctl restart mqha-agent); kept the running values", strings.Join(restart, ", ")))
	}
	if nerr != nil {
		a.log.Error("webhook notifications are off", "err", nerr)
	}
	return nerr
}

// insecurity is what lets a commit nobody trusted reach this node: commits
// unsigned (no trusted-keys) and fetched over a transport that does not
// authenticate the server (git://, http://; file:// is as trusted as the
// file system, https and ssh authenticate the server); a bridge node whose
// bridges' client ids can be named; or an applied commit that the trusted
// keys no longer vouch for (a key removed).
func (a *Agent) insecurity() []string {
	var out []string
	if u, err := url.Parse(a.cfg.Repo); a.d.Verifier == nil && err == nil && (u.Scheme == "git" || u.Scheme == "http") {
		out = append(out, fmt.Sprintf("commits are not signed (no trusted-keys) and %s:// does not authenticate the server: whoever can answer for %s can change this node; use https or ssh, and sign commits (trusted-keys)", u.Scheme, u.Host))
	}
	if v := a.view; v != nil && v.GuessableBridgeIDs {
		out = append(out, fmt.Sprintf("no bridge secret (%s): any client certificate can connect under this bridge's client ids and take its sessions on the brokers over; install the same random secret on every bridge node (mqha-agent pki issue writes bridge.secret)", v.Cluster.TLS.BridgeSecret))
	}
	if applied := a.facts.Applied(); a.d.Verifier != nil && applied != "" {
		if _, err := a.d.Verifier.Verify(applied); err != nil {
			out = append(out, fmt.Sprintf("the applied commit %s is not signed by a trusted key (%v): it keeps running until a trusted commit replaces it", source.Short(applied), err))
		}
	}
	return out
}
