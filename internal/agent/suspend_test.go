package agent

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Suspended: a new commit is seen (pending) but not applied, the applied
// one is not enforced (hand edits stay), the status says why and since
// when, and it survives a restart; resume converges at once.
func TestSuspendResume(t *testing.T) {
	h := newHarness(t, "broker1", "", map[string]string{"c1": "", "c2": ""})
	h.src.head = "c1"
	h.poll()
	if err := h.a.Suspend(h.ctx, "incident 42", false); err != nil {
		t.Fatal(err)
	}
	h.conv.calls = nil
	h.src.head = "c2"
	h.poll()
	h.poll()
	if len(h.conv.calls) != 0 {
		t.Fatalf("suspended, yet converged %v", h.conv.calls)
	}
	s := h.a.Status()
	if s.Suspended == nil || s.Suspended.Reason != "incident 42" || s.Pending != "c2" || s.Applied != "c1" {
		t.Fatalf("status while suspended: %+v", s)
	}
	if p := s.Problems(time.Now()); len(p) == 0 || !strings.Contains(p[0], "suspended") {
		t.Errorf("a suspension is not a problem in status: %q", p)
	}
	// A restart keeps it.
	h2 := newHarness(t, "broker1", h.dir, map[string]string{"c1": "", "c2": ""})
	if s := h2.a.Status(); s.Suspended == nil || s.Suspended.Reason != "incident 42" {
		t.Fatalf("suspension lost across a restart: %+v", s.Suspended)
	}
	h2.src.head = "c2"
	h2.start()
	if err := h2.a.Resume(h2.ctx); err != nil {
		t.Fatal(err)
	}
	h2.quiet() // resume pulls at once
	if s := h2.a.Status(); s.Suspended != nil || s.Applied != "c2" {
		t.Errorf("after resume: suspended %+v, applied %q", s.Suspended, s.Applied)
	}
	if _, err := os.Stat(filepath.Join(h.dir, "suspended")); !os.IsNotExist(err) {
		t.Error("the suspension's state file outlived resume")
	}
}
