// Package agent is the mqha daemon: it pulls the cluster repository,
// converges this node on each new commit, keeps the applied one enforced,
// checks and repairs the daemons every few seconds, and reports what it did.
//
// One goroutine (Run's loop) does all the work, so converging and repairing
// never race; the control socket and the webhook only read a snapshot or ask
// the loop. Each job has a file: the loop here, the pull policy in pull.go,
// the per-commit view in view.go, converging in converge.go, the VIP policy
// in vip.go with the keepalived fault file in fault.go, state changes in
// state.go, and metrics, sd_notify and the webhook in observe.go. The world
// (git, systemd, peers, the clock) comes in through Deps, so the policies
// are tested with fakes.
package agent

import (
	"context"
	"crypto/tls"
	"fmt"
	"io/fs"
	"log/slog"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/mqha/mqha/internal/apply"
	"github.com/mqha/mqha/internal/cluster"
	"github.com/mqha/mqha/internal/control"
	"github.com/mqha/mqha/internal/daemon"
	"github.com/mqha/mqha/internal/health"
	"github.com/mqha/mqha/internal/plan"
	"github.com/mqha/mqha/internal/render"
	"github.com/mqha/mqha/internal/source"
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
	// Read returns the files under dir of commit hash.
	Read(hash, dir string) (*source.Commit, error)
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
	// ProbeLB checks that a load balancer passes TLS through to a broker.
	ProbeLB func(ctx context.Context, addr string, tc *tls.Config) error
	// WatchUnits reports units whose state changes (nil: none reported).
	WatchUnits func(watch func() []string) (<-chan string, error)
	// CloseConns closes this host's connections to addr:port (nil: ss -K).
	CloseConns func(ctx context.Context, addr string, port int) error
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
	// Now is the clock of the pull policy (nil: time.Now).
	Now func() time.Time
	// Host is what this host allows, for sizing (nil: LocalHost).
	Host func() render.Host
	// LoadDefinition evaluates a commit's files into the cluster
	// definition (nil: in this process; the agent's run command evaluates
	// in a bounded child, internal/evaluate).
	LoadDefinition func(ctx context.Context, files fs.FS) (*cluster.Cluster, error)
	// FaultFile is keepalived's track file (empty: daemon.FaultFile).
	FaultFile string
	Log       *slog.Logger
	Version   string
}

// Agent is the running daemon of one node.
type Agent struct {
	cfg  Config
	node string
	d    Deps
	log  *slog.Logger

	applied string // the last commit applied successfully
	// stateWarning says the recorded state was damaged (until restart).
	stateWarning string
	view         *View  // applied, loaded once (nil until first needed)
	refused      string // last commit refused; not retried until the branch moves
	backoff      time.Duration
	nextTry      time.Time

	stages    []control.Stage // of the commit being converged
	monitor   *health.Monitor
	fault     *Fault
	drift     <-chan string
	stopDrift context.CancelFunc

	sync   chan syncRequest // the control socket's "pull now"
	reload chan reloadRequest
	hook   chan struct{}
	// deliveries are the webhook's recent delivery ids (replays refused).
	deliveries seen
	// statusTo is where the status is published (publish.go); under mu.
	statusTo statusTarget
	// suspended is the operator's pause (suspend.go); nil when none.
	suspended *control.Suspension
	// decom is this node's way out of the cluster (decommission.go); nil
	// while the definition lists it.
	decom        *control.Decommission
	decomCluster *cluster.Cluster // the definition that removed it (nil after a restart until needed)
	suspends     chan suspendRequest
	recheck      chan struct{} // a failed check runs again soon

	// Pulls run off the loop (network); the loop settles what they found.
	pulls     chan pulled
	pulling   bool         // a pull is under way
	pullAgain bool         // and another is wanted right after
	waiting   []chan error // sync requests waiting for the pull under way

	// electsBridge: keepalived elects the bridge master on this node (under
	// mu); the role itself is keepalived's (bridge.go).
	electsBridge bool

	// On a load balancer: brokers whose host is gone, marked down in nginx.
	downBrokers  map[string]bool
	brokerEvents chan brokerEvent
	watchKey     string
	stopWatch    context.CancelFunc

	mu    sync.Mutex
	st    control.Status
	said  string       // the last STATUS line sent
	units []string     // units the node runs (for the unit watcher)
	beat  atomic.Int64 // last finished loop round, unix ns

	m metrics
}

// New prepares the agent of node cfg.Node (already defaulted) from its
// recorded state; Run starts it.
func New(cfg Config, node string, d Deps) *Agent {
	if d.Now == nil {
		d.Now = time.Now
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
	if d.PeerConns == nil {
		d.PeerConns = peerConns
	}
	if d.LoadDefinition == nil {
		d.LoadDefinition = func(_ context.Context, files fs.FS) (*cluster.Cluster, error) { return schema.Load(files, ".") }
	}
	a := &Agent{cfg: cfg, node: node, d: d, log: d.Log,
		sync: make(chan syncRequest), reload: make(chan reloadRequest), hook: make(chan struct{}, 1), recheck: make(chan struct{}, 1), brokerEvents: make(chan brokerEvent), pulls: make(chan pulled), suspends: make(chan suspendRequest), m: newMetrics()}
	a.m.reg.MustRegister(bridgeCollector{a})
	a.fault = newFault(d.FaultFile, a.log)
	a.st.Node, a.st.Version, a.st.Repo, a.st.Branch = node, d.Version, cfg.Repo, cfg.Branch
	a.restoreState()
	a.restoreSuspension()
	a.restoreDecommission()
	a.st.Insecure = a.insecurity()
	return a
}

// maxOperation bounds one round of the loop: waiting for this node's turn
// (patience 1 min), applying, verifying (verify-timeout). A loop silent for
// longer is hung, and the watchdog lets systemd restart the agent.
const maxOperation = 3 * time.Minute

// Run converges once, says READY, and then loops until ctx ends.
func (a *Agent) Run(ctx context.Context) error {
	var units <-chan string
	if a.d.WatchUnits != nil {
		var err error
		if units, err = a.d.WatchUnits(a.runs); err != nil {
			return err
		}
	}
	go a.watchdog(ctx)
	go a.followJournal(ctx, daemon.Mosquitto.Unit, "dropped messages", a.countDrops)
	go a.followJournal(ctx, daemon.Keepalived.Unit, "forged VRRP adverts", a.countForged)
	go a.publishStatus(ctx)
	a.log.Info("agent started", "node", a.node, "repo", a.cfg.Repo, "branch", a.cfg.Branch, "applied", source.Short(a.applied),
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
	poll := time.NewTicker(a.cfg.Poll)
	defer poll.Stop()
	checks := time.NewTicker(a.cfg.HealthInterval)
	defer checks.Stop()
	for {
		select {
		case <-ctx.Done():
			a.d.Notify("STOPPING=1")
			return nil
		case <-poll.C:
			a.startPull(ctx, false)
			// Limits in force and certificate dates change slowly: checked
			// every poll, not every health round.
			a.checkWarnings(ctx)
		case req := <-a.sync:
			a.syncNow(ctx, req)
		case r := <-a.pulls:
			a.pullDone(ctx, r)
		case req := <-a.reload:
			err := a.applyConfig(req.cfg, req.verifier)
			poll.Reset(a.cfg.Poll)
			checks.Reset(a.cfg.HealthInterval)
			req.reply <- err
		case <-a.hook:
			// Not forced: the back-off holds while the repository is
			// unreachable, whoever signs requests.
			a.startPull(ctx, false)
		case <-checks.C:
			a.checkHealth(ctx)
			a.stepDecommission(ctx)
		case u := <-units:
			a.log.Info("unit changed state; checking now", "unit", u)
			a.checkHealth(ctx)
		case <-a.recheck:
			a.checkHealth(ctx)
		case req := <-a.suspends:
			req.reply <- a.onSuspend(ctx, req)
		case e := <-a.brokerEvents:
			a.onBrokerEvent(ctx, e)
		case path := <-a.drift:
			a.log.Warn("a managed file changed on disk; reverting it", "path", path)
			a.m.drift.Inc()
			a.enforce(ctx)
		}
		a.beat.Store(time.Now().UnixNano())
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

// runs is the set of units this node runs under the applied commit.
func (a *Agent) runs() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.units
}

// Status and Sync serve the control socket.
func (a *Agent) Status() control.Status {
	bridge := a.bridgeStatus()
	a.mu.Lock()
	defer a.mu.Unlock()
	s := a.st
	if a.monitor != nil {
		s.Checks = a.monitor.Results()
	}
	s.Bridge = bridge
	return s
}

// syncRequest asks the loop to pull now; retry forgets a refused commit.
type syncRequest struct {
	retry bool
	reply chan error
}

// syncNow pulls and converges at once, answering when that pull is
// settled; retry first forgets the refused commit (the operator fixed what
// refused it on this node).
func (a *Agent) syncNow(ctx context.Context, req syncRequest) {
	if req.retry && a.refused != "" {
		a.log.Info("retrying the refused commit on request", "commit", source.Short(a.refused))
		a.refused = ""
	}
	a.waiting = append(a.waiting, req.reply)
	if a.pulling {
		a.pullAgain = true // the pull under way may predate the push
		return
	}
	a.startPull(ctx, true)
}

func (a *Agent) Sync(ctx context.Context, retry bool) error {
	reply := make(chan error, 1)
	return ask(ctx, a.sync, syncRequest{retry, reply}, reply)
}

// ask hands req to the loop through ch and waits for its answer on reply.
func ask[T any](ctx context.Context, ch chan<- T, req T, reply <-chan error) error {
	select {
	case ch <- req:
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case err := <-reply:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (a *Agent) checkHealth(ctx context.Context) {
	a.mu.Lock()
	m := a.monitor
	a.mu.Unlock()
	if m != nil {
		m.Once(ctx)
	}
}

// reloadRequest hands the loop a re-read configuration.
type reloadRequest struct {
	cfg      Config
	verifier Verifier
	reply    chan error
}

// Reload applies a re-read agent.conf (systemctl reload mqha-agent) in the
// loop, between two rounds. What can change without a restart changes; the
// error names what needs one and keeps its old value.
func (a *Agent) Reload(ctx context.Context, cfg Config, verifier Verifier) error {
	reply := make(chan error, 1)
	return ask(ctx, a.reload, reloadRequest{cfg, verifier, reply}, reply)
}

// applyConfig takes the settings of cfg that can change while running.
func (a *Agent) applyConfig(cfg Config, verifier Verifier) error {
	var fixed []string
	for _, f := range []struct {
		name     string
		old, new string
	}{
		{"repo", a.cfg.Repo, cfg.Repo}, {"branch", a.cfg.Branch, cfg.Branch}, {"path", a.cfg.Path, cfg.Path},
		{"node", a.cfg.Node, cfg.Node}, {"state-dir", a.cfg.StateDir, cfg.StateDir}, {"socket", a.cfg.Socket, cfg.Socket},
		{"listen", a.cfg.Listen, cfg.Listen}, {"token-file", a.cfg.TokenFile, cfg.TokenFile}, {"ca-file", a.cfg.CAFile, cfg.CAFile},
		{"ssh-key", a.cfg.SSHKey, cfg.SSHKey}, {"known-hosts", a.cfg.KnownHosts, cfg.KnownHosts},
	} {
		if f.old != f.new {
			fixed = append(fixed, f.name)
		}
	}
	a.cfg.Poll, a.cfg.HealthInterval, a.cfg.VerifyTimeout, a.cfg.Settle = cfg.Poll, cfg.HealthInterval, cfg.VerifyTimeout, cfg.Settle
	a.cfg.FetchTimeout = cfg.FetchTimeout
	a.cfg.Decommission, a.cfg.DecommissionGrace = cfg.Decommission, cfg.DecommissionGrace
	a.cfg.AllowRewind, a.cfg.WebhookSecretFile, a.cfg.TrustedKeys = cfg.AllowRewind, cfg.WebhookSecretFile, cfg.TrustedKeys
	a.d.Verifier = verifier
	insecure := a.insecurity()
	a.update(func(s *control.Status) { s.Insecure = insecure })
	a.log.Info("configuration reloaded", "poll", a.cfg.Poll, "health_interval", a.cfg.HealthInterval,
		"verify_timeout", a.cfg.VerifyTimeout, "signatures", verifier != nil, "allow_rewind", a.cfg.AllowRewind)
	if len(fixed) > 0 {
		return fmt.Errorf("%s changed: restart mqha-agent to apply (kept the running values)", strings.Join(fixed, ", "))
	}
	return nil
}

// insecurity is what lets a commit nobody trusted reach this node: commits
// unsigned (no trusted-keys) and fetched over a transport that does not
// authenticate the server (git://, http://; file:// is as trusted as the
// file system, https and ssh authenticate the server); or an applied
// commit that the trusted keys no longer vouch for (a key removed).
func (a *Agent) insecurity() []string {
	var out []string
	if u, err := url.Parse(a.cfg.Repo); a.d.Verifier == nil && err == nil && (u.Scheme == "git" || u.Scheme == "http") {
		out = append(out, fmt.Sprintf("commits are not signed (no trusted-keys) and %s:// does not authenticate the server: whoever can answer for %s can change this node; use https or ssh, and sign commits (trusted-keys)", u.Scheme, u.Host))
	}
	if v := a.view; v != nil && v.GuessableBridgeIDs {
		out = append(out, fmt.Sprintf("no bridge secret (%s): any client certificate can connect under this bridge's client ids and take its sessions on the brokers over; install the same random secret on every bridge node (mqha-agent pki issue writes bridge.secret)", v.Cluster.TLS.BridgeSecret))
	}
	if a.d.Verifier != nil && a.applied != "" {
		if _, err := a.d.Verifier.Verify(a.applied); err != nil {
			out = append(out, fmt.Sprintf("the applied commit %s is not signed by a trusted key (%v): it keeps running until a trusted commit replaces it", source.Short(a.applied), err))
		}
	}
	return out
}
