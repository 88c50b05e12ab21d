//go:build e2e && benchlab

package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"testing"
	"time"
)

// TestBenchConvergence measures what the e2e suite only bounds: commit ->
// every node applied, with the push trigger, over repeated pushes that add
// and remove a broker (the bridge master restarts each time, every LB
// reloads). It prints p50/p95 per node and for the fleet, and writes them
// as JSON next to the lab's state. Run by `make bench-lab`, not by make test.
func TestBenchConvergence(t *testing.T) {
	pushes := 10
	if v, err := strconv.Atoi(os.Getenv("MQHA_BENCH_PUSHES")); err == nil && v > 0 {
		pushes = v
	}
	addr := spareBroker3(t)
	nodes := []string{"lb1", "lb2", "bridge", "broker1", "broker2", "broker3"}
	perNode := map[string][]time.Duration{}
	stages := map[string]map[string][]time.Duration{} // node -> stage -> samples
	var stageNames []string
	var fleet []time.Duration
	added := fmt.Sprintf("package cluster\n\nnodes: broker3: {address: %q, roles: [\"broker\"]}\n", addr)
	for i := range pushes {
		content, what := added, "add broker3"
		if i%2 == 1 {
			content, what = "", "remove broker3"
		}
		pushed := time.Now()
		head := commit(t, "bench: "+what, map[string]string{"broker3.cue": content})
		var last time.Duration
		for _, n := range nodes {
			waitFor(t, 60*time.Second, n+" applies "+head[:12], func() bool {
				s := agentStatus(t, n)
				// broker3 is told it left the definition instead of applying.
				return s.Applied == head || (n == "broker3" && s.Refused == head)
			})
			s := agentStatus(t, n)
			at := s.AppliedAt
			if s.Applied != head {
				continue // broker3 out of the definition: nothing to apply
			}
			d := at.Sub(pushed)
			perNode[n] = append(perNode[n], d)
			if stages[n] == nil {
				stages[n] = map[string][]time.Duration{}
			}
			for _, st := range s.Stages {
				if !slices.Contains(stageNames, st.Name) {
					stageNames = append(stageNames, st.Name)
				}
				stages[n][st.Name] = append(stages[n][st.Name], time.Duration(st.Seconds*float64(time.Second)))
			}
			last = max(last, d)
		}
		fleet = append(fleet, last)
		t.Logf("push %d (%s): every node applied after %s", i+1, what, last.Round(time.Millisecond))
		// Let the fleet settle (bridge reconnects) before the next push.
		time.Sleep(2 * time.Second)
	}
	if _, err := os.Stat(filepath.Join(cfg.Dir, "cluster", "broker3.cue")); err == nil {
		commit(t, "bench: remove broker3", map[string]string{"broker3.cue": ""})
		converged(t, 60*time.Second)
	}

	type row struct {
		Node    string  `json:"node"`
		Samples int     `json:"samples"`
		P50s    float64 `json:"p50_s"`
		P95s    float64 `json:"p95_s"`
	}
	var rows []row
	add := func(name string, ds []time.Duration) {
		p50, p95 := percentile(ds, 50), percentile(ds, 95)
		rows = append(rows, row{Node: name, Samples: len(ds), P50s: p50.Seconds(), P95s: p95.Seconds()})
	}
	for _, n := range nodes {
		add(n, perNode[n])
	}
	add("every node", fleet)
	fmt.Printf("\nBENCH commit -> applied, push trigger, %d pushes (add/remove broker3)\n", pushes)
	fmt.Printf("BENCH %-12s %8s %8s %8s\n", "node", "samples", "p50", "p95")
	for _, r := range rows {
		fmt.Printf("BENCH %-12s %8d %7.2fs %7.2fs\n", r.Node, r.Samples, r.P50s, r.P95s)
	}
	fmt.Printf("BENCH target: every node p50 < 3 s (issue 8), p50 < 1 s / p95 < 2 s (issue 12)\n")
	fmt.Printf("\nBENCH where each node's time goes, p50 per stage in ms (push -> the agent's pull is the rest)\n")
	fmt.Printf("BENCH %-12s", "node")
	for _, st := range stageNames {
		fmt.Printf(" %12s", st)
	}
	fmt.Println()
	for _, n := range nodes {
		fmt.Printf("BENCH %-12s", n)
		for _, st := range stageNames {
			fmt.Printf(" %12.0f", float64(percentile(stages[n][st], 50).Microseconds())/1000)
		}
		fmt.Println()
	}
	out, _ := json.MarshalIndent(map[string]any{"pushes": pushes, "at": time.Now().UTC(), "convergence": rows}, "", "  ")
	path := reportPath("bench-convergence.json")
	if err := os.WriteFile(path, out, 0o644); err != nil {
		t.Fatal(err)
	}
	fmt.Printf("BENCH written to %s\n", path)
}

// percentile is the nearest-rank percentile of ds (0 for none).
func percentile(ds []time.Duration, p int) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	i := (p*len(s) + 99) / 100
	return s[max(i-1, 0)]
}
