package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/mqha/mqha/internal/agent"
	"github.com/mqha/mqha/internal/cluster"
	"github.com/mqha/mqha/internal/plan"
	"github.com/mqha/mqha/internal/render"
	"github.com/mqha/mqha/internal/systemd"
	"github.com/mqha/mqha/internal/unit"
)

// diff and apply: a node's rendered files against this machine.

// renderNode reads the definition and renders node (default: this host's
// name); live: for this machine, as its agent does (its limits, its bridge
// secret), else from the definition alone.
func (c *cmd) renderNode(src defSource, node string, live bool) (*cluster.Cluster, *render.Output, error) {
	node, err := agent.NodeName(node)
	if err != nil {
		return nil, nil, fmt.Errorf("no --node: %w", err)
	}
	cl, err := c.definition(src)
	if err != nil {
		return nil, nil, err
	}
	var host render.Host
	if n, ok := cl.Node(node); ok && live {
		host = agent.LocalHost()
		if host.BridgeSecret, err = agent.BridgeSecret(cl, n); err != nil {
			return nil, nil, err
		}
	}
	out, err := render.NodeOn(cl, node, host)
	return cl, out, err
}

func (c *cmd) diff(args []string) (int, error) {
	fs, src := c.defCommand("diff")
	node := fs.String("node", "", "node to diff (default: this host's name; with --from, every node)")
	root := fs.String("root", "/", "compare with the files under this directory")
	from := fs.String("from", "", "compare two commits for the fleet: from this one (e.g. origin/main)")
	to := fs.String("to", "HEAD", "with --from: to this one")
	all := fs.Bool("all", false, "with --from: every node (the default when --node is not given)")
	check := fs.Bool("validate", false, "with --from: run the daemons' own checks on the changed files, where installed here")
	format := outputFlag(fs)
	if err := parse(fs, args); err != nil {
		return exitError, err
	}
	if err := format.check(); err != nil {
		return exitError, err
	}
	if *from != "" {
		if *all && *node != "" {
			return exitError, errors.New("--all and --node: pick one")
		}
		f := false
		old := src // the same repository and bounds, another commit
		old.rev, old.worktree = from, &f
		oldDef, err := c.definition(old)
		if err != nil {
			return exitError, fmt.Errorf("--from %s: %w", *from, err)
		}
		cur := src
		cur.rev = to
		curDef, err := c.definition(cur)
		if err != nil {
			return exitError, fmt.Errorf("--to %s: %w", *to, err)
		}
		changed, err := fleetDiff(c.ctx, c.stdout, format, oldDef, curDef, *node, *check)
		switch {
		case err != nil:
			return exitError, err
		case changed:
			return exitChanges, nil
		}
		return exitOK, nil
	}
	if st, err := os.Stat(*root); err != nil || !st.IsDir() {
		return exitError, fmt.Errorf("--root %s is not a directory", *root)
	}
	// On the live root, render as the agent on this machine does.
	cl, out, err := c.renderNode(src, *node, filepath.Clean(*root) == "/")
	if err != nil {
		return exitError, err
	}
	// Unit states only mean something for the live root of this machine.
	var states map[string]unit.State
	statesNote := "unit states not read (--root is not /): decided from files alone"
	if filepath.Clean(*root) == "/" {
		if sd, err := systemd.Connect(c.ctx, time.Duration(cl.Timeouts.Unit)*time.Second); err != nil {
			statesNote = "unit states unknown (" + err.Error() + "): decided from files alone"
		} else {
			defer sd.Close()
			if states, err = agent.UnitStates(c.ctx, sd); err != nil {
				return exitError, err
			}
		}
	}
	p, err := plan.Make(out, os.DirFS(*root), states)
	if err != nil {
		return exitError, err
	}
	err = format.emit(c.stdout, planOf(p), func(w io.Writer) {
		for _, ch := range p.Changes {
			fmt.Fprint(w, ch.Diff)
		}
		fmt.Fprintf(w, "\nplan for node %s (%s):\n", p.Node, out.Node.RoleList())
		if !p.StatesKnown {
			fmt.Fprintf(w, "  note: %s\n", statesNote)
		}
		writePlan(w, p)
	})
	if err != nil {
		return exitError, err
	}
	if p.Empty() {
		return exitOK, nil
	}
	return exitChanges, nil
}

// planJSON is a plan as -o json writes it.
type planJSON struct {
	Node  string `json:"node"`
	Files []struct {
		Path string `json:"path"`
		Diff string `json:"diff"`
	} `json:"files"`
	DaemonReload bool `json:"daemonReload,omitempty"`
	Units        []struct {
		Name   string `json:"name"`
		Action string `json:"action"`
		Reason string `json:"reason,omitempty"`
	} `json:"units"`
	StatesKnown bool `json:"statesKnown"`
}

func planOf(p *plan.Plan) *planJSON {
	if p == nil {
		return nil
	}
	out := &planJSON{Node: p.Node, DaemonReload: p.DaemonReload, StatesKnown: p.StatesKnown}
	for _, ch := range p.Changes {
		out.Files = append(out.Files, struct {
			Path string `json:"path"`
			Diff string `json:"diff"`
		}{ch.File.Path, ch.Diff})
	}
	for _, u := range p.Units {
		out.Units = append(out.Units, struct {
			Name   string `json:"name"`
			Action string `json:"action"`
			Reason string `json:"reason,omitempty"`
		}{u.Name, string(u.Action), u.Reason})
	}
	return out
}

func writePlan(w io.Writer, p *plan.Plan) {
	if p.DaemonReload {
		fmt.Fprintln(w, "  systemd: daemon-reload, drop-ins changed")
	}
	for _, u := range p.Units {
		fmt.Fprintf(w, "  %s: %s, %s\n", strings.TrimSuffix(u.Name, ".service"), u.Action, u.Reason)
	}
}

func (c *cmd) apply(args []string) error {
	fs, repo := c.flags("apply")
	node := fs.String("node", "", "node to apply (default: this host's name)")
	stateDir := fs.String("state-dir", "/var/lib/mqha", "where previous files are kept (under backup/)")
	settle := fs.Duration("settle", 500*time.Millisecond, "how long units must stay up after a change")
	if err := parse(fs, args); err != nil {
		return err
	}
	// apply writes what the directory holds (a one-shot on this node).
	wt := true
	cl, out, err := c.renderNode(defSource{repo: repo, rev: new(string), worktree: &wt}, *node, true)
	if err != nil {
		return err
	}
	sd, err := systemd.Connect(c.ctx, time.Duration(cl.Timeouts.Unit)*time.Second)
	if err != nil {
		return err
	}
	defer sd.Close()
	p, err := agent.ConvergeOutput(c.ctx, out, sd, *stateDir, *settle, c.log, agent.Hooks{})
	if p != nil {
		writePlan(c.stdout, p)
	}
	if err != nil {
		return err
	}
	fmt.Fprintf(c.stdout, "node %s: applied\n", p.Node)
	return nil
}
