package soak

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/mqha/mqha/internal/source"
)

// Report is the run's verdict: its figures, its breaches, the schedule as
// carried out.
type Report struct {
	Seed     uint64        `json:"seed"`
	Duration time.Duration `json:"duration"`
	Replay   string        `json:"replay"`
	Clients  int           `json:"clients"`
	Figures  Figures       `json:"figures"`
	Breaches []Breach      `json:"breaches"`
	Events   []Done        `json:"events"`
	Agents   []Usage       `json:"agents"`
}

// NewReport checks r.
func NewReport(r *Run) Report {
	f, b := Check(r)
	return Report{Seed: r.Config.Seed, Duration: r.End.Sub(r.Start).Round(time.Second), Replay: r.Config.Replay(),
		Clients: r.Config.Clients, Figures: f, Breaches: b, Events: r.Events, Agents: r.Agents}
}

// Write puts soak.json, soak.txt and soak.png (the timeline) in dir, and
// run.json: what the checker read (the samples, where each client was,
// each subscriber's connections, the agents' acts), to look into a breach
// after the lab is gone.
func (rep Report) Write(dir string, r *Run) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	for name, v := range map[string]any{"soak.json": rep, "run.json": r} {
		b, err := json.MarshalIndent(v, "", " ")
		if err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			return err
		}
	}
	var txt strings.Builder
	rep.Summary(&txt)
	if err := os.WriteFile(filepath.Join(dir, "soak.txt"), []byte(txt.String()), 0o644); err != nil {
		return err
	}
	return Timeline(r, rep.Breaches, filepath.Join(dir, "soak.png"))
}

// Summary is the short text an operator reads first.
func (rep Report) Summary(w io.Writer) {
	f := rep.Figures
	fmt.Fprintf(w, "soak: %s, seed %d, %d clients; replay: %s\n", rep.Duration, rep.Seed, rep.Clients, rep.Replay)
	fmt.Fprintf(w, "faults: %s\n", counts(f.Faults))
	fmt.Fprintf(w, "commits: %s\n", counts(f.Commits))
	fmt.Fprintf(w, "messages: %d sent, %d QoS1 acknowledged, %d delivered, %d lost, %d lost while the client's broker was down (known limit), %d duplicated, %d reordered\n",
		f.Sent, f.Acknowledged, f.Delivered, f.Lost, f.LostKnown, f.Duplicated, f.Reordered)
	fmt.Fprintf(w, "persistent sessions: %d reconnects found none (%d of sessions younger than %s, the known limit)\n", f.SessionsLost, f.SessionsYoung, shadowGrace)
	fmt.Fprintf(w, "VIP: served %.3f%% of samples outside failovers; longest outage %s (%s)\n", 100*f.VIPAvailable, f.LongestOutage, orNone(f.OutageCause))
	fmt.Fprintf(w, "settled: every node on %s and ok %s after the last fault: %v\n", source.Short(f.Settled.Head), f.Settled.After.Round(time.Second), f.Settled.OK)
	for _, u := range rep.Agents {
		fmt.Fprintf(w, "agent %s: RSS %d -> %d MiB, fds %d -> %d, goroutines %d -> %d%s\n", u.Node, u.RSSStart>>20, u.RSSEnd>>20,
			u.FDsStart, u.FDsEnd, u.GoroutinesStart, u.GoEnd, map[bool]string{true: " (restarted by a fault)", false: ""}[u.Restarted])
	}
	if len(rep.Breaches) == 0 {
		fmt.Fprintln(w, "breaches: none")
		return
	}
	fmt.Fprintf(w, "BREACHES: %d\n", len(rep.Breaches))
	for _, b := range rep.Breaches {
		fmt.Fprintf(w, "  %s  %s: %s\n", b.At.Format("15:04:05"), b.Invariant, b.What)
	}
	fmt.Fprintf(w, "replay: %s\n", rep.Replay)
}

func counts(m map[string]int) string {
	var keys []string
	total := 0
	for k, n := range m {
		keys = append(keys, fmt.Sprintf("%s %d", k, n))
		total += n
	}
	slices.Sort(keys)
	if total == 0 {
		return "none"
	}
	return fmt.Sprintf("%d (%s)", total, strings.Join(keys, ", "))
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}
