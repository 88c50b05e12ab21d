package soak

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"time"
)

// Event is one step of the schedule: a fault held open For, or a commit.
type Event struct {
	At     time.Duration `json:"at"` // from the start of the run
	Fault  string        `json:"fault,omitempty"`
	Unit   string        `json:"unit,omitempty"`
	Node   string        `json:"node,omitempty"`
	For    time.Duration `json:"for,omitempty"`
	Commit string        `json:"commit,omitempty"`
	// Shift is a clock step's: an hour ahead or behind.
	Shift time.Duration `json:"shift,omitempty"`
}

func (e Event) String() string {
	if e.Commit != "" {
		return "commit " + e.Commit
	}
	s := e.Fault
	if e.Unit != "" {
		s += " " + e.Unit
	}
	if e.Shift != 0 {
		s += fmt.Sprintf(" %+.0fh", e.Shift.Hours())
	}
	if e.Node != "" {
		s += " on " + e.Node
	}
	return fmt.Sprintf("%s for %s", s, e.For)
}

// Group is what the fault takes down, of what the design tolerates one of
// at a time: "lb", "broker", "bridge" (a node of that role), "git".
func (e Event) Group(nodes []Node) string {
	if e.Fault == GitDown || e.Fault == GitHang {
		return "git"
	}
	for _, n := range nodes {
		if n.Name == e.Node {
			return n.group()
		}
	}
	return e.Node
}

// Times: no event in the first warmup (the load connects), no fault open
// in the last tail (the cluster settles and the checker verifies it).
const (
	warmup = 20 * time.Second
	tail   = 90 * time.Second
)

// faultFor is how long each kind stays open, at least and at most.
var faultFor = map[string][2]time.Duration{
	Kill:     {15 * time.Second, 15 * time.Second},
	Stop:     {10 * time.Second, 30 * time.Second},
	Freeze:   {5 * time.Second, 20 * time.Second},
	PowerOff: {20 * time.Second, 60 * time.Second},
	Cut:      {10 * time.Second, 40 * time.Second},
	GitDown:  {20 * time.Second, 90 * time.Second},
	GitHang:  {20 * time.Second, 90 * time.Second},
	// An hour ahead or behind: which one is drawn with the duration.
	ClockStep: {20 * time.Second, 60 * time.Second},
	DiskFull:  {20 * time.Second, 60 * time.Second},
}

// Schedule draws the run's events from its seed: the same configuration
// gives the same schedule. At most two faults are open at once, never two
// of one group (one load balancer, one bridge node, one broker node, the
// git server), and every fault ends before the tail.
func Schedule(c Config) []Event {
	r := rand.New(rand.NewPCG(c.Seed, 0x50a4))
	end := c.Duration - tail
	var out, open []Event
	added, standby := false, slices.ContainsFunc(c.Nodes, func(n Node) bool { return n.Standby })
	hasStandby := standby
	for t := warmup; ; {
		t += time.Duration(float64(c.Gap) * (0.25 + 1.5*r.Float64()))
		if t >= end {
			break
		}
		open = slices.DeleteFunc(open, func(e Event) bool { return e.At+e.For <= t })
		if len(c.Commits) > 0 && (len(c.Faults) == 0 || r.IntN(10) < 3) {
			var kinds []string
			bridgeFault := slices.ContainsFunc(open, func(e Event) bool { return e.Group(c.Nodes) == "bridge" })
			for _, k := range c.Commits {
				if k == AddBroker && (added || !hasSpare(c.Nodes)) || k == RemoveBroker && !added ||
					k == RemoveStandby && (!standby || bridgeFault) || k == AddStandby && (standby || !hasStandby) {
					continue
				}
				kinds = append(kinds, k)
			}
			if len(kinds) == 0 {
				continue
			}
			k := kinds[r.IntN(len(kinds))]
			added = added && k != RemoveBroker || k == AddBroker
			standby = standby && k != RemoveStandby || k == AddStandby
			out = append(out, Event{At: t, Commit: k})
			continue
		}
		if len(open) >= 2 || len(c.Faults) == 0 {
			continue
		}
		e, ok := drawFault(r, c, open, standby)
		if !ok {
			continue
		}
		e.At = t
		e.For = min(e.For, end-t)
		out = append(out, e)
		open = append(open, e)
	}
	return out
}

// drawFault picks a fault whose group has none open; without the standby
// bridge node, none of a bridge node.
func drawFault(r *rand.Rand, c Config, open []Event, standby bool) (Event, bool) {
	taken := map[string]bool{}
	for _, o := range open {
		taken[o.Group(c.Nodes)] = true
	}
	if !standby {
		taken["bridge"] = true
	}
	kind := c.Faults[r.IntN(len(c.Faults))]
	span := faultFor[kind]
	e := Event{Fault: kind, For: span[0] + time.Duration(r.Int64N(int64(span[1]-span[0])+1))}
	if kind == GitDown || kind == GitHang {
		return e, !taken["git"]
	}
	var nodes []Node
	for _, n := range c.Nodes {
		if !n.Spare && !taken[n.group()] {
			nodes = append(nodes, n)
		}
	}
	if len(nodes) == 0 {
		return e, false
	}
	n := nodes[r.IntN(len(nodes))]
	e.Node = n.Name
	if kind == ClockStep {
		e.Shift = time.Hour
		if r.IntN(2) == 0 {
			e.Shift = -time.Hour
		}
	}
	if kind == Kill || kind == Stop || kind == Freeze {
		var units []string
		for _, u := range Units {
			if n.Runs(u) {
				units = append(units, u)
			}
		}
		e.Unit = units[r.IntN(len(units))]
	}
	return e, true
}

func hasSpare(nodes []Node) bool {
	return slices.ContainsFunc(nodes, func(n Node) bool { return n.Spare })
}
