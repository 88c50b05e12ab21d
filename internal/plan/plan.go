// Package plan compares what a node should have (the rendered files) with
// what it has (files under a root, unit states) and decides, per unit,
// whether to start, reload, restart or stop it, and why.
package plan

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"slices"
	"strings"

	"github.com/aymanbagabas/go-udiff"

	"github.com/mqha/mqha/internal/daemon"
	"github.com/mqha/mqha/internal/render"
	"github.com/mqha/mqha/internal/unit"
)

// Marker starts every file the agent writes; a file without it was not ours.
const Marker = "# Managed by mqha-agent"

// Change is one file whose content on the node differs from the rendered one.
type Change struct {
	File    render.File
	Old     []byte // nil when the file does not exist
	Existed bool
	Diff    string // unified diff, old to new
}

// Unit is the decision for one unit.
type Unit struct {
	Name   string
	Action unit.Action
	Reason string
}

// Plan is everything one apply would do on one node.
type Plan struct {
	Node         string
	Changes      []Change
	Units        []Unit // every unit the node runs or must stop, in start order
	DaemonReload bool   // a drop-in changed
	StatesKnown  bool   // unit states were read from systemd
}

// Empty reports whether applying the plan would change nothing.
func (p *Plan) Empty() bool {
	if len(p.Changes) > 0 || p.DaemonReload {
		return false
	}
	for _, u := range p.Units {
		if u.Action != unit.None {
			return false
		}
	}
	return true
}

// Make plans the move from what root holds to out. root is the node's file
// system with paths relative to "/" (os.DirFS("/") on a node). states may be
// nil when unit states cannot be read (a rendered tree on a workstation);
// the plan then decides from files alone.
func Make(out *render.Output, root fs.FS, states map[string]unit.State) (*Plan, error) {
	p := &Plan{Node: out.Node.Name, StatesKnown: states != nil}
	changed := map[string][]Change{}
	for _, f := range out.Files {
		old, err := fs.ReadFile(root, strings.TrimPrefix(f.Path, "/"))
		existed := err == nil
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("read current %s: %w", f.Path, err)
		}
		if existed && bytes.Equal(old, f.Content) {
			continue
		}
		c := Change{File: f, Old: old, Existed: existed,
			Diff: udiff.Unified("a"+f.Path, "b"+f.Path, string(old), string(f.Content))}
		if !existed {
			c.Old = nil
			c.Diff = udiff.Unified("/dev/null", "b"+f.Path, "", string(f.Content))
		}
		p.Changes = append(p.Changes, c)
		changed[f.Unit] = append(changed[f.Unit], c)
	}

	wanted := map[string]bool{}
	for _, u := range out.Units {
		wanted[u] = true
		action, reason := decide(u, changed[u], states)
		for _, c := range changed[u] {
			if c.File.Kind == render.DropIn {
				p.DaemonReload = true
			}
		}
		p.Units = append(p.Units, Unit{Name: u, Action: action, Reason: reason})
	}
	// What the node no longer needs stops in reverse start order: on a load
	// balancer keepalived (the VIP moves) before nginx.
	for _, u := range slices.Backward(daemon.Units()) {
		if wanted[u] {
			continue
		}
		if reason, ok := stopReason(u, out, root, states); ok {
			p.Units = append(p.Units, Unit{Name: u, Action: unit.Stop, Reason: reason})
		}
	}
	return p, nil
}

// decide picks the least disruptive action that makes unit u run the new files.
func decide(u string, changes []Change, states map[string]unit.State) (unit.Action, string) {
	st, known := states[u]
	var confs []*Change
	var dropIn *Change
	for i := range changes {
		switch changes[i].File.Kind {
		case render.Config:
			confs = append(confs, &changes[i])
		case render.DropIn:
			dropIn = &changes[i]
		}
	}
	var conf *Change // the main configuration, else an included file
	for _, c := range confs {
		if conf == nil || c.File.Path == confOf(u) {
			conf = c
		}
	}
	name := strings.TrimSuffix(u, ".service")
	switch {
	case known && st.LoadState != "" && st.LoadState != "loaded":
		return unit.Start, fmt.Sprintf("unit is %s: install %s first", st.LoadState, name)
	case known && !st.Running():
		return unit.Start, fmt.Sprintf("%s is %s", name, st.ActiveState)
	case !known && conf != nil && !conf.Existed:
		return unit.Start, "configuration is new"
	case dropIn != nil && serviceSectionChanged(dropIn):
		what := "systemd drop-in changed"
		if conf != nil {
			what = "configuration and systemd drop-in changed"
		}
		return unit.Restart, what + "; drop-in [Service] settings (limits, restart policy) apply only when the daemon starts"
	case conf != nil:
		d, ok := daemon.ByUnit(u)
		if !ok {
			return unit.Restart, "configuration changed"
		}
		// Several files (a configuration and what it includes): the
		// strongest need wins.
		change := func(c *Change) (unit.Action, string) {
			if c.File.Path == daemon.ACLFile {
				return daemon.ACLChange()
			}
			return d.OnChange(c.Old, c.File.Content)
		}
		action, reason := change(confs[0])
		for _, c := range confs[1:] {
			a, r := change(c)
			if strength[a] > strength[action] {
				action, reason = a, r
			}
		}
		return action, reason
	case dropIn != nil:
		return unit.None, "only unit ordering changed; daemon-reload is enough"
	}
	return unit.None, "up to date"
}

var strength = map[unit.Action]int{unit.None: 0, unit.Reload: 1, unit.Restart: 2}

func confOf(u string) string {
	d, _ := daemon.ByUnit(u)
	return d.Conf
}

// serviceSectionChanged reports whether a drop-in's [Service] section
// differs; [Unit] ordering needs only a daemon-reload.
func serviceSectionChanged(c *Change) bool {
	return section(c.Old, "Service") != section(c.File.Content, "Service")
}

func section(b []byte, name string) string {
	var out []string
	in := false
	for _, l := range strings.Split(string(b), "\n") {
		l = strings.TrimSpace(l)
		switch {
		case l == "" || strings.HasPrefix(l, "#") || strings.HasPrefix(l, ";"):
		case strings.HasPrefix(l, "["):
			in = l == "["+name+"]"
		case in:
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

func stopReason(u string, out *render.Output, root fs.FS, states map[string]unit.State) (string, bool) {
	why := fmt.Sprintf("node %s (%s) does not need it", out.Node.Name, out.Node.RoleList())
	if st, ok := states[u]; ok {
		return why, st.Running()
	}
	// Without unit states, a configuration we once wrote means we ran it.
	d, ok := daemon.ByUnit(u)
	if !ok {
		return "", false
	}
	b, err := fs.ReadFile(root, strings.TrimPrefix(d.Conf, "/"))
	return why, err == nil && bytes.HasPrefix(b, []byte(Marker))
}
