// Package control is the running agent's local control socket: `mqha-agent
// status` reads the agent's state through it and `mqha-agent sync` asks it
// to pull now. HTTP over a Unix socket that only root can reach.
package control

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/mqha/mqha/internal/health"
	"github.com/mqha/mqha/internal/source"
)

// DefaultSocket is where the packaged agent listens (its RuntimeDirectory).
const DefaultSocket = "/run/mqha/agent.sock"

// Status is what the agent reports about itself.
type Status struct {
	Node           string          `json:"node"`
	Roles          string          `json:"roles"`
	Version        string          `json:"version"`
	Repo           string          `json:"repo"`
	Branch         string          `json:"branch"`
	Applied        string          `json:"applied,omitempty"`
	AppliedSubject string          `json:"appliedSubject,omitempty"`
	AppliedAt      time.Time       `json:"appliedAt,omitzero"`
	Refused        string          `json:"refused,omitempty"`
	RefusedReason  string          `json:"refusedReason,omitempty"`
	LastFetch      time.Time       `json:"lastFetch,omitzero"`
	FetchError     string          `json:"fetchError,omitempty"`
	Checks         []health.Result `json:"checks"`
	// Stages are how long each stage of converging the applied commit
	// took: fetch+trust, load, validate, gate, units, settle, verify.
	Stages []Stage `json:"stages,omitempty"`
	// Certificates are the node's certificate and the cluster CA, with
	// their expiry.
	Certificates []Cert `json:"certificates,omitempty"`
	// Warnings are conditions that do not fail a check but will: limits
	// not in force or below what the definition plans for.
	Warnings []string `json:"warnings,omitempty"`
	// Unconfigured says what is missing while the agent runs without a
	// configuration it can use.
	Unconfigured string `json:"unconfigured,omitempty"`
	// Drops are the sessions mosquitto dropped messages for (queue full).
	Drops []Drop `json:"drops,omitempty"`
	// ForgedAdverts are VRRP adverts keepalived dropped on a load balancer
	// because they came from a host that is not the other load balancer.
	ForgedAdverts []Forged `json:"forgedAdverts,omitempty"`
	// Insecure says how this node could be made to apply a commit nobody
	// trusted (no signatures over an unauthenticated transport, an applied
	// commit whose signer is no longer trusted). Shown loudly; not a
	// health problem, so it does not change the exit code.
	Insecure []string `json:"insecure,omitempty"`
	// HoldsVIP: this load balancer holds the VIP (in published statuses).
	HoldsVIP bool `json:"holdsVIP,omitempty"`
	// Gone is set by the fleet view from the node's goodbye (its MQTT
	// will, or a stop) when its statuses stopped coming.
	Gone string `json:"gone,omitempty"`
	// PublishedAt is when the agent published this status for the fleet
	// view ($mqha/status); zero in a status asked of the agent directly.
	PublishedAt time.Time `json:"publishedAt,omitzero"`
	// Suspended is set while an operator suspended the agent.
	Suspended *Suspension `json:"suspended,omitempty"`
	// Pending is the branch head a suspended agent has not applied.
	Pending string `json:"pending,omitempty"`
	// Bridge is the bridge role as keepalived last reported it on this node
	// (bridge nodes of a cluster with standbys only).
	Bridge *Bridge `json:"bridge,omitempty"`
	// Decommission is set once a commit removed this node from the
	// definition: draining, then its units stopped and disabled.
	Decommission *Decommission `json:"decommission,omitempty"`
	// History is the node's last reconciliations of new commits, newest
	// first (at most HistoryLen), kept across restarts.
	History []Reconciliation `json:"history,omitempty"`
}

// HistoryLen is how many reconciliations status keeps.
const HistoryLen = 10

// Reconciliation is one attempt of the node at a new commit.
type Reconciliation struct {
	Commit  string    `json:"commit"`
	Subject string    `json:"subject,omitempty"`
	Result  string    `json:"result"` // "applied" or "refused"
	Reason  string    `json:"reason,omitempty"`
	Seconds float64   `json:"seconds"` // from fetch to verified (applied) or to the refusal
	At      time.Time `json:"at"`
}

// Bridge is a bridge node's role, as keepalived's bridge instance, its
// notify command and its track script last reported it.
type Bridge struct {
	// Active: this node is the bridge master; State is keepalived's state
	// of the bridge instance (MASTER, BACKUP, FAULT, STOP), since Since.
	Active bool      `json:"active"`
	State  string    `json:"state"`
	Since  time.Time `json:"since,omitzero"`
	// Takeovers and StandDowns count moves into and out of MASTER since boot.
	Takeovers  int `json:"takeovers"`
	StandDowns int `json:"standDowns"`
	// CheckOK and Check are keepalived's last bridge check (track script)
	// and, when it failed, why: the reason of a FAULT.
	CheckOK   bool      `json:"checkOK"`
	Check     string    `json:"check,omitempty"`
	CheckedAt time.Time `json:"checkedAt,omitzero"`
}

// Suspension is an operator's pause of converging and drift revert.
type Suspension struct {
	Since  time.Time `json:"since"`
	Reason string    `json:"reason,omitempty"`
	// NoRepair: health repair is off too (by default it stays on).
	NoRepair bool `json:"noRepair,omitempty"`
}

// Cert is a certificate the node uses and when it expires.
type Cert struct {
	Name     string    `json:"name"` // node, ca
	File     string    `json:"file"`
	NotAfter time.Time `json:"notAfter"`
}

// CertWarning is how long before a certificate expires it is warned of.
const CertWarning = 30 * 24 * time.Hour

// Warning says that c has expired or expires within CertWarning of now
// ("" otherwise): the agent's status and the fleet view say the same.
func (c Cert) Warning(now time.Time) string {
	switch left := c.NotAfter.Sub(now); {
	case left <= 0:
		return fmt.Sprintf("the %s certificate %s expired on %s: clients and peers refuse it; renew it (mqha-agent pki)", c.Name, c.File, c.NotAfter.Format("2006-01-02"))
	case left < CertWarning:
		return fmt.Sprintf("the %s certificate %s expires in %d days (%s): renew it (mqha-agent pki)", c.Name, c.File, int(left.Hours()/24), c.NotAfter.Format("2006-01-02"))
	}
	return ""
}

// Stage is one stage of converging a commit and how long it took.
type Stage struct {
	Name    string  `json:"name"`
	Seconds float64 `json:"seconds"`
}

// Drop counts the times mosquitto started dropping messages for a client.
type Drop struct {
	Client   string    `json:"client"`
	Episodes int       `json:"episodes"`
	Last     time.Time `json:"last"`
}

// Forged counts the VRRP adverts from one source that is not a load
// balancer of the cluster.
type Forged struct {
	Source  string    `json:"source"`
	Adverts int       `json:"adverts"`
	Last    time.Time `json:"last"`
}

// recentDrops is how long a drop (or a forged advert) keeps a node
// degraded.
const recentDrops = 15 * time.Minute

// Problems are what makes the node degraded, one line each; none means
// healthy and on the applied commit. `mqha-agent status` exits 1 on any.
// Decommission is a node's way out of the cluster.
type Decommission struct {
	Commit  string    `json:"commit"` // the commit that removed the node (or a later one)
	Subject string    `json:"subject,omitempty"`
	Since   time.Time `json:"since"`
	// Done is when its units were stopped and disabled (zero: draining).
	Done    time.Time `json:"done,omitzero"`
	Stopped []string  `json:"stopped,omitempty"`
	State   string    `json:"state"`
}

func (s Status) Problems(now time.Time) []string {
	var out []string
	if d := s.Decommission; d != nil && d.Done.IsZero() {
		out = append(out, "decommissioning: "+d.State)
	}
	if s.Unconfigured != "" {
		out = append(out, "not configured: "+s.Unconfigured)
	}
	if p := s.Suspended; p != nil {
		what := "converging and drift revert"
		if p.NoRepair {
			what += " and health repair"
		}
		out = append(out, fmt.Sprintf("suspended (%s) since %s: %s", what, p.Since.Format(time.RFC3339), p.Reason))
	}
	if s.Refused != "" && s.Refused != s.Applied {
		out = append(out, "refused commit "+source.Short(s.Refused)+": "+s.RefusedReason)
	}
	if s.FetchError != "" {
		out = append(out, "cannot fetch: "+s.FetchError)
	}
	for _, c := range s.Checks {
		if !c.OK {
			out = append(out, "check "+c.Name+" failing: "+c.Error)
		}
	}
	out = append(out, s.Warnings...)
	if b := s.Bridge; b != nil {
		switch {
		case b.State != "MASTER" && b.State != "BACKUP":
			out = append(out, "bridge: keepalived's bridge instance is "+b.State+": "+b.Check)
		case !b.CheckOK:
			out = append(out, "bridge: check failing: "+b.Check)
		}
	}
	for _, f := range s.ForgedAdverts {
		if now.Sub(f.Last) < recentDrops {
			out = append(out, fmt.Sprintf("%d VRRP adverts from %s, not a load balancer of the cluster, dropped (last %s ago): a host on the segment claims the VIP", f.Adverts, f.Source, now.Sub(f.Last).Round(time.Second)))
		}
	}
	for _, d := range s.Drops {
		if now.Sub(d.Last) < recentDrops {
			out = append(out, "mosquitto dropped messages for "+d.Client+" "+now.Sub(d.Last).Round(time.Second).String()+" ago")
		}
	}
	return out
}

// Agent is what the server needs of the running agent.
type Agent interface {
	Status() Status
	// Sync pulls and converges now and returns when that round is done;
	// retry first forgets a refused commit, so that it is tried again.
	Sync(ctx context.Context, retry bool) error
	// Suspend stops converging and drift revert (and health repair with
	// noRepair) until Resume, across restarts.
	Suspend(ctx context.Context, reason string, noRepair bool) error
	// Resume ends a suspension and converges at once.
	Resume(ctx context.Context) error
}

// Serve listens on path until ctx ends.
func Serve(ctx context.Context, path string, a Agent) error {
	os.Remove(path) // a stale socket of a previous run
	l, err := net.Listen("unix", path)
	if err != nil {
		return fmt.Errorf("control socket %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		l.Close()
		return err
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(a.Status())
	})
	mux.HandleFunc("POST /sync", func(w http.ResponseWriter, r *http.Request) {
		if err := a.Sync(r.Context(), r.URL.Query().Get("retry") == "1"); err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(a.Status())
	})
	mux.HandleFunc("POST /suspend", func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		if err := a.Suspend(r.Context(), q.Get("reason"), q.Get("no-repair") == "1"); err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(a.Status())
	})
	mux.HandleFunc("POST /resume", func(w http.ResponseWriter, r *http.Request) {
		if err := a.Resume(r.Context()); err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(a.Status())
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		<-ctx.Done()
		srv.Close()
	}()
	if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// Client talks to a running agent.
type Client struct{ http *http.Client }

func NewClient(path string) *Client {
	return &Client{http: &http.Client{Timeout: 2 * time.Minute, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		},
	}}}
}

func (c *Client) do(ctx context.Context, method, path string) (*Status, error) {
	req, err := http.NewRequestWithContext(ctx, method, "http://agent"+path, nil)
	if err != nil {
		return nil, err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, fmt.Errorf("is mqha-agent running? %w", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("agent: %s", body)
	}
	var s Status
	if err := json.Unmarshal(body, &s); err != nil {
		return nil, fmt.Errorf("agent answered %q: %w", body, err)
	}
	return &s, nil
}

func (c *Client) Status(ctx context.Context) (*Status, error) { return c.do(ctx, "GET", "/status") }
func (c *Client) Sync(ctx context.Context, retry bool) (*Status, error) {
	if retry {
		return c.do(ctx, "POST", "/sync?retry=1")
	}
	return c.do(ctx, "POST", "/sync")
}

// Suspend asks the agent to stop converging (see Agent.Suspend).
func (c *Client) Suspend(ctx context.Context, reason string, noRepair bool) (*Status, error) {
	q := url.Values{"reason": {reason}}
	if noRepair {
		q.Set("no-repair", "1")
	}
	return c.do(ctx, "POST", "/suspend?"+q.Encode())
}

// Resume ends a suspension.
func (c *Client) Resume(ctx context.Context) (*Status, error) { return c.do(ctx, "POST", "/resume") }

// Verdict is what the fleet's nodes did with one commit, as their
// published histories say.
type Verdict struct {
	Commit  string
	Subject string
	Applied []string          // the nodes that applied it, sorted
	Refused map[string]string // node -> why
	// Judged: the nodes that applied it and could not verify it, whose
	// verdict refused it for the fleet (package verdict), sorted.
	Judged []string
	Last   time.Time // the latest reconciliation of it
}

// Verdicts are the commits in the nodes' histories, newest first, at most
// n.
func Verdicts(st map[string]Status, n int) []Verdict {
	by := map[string]*Verdict{}
	for node, s := range st {
		seen := map[string]bool{}
		for _, h := range s.History { // newest first: a node's last word on a commit counts
			if seen[h.Commit] {
				continue
			}
			seen[h.Commit] = true
			v := by[h.Commit]
			if v == nil {
				v = &Verdict{Commit: h.Commit, Refused: map[string]string{}}
				by[h.Commit] = v
			}
			if h.Subject != "" {
				v.Subject = h.Subject
			}
			if h.At.After(v.Last) {
				v.Last = h.At
			}
			if h.Result == "refused" {
				v.Refused[node] = h.Reason
				if strings.HasPrefix(h.Reason, "not verified") || strings.Contains(h.Reason, ": not verified") {
					v.Judged = append(v.Judged, node)
				}
			} else {
				v.Applied = append(v.Applied, node)
			}
		}
	}
	out := make([]Verdict, 0, len(by))
	for _, v := range by {
		sort.Strings(v.Applied)
		sort.Strings(v.Judged)
		out = append(out, *v)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Last.After(out[j].Last) })
	if len(out) > n {
		out = out[:n]
	}
	return out
}
