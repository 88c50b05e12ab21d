package agent

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"regexp"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/mqha/mqha/internal/control"
	"github.com/mqha/mqha/internal/health"
)

type metrics struct {
	reg          *prometheus.Registry
	own          []prometheus.Collector // the mqha_ metrics (MetricNames)
	applied      *prometheus.GaugeVec
	converges    *prometheus.CounterVec
	fetchErrors  prometheus.Counter
	checkOK      *prometheus.GaugeVec
	repairs      *prometheus.GaugeVec
	drift        prometheus.Counter
	drops        *prometheus.CounterVec
	limitOK      *prometheus.GaugeVec
	stage        *prometheus.HistogramVec
	certExpiry   *prometheus.GaugeVec
	suspended    prometheus.Gauge
	decommission prometheus.Gauge
	forged       *prometheus.CounterVec
}

func newMetrics() metrics {
	m := metrics{reg: prometheus.NewRegistry(),
		applied:     prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "mqha_applied_commit_info", Help: "The commit this node applied (value 1)."}, []string{"commit"}),
		converges:   prometheus.NewCounterVec(prometheus.CounterOpts{Name: "mqha_converges_total", Help: "Converge attempts on new commits by result."}, []string{"result"}),
		fetchErrors: prometheus.NewCounter(prometheus.CounterOpts{Name: "mqha_fetch_errors_total", Help: "Failed checks of the cluster repository."}),
		checkOK:     prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "mqha_health_check_ok", Help: "1 when the last run of a health check passed."}, []string{"check"}),
		repairs:     prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "mqha_health_repairs", Help: "Repairs made by a health check since the agent started."}, []string{"check"}),
		drift:       prometheus.NewCounter(prometheus.CounterOpts{Name: "mqha_drift_reverted_total", Help: "Hand edits of managed files reverted."}),
		drops: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "mqha_mosquitto_drop_episodes_total",
			Help: "Times mosquitto started dropping messages for a client whose queue was full (acknowledged messages lost)."}, []string{"client"}),
	}
	m.limitOK = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "mqha_limit_ok",
		Help: "1 when a daemon's descriptor limit is in force and holds limits.clients; 0 otherwise (see status)."}, []string{"unit"})
	m.stage = prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "mqha_converge_stage_seconds",
		Help:    "How long each stage of converging a new commit took.",
		Buckets: []float64{.01, .05, .1, .25, .5, 1, 2, 5, 10, 30, 60}}, []string{"stage"})
	m.certExpiry = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "mqha_certificate_expiry_timestamp_seconds",
		Help: "When the node's certificate (cert=node) and the CA (cert=ca; each CA of a file holding several: cert=\"ca SUBJECT\") expire, as a Unix time."}, []string{"cert"})
	m.suspended = prometheus.NewGauge(prometheus.GaugeOpts{Name: "mqha_suspended", Help: "1 while an operator suspended the agent (mqha-agent suspend): no converging, no drift revert."})
	m.decommission = prometheus.NewGauge(prometheus.GaugeOpts{Name: "mqha_decommission", Help: "0 while the definition lists this node, 1 while it drains after a commit removed it, 2 once its units are stopped and disabled."})
	m.forged = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "mqha_vrrp_forged_adverts_total",
		Help: "VRRP adverts keepalived dropped because they came from a host that is not the other load balancer (check_unicast_src), by source."}, []string{"source"})
	m.own = []prometheus.Collector{m.forged, m.decommission, m.suspended, m.applied, m.converges, m.fetchErrors, m.checkOK, m.repairs, m.drift, m.drops, m.limitOK, m.stage, m.certExpiry}
	m.reg.MustRegister(m.own...)
	m.reg.MustRegister(prometheus.NewGoCollector(), prometheus.NewProcessCollector(prometheus.ProcessCollectorOpts{}))
	return m
}

// MetricNames lists the mqha_ metrics the agent serves: what the man page,
// the alert rules and the dashboard may name (their tests read it).
func MetricNames() []string {
	ch := make(chan *prometheus.Desc, 64)
	go func() {
		for _, c := range append(newMetrics().own, bridgeCollector{}) {
			c.Describe(ch)
		}
		close(ch)
	}()
	var out []string
	for d := range ch {
		if m := fqName.FindStringSubmatch(d.String()); m != nil {
			out = append(out, m[1])
		}
	}
	sort.Strings(out)
	return out
}

var fqName = regexp.MustCompile(`fqName: "([^"]+)"`)

func (m metrics) setApplied(hash string) {
	m.applied.Reset()
	m.applied.WithLabelValues(hash).Set(1)
}

func (m metrics) checked(r health.Result) {
	ok := 0.0
	if r.OK {
		ok = 1
	}
	m.checkOK.WithLabelValues(r.Name).Set(ok)
	m.repairs.WithLabelValues(r.Name).Set(float64(r.Repairs))
}

// ServeControl serves the local control socket (status, sync) until ctx ends.
func (a *Agent) ServeControl(ctx context.Context) {
	if err := control.Serve(ctx, a.cfg.Socket, a); err != nil {
		a.log.Error("control socket", "path", a.cfg.Socket, "err", err)
	}
}

// ServeHTTP serves Prometheus metrics and the push webhook on cfg.Listen
// until ctx ends; nothing when Listen is empty.
func (a *Agent) ServeHTTP(ctx context.Context) {
	if a.cfg.Listen == "" {
		return
	}
	// Every phase bounded: a client that trickles bytes or never reads
	// holds no connection for long.
	srv := &http.Server{Addr: a.cfg.Listen, Handler: a.handler(), ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout: 10 * time.Second, WriteTimeout: 30 * time.Second, IdleTimeout: time.Minute, MaxHeaderBytes: 64 << 10}
	go func() {
		<-ctx.Done()
		srv.Close()
	}()
	if err := srv.ListenAndServe(); err != nil && !errors.Is(err, http.ErrServerClosed) {
		a.log.Error("metrics/webhook listener", "addr", a.cfg.Listen, "err", err)
	}
}

func (a *Agent) handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(a.m.reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("POST /hook", a.webhook)
	return mux
}

// Webhook limits: a push notification is a few KiB; a secret shorter than
// minSecret is guessable; a delivery id seen among the last recentDeliveries
// is a replay.
const (
	maxHookBody      = 1 << 20
	minSecret        = 16
	recentDeliveries = 1024
)

// webhook accepts a git server's push notification signed with the shared
// secret (X-Hub-Signature-256: sha256=HMAC of the body, as GitHub, Gitea and
// Forgejo send it) and asks for a pull. A replayed delivery (same
// X-GitHub-Delivery id) is refused; the pull keeps the back-off while the
// repository is unreachable, so signed requests cannot hammer it.
func (a *Agent) webhook(w http.ResponseWriter, r *http.Request) {
	if a.cfg.WebhookSecretFile == "" {
		http.Error(w, "webhook not configured", http.StatusNotFound)
		return
	}
	raw, err := os.ReadFile(a.cfg.WebhookSecretFile)
	if err != nil {
		a.log.Error("webhook secret unreadable", "file", a.cfg.WebhookSecretFile, "err", err)
		http.Error(w, "webhook secret unreadable", http.StatusInternalServerError)
		return
	}
	secret := strings.TrimSpace(string(raw))
	if len(secret) < minSecret {
		a.log.Error("webhook refused: its secret is too short to protect anything", "file", a.cfg.WebhookSecretFile, "bytes", len(secret), "minimum", minSecret)
		http.Error(w, "webhook secret too short", http.StatusServiceUnavailable)
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxHookBody))
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			http.Error(w, fmt.Sprintf("body over %d bytes", maxHookBody), http.StatusRequestEntityTooLarge)
			return
		}
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	mac := hmac.New(sha256.New, []byte(secret))
	mac.Write(body)
	want := "sha256=" + hex.EncodeToString(mac.Sum(nil))
	if !hmac.Equal([]byte(r.Header.Get("X-Hub-Signature-256")), []byte(want)) {
		http.Error(w, "bad signature", http.StatusUnauthorized)
		return
	}
	// The delivery id is not signed, but a replay of a signed body with a
	// new id only asks for a pull, which the back-off bounds.
	if id := r.Header.Get("X-GitHub-Delivery"); id != "" && !a.deliveries.add(id) {
		http.Error(w, "delivery already received", http.StatusConflict)
		return
	}
	select {
	case a.hook <- struct{}{}:
	default: // a pull is already pending
	}
	w.WriteHeader(http.StatusAccepted)
}

// seen remembers the last ids it was given.
type seen struct {
	mu    sync.Mutex
	ids   map[string]bool
	order []string
}

// add reports whether id is new, and remembers it.
func (s *seen) add(id string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ids == nil {
		s.ids = map[string]bool{}
	}
	if s.ids[id] {
		return false
	}
	s.ids[id] = true
	s.order = append(s.order, id)
	if len(s.order) > recentDeliveries {
		delete(s.ids, s.order[0])
		s.order = s.order[1:]
	}
	return true
}
