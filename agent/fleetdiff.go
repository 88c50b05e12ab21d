package main

import (
	"context"
	"fmt"
	"io"

	"github.com/mqha/mqha/internal/cluster"
	"github.com/mqha/mqha/internal/fleetdiff"
)

// fleetDiff prints what moving from one definition to another does
// (internal/fleetdiff): a summary, a line per node, then each node's diffs
// and plan. It is what an operator pastes into a pull request.
func fleetDiff(ctx context.Context, w io.Writer, format output, from, to *cluster.Cluster, only string, validateTools bool) (changed bool, err error) {
	nodes, err := fleetdiff.Compute(ctx, from, to, only, validateTools)
	if err != nil {
		return false, err
	}
	type nodeJSON struct {
		Name       string    `json:"name"`
		Changed    bool      `json:"changed"`
		Membership string    `json:"membership,omitempty"`
		Summary    string    `json:"summary"`
		Invalid    []string  `json:"invalid,omitempty"`
		Plan       *planJSON `json:"plan,omitempty"`
	}
	var out []nodeJSON
	for _, n := range nodes {
		changed = changed || n.Changed()
		out = append(out, nodeJSON{n.Name, n.Changed(), n.Membership, n.Summary(), n.Invalid, planOf(n.Plan)})
	}
	return changed, format.emit(w, out, func(w io.Writer) { printFleetDiff(w, nodes) })
}

func printFleetDiff(w io.Writer, nodes []fleetdiff.Node) {
	fmt.Fprintln(w, "summary:")
	for _, n := range nodes {
		fmt.Fprintf(w, "  %s\n", n.Summary())
		for _, e := range n.Invalid {
			fmt.Fprintf(w, "    %s\n", e)
		}
	}
	for _, n := range nodes {
		if n.Plan == nil || n.Plan.Empty() {
			continue
		}
		fmt.Fprintf(w, "\n=== %s\n", n.Name)
		for _, ch := range n.Plan.Changes {
			fmt.Fprint(w, ch.Diff)
		}
		writePlan(w, n.Plan)
	}
}
