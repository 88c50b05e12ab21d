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
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/mqha/mqha/internal/control"
)

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
	secretFile := a.hook.file()
	if secretFile == "" {
		http.Error(w, "webhook not configured", http.StatusNotFound)
		return
	}
	raw, err := os.ReadFile(secretFile)
	if err != nil {
		a.log.Error("webhook secret unreadable", "file", secretFile, "err", err)
		http.Error(w, "webhook secret unreadable", http.StatusInternalServerError)
		return
	}
	secret := strings.TrimSpace(string(raw))
	if len(secret) < minSecret {
		a.log.Error("webhook refused: its secret is too short to protect anything", "file", secretFile, "bytes", len(secret), "minimum", minSecret)
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
	if id := r.Header.Get("X-GitHub-Delivery"); id != "" && !a.hook.seen.add(id) {
		http.Error(w, "delivery already received", http.StatusConflict)
		return
	}
	// Not forced: the back-off holds while the repository is unreachable,
	// whoever signs requests; several deliveries at once are one pull.
	a.nudge("webhook", func(ctx context.Context) { a.startPull(ctx, false) })
	w.WriteHeader(http.StatusAccepted)
}

// webhook is the webhook's state: its secret file (a reload may change
// it while requests come in) and the deliveries it received.
type webhook struct {
	secretFile atomic.Pointer[string]
	seen       seen
}

func (h *webhook) setFile(name string) { h.secretFile.Store(&name) }

func (h *webhook) file() string {
	if p := h.secretFile.Load(); p != nil {
		return *p
	}
	return ""
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
