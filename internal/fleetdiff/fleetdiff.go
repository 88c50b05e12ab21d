// Package fleetdiff computes what moving a cluster from one commit's
// definition to another's does to each node: its files and unit actions,
// and the nodes the commit adds or removes. `mqha-agent diff --from` prints
// it, for a pull request.
package fleetdiff

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing/fstest"

	"github.com/mqha/mqha/internal/cluster"
	"github.com/mqha/mqha/internal/daemon"
	"github.com/mqha/mqha/internal/plan"
	"github.com/mqha/mqha/internal/render"
	"github.com/mqha/mqha/internal/unit"
	"github.com/mqha/mqha/internal/validate"
)

// What a commit does to a node's membership.
const (
	Added   = "added by the commit"
	Removed = "removed by the commit: it drains, then stops and disables its units (decommission = false in its agent.conf keeps it serving)"
)

// Node is what the change does to one node.
type Node struct {
	Name       string
	Membership string     // "", Added or Removed
	Plan       *plan.Plan // its files and units (nil when removed)
	// Invalid says what the daemons' own checks found wrong in the changed
	// configurations, or could not check here.
	Invalid []string
}

// Changed reports whether the change does anything to the node.
func (n Node) Changed() bool { return n.Plan == nil || !n.Plan.Empty() || n.Membership != "" }

// Summary is the node's line of the summary.
func (n Node) Summary() string {
	switch {
	case n.Plan == nil:
		return n.Name + ": " + n.Membership
	case !n.Changed():
		return n.Name + ": no change"
	}
	var acts []string
	for _, u := range n.Plan.Units {
		if u.Action != unit.None {
			acts = append(acts, strings.TrimSuffix(u.Name, ".service")+" "+string(u.Action))
		}
	}
	line := fmt.Sprintf("%s: %d files changed", n.Name, len(n.Plan.Changes))
	if len(acts) > 0 {
		line += "; " + strings.Join(acts, ", ")
	} else {
		line += "; nothing restarts" // files read only at a start
	}
	if n.Membership != "" {
		line += " (" + n.Membership + ")"
	}
	return line
}

// Compute renders both definitions for every node of either (or only
// one) and plans the move, as if each daemon the first commit runs on the
// node were running. With validateTools, the changed configurations go
// through the daemons' own checks where those tools are installed here.
func Compute(ctx context.Context, from, to *cluster.Cluster, only string, validateTools bool) ([]Node, error) {
	var names []string
	for _, c := range []*cluster.Cluster{from, to} {
		for _, n := range c.Nodes {
			names = append(names, n.Name)
		}
	}
	slices.Sort(names)
	names = slices.Compact(names)
	if only != "" {
		if !slices.Contains(names, only) {
			return nil, fmt.Errorf("node %q is in neither commit", only)
		}
		names = []string{only}
	}
	var out []Node
	for _, name := range names {
		before, inFrom := from.Node(name)
		_, inTo := to.Node(name)
		d := Node{Name: name}
		switch {
		case !inTo:
			d.Membership = Removed
			out = append(out, d)
			continue
		case !inFrom:
			d.Membership = Added
		}
		old := fstest.MapFS{}
		if inFrom {
			o, err := render.Node(from, name)
			if err != nil {
				return nil, err
			}
			for _, f := range o.Files {
				old[strings.TrimPrefix(f.Path, "/")] = &fstest.MapFile{Data: f.Content, Mode: f.Mode}
			}
		}
		next, err := render.Node(to, name)
		if err != nil {
			return nil, err
		}
		// Planned as if every daemon ran: a restart or a reload shows as
		// such, not as a start.
		states := map[string]unit.State{}
		for _, u := range daemon.Units() {
			st := unit.State{ActiveState: "inactive", LoadState: "loaded"}
			if dm, ok := daemon.ByUnit(u); ok && inFrom && dm.RunsOn(from, before) {
				st.ActiveState = "active"
			}
			states[u] = st
		}
		if d.Plan, err = plan.Make(next, old, states); err != nil {
			return nil, err
		}
		if validateTools {
			d.Invalid = validateChanges(ctx, d.Plan)
		}
		out = append(out, d)
	}
	return out, nil
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
			msg, _, _ := strings.Cut(err.Error(), "\n")
			if strings.Contains(msg, "executable file not found") {
				out = append(out, "not validated here ("+ch.File.Path+"): "+msg)
				continue
			}
			out = append(out, "INVALID "+ch.File.Path+": "+msg)
		}
	}
	return out
}
