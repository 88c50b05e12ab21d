package control

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/mqha/mqha/internal/health"
)

func TestProblems(t *testing.T) {
	now := time.Date(2026, 11, 27, 3, 0, 0, 0, time.UTC)
	for _, tt := range []struct {
		name string
		s    Status
		want []string // substrings, in order
	}{
		{"healthy", Status{Applied: "a", Checks: []health.Result{{Name: "mosquitto", OK: true}}}, nil},
		{"refused", Status{Applied: "a", Refused: "b123456789012345", RefusedReason: "typo.cue:3:6"}, []string{"refused commit b12345678901: typo.cue:3:6"}},
		{"refused then applied", Status{Applied: "b", Refused: "b"}, nil},
		{"fetch error", Status{FetchError: "connection refused"}, []string{"cannot fetch: connection refused"}},
		{"failing check", Status{Checks: []health.Result{{Name: "nginx", Error: "EOF"}}}, []string{"check nginx failing: EOF"}},
		{"warning", Status{Warnings: []string{"nginx holds at most 9488 clients"}}, []string{"nginx holds"}},
		{"recent drop", Status{Drops: []Drop{{Client: "bridge", Last: now.Add(-time.Minute)}}}, []string{"dropped messages for bridge 1m0s ago"}},
		{"old drop", Status{Drops: []Drop{{Client: "bridge", Last: now.Add(-time.Hour)}}}, nil},
		{"unconfigured", Status{Unconfigured: "set repo"}, []string{"not configured: set repo"}},
	} {
		got := tt.s.Problems(now)
		if len(got) != len(tt.want) || !slices.EqualFunc(got, tt.want, strings.Contains) {
			t.Errorf("%s: %q, want %q", tt.name, got, tt.want)
		}
	}
}

// The fleet's verdict on each commit, from the nodes' histories: each
// node's last word on a commit counts, newest commits first.
func TestVerdicts(t *testing.T) {
	at := func(m int) time.Time { return time.Date(2026, 12, 7, 0, m, 0, 0, time.UTC) }
	st := map[string]Status{
		"lb1":     {History: []Reconciliation{{Commit: "bad", Result: "applied", At: at(2)}, {Commit: "good", Result: "applied", Subject: "ok", At: at(1)}}},
		"broker1": {History: []Reconciliation{{Commit: "bad", Result: "refused", Reason: "commit bad (x): not verified: health check after apply: no answer (rolled back)", At: at(3)}, {Commit: "good", Result: "applied", At: at(1)}}},
		"broker2": {History: []Reconciliation{{Commit: "bad", Result: "refused", Reason: "rolled back", At: at(4)}, {Commit: "bad", Result: "applied", At: at(2)}}},
	}
	v := Verdicts(st, 5)
	if len(v) != 2 || v[0].Commit != "bad" || v[1].Commit != "good" {
		t.Fatalf("verdicts %+v", v)
	}
	if strings.Join(v[0].Applied, ",") != "lb1" || len(v[0].Refused) != 2 || v[0].Refused["broker2"] != "rolled back" || strings.Join(v[0].Judged, ",") != "broker1" {
		t.Errorf("bad: %+v", v[0])
	}
	if strings.Join(v[1].Applied, ",") != "broker1,lb1" || v[1].Subject != "ok" || len(v[1].Refused) != 0 {
		t.Errorf("good: %+v", v[1])
	}
	if len(Verdicts(st, 1)) != 1 {
		t.Error("not bounded")
	}
}
