package agent

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/mqha/mqha/internal/control"
)

func newTestRecord(t *testing.T) (*record, *[]string) {
	t.Helper()
	var notes []string
	now := time.Date(2026, 12, 7, 0, 0, 0, 0, time.UTC)
	return newRecord(t.TempDir(), newMetrics(), slog.New(slog.NewTextHandler(io.Discard, nil)), func() time.Time { return now },
		func(s string) { notes = append(notes, s) }), &notes
}

func stateFile(t *testing.T, r *record, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(r.dir, name))
	if errors.Is(err, os.ErrNotExist) {
		return "(none)"
	}
	return strings.TrimSpace(string(b))
}

// Each change of a fact writes the fact, its state file and its metric
// together; the status and the STATUS line are derived from the facts.
func TestRecordChangesEverythingTogether(t *testing.T) {
	r, notes := newTestRecord(t)
	r.Stage("fetch+trust", time.Second)
	r.Stage("load", time.Second)
	if !r.SetApplied("c1", "first") {
		t.Fatal("c1 not new")
	}
	s := r.get().status(control.Status{})
	if s.Applied != "c1" || s.AppliedSubject != "first" || len(s.Stages) != 2 || stateFile(t, r, "applied") != "c1" ||
		testutil.ToFloat64(r.m.applied.WithLabelValues("c1")) != 1 || (*notes)[len(*notes)-1] != "STATUS=applied c1" {
		t.Fatalf("after SetApplied: status %+v, file %q, notes %q", s, stateFile(t, r, "applied"), *notes)
	}

	r.Refuse("c2", errors.New("not\nhealthy"))
	if !r.Holds("c2") || stateFile(t, r, "refused") != "c2 not healthy" || testutil.ToFloat64(r.m.converges.WithLabelValues("refused")) != 1 ||
		(*notes)[len(*notes)-1] != "STATUS=applied c1; refused c2: not healthy" {
		t.Fatalf("after Refuse: file %q, notes %q", stateFile(t, r, "refused"), *notes)
	}
	if was := r.Retry(); was != "c2" || r.Holds("c2") || r.get().refused != "c2" {
		t.Fatalf("Retry forgot %q; still shown: %+v", was, r.get())
	}
	r.SetApplied("c3", "third")
	if f := r.get(); f.refused != "" || stateFile(t, r, "refused") != "(none)" || len(f.stages) != 0 {
		t.Fatalf("a newer applied commit left the refusal or the old stages: %+v", f)
	}

	sus := &control.Suspension{Reason: "incident"}
	if err := r.SetSuspended(sus); err != nil {
		t.Fatal(err)
	}
	r.SetPending("c4")
	if !strings.Contains(stateFile(t, r, "suspended"), `"reason":"incident"`) || testutil.ToFloat64(r.m.suspended) != 1 || r.get().status(control.Status{}).Pending != "c4" {
		t.Fatalf("after SetSuspended: %q", stateFile(t, r, "suspended"))
	}
	r.SetSuspended(nil)
	if stateFile(t, r, "suspended") != "(none)" || testutil.ToFloat64(r.m.suspended) != 0 || r.get().pending != "" {
		t.Fatal("resume left the suspension somewhere")
	}

	r.SetDecommission(&control.Decommission{Commit: "c5", Done: time.Now()})
	if s := r.get().status(control.Status{}); s.Roles != "none (decommissioned)" || testutil.ToFloat64(r.m.decommission) != 2 ||
		!strings.HasSuffix((*notes)[len(*notes)-1], "; decommissioned") {
		t.Fatalf("decommissioned: roles %q, notes %q", s.Roles, *notes)
	}
}

// The STATUS line is sent only when it changes.
func TestRecordSaysOnlyChanges(t *testing.T) {
	r, notes := newTestRecord(t)
	r.SetApplied("c1", "")
	r.SetRoles("broker")
	r.Fetched(nil)
	r.SetApplied("c1", "")
	if len(*notes) != 1 {
		t.Errorf("STATUS lines %q, want one", *notes)
	}
	r.Fetched(errors.New("refused"))
	if len(*notes) != 2 || testutil.ToFloat64(r.m.fetchErrors) != 1 {
		t.Errorf("a fetch error: lines %q", *notes)
	}
}

// A record restored from the files a previous run wrote.
func TestRecordRestores(t *testing.T) {
	r, _ := newTestRecord(t)
	r.writeState("applied", "c1")
	r.writeState("refused", "c2 it failed")
	r.writeState("suspended", "{not json")
	r.writeState("decommission", `{"commit":"c1","since":"2026-12-01T00:00:00Z"}`)
	r.restore(func(string) error { return nil })
	f := r.get()
	if f.applied != "c1" || f.refused != "c2" || f.refusedReason != "it failed" || f.holdRefused ||
		f.suspended == nil || !strings.Contains(f.suspended.Reason, "unreadable state file") || f.decom == nil || f.decom.Commit != "c1" {
		t.Errorf("restored %+v", f)
	}
	if testutil.ToFloat64(r.m.suspended) != 1 || testutil.ToFloat64(r.m.decommission) != 1 {
		t.Error("restored facts without their metrics")
	}
}

// The last reconciliations of new commits, newest first, at most
// control.HistoryLen, survive a restart; enforcing the applied commit adds
// none.
func TestHistoryKept(t *testing.T) {
	r, _ := newTestRecord(t)
	r.Stage("fetch+trust", time.Second)
	r.Stage("units", 2*time.Second)
	r.SetApplied("c1", "first")
	r.SetApplied("c1", "first") // enforcing
	r.Stage("fetch+trust", time.Second)
	r.Refuse("c2", errors.New("verify: mosquitto not serving"))
	h := r.get().status(control.Status{}).History
	if len(h) != 2 || h[0].Commit != "c2" || h[0].Result != "refused" || h[0].Reason != "verify: mosquitto not serving" ||
		h[1].Commit != "c1" || h[1].Result != "applied" || h[1].Subject != "first" || h[1].Seconds != 1 {
		t.Fatalf("history %+v", h)
	}
	for i := range 12 {
		r.SetApplied(fmt.Sprintf("d%d", i), "")
	}
	again, _ := newTestRecord(t)
	again.dir = r.dir
	again.restore(func(string) error { return nil })
	h = again.get().status(control.Status{}).History
	if len(h) != control.HistoryLen || h[0].Commit != "d11" || h[9].Commit != "d2" {
		t.Errorf("after a restart: %d entries, newest %+v", len(h), h[0])
	}
}
