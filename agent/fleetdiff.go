package main

import (
	"context"
	"fmt"
	"io"
	"sort"
	"strings"
	"testing/fstest"

	"github.com/mqha/mqha/internal/cluster"
	"github.com/mqha/mqha/internal/daemon"
	"github.com/mqha/mqha/internal/plan"
	"github.com/mqha/mqha/internal/render"
	"github.com/mqha/mqha/internal/unit"
	"github.com/mqha/mqha/internal/validate"
)

// fleetDiff renders two commits for every node (or one) and prints what
// moving from the first to the second does: a summary (node: files
// changed, unit actions; nodes added or removed) and then each node's
// diffs. It is what an operator pastes into a pull request. With
// validateTools, the changed configurations go through the daemons' own
// checks where those tools are installed here.
func fleetDiff(ctx context.Context, w io.Writer, from, to *cluster.Cluster, only string, validateTools bool) (changed bool, err error) {
	names := map[string]bool{}
	for _, c := range []*cluster.Cluster{from, to} {
		for _, n := range c.Nodes {
			names[n.Name] = true
		}
	}
	if only != "" {
		if !names[only] {
			return false, fmt.Errorf("node %q is in neither commit", only)
		}
		names = map[string]bool{only: true}
	}
	var order []string
	for n := range names {
		order = append(order, n)
	}
	sort.Strings(order)

	type nodeDiff struct {
		name, what string
		p          *plan.Plan
		invalid    []string
	}
	var diffs []nodeDiff
	for _, name := range order {
		_, inFrom := from.Node(name)
		_, inTo := to.Node(name)
		d := nodeDiff{name: name}
		old := fstest.MapFS{}
		if inFrom {
			o, err := render.Node(from, name)
			if err != nil {
				return false, err
			}
			for _, f := range o.Files {
				old[strings.TrimPrefix(f.Path, "/")] = &fstest.MapFile{Data: f.Content, Mode: f.Mode}
			}
		}
		switch {
		case !inTo:
			// Leaving the definition: nothing to render; what it ran stops.
			d.what = "removed by the commit (it keeps running its last configuration until stopped)"
			diffs = append(diffs, d)
			continue
		case !inFrom:
			d.what = "added by the commit"
		}
		out, err := render.Node(to, name)
		if err != nil {
			return false, err
		}
		// Planned as if every daemon ran: a restart or a reload shows as
		// such, not as a start.
		states := map[string]unit.State{}
		for _, u := range daemon.Units() {
			st := unit.State{ActiveState: "inactive", LoadState: "loaded"}
			if inFrom {
				if n, _ := from.Node(name); daemonRuns(from, u, n) {
					st.ActiveState = "active"
				}
			}
			states[u] = st
		}
		if d.p, err = plan.Make(out, old, states); err != nil {
			return false, err
		}
		if validateTools {
			d.invalid = validateChanges(ctx, d.p)
		}
		diffs = append(diffs, d)
	}

	fmt.Fprintln(w, "summary:")
	for _, d := range diffs {
		switch {
		case d.p == nil:
			fmt.Fprintf(w, "  %s: %s\n", d.name, d.what)
			changed = true
		case d.p.Empty() && d.what == "":
			fmt.Fprintf(w, "  %s: no change\n", d.name)
		default:
			changed = true
			var acts []string
			for _, u := range d.p.Units {
				if u.Action != unit.None {
					acts = append(acts, strings.TrimSuffix(u.Name, ".service")+" "+string(u.Action))
				}
			}
			line := fmt.Sprintf("  %s: %d files changed", d.name, len(d.p.Changes))
			if len(acts) > 0 {
				line += "; " + strings.Join(acts, ", ")
			}
			if d.what != "" {
				line += " (" + d.what + ")"
			}
			fmt.Fprintln(w, line)
		}
		for _, e := range d.invalid {
			fmt.Fprintf(w, "    %s\n", e)
		}
	}
	for _, d := range diffs {
		if d.p == nil || d.p.Empty() {
			continue
		}
		fmt.Fprintf(w, "\n=== %s\n", d.name)
		for _, ch := range d.p.Changes {
			fmt.Fprint(w, ch.Diff)
		}
		writePlan(w, d.p)
	}
	return changed, nil
}

// daemonRuns reports whether node n of c runs unit u.
func daemonRuns(c *cluster.Cluster, u string, n cluster.Node) bool {
	d, ok := daemon.ByUnit(u)
	return ok && d.RunsOn(c, n)
}

// validateChanges runs the daemons' own checks on a plan's changed
// configurations, where the tools are installed here; it says what failed
// and what could not be checked.
func validateChanges(ctx context.Context, p *plan.Plan) []string {
	var out []string
	v := daemon.Validator{Tools: validate.Tools{}}
	for _, ch := range p.Changes {
		if ch.File.Kind != render.Config {
			continue
		}
		if err := v.Config(ctx, ch.File.Path, ch.File.Content); err != nil {
			msg := err.Error()
			if strings.Contains(msg, "executable file not found") {
				out = append(out, "not validated here ("+ch.File.Path+"): "+firstLine(msg))
				continue
			}
			out = append(out, "INVALID "+ch.File.Path+": "+firstLine(msg))
		}
	}
	return out
}

func firstLine(s string) string {
	l, _, _ := strings.Cut(s, "\n")
	return l
}
