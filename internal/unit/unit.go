// Package unit is the vocabulary shared by everything that drives systemd
// units: what a unit needs (an Action) and what systemd says of it (a State).
// It imports nothing of the project, so the planner, the D-Bus adapter and
// the health monitor can all speak it without importing each other.
package unit

// Action is what a unit needs.
type Action string

const (
	None    Action = "none"
	Start   Action = "start"
	Reload  Action = "reload"
	Restart Action = "restart"
	Stop    Action = "stop"
)

// State is what systemd says of a unit.
type State struct {
	ActiveState string // active, inactive, failed, activating, ...
	LoadState   string // loaded, not-found, masked, ...
	// Job: systemd has a job queued or running for the unit (a start, a
	// restart someone asked for). Repairs leave such a unit to its job.
	Job bool
}

// Running reports whether the unit is up or coming up.
func (s State) Running() bool {
	return s.ActiveState == "active" || s.ActiveState == "activating" || s.ActiveState == "reloading"
}
