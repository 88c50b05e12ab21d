package agent

import (
	"encoding/json"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/mqha/mqha/internal/control"
	"github.com/mqha/mqha/internal/notify"
	"github.com/mqha/mqha/internal/source"
	"github.com/mqha/mqha/internal/verdict"
)

// record owns the node's facts: the commit applied and when, the one
// refused and why, the last fetch, a suspension, a decommission, the
// warnings. Each change is one method that writes the fact, its state file
// and its metric together; the control status and the sd_notify STATUS
// line are derived from the facts (Status, line), never kept beside them.
// The loop writes; the control socket, metrics and publisher read.
type record struct {
	dir    string // the state directory
	m      *metrics
	log    *slog.Logger
	now    func() time.Time
	notify func(string)
	// emit posts an event to the webhook (notify.go); nil: none.
	emit func(kind, commit, reason string)

	mu sync.Mutex
	f  facts
	// said is the last STATUS line sent (so that only changes are sent).
	said string
}

// facts are what the node knows of itself.
type facts struct {
	applied, appliedSubject string
	appliedAt               time.Time
	refused, refusedReason  string
	// holdRefused: the refused commit is not tried again until the branch
	// moves (false after a restart: what refused it may have been fixed).
	holdRefused bool
	pending     string // a commit seen while suspended
	suspended   *control.Suspension
	decom       *control.Decommission
	lastFetch   time.Time
	fetchError  string
	roles       string
	stages      []control.Stage // of the applied commit's converge
	converging  []control.Stage // of the converge under way (nil: none)
	// convergingSince: when the converge under way started (its fetch).
	convergingSince time.Time
	insecure        []string
	warnings        []string // limits and certificates, as last checked
	certs           []control.Cert
	// stateWarning says the recorded state was damaged (until restart).
	stateWarning string
	drops        []control.Drop
	forged       []control.Forged
	history      []control.Reconciliation // newest first
	// verdicts: the commits this node could not verify, signed for the
	// fleet (newest first, HistoryLen kept).
	verdicts []verdict.Signed
}

func newRecord(dir string, m *metrics, log *slog.Logger, now func() time.Time, notify func(string)) *record {
	return &record{dir: dir, m: m, log: log, now: now, notify: notify}
}

// change runs f on the facts under the lock, then says the STATUS line if
// it changed.
func (r *record) change(f func(*facts)) {
	r.mu.Lock()
	f(&r.f)
	line := statusLine(r.f)
	changed := line != r.said
	r.said = line
	r.mu.Unlock()
	if changed {
		r.notify("STATUS=" + line)
	}
}

// get returns a copy of the facts.
func (r *record) get() facts {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.f
}

// Applied is the commit applied last ("" none).
func (r *record) Applied() string { return r.get().applied }

// Suspended is the operator's suspension (nil: none).
func (r *record) Suspended() *control.Suspension { return r.get().suspended }

// Decommission is this node's way out of the cluster (nil: a member).
func (r *record) Decommission() *control.Decommission { return r.get().decom }

// Holds reports whether hash is the refused commit that waits for the
// branch to move.
func (r *record) Holds(hash string) bool {
	f := r.get()
	return f.holdRefused && f.refused == hash
}

// SetApplied makes hash the applied commit (file applied, metric, status);
// a new one ends any refusal and shows the stages of its converge. It
// reports whether hash is new.
func (r *record) SetApplied(hash, subject string) bool {
	r.writeState("applied", hash)
	r.m.setApplied(hash)
	now := r.now()
	var isNew bool
	r.change(func(f *facts) {
		isNew = hash != f.applied
		if isNew {
			f.refused, f.refusedReason, f.holdRefused = "", "", false
			f.stages = f.converging
			r.removeState("refused")
			r.reconciled(f, control.Reconciliation{Commit: hash, Subject: subject, Result: "applied", Seconds: took(f, now), At: now})
		}
		f.converging = nil
		f.applied, f.appliedSubject, f.appliedAt = hash, subject, now
	})
	if isNew {
		r.event(notify.Applied, hash, subject)
	}
	return isNew
}

// Refuse records that commit hash will not be applied, and why (file
// refused, metric, status); it is not tried again until the branch moves.
func (r *record) Refuse(hash string, err error) {
	r.m.converges.WithLabelValues("refused").Inc()
	why := oneLine(err.Error())
	r.writeState("refused", hash+" "+why)
	r.log.Error("commit refused", "commit", source.Short(hash), "err", err)
	now := r.now()
	r.change(func(f *facts) {
		r.reconciled(f, control.Reconciliation{Commit: hash, Result: "refused", Reason: why, Seconds: took(f, now), At: now})
		f.refused, f.refusedReason, f.holdRefused, f.converging = hash, why, true, nil
	})
	kind := notify.Refused
	if strings.Contains(why, "rolled back") {
		kind = notify.RolledBack
	}
	r.event(kind, hash, why)
}

// event posts a fact's change to the webhook.
func (r *record) event(kind, commit, reason string) {
	if r.emit != nil {
		r.emit(kind, commit, reason)
	}
}

// reconciled adds e to the history (newest first, HistoryLen kept) and its
// state file; under the record's lock.
func (r *record) reconciled(f *facts, e control.Reconciliation) {
	f.history = append([]control.Reconciliation{e}, f.history...)
	if len(f.history) > control.HistoryLen {
		f.history = f.history[:control.HistoryLen]
	}
	b, _ := json.Marshal(f.history)
	r.writeState("history.json", string(b))
}

// took is how long the converge under way has taken by now: since its
// fetch began (a verification that fails records no stage of its own).
func took(f *facts, now time.Time) float64 {
	if f.converging == nil || f.convergingSince.IsZero() {
		return 0
	}
	return now.Sub(f.convergingSince).Seconds()
}

// Retry forgets that the refused commit waits for the branch to move (sync
// --retry: the operator fixed what refused it), and withdraws this node's
// verdict on it, so that the fleet tries it again too; it returns that
// commit.
func (r *record) Retry() string {
	var was string
	r.change(func(f *facts) {
		if f.holdRefused {
			was = f.refused
		}
		f.holdRefused = false
		if was != "" {
			f.verdicts = slices.DeleteFunc(slices.Clone(f.verdicts), func(s verdict.Signed) bool { return committed(s) == was })
			r.writeVerdicts(f)
		}
	})
	return was
}

// Judge records this node's signed verdict on a commit it could not
// verify (state file verdicts.json; the publisher puts it on the brokers).
func (r *record) Judge(s verdict.Signed) {
	r.m.verdicts.WithLabelValues("given").Inc()
	r.change(func(f *facts) {
		f.verdicts = append([]verdict.Signed{s}, f.verdicts...)
		if len(f.verdicts) > control.HistoryLen {
			f.verdicts = f.verdicts[:control.HistoryLen]
		}
		r.writeVerdicts(f)
	})
}

// Verdicts are this node's signed verdicts, newest first.
func (r *record) Verdicts() []verdict.Signed { return slices.Clone(r.get().verdicts) }

// writeVerdicts writes the verdicts' state file; under the record's lock.
func (r *record) writeVerdicts(f *facts) {
	b, _ := json.Marshal(f.verdicts)
	r.writeState("verdicts.json", string(b))
}

// committed is the commit a signed verdict of this node is on (its own,
// so read without checking).
func committed(s verdict.Signed) string {
	var v verdict.Verdict
	json.Unmarshal(s.Verdict, &v)
	return v.Commit
}

// Fetched records the outcome of asking the remote for the branch head.
func (r *record) Fetched(err error) {
	msg := ""
	if err != nil {
		r.m.fetchErrors.Inc()
		msg = err.Error()
	}
	now := r.now()
	r.change(func(f *facts) { f.lastFetch, f.fetchError = now, msg })
}

// SetPending shows a commit seen while suspended ("" none).
func (r *record) SetPending(hash string) { r.change(func(f *facts) { f.pending = hash }) }

// SetSuspended records a suspension (nil: none) in its file, the metric
// and the status.
func (r *record) SetSuspended(s *control.Suspension) error {
	if s == nil {
		if err := r.removeState("suspended"); err != nil {
			return err
		}
	} else {
		b, _ := json.Marshal(s)
		r.writeState("suspended", string(b))
	}
	r.m.suspended.Set(map[bool]float64{true: 1, false: 0}[s != nil])
	r.change(func(f *facts) {
		f.suspended = s
		if s == nil {
			f.pending = ""
		}
	})
	return nil
}

// SetDecommission records d (nil: a member) in its file, the metric and
// the status.
func (r *record) SetDecommission(d *control.Decommission) {
	if d == nil {
		if err := r.removeState("decommission"); err != nil {
			r.log.Error("remove decommission state", "err", err)
		}
	} else {
		b, _ := json.Marshal(d)
		r.writeState("decommission", string(b))
	}
	r.m.decommission.Set(decomLevel(d))
	var done bool
	r.change(func(f *facts) {
		done = d != nil && !d.Done.IsZero() && (f.decom == nil || f.decom.Done.IsZero())
		f.decom = d
	})
	if done {
		r.event(notify.Decommissioned, d.Commit, "removed from the cluster definition: units stopped and disabled")
	}
}

// SetRoles, SetInsecure and SetWarnings show what the applied commit and
// the last checks say.
func (r *record) SetRoles(roles string)      { r.change(func(f *facts) { f.roles = roles }) }
func (r *record) SetInsecure(lines []string) { r.change(func(f *facts) { f.insecure = lines }) }
func (r *record) SetWarnings(w []string, certs []control.Cert) {
	r.change(func(f *facts) { f.warnings, f.certs = w, certs })
}

// Stage adds how long a stage of converging a new commit took (the metric
// and, once applied, the status); enforcing the applied commit records
// none, so a converge starts with fetch+trust.
func (r *record) Stage(name string, d time.Duration) {
	r.mu.Lock()
	defer r.mu.Unlock()
	switch {
	case name == "fetch+trust": // a converge starts
		r.f.converging, r.f.convergingSince = nil, r.now().Add(-d)
	case r.f.converging == nil:
		return
	}
	r.f.converging = append(r.f.converging, control.Stage{Name: name, Seconds: d.Seconds()})
	r.m.stage.WithLabelValues(name).Observe(d.Seconds())
}

// Dropped counts n drop episodes of mosquitto for client (metric, status).
func (r *record) Dropped(client string, n int) {
	r.m.drops.WithLabelValues(client).Add(float64(n))
	now := r.now()
	r.change(func(f *facts) {
		d := entry(&f.drops, func(d control.Drop) bool { return d.Client == client }, control.Drop{Client: client})
		d.Episodes += n
		d.Last = now
	})
}

// Forged counts n forged VRRP adverts from src (metric, status).
func (r *record) Forged(src string, n int) {
	r.m.forged.WithLabelValues(src).Add(float64(n))
	now := r.now()
	r.change(func(f *facts) {
		x := entry(&f.forged, func(x control.Forged) bool { return x.Source == src }, control.Forged{Source: src})
		x.Adverts += n
		x.Last = now
	})
}

// entry is the element of *list that match picks, appended as add when
// there is none.
func entry[T any](list *[]T, match func(T) bool, add T) *T {
	i := slices.IndexFunc(*list, match)
	if i < 0 {
		*list = append(*list, add)
		i = len(*list) - 1
	}
	return &(*list)[i]
}

// status is the part of the control status the facts make.
func (f facts) status(s control.Status) control.Status {
	s.Applied, s.AppliedSubject, s.AppliedAt = f.applied, f.appliedSubject, f.appliedAt
	s.Refused, s.RefusedReason = f.refused, f.refusedReason
	s.LastFetch, s.FetchError, s.Pending = f.lastFetch, f.fetchError, f.pending
	s.Suspended, s.Decommission = f.suspended, f.decom
	s.Roles, s.Stages, s.Insecure, s.Certificates = f.roles, f.stages, f.insecure, f.certs
	s.History = f.history
	s.Warnings = f.warnings
	if f.stateWarning != "" {
		s.Warnings = append(slices.Clone(f.warnings), f.stateWarning)
	}
	s.Drops, s.ForgedAdverts = slices.Clone(f.drops), slices.Clone(f.forged)
	if f.decom != nil && !f.decom.Done.IsZero() {
		s.Roles = "none (decommissioned)"
	}
	return s
}

// statusLine is what `systemctl status mqha-agent` shows.
func statusLine(f facts) string {
	msg := "applied " + source.Short(f.applied)
	if f.refused != "" && f.refused != f.applied {
		msg += "; refused " + source.Short(f.refused) + ": " + f.refusedReason
	}
	if d := f.decom; d != nil {
		msg += "; " + map[bool]string{true: "decommissioning", false: "decommissioned"}[d.Done.IsZero()]
	}
	if f.fetchError != "" {
		msg += "; fetch error: " + f.fetchError
	}
	return msg
}

// decomLevel is the mqha_decommission value of d: 0 a member, 1 draining,
// 2 decommissioned.
func decomLevel(d *control.Decommission) float64 {
	switch {
	case d == nil:
		return 0
	case d.Done.IsZero():
		return 1
	}
	return 2
}
