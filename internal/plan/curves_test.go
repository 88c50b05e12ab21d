package plan_test

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"testing/fstest"
	"time"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"

	"github.com/mqha/mqha/internal/plan"
	"github.com/mqha/mqha/internal/render"
	"github.com/mqha/mqha/schema"
)

// TestCostCurves (MQHA_CURVES=DIR; make curves) measures, for clusters of
// 10 to 1,000 brokers, what the definition costs the agent: evaluating it
// (CUE), rendering and planning one node of each role (what one agent does
// for a commit), and rendering and planning every node (a fleet diff). It
// prints p50 of 5 runs per size and draws render-cost.png (log-log) and prints the table that
// docs/performance.md quotes.
func TestCostCurves(t *testing.T) {
	dir := os.Getenv("MQHA_CURVES")
	if dir == "" {
		t.Skip("MQHA_CURVES=DIR draws the cost curves there (make curves)")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	sizes := []int{10, 30, 100, 300, 1000}
	const runs = 5
	type row struct{ load, lb, bridge, broker, fleet time.Duration }
	var rows []row
	p50 := func(f func() time.Duration) time.Duration {
		var d []time.Duration
		for range runs {
			d = append(d, f())
		}
		slices.Sort(d)
		return d[len(d)/2]
	}
	one := func(fsys fstest.MapFS, nodes ...string) time.Duration {
		c, err := schema.Load(fsys, ".")
		if err != nil {
			t.Fatal(err)
		}
		if len(nodes) == 0 {
			for _, n := range c.Nodes {
				nodes = append(nodes, n.Name)
			}
		}
		start := time.Now()
		for _, n := range nodes {
			out, err := render.Node(c, n)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := plan.Make(out, fstest.MapFS{}, nil); err != nil {
				t.Fatal(err)
			}
		}
		return time.Since(start)
	}
	for _, n := range sizes {
		fsys := bigCluster(n)
		r := row{
			load: p50(func() time.Duration {
				start := time.Now()
				if _, err := schema.Load(fsys, "."); err != nil {
					t.Fatal(err)
				}
				return time.Since(start)
			}),
			lb:     p50(func() time.Duration { return one(fsys, "lb1") }),
			bridge: p50(func() time.Duration { return one(fsys, "bridge") }),
			broker: p50(func() time.Duration { return one(fsys, "broker0") }),
			fleet:  p50(func() time.Duration { return one(fsys) }),
		}
		rows = append(rows, r)
		t.Logf("%5d brokers: evaluate %s, render+plan lb %s, bridge %s, broker %s, every node (fleet diff) %s",
			n, r.load.Round(time.Millisecond), r.lb.Round(10*time.Microsecond), r.bridge.Round(10*time.Microsecond),
			r.broker.Round(10*time.Microsecond), r.fleet.Round(time.Millisecond))
	}
	p := plot.New()
	p.Title.Text = "What a definition costs the agent, by brokers (p50 of 5)"
	p.X.Label.Text = "brokers in the definition"
	p.Y.Label.Text = "milliseconds"
	p.X.Scale, p.Y.Scale = plot.LogScale{}, plot.LogScale{}
	p.X.Tick.Marker, p.Y.Tick.Marker = plot.LogTicks{Prec: -1}, plot.LogTicks{Prec: -1}
	line := func(f func(row) time.Duration) plotter.XYs {
		var xy plotter.XYs
		for i, r := range rows {
			xy = append(xy, plotter.XY{X: float64(sizes[i]), Y: max(float64(f(r).Microseconds())/1000, 0.001)})
		}
		return xy
	}
	if err := plotutil.AddLinePoints(p,
		"evaluate (CUE), every agent per commit", line(func(r row) time.Duration { return r.load }),
		"render+plan: load balancer", line(func(r row) time.Duration { return r.lb }),
		"render+plan: bridge", line(func(r row) time.Duration { return r.bridge }),
		"render+plan: broker", line(func(r row) time.Duration { return r.broker }),
		"render+plan: every node (fleet diff)", line(func(r row) time.Duration { return r.fleet }),
	); err != nil {
		t.Fatal(err)
	}
	p.Legend.Top, p.Legend.Left = true, true
	out := filepath.Join(dir, "render-cost.png")
	if err := p.Save(8*vg.Inch, 5*vg.Inch, out); err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "| brokers | evaluate | render+plan lb | bridge | broker | every node |\n|---|---|---|---|---|---|\n")
	for i, r := range rows {
		fmt.Fprintf(&b, "| %d | %s | %s | %s | %s | %s |\n", sizes[i], r.load.Round(time.Millisecond), r.lb.Round(10*time.Microsecond),
			r.bridge.Round(10*time.Microsecond), r.broker.Round(10*time.Microsecond), r.fleet.Round(time.Millisecond))
	}
	t.Logf("drawn: %s; the table for docs/performance.md:\n%s", out, b.String())
}
