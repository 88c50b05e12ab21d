package agent

// The record's state files in the state directory: applied, refused,
// trying (a load under way), suspended, decommission, history.json,
// verdicts.json. What a previous run
// wrote is read back at start.

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/mqha/mqha/internal/atomicfile"
	"github.com/mqha/mqha/internal/control"
	"github.com/mqha/mqha/internal/source"
)

var commitHash = regexp.MustCompile(`^[0-9a-f]{1,64}$`)

// restore reads what a previous run recorded in the state directory;
// readable says whether the local mirror holds a commit.
func (r *record) restore(readable func(hash string) error) {
	var f facts
	f.applied = r.readState("applied")
	if f.applied != "" {
		// A damaged state file must not pass for a commit (nor, empty,
		// silently turn the rewind protection off): said, and ignored.
		why := "not a commit hash"
		if commitHash.MatchString(f.applied) {
			if err := readable(f.applied); err != nil {
				why = "a commit the local mirror does not hold (" + err.Error() + ")"
			} else {
				why = ""
			}
		}
		if why != "" {
			f.stateWarning = fmt.Sprintf("state file %s holds %q, %s: ignored; the next commit is applied without the ancestry check, as on a new node",
				r.path("applied"), f.applied, why)
			r.log.Error("damaged state file", "warning", f.stateWarning)
			f.applied = ""
		}
	}
	if f.applied != "" {
		r.m.setApplied(f.applied)
	}
	// A commit refused before a restart is shown, and tried once more: what
	// made it fail (trusted keys, a missing package) may have been fixed.
	f.refused, f.refusedReason, _ = strings.Cut(r.readState("refused"), " ")
	if h := r.readState("history.json"); h != "" {
		if err := json.Unmarshal([]byte(h), &f.history); err != nil {
			r.log.Warn("the recorded history of reconciliations does not read: it starts anew", "file", r.path("history.json"), "err", err)
			f.history = nil
		}
	}
	if v := r.readState("verdicts.json"); v != "" {
		if err := json.Unmarshal([]byte(v), &f.verdicts); err != nil {
			r.log.Warn("this node's recorded verdicts do not read: none is published", "file", r.path("verdicts.json"), "err", err)
			f.verdicts = nil
		}
	}
	f.suspended = r.restoreSuspension()
	f.decom = r.restoreDecommission()
	r.m.suspended.Set(map[bool]float64{true: 1, false: 0}[f.suspended != nil])
	r.m.decommission.Set(decomLevel(f.decom))
	r.change(func(cur *facts) { *cur = f })
	// A commit whose load never finished took the agent down with it (a
	// crash, the OOM killer, the watchdog): refused for good, not tried
	// again into the same end.
	if t := r.readState("trying"); t != "" && t != f.applied {
		r.Refuse(t, fmt.Errorf("commit %s: loading it did not finish: the agent was killed or crashed while reading or evaluating it (see journalctl -u mqha-agent); refused until the branch moves (mqha-agent sync --retry tries it again)", source.Short(t)))
	}
	r.removeState("trying")
}

// restoreSuspension reads a suspension an earlier run recorded; one that
// cannot be read stays a suspension (lifting it is the operator's call).
func (r *record) restoreSuspension() *control.Suspension {
	b := r.readState("suspended")
	if b == "" {
		return nil
	}
	var s control.Suspension
	if err := json.Unmarshal([]byte(b), &s); err != nil {
		r.log.Error("unreadable suspension state; staying suspended", "file", r.path("suspended"), "err", err)
		s = control.Suspension{Since: r.now(), Reason: "unreadable state file " + r.path("suspended") + ": mqha-agent resume to clear"}
	}
	return &s
}

// restoreDecommission reads a decommission an earlier run recorded; one
// that cannot be read is ignored (the next commit decides again).
func (r *record) restoreDecommission() *control.Decommission {
	b := r.readState("decommission")
	if b == "" {
		return nil
	}
	var d control.Decommission
	if err := json.Unmarshal([]byte(b), &d); err != nil || d.Commit == "" {
		r.log.Error("unreadable decommission state; ignored", "file", r.path("decommission"), "err", err)
		return nil
	}
	return &d
}

func (r *record) path(name string) string { return filepath.Join(r.dir, name) }

func (r *record) readState(name string) string {
	b, err := os.ReadFile(r.path(name))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		r.log.Warn("read state", "file", name, "err", err)
	}
	return strings.TrimSpace(string(b))
}

func (r *record) writeState(name, value string) {
	if err := atomicfile.Write(r.path(name), []byte(value+"\n"), 0o644); err != nil {
		r.log.Error("write state", "file", name, "err", err)
	}
}

func (r *record) removeState(name string) error {
	if err := os.Remove(r.path(name)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove state file: %w", err)
	}
	return nil
}

func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }
