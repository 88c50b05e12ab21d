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
func fleetDiff(ctx context.Context, w io.Writer, from, to *cluster.Cluster, only string, validateTools bool) (changed bool, err error) {
	nodes, err := fleetdiff.Compute(ctx, from, to, only, validateTools)
	if err != nil {
		return false, err
	}
	fmt.Fprintln(w, "summary:")
	for _, n := range nodes {
		changed = changed || n.Changed()
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
	return changed, nil
}
