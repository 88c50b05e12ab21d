package agent

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/mqha/mqha/internal/control"
	"github.com/mqha/mqha/internal/health"
)

type metrics struct {
	reg         *prometheus.Registry
	applied     *prometheus.GaugeVec
	converges   *prometheus.CounterVec
	fetchErrors prometheus.Counter
	checkOK     *prometheus.GaugeVec
	repairs     *prometheus.GaugeVec
	drift       prometheus.Counter
	drops       *prometheus.CounterVec
	limitOK     *prometheus.GaugeVec
	stage       *prometheus.HistogramVec
	certExpiry  *prometheus.GaugeVec
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
		Help: "When the node's certificate (cert=node) and the cluster CA (cert=ca) expire, as a Unix time."}, []string{"cert"})
	m.reg.MustRegister(m.applied, m.converges, m.fetchErrors, m.checkOK, m.repairs, m.drift, m.drops, m.limitOK, m.stage, m.certExpiry,
		prometheus.NewGoCollector(), prometheus.NewProcessCollector(prometheus.ProcessCollectorOpts{}))
	return m
}

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
	srv := &http.Server{Addr: a.cfg.Listen, Handler: a.handler(), ReadHeaderTimeout: 5 * time.Second}
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

// webhook accepts a git server's push notification signed with the shared
// secret (X-Hub-Signature-256: sha256=HMAC of the body, as GitHub, Gitea and
// Forgejo send it) and pulls at once.
func (a *Agent) webhook(w http.ResponseWriter, r *http.Request) {
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
