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
