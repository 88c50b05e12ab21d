package main

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	sdnotify "github.com/coreos/go-systemd/v22/daemon"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/mqha/mqha/internal/apply"
	"github.com/mqha/mqha/internal/atomicfile"
	"github.com/mqha/mqha/internal/cluster"
	"github.com/mqha/mqha/internal/control"
	"github.com/mqha/mqha/internal/daemon"
	"github.com/mqha/mqha/internal/drift"
	"github.com/mqha/mqha/internal/health"
	"github.com/mqha/mqha/internal/plan"
	"github.com/mqha/mqha/internal/probe"
	"github.com/mqha/mqha/internal/render"
	"github.com/mqha/mqha/internal/rollout"
	"github.com/mqha/mqha/internal/source"
	"github.com/mqha/mqha/internal/systemd"
	"github.com/mqha/mqha/internal/unit"
	"github.com/mqha/mqha/schema"
)

// converge renders node from cl, plans against the live system and applies.
func converge(ctx context.Context, cl *cluster.Cluster, node string, sd apply.Systemd, stateDir string, settle time.Duration, log *slog.Logger, hooks ...func(*apply.Applier)) (*plan.Plan, error) {
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
		Systemd: sd, Validator: daemon.Validator{}, Settle: settle, Log: log}
	for _, h := range hooks {
		h(a)
	}
	return p, a.Apply(ctx, p)
}

// agent is the state of `mqha-agent run`. One goroutine (loop) does all the
// work, so converging and repairing never race; the control socket and the
// webhook only read a snapshot or ask the loop.
type agent struct {
	cfg   agentConfig
	node  string
	repo  *source.Repo
	sd    *systemd.DBus
	trust *source.Trust
	log   *slog.Logger

	applied   string           // last commit applied successfully
	cluster   *cluster.Cluster // its definition
	refused   string           // last commit refused; not retried until the branch moves
	backoff   time.Duration    // while the remote is unreachable
	nextTry   time.Time
	monitor   *health.Monitor
	fault     bool // what the LB fault file says
	drift     <-chan string
	stopDrift context.CancelFunc

	sync    chan chan error // the control socket's and the webhook's "pull now"
	hook    chan struct{}
	recheck chan struct{} // a failed check runs again soon

	mu    sync.Mutex
	st    control.Status
	units []string     // units the node runs (for the unit watcher)
	beat  atomic.Int64 // last finished loop round, unix ns

	m metrics
}

type metrics struct {
	reg         *prometheus.Registry
	applied     *prometheus.GaugeVec
	converges   *prometheus.CounterVec
	fetchErrors prometheus.Counter
	checkOK     *prometheus.GaugeVec
	repairs     *prometheus.GaugeVec
	drift       prometheus.Counter
}

func newMetrics() metrics {
	m := metrics{reg: prometheus.NewRegistry(),
		applied:     prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "mqha_applied_commit_info", Help: "The commit this node applied (value 1)."}, []string{"commit"}),
		converges:   prometheus.NewCounterVec(prometheus.CounterOpts{Name: "mqha_converges_total", Help: "Converge attempts on new commits by result."}, []string{"result"}),
		fetchErrors: prometheus.NewCounter(prometheus.CounterOpts{Name: "mqha_fetch_errors_total", Help: "Failed checks of the cluster repository."}),
		checkOK:     prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "mqha_health_check_ok", Help: "1 when the last run of a health check passed."}, []string{"check"}),
		repairs:     prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "mqha_health_repairs", Help: "Repairs made by a health check since the agent started."}, []string{"check"}),
		drift:       prometheus.NewCounter(prometheus.CounterOpts{Name: "mqha_drift_reverted_total", Help: "Hand edits of managed files reverted."}),
	}
	m.reg.MustRegister(m.applied, m.converges, m.fetchErrors, m.checkOK, m.repairs, m.drift,
		prometheus.NewGoCollector(), prometheus.NewProcessCollector(prometheus.ProcessCollectorOpts{}))
	return m
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
		sdnotify.SdNotify(false, sdnotify.SdNotifyReady+"\nSTATUS="+msg)
		return c.idle()
	}
	a := &agent{cfg: cfg, node: cfg.Node, log: c.log, sync: make(chan chan error), hook: make(chan struct{}, 1), recheck: make(chan struct{}, 1), m: newMetrics()}
	if a.node == "" {
		h, err := os.Hostname()
		if err != nil {
			return err
		}
		a.node, _, _ = strings.Cut(h, ".")
	}
	if cfg.TrustedKeys != "" {
		if a.trust, err = source.LoadTrust(cfg.TrustedKeys); err != nil {
			return err
		}
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
	// A commit refused before a restart is tried once more: what made it
	// fail (trusted keys, a missing package) may have been fixed since.
	a.st.Refused, a.st.RefusedReason, _ = strings.Cut(a.readState("refused"), " ")
	if a.sd, err = systemd.Connect(c.ctx, 30*time.Second); err != nil {
		return err
	}
	defer a.sd.Close()
	units, err := a.sd.WatchUnits(a.runs)
	if err != nil {
		return err
	}
	go a.watchdog(c.ctx)
	a.st.Node, a.st.Version, a.st.Repo, a.st.Branch, a.st.Applied = a.node, version, cfg.Repo, cfg.Branch, a.applied
	c.log.Info("agent started", "node", a.node, "repo", cfg.Repo, "branch", cfg.Branch, "applied", short(a.applied),
		"signatures", a.trust != nil, "version", version)

	go func() {
		if err := control.Serve(c.ctx, cfg.Socket, a); err != nil {
			c.log.Error("control socket", "err", err)
		}
	}()
	if cfg.Listen != "" {
		go a.serveHTTP(c.ctx)
	}

	a.beat.Store(time.Now().UnixNano())
	a.tick(c.ctx, true)
	sdnotify.SdNotify(false, sdnotify.SdNotifyReady)
	poll := time.NewTicker(cfg.Poll)
	defer poll.Stop()
	checks := time.NewTicker(cfg.HealthInterval)
	defer checks.Stop()
	for {
		select {
		case <-c.ctx.Done():
			sdnotify.SdNotify(false, sdnotify.SdNotifyStopping)
			return nil
		case <-poll.C:
			a.tick(c.ctx, false)
		case reply := <-a.sync:
			reply <- a.tick(c.ctx, true)
		case <-a.hook:
			a.tick(c.ctx, true)
		case <-checks.C:
			a.checkHealth(c.ctx)
		case u := <-units:
			a.log.Info("unit changed state; checking now", "unit", u)
			a.checkHealth(c.ctx)
		case <-a.recheck:
			a.checkHealth(c.ctx)
		case path := <-a.drift:
			a.log.Warn("a managed file changed on disk; reverting it", "path", path)
			a.m.drift.Inc()
			a.enforce(c.ctx)
		}
		a.beat.Store(time.Now().UnixNano())
	}
}

// maxOperation bounds one round of the loop: waiting for this node's turn
// (patience 1 min), applying, verifying (verify-timeout). A loop silent for
// longer is hung, and the watchdog lets systemd restart the agent.
const maxOperation = 3 * time.Minute

// watchdog pings systemd while the loop is alive: it finished a round
// recently, or the round it is in has not run past maxOperation.
func (a *agent) watchdog(ctx context.Context) {
	t := time.NewTicker(5 * time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			last := time.Unix(0, a.beat.Load())
			if time.Since(last) < maxOperation {
				sdnotify.SdNotify(false, sdnotify.SdNotifyWatchdog)
			} else {
				a.log.Error("the agent loop has not finished a round for too long; letting the watchdog restart it", "since", last)
			}
		}
	}
}

// runs is the set of units this node runs under the applied commit.
func (a *agent) runs() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.units
}

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

// Status and Sync serve the control socket.
func (a *agent) Status() control.Status {
	a.mu.Lock()
	defer a.mu.Unlock()
	s := a.st
	if a.monitor != nil {
		s.Checks = a.monitor.Results()
	}
	return s
}

func (a *agent) Sync(ctx context.Context) error {
	reply := make(chan error, 1)
	select {
	case a.sync <- reply:
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

func (a *agent) update(f func(*control.Status)) {
	a.mu.Lock()
	defer a.mu.Unlock()
	f(&a.st)
}

// tick looks for a new commit and converges on it, or keeps enforcing the
// applied one. force skips the fetch back-off (a push trigger).
func (a *agent) tick(ctx context.Context, force bool) error {
	target := ""
	if force || time.Now().After(a.nextTry) {
		head, err := a.repo.Head(ctx)
		a.update(func(s *control.Status) { s.LastFetch = time.Now(); s.FetchError = "" })
		if err != nil {
			a.m.fetchErrors.Inc()
			a.backoff = min(max(2*a.backoff, a.cfg.Poll), time.Minute)
			a.nextTry = time.Now().Add(a.backoff)
			a.log.Warn("cannot reach the cluster repository; enforcing the last good commit", "err", err, "retry_in", a.backoff, "applied", short(a.applied))
			a.update(func(s *control.Status) { s.FetchError = err.Error() })
			a.notify()
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
	err := a.convergeNew(ctx, target)
	if err != nil {
		a.m.converges.WithLabelValues("refused").Inc()
		a.refused = target
		why := oneLine(err.Error())
		a.writeState("refused", target+" "+why)
		a.update(func(s *control.Status) { s.Refused, s.RefusedReason = target, why })
		a.log.Error("commit refused", "commit", short(target), "err", err)
		a.notify()
		a.enforce(ctx) // the previous files are back; keep them enforced
		return err
	}
	a.m.converges.WithLabelValues("applied").Inc()
	return nil
}

// convergeNew checks a new commit (signature, history, schema) and applies it.
func (a *agent) convergeNew(ctx context.Context, hash string) error {
	if err := a.repo.Fetch(ctx, hash); err != nil {
		return err
	}
	if a.trust != nil {
		who, err := a.repo.Verify(hash, a.trust)
		if err != nil {
			return fmt.Errorf("commit %s: untrusted: %w", short(hash), err)
		}
		a.log.Info("signature verified", "commit", short(hash), "signer", who)
	}
	if a.applied != "" && !a.cfg.AllowRewind {
		ok, err := a.repo.Descends(ctx, hash, a.applied)
		if err != nil {
			return err
		}
		if !ok {
			return fmt.Errorf("commit %s does not descend from the applied %s (history rewritten?); set allow-rewind = true to accept", short(hash), short(a.applied))
		}
	}
	return a.apply(ctx, hash)
}

// enforce re-applies the applied commit: a no-op unless something drifted
// or a unit is down.
func (a *agent) enforce(ctx context.Context) error {
	if a.applied == "" {
		return nil
	}
	if err := a.apply(ctx, a.applied); err != nil {
		a.log.Error("cannot enforce the applied commit", "commit", short(a.applied), "err", err)
		return err
	}
	return nil
}

func (a *agent) apply(ctx context.Context, hash string) error {
	a.mu.Lock()
	cl, subject := a.cluster, a.st.AppliedSubject
	a.mu.Unlock()
	if hash != a.applied || cl == nil {
		// A commit's content never changes: only a new one is read and
		// loaded, not the applied one every time it is enforced.
		commit, err := a.repo.Read(hash, a.cfg.Path)
		if err != nil {
			return err
		}
		subject = commit.Subject
		if cl, err = schema.Load(commit.Files, "."); err != nil {
			return fmt.Errorf("commit %s (%s): %w", short(hash), subject, err)
		}
	}
	n, ok := cl.Node(a.node)
	if !ok {
		return fmt.Errorf("commit %s (%s): node %q is not in the cluster definition", short(hash), subject, a.node)
	}
	tc, tlsErr := nodeTLS(cl)
	// Peers still serve with the applied configuration: probe them with its
	// certificates, not with the candidate's (which may be the mistake).
	peerTLS := tc
	if a.cluster != nil && a.cluster != cl {
		if t, err := nodeTLS(a.cluster); err == nil {
			peerTLS = t
		}
	}
	gate := &rollout.Gate{Cluster: cl, Node: n, TLS: peerTLS, Fault: a.setFault, Log: a.log, Slot: 3 * time.Second, Patience: time.Minute}
	defer gate.Done()
	p, err := converge(ctx, cl, a.node, a.sd, a.cfg.StateDir, a.cfg.Settle, a.log, func(ap *apply.Applier) {
		if tlsErr == nil && peerTLS != nil {
			ap.Gate = gate.Before
			ap.Verify = func(ctx context.Context, p *plan.Plan) error { return a.verify(ctx, cl, n, tc, p) }
		}
	})
	if p != nil && !p.Empty() {
		for _, ch := range p.Changes {
			a.log.Info("diff", "path", ch.File.Path, "diff", ch.Diff)
		}
	}
	if err != nil {
		return fmt.Errorf("commit %s (%s): %w", short(hash), subject, err)
	}
	if hash != a.applied || a.cluster == nil {
		if hash != a.applied {
			// A newer commit applied: any refusal is history.
			a.refused = ""
			os.Remove(filepath.Join(a.cfg.StateDir, "refused"))
			a.update(func(s *control.Status) { s.Refused, s.RefusedReason = "", "" })
		}
		a.applied, a.cluster = hash, cl
		a.writeState("applied", hash)
		a.m.applied.Reset()
		a.m.applied.WithLabelValues(hash).Set(1)
		a.log.Info("converged", "commit", short(hash), "subject", subject)
		a.update(func(s *control.Status) {
			s.Applied, s.AppliedSubject, s.AppliedAt, s.Roles = hash, subject, time.Now(), n.RoleList()
		})
		a.rebuild(ctx, cl, n, tc, tlsErr)
	}
	a.notify()
	return nil
}

// verify runs the health checks of the units a plan touched until they pass.
func (a *agent) verify(ctx context.Context, cl *cluster.Cluster, n cluster.Node, tc *tls.Config, p *plan.Plan) error {
	touched := map[string]bool{}
	for _, u := range p.Units {
		if u.Action != unit.None && u.Action != unit.Stop {
			touched[u.Name] = true
		}
	}
	var checks []health.Check
	for _, c := range healthChecks(cl, n, tc) {
		if touched[c.Unit] || (c.Name == "bridge" && touched[daemon.Mosquitto.Unit]) {
			checks = append(checks, c)
		}
	}
	m := &health.Monitor{Checks: checks, Units: a.sd, Timeout: probeTimeout, Log: a.log}
	return m.Verify(ctx, a.cfg.VerifyTimeout)
}

// rebuild points the health monitor and the drift watcher at what cl says.
func (a *agent) rebuild(ctx context.Context, cl *cluster.Cluster, n cluster.Node, tc *tls.Config, tlsErr error) {
	if tlsErr != nil {
		a.log.Error("no health checks: the node's TLS files do not load", "err", tlsErr)
	}
	m := &health.Monitor{Units: a.sd, Timeout: probeTimeout, Log: a.log, OnResult: a.onResult}
	if tlsErr == nil {
		m.Checks = healthChecks(cl, n, tc)
	}
	a.mu.Lock()
	a.monitor = m
	a.mu.Unlock()

	if a.stopDrift != nil {
		a.stopDrift()
	}
	out, err := render.Node(cl, n.Name)
	if err != nil {
		return
	}
	a.mu.Lock()
	a.units = out.Units
	a.mu.Unlock()
	var files []string
	for _, f := range out.Files {
		files = append(files, f.Path)
	}
	dctx, cancel := context.WithCancel(ctx)
	if a.drift, err = drift.Watch(dctx, files, 200*time.Millisecond); err != nil {
		a.log.Error("drift watcher", "err", err)
		cancel()
		return
	}
	a.stopDrift = cancel
}

func (a *agent) checkHealth(ctx context.Context) {
	a.mu.Lock()
	m := a.monitor
	a.mu.Unlock()
	if m != nil {
		m.Once(ctx)
	}
}

// onResult feeds metrics and, on a load balancer, keepalived: an nginx the
// agent cannot repair gives up the VIP; a healthy one takes part again.
func (a *agent) onResult(r health.Result) {
	ok := 0.0
	if r.OK {
		ok = 1
	}
	a.m.checkOK.WithLabelValues(r.Name).Set(ok)
	a.m.repairs.WithLabelValues(r.Name).Set(float64(r.Repairs))
	if !r.OK && r.Failures == 1 {
		time.AfterFunc(recheckAfter, func() {
			select {
			case a.recheck <- struct{}{}:
			default:
			}
		})
	}
	if r.Name != "nginx" {
		return
	}
	switch {
	case !r.OK && r.Failures >= 2 && !a.fault:
		// Only hand the VIP to a peer that serves: with every load balancer
		// failing alike (a bad certificate, all brokers down) moving it
		// helps nobody, and two faults leave no VIP at all.
		if !a.peerLBServes() {
			a.log.Warn("nginx does not serve, but neither does any other load balancer: keeping the VIP", "err", r.Error)
			return
		}
		a.log.Warn("nginx does not serve and was not repaired: giving up the VIP", "err", r.Error)
		a.setFault(true)
	case r.OK && a.fault:
		a.log.Info("nginx serves again: taking part in VRRP again")
		a.setFault(false)
	}
}

// peerLBServes reports whether another load balancer passes TLS through to
// a broker.
func (a *agent) peerLBServes() bool {
	cl := a.cluster
	if cl == nil || cl.VIP == nil {
		return false
	}
	tc, err := nodeTLS(cl)
	if err != nil {
		return false
	}
	for _, l := range cl.WithRole(cluster.LB) {
		if l.Name == a.node {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), probeTimeout)
		err := probe.TLSThrough(net.JoinHostPort(l.Address, strconv.Itoa(cl.Ports.Client)), withName(tc, cl.VIP.Address))(ctx)
		cancel()
		if err == nil {
			return true
		}
	}
	return false
}

func (a *agent) setFault(on bool) error {
	v := "0\n"
	if on {
		v = "1\n"
	}
	if err := os.MkdirAll(filepath.Dir(daemon.FaultFile), 0o755); err != nil {
		return err
	}
	if err := atomicfile.Write(daemon.FaultFile, []byte(v), 0o644); err != nil {
		return err
	}
	a.fault = on
	return nil
}

func (a *agent) notify() {
	s := a.Status()
	msg := "applied " + short(s.Applied)
	if s.Refused != "" && s.Refused != s.Applied {
		msg += "; refused " + short(s.Refused) + ": " + s.RefusedReason
	}
	if s.FetchError != "" {
		msg += "; fetch error: " + s.FetchError
	}
	sdnotify.SdNotify(false, "STATUS="+msg)
}

// serveHTTP serves Prometheus metrics and the push webhook.
func (a *agent) serveHTTP(ctx context.Context) {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(a.m.reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("POST /hook", a.webhook)
	srv := &http.Server{Addr: a.cfg.Listen, Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		<-ctx.Done()
		srv.Close()
	}()
	if err := srv.ListenAndServe(); err != nil && !errors.Is(err, http.ErrServerClosed) {
		a.log.Error("metrics/webhook listener", "addr", a.cfg.Listen, "err", err)
	}
}

// webhook accepts a git server's push notification signed with the shared
// secret (X-Hub-Signature-256: sha256=HMAC of the body, as GitHub, Gitea and
// Forgejo send it) and pulls at once.
func (a *agent) webhook(w http.ResponseWriter, r *http.Request) {
	if a.cfg.WebhookSecretFile == "" {
		http.Error(w, "webhook not configured", http.StatusNotFound)
		return
	}
	secret, err := os.ReadFile(a.cfg.WebhookSecretFile)
	if err != nil {
		http.Error(w, "webhook secret unreadable", http.StatusInternalServerError)
		return
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	mac := hmac.New(sha256.New, []byte(strings.TrimSpace(string(secret))))
	mac.Write(body)
	want := "sha256=" + hex.EncodeToString(mac.Sum(nil))
	if !hmac.Equal([]byte(r.Header.Get("X-Hub-Signature-256")), []byte(want)) {
		http.Error(w, "bad signature", http.StatusUnauthorized)
		return
	}
	select {
	case a.hook <- struct{}{}:
	default: // a pull is already pending
	}
	w.WriteHeader(http.StatusAccepted)
}

func (a *agent) readState(name string) string {
	b, err := os.ReadFile(filepath.Join(a.cfg.StateDir, name))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		a.log.Warn("read state", "file", name, "err", err)
	}
	return strings.TrimSpace(string(b))
}

func (a *agent) writeState(name, value string) {
	if err := atomicfile.Write(filepath.Join(a.cfg.StateDir, name), []byte(value+"\n"), 0o644); err != nil {
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
