// Package election picks the active bridge master among a cluster's bridge
// nodes without a central server. Every candidate's agent publishes a beat
// on its own mosquitto twice a second; the active one's bridge carries its
// beats to every broker. Each candidate listens on every broker and on
// every other candidate, so it sees the bridge master either through the
// brokers (the path that matters: is anyone bridging?) or directly.
//
// A standby takes over when no candidate has claimed the role for a while
// and it reaches a broker; the highest priority goes first. An active one
// stands down when it reaches no broker, when its own mosquitto stops
// taking its beats, or when another candidate has been active since before
// it (a tug of war: the incumbent keeps the role, so a node that comes back
// never takes it from the one that replaced it).
//
// Loops are impossible by construction, not by this timing: every candidate
// uses the same client id per broker (see daemon.Bridges), so two bridge
// masters at once take the brokers' sessions from each other rather than
// adding paths. The election only keeps that rare and short.
package election

import (
	"fmt"
	"time"
)

// Beat is what a candidate publishes about itself.
type Beat struct {
	Node     string    `json:"node"`
	Priority int       `json:"priority"`
	Active   bool      `json:"active"`
	Since    time.Time `json:"since,omitzero"` // when it became active
}

// Seen is the last beat of a candidate and when it arrived here (this
// node's clock: other clocks only order claims).
type Seen struct {
	Beat
	At time.Time
}

// Candidate is one bridge node.
type Candidate struct {
	Name     string
	Priority int
}

// Timing are the policy's durations.
type Timing struct {
	// Dead: a candidate silent this long is gone; a standby takes over
	// after this long without a bridge master.
	Dead time.Duration
	// Step is the extra wait per live standby of higher priority, which
	// goes first.
	Step time.Duration
	// Fence: an active one that reaches no broker, or whose mosquitto
	// takes no beat, this long stands down.
	Fence time.Duration
}

// DefaultTiming: beats every 500 ms; a master dead for 2 s is replaced.
var DefaultTiming = Timing{Dead: 2 * time.Second, Step: time.Second, Fence: 3 * time.Second}

// Obs is what a candidate knows at one moment.
type Obs struct {
	Now   time.Time
	Start time.Time       // when this candidate started observing
	Peers map[string]Seen // the other candidates' last beats, by node
	// Brokers is how many brokers this node reaches now; LastBroker the
	// last time it reached one.
	Brokers    int
	LastBroker time.Time
	// Local: this node's own mosquitto serves (not proven dead or hung);
	// LastLocal the last time it did.
	Local     bool
	LastLocal time.Time
	// Active and Since: this node's role now.
	Active bool
	Since  time.Time
}

// Decision is what a candidate does now.
type Decision int

const (
	Stay Decision = iota
	TakeOver
	StandDown
)

func (d Decision) String() string {
	return [...]string{"stay", "take over", "stand down"}[d]
}

// Verdict is a decision with its reason; Conflict marks a tug of war seen.
type Verdict struct {
	Decision Decision
	Reason   string
	Master   string // the bridge master as far as this node knows ("" none)
	Conflict bool
}

// Decide is the policy of candidate me.
func Decide(me Candidate, o Obs, t Timing) Verdict {
	fresh := func(s Seen) bool { return o.Now.Sub(s.At) <= t.Dead }
	var rival *Seen
	for _, s := range o.Peers {
		if s.Node == me.Name || !s.Active || !fresh(s) {
			continue
		}
		if rival == nil || before(s.Beat, rival.Beat) {
			s := s
			rival = &s
		}
	}
	if o.Active {
		mine := Beat{Node: me.Name, Priority: me.Priority, Since: o.Since}
		switch {
		case rival != nil && before(rival.Beat, mine):
			return Verdict{StandDown, fmt.Sprintf("tug of war: %s has been the bridge master since %s, before this node (since %s); standing down",
				rival.Node, rival.Since.Format(time.RFC3339Nano), o.Since.Format(time.RFC3339Nano)), rival.Node, true}
		case o.Brokers == 0 && o.Now.Sub(o.LastBroker) >= t.Fence:
			return Verdict{StandDown, fmt.Sprintf("reaches no broker for %s: standing down so that a standby that does can take over", o.Now.Sub(o.LastBroker).Round(time.Millisecond)), "", false}
		case !o.Local && o.Now.Sub(o.LastLocal) >= t.Fence:
			return Verdict{StandDown, fmt.Sprintf("its own mosquitto took no beat for %s: standing down", o.Now.Sub(o.LastLocal).Round(time.Millisecond)), "", false}
		case rival != nil:
			return Verdict{Stay, fmt.Sprintf("tug of war: %s claims the role too, since after this node; it stands down", rival.Node), me.Name, true}
		}
		return Verdict{Stay, "active bridge master", me.Name, false}
	}
	if rival != nil {
		return Verdict{Stay, rival.Node + " is the bridge master", rival.Node, false}
	}
	if o.Brokers == 0 {
		return Verdict{Stay, "no bridge master, but this node reaches no broker: not taking over", "", false}
	}
	if !o.Local {
		return Verdict{Stay, "no bridge master, but this node's own mosquitto does not serve: not taking over", "", false}
	}
	// Quiet since the last claim anyone made, or since this node started
	// listening: a node that just started first hears who is master.
	quiet := o.Start
	rank := 0
	for _, s := range o.Peers {
		if s.Active && s.At.After(quiet) {
			quiet = s.At
		}
		if !s.Active && fresh(s) && s.Priority > me.Priority {
			rank++ // a live standby of higher priority goes first
		}
	}
	wait := t.Dead + time.Duration(rank)*t.Step
	if q := o.Now.Sub(quiet); q < wait {
		return Verdict{Stay, fmt.Sprintf("no bridge master for %s; taking over after %s", q.Round(time.Millisecond), wait), "", false}
	}
	return Verdict{TakeOver, fmt.Sprintf("no bridge master for %s: taking over", o.Now.Sub(quiet).Round(time.Millisecond)), me.Name, false}
}

// before reports whether claim a precedes claim b: active since earlier,
// or since the same moment with a higher priority.
func before(a, b Beat) bool {
	if !a.Since.Equal(b.Since) {
		return a.Since.Before(b.Since)
	}
	return a.Priority > b.Priority
}
