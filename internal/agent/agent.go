// Package agent is the mqha daemon: it pulls the cluster repository,
// converges this node on each new commit, keeps the applied one enforced,
// checks and repairs the daemons every few seconds, and reports what it did.
//
// One goroutine, Run's loop, does all the work, so converging and
// repairing never race; everything else reads an owner's state or posts a
// request to the loop's mailbox. Each owner keeps its own state:
//
//   - agent.go: the seams to the world (Deps) and the Agent that holds the owners
//   - loop.go: Run's loop, its mailbox (post, ask, nudge) and the watchdog
//   - requests.go: what the control socket asks (status, sync, suspend, reload)
//   - facts.go, facts_files.go: the record of the node's facts (applied,
//     refused, suspended, decommissioning, warnings) with their state files
//     and metrics; the status and the sd_notify STATUS line derive from it
//   - pull.go: the pull state and policy (one at a time, back-off, waiters)
//   - view.go: a commit as this node sees it (rendered files, checks, TLS)
//   - converge.go: applying a view, the health monitor and drift watch it sets up
//   - runtime.go: run-time changes without the fleet's turn order
//   - bridge.go: the bridge role as keepalived reports it
//   - draining.go: a bridge node bridging a removed broker until it stops
//   - brokers.go, lb.go: a load balancer's brokers watch and removed brokers
//   - vip.go, fault.go: the VIP policy and keepalived's track file
//   - limits.go: warnings (descriptor limits, certificate expiry)
//   - journal.go: counting the daemons' log lines (drops, forged adverts)
//   - sessions.go: the one reader of mosquitto's journal (drops, and on a
//     broker the persistent sessions: listing them, draining moved copies)
//   - verdicts.go: the fleet's verdicts on commits (signing this node's,
//     obeying the others')
//   - notify.go: this node's events posted to the notify-url webhook
//   - decommission.go, suspend.go: leaving the cluster; the operator's pause
//   - publish.go, http.go, metrics.go: the status on the brokers, /metrics
//     and the webhook, the Prometheus metrics
//   - config.go, transport.go: agent.conf (the keys table) and the repository's credentials
//
// The world (git, systemd, peers, the clock, the loop's tickers) comes in
// through Deps, so the tests run the real loop with fakes.
package agent

import (
	"context"
	"crypto/tls"
	"io/fs"
	"log/slog"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/mqha/mqha/internal/apply"
	"github.com/mqha/mqha/internal/bridgerole"
	"github.com/mqha/mqha/internal/cluster"
	"github.com/mqha/mqha/internal/evaluate"
	"github.com/mqha/mqha/internal/health"
	"github.com/mqha/mqha/internal/notify"
	"github.com/mqha/mqha/internal/plan"
	"github.com/mqha/mqha/internal/probe"
	"github.com/mqha/mqha/internal/render"
	"github.com/mqha/mqha/internal/source"
	"github.com/mqha/mqha/internal/verdict"
	"github.com/mqha/mqha/internal/vipguard"
	"github.com/mqha/mqha/schema"
)

// Source is the cluster repository as the agent uses it.
type Source interface {
	// Head asks the remote where the branch points.
	Head(ctx context.Context) (string, error)
	// Fetch makes hash available locally.
	Fetch(ctx context.Context, hash string) error
	// Descends reports whether hash has ancestor in its history.
	Descends(ctx context.Context, hash, ancestor string) (bool, error)
	// Read returns the .cue files under dir of commit hash, refusing more
	// than maxBytes of them together (agent.conf max-definition-size).
	Read(hash, dir string, maxBytes int64) (*source.Commit, error)
}

// Verifier checks a commit's signature and names its signer.
type Verifier interface {
	Verify(hash string) (signer string, err error)
}

// Systemd is what the agent needs of systemd: apply's unit actions and the
// health monitor's view of the daemons' processes and kill of a hung one.
type Systemd interface {
	apply.Systemd
	Kill(ctx context.Context, unit string, sig syscall.Signal) error
	MainPID(ctx context.Context, unit string) (int, error)
}

// Hooks are what converging asks of the fleet: Gate waits for this node's
// turn before anything is written, Verify checks the daemons serve after.
type Hooks struct {
	Gate   func(ctx context.Context, p *plan.Plan) error
	Verify func(ctx context.Context, p *plan.Plan) error
	// Timing is told how long each stage of the apply took.
	Timing func(stage string, d time.Duration)
	// Settle is how long started units must stay up (agent.conf settle).
	Settle time.Duration
}

// Converger carries a view out on the node: plan against the live system,
// validate, wait for the gate, write, drive the units, verify; rolling back
// on failure. Converge (converge.go) is the real one.
type Converger func(ctx context.Context, v *View, h Hooks) (*plan.Plan, error)

// Deps are the agent's seams to the world. New fills what is nil with the
// real thing where there is one.
type Deps struct {
	Source   Source
	Verifier Verifier // nil: signatures are not required
	Systemd  Systemd
	Converge Converger
	// LoadTLS reads the node's certificate as a client of the cluster CA.
	LoadTLS func(tls TLSFiles) (*tls.Config, error)
	// Probe is how a health check probes its daemon (nil: as rendered, TLS
	// and MQTT to the node's own listeners).
	Probe func(c health.Check) probe.Probe
	// ProbeLB checks that a load balancer passes TLS through to a broker.
	ProbeLB func(ctx context.Context, addr string, tc *tls.Config) error
	// WatchUnits reports units whose state changes (nil: none reported).
	WatchUnits func(watch func() []string) (<-chan string, error)
	// CloseConns closes this host's connections to addr:port (nil: ss -K).
	CloseConns func(ctx context.Context, addr string, port int) error
	// EndSession ends the session this node's mosquitto (at addr) keeps
	// for clientID (nil: probe.EndSession).
	EndSession func(ctx context.Context, addr string, tc *tls.Config, clientID string) error
	// Serves reports whether addr accepts a TCP connection (nil: a real
	// connect): whether a removed broker still serves (draining.go).
	Serves func(ctx context.Context, addr string) bool
	// DrainSession takes over this node's mosquitto's session for
	// clientID, acknowledges its queue and leaves (nil:
	// probe.DrainSession).
	DrainSession func(ctx context.Context, addr string, tc *tls.Config, clientID string, subscribe map[string]byte, unsubscribe []string, quiet time.Duration) (int, bool, error)
	// Journal returns a unit's log lines after cursor, and the next cursor
	// (nil: journalctl).
	Journal func(ctx context.Context, unit, cursor string) (lines []string, next string, err error)
	// WatchFiles reports managed files changed by hand (nil: not watched).
	WatchFiles func(ctx context.Context, files []string) (<-chan string, error)
	// PeerConns counts established connections to this host's ports from
	// other hosts (nil: ss).
	PeerConns func(ctx context.Context, ports []int) (int, error)
	// Notify sends sd_notify lines (nil: dropped).
	Notify func(state string)
	// Now is the clock of the policies (nil: time.Now), Ticker the loop's
	// rounds (nil: time.Ticker); named "poll" or "health".
	Now    func() time.Time
	Ticker func(name string, d time.Duration) Ticker
	// BridgeState reads what keepalived's bridge instance last reported
	// (nil: bridgerole.Read).
	BridgeState func() (bridgerole.State, bridgerole.Check, error)
	// BridgeLeaving says this node is leaving the cluster ("": it is not),
	// for keepalived's bridge check (nil: bridgerole.SetLeaving).
	BridgeLeaving func(why string) error
	// Host is what this host allows, for sizing (nil: LocalHost).
	Host func() render.Host
	// LoadDefinition evaluates a commit's files into the cluster
	// definition within lim (agent.conf load-timeout, load-memory; nil: in
	// this process, unbounded; the agent's run command evaluates in a
	// bounded child, internal/evaluate).
	LoadDefinition func(ctx context.Context, files fs.FS, lim evaluate.Limits) (*cluster.Cluster, error)
	// FaultFile is keepalived's track file (empty: daemon.FaultFile).
	FaultFile string
	// Guard releases what a stopped or dead keepalived holds on this node
	// (nil: nothing guarded; the run command wires the real one).
	Guard   *vipguard.Guard
	Log     *slog.Logger
	Version string
}

// Agent is the running daemon of one node: the loop (loop.go) and the
// owners it drives, each of which keeps its own state.
type Agent struct {
	cfg  Config
	node string
	d    Deps
	log  *slog.Logger
	m    *metrics

	facts   *record     // applied, refused, suspended, decommission, warnings (facts.go)
	pulls   puller      // the pull under way, its waiters, the back-off (pull.go)
	bridge  *bridgeRole // keepalived's bridge role, as last reported (bridge.go)
	brokers brokerWatch // a load balancer's brokers marked down (brokers.go)
	fault   *Fault      // keepalived's track file on a load balancer (fault.go)
	daemons daemons     // the health monitor and units of the applied commit (converge.go)
	drift   driftWatch  // hand edits of the applied files (converge.go)
	// draining: removed brokers a bridge node still bridges (draining.go)
	draining drainWatch
	publish  publisher // where the status is published (publish.go)
	// sessions: the other brokers' session listings, and what ending
	// this broker's stale copies did (sessions.go).
	sessions *sessionKeeper
	// verdicts: the fleet's verdicts on commits, as the nodes publish them
	// (verdicts.go).
	verdicts *verdict.Known
	// canary: the commit the canary's status says it applied (a string).
	canary atomic.Value
	// notifier posts this node's events to the notify-url webhook
	// (notify.go).
	notifier *notify.Notifier

	view *View // the applied commit (nil until first needed)
	// decomCluster is the definition that removed this node (nil after a
	// restart until needed; decommission.go).
	decomCluster *cluster.Cluster

	mail  chan func(context.Context) // the loop's mailbox (loop.go)
	ticks tickers                    // poll and health rounds (loop.go)
	beat  atomic.Int64               // last finished loop round, unix ns
	// nudged coalesces requests that need no answer (webhook, recheck).
	nudged sync.Map
	hook   webhook // its secret file and recent deliveries (http.go)
}

// New prepares the agent of node cfg.Node (already defaulted) from its
// recorded state; Run starts it.
func New(cfg Config, node string, d Deps) *Agent {
	if d.Now == nil {
		d.Now = time.Now
	}
	if d.Ticker == nil {
		d.Ticker = realTicker
	}
	if d.Notify == nil {
		d.Notify = func(string) {}
	}
	if d.Log == nil {
		d.Log = slog.Default()
	}
	if d.Converge == nil {
		d.Converge = Converge(d.Systemd, cfg.StateDir, d.Log)
	}
	if d.LoadTLS == nil {
		d.LoadTLS = LoadTLS
	}
	if d.ProbeLB == nil {
		d.ProbeLB = probeTLSThrough
	}
	if d.Host == nil {
		d.Host = LocalHost
	}
	if d.Journal == nil {
		d.Journal = journal
	}
	if d.CloseConns == nil {
		d.CloseConns = closeConns
	}
	if d.Serves == nil {
		d.Serves = serves
	}
	if d.DrainSession == nil {
		d.DrainSession = probe.DrainSession
	}
	if d.EndSession == nil {
		d.EndSession = probe.EndSession
	}
	if d.PeerConns == nil {
		d.PeerConns = peerConns
	}
	if d.BridgeState == nil {
		d.BridgeState = bridgerole.Read
	}
	if d.BridgeLeaving == nil {
		d.BridgeLeaving = bridgerole.SetLeaving
	}
	if d.LoadDefinition == nil {
		d.LoadDefinition = func(_ context.Context, files fs.FS, _ evaluate.Limits) (*cluster.Cluster, error) {
			return schema.Load(files, ".")
		}
	}
	m := newMetrics()
	a := &Agent{cfg: cfg, node: node, d: d, log: d.Log, m: m, mail: make(chan func(context.Context), 16),
		facts: newRecord(cfg.StateDir, m, d.Log, d.Now, d.Notify), bridge: &bridgeRole{read: d.BridgeState}}
	a.publish.kick = make(chan struct{}, 1)
	m.reg.MustRegister(bridgeCollector{a.bridge})
	a.sessions = newSessionKeeper()
	a.verdicts = &verdict.Known{}
	a.notifier = &notify.Notifier{Log: a.log, Result: func(r string) { m.notifications.WithLabelValues(r).Inc() }}
	if err := a.setNotify(); err != nil {
		a.log.Error("webhook notifications are off", "err", err)
	}
	a.facts.emit = a.emit
	m.reg.MustRegister(a.sessions.collectors()...)
	a.fault = newFault(d.FaultFile, a.log)
	if d.Guard != nil && d.Guard.OnRelease == nil {
		d.Guard.OnRelease = func(why string) { m.vipReleased.WithLabelValues(why).Inc() }
	}
	a.daemons.guard = d.Guard
	a.hook.setFile(cfg.WebhookSecretFile)
	a.facts.restore(func(hash string) error { _, err := d.Source.Read(hash, cfg.Path, cfg.MaxDefinitionSize); return err })
	a.facts.SetInsecure(a.insecurity())
	return a
}
