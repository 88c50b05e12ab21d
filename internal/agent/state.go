package agent

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/mqha/mqha/internal/atomicfile"
	"github.com/mqha/mqha/internal/control"
	"github.com/mqha/mqha/internal/source"
)

// The recorder: every change of what the agent applied, refused or could
// not fetch goes through applyDone, refuse or fetched, which update the
// field, the state file, the status, the metrics and the sd_notify STATUS
// line together.

// restoreState reads what a previous run recorded.
func (a *Agent) restoreState() {
	a.applied = a.readState("applied")
	if a.applied != "" {
		// A damaged state file must not pass for a commit (nor, empty,
		// silently turn the rewind protection off): said, and ignored.
		why := "not a commit hash"
		if commitHash.MatchString(a.applied) {
			if _, err := a.d.Source.Read(a.applied, a.cfg.Path); err != nil {
				why = "a commit the local mirror does not hold (" + err.Error() + ")"
			} else {
				why = ""
			}
		}
		if why != "" {
			a.stateWarning = fmt.Sprintf("state file %s holds %q, %s: ignored; the next commit is applied without the ancestry check, as on a new node",
				filepath.Join(a.cfg.StateDir, "applied"), a.applied, why)
			a.log.Error("damaged state file", "warning", a.stateWarning)
			a.applied = ""
		}
	}
	a.st.Applied = a.applied
	if a.applied != "" {
		a.m.setApplied(a.applied)
	}
	// A commit refused before a restart is shown, and tried once more: what
	// made it fail (trusted keys, a missing package) may have been fixed.
	a.st.Refused, a.st.RefusedReason, _ = strings.Cut(a.readState("refused"), " ")
	// A commit whose load never finished took the agent down with it (a
	// crash, the OOM killer, the watchdog): refused for good, not tried
	// again into the same end.
	if t := a.readState("trying"); t != "" && t != a.applied {
		a.refuse(t, fmt.Errorf("commit %s: loading it did not finish: the agent was killed or crashed while reading or evaluating it (see journalctl -u mqha-agent); refused until the branch moves (mqha-agent sync --retry tries it again)", source.Short(t)))
		a.refused = t
	}
	os.Remove(filepath.Join(a.cfg.StateDir, "trying"))
}

var commitHash = regexp.MustCompile(`^[0-9a-f]{1,64}$`)

// applyDone records v as the applied commit.
func (a *Agent) applyDone(v *View) {
	if a.decom != nil {
		// Listed again: back in the cluster (this apply started its units).
		a.log.Info("this node is in the cluster definition again", "commit", source.Short(v.Commit))
		a.setDecommission(nil)
	}
	newCommit := a.recordApplied(v.Commit, v.Subject)
	a.view = v
	a.log.Info("converged", "commit", source.Short(v.Commit), "subject", v.Subject)
	insecure := a.insecurity()
	a.update(func(s *control.Status) {
		s.Insecure, s.Roles = insecure, v.Node.RoleList()
		if newCommit {
			s.Stages = a.stages
		}
	})
	a.stages = nil
}

// recordApplied makes hash the applied commit in the field, the state
// file, the metric and the status; a new one ends any refusal (it is
// history). It reports whether hash is new.
func (a *Agent) recordApplied(hash, subject string) bool {
	newCommit := hash != a.applied
	if newCommit {
		a.refused = ""
		os.Remove(filepath.Join(a.cfg.StateDir, "refused"))
	}
	a.applied = hash
	a.writeState("applied", hash)
	a.m.setApplied(hash)
	now := a.d.Now()
	a.update(func(s *control.Status) {
		if newCommit {
			s.Refused, s.RefusedReason = "", ""
		}
		s.Applied, s.AppliedSubject, s.AppliedAt = hash, subject, now
	})
	return newCommit
}

// refuse records that commit hash will not be applied, and why.
func (a *Agent) refuse(hash string, err error) {
	a.m.converges.WithLabelValues("refused").Inc()
	a.refused = hash
	why := oneLine(err.Error())
	a.writeState("refused", hash+" "+why)
	a.log.Error("commit refused", "commit", source.Short(hash), "err", err)
	a.update(func(s *control.Status) { s.Refused, s.RefusedReason = hash, why })
	a.stages = nil
}

// fetched records the outcome of asking the remote for the branch head.
func (a *Agent) fetched(err error) {
	msg := ""
	if err != nil {
		a.m.fetchErrors.Inc()
		msg = err.Error()
	}
	now := a.d.Now()
	a.update(func(s *control.Status) { s.LastFetch, s.FetchError = now, msg })
}

// update changes the status and says it on the STATUS line.
func (a *Agent) update(f func(*control.Status)) {
	a.mu.Lock()
	f(&a.st)
	line := statusLine(a.st)
	changed := line != a.said
	a.said = line
	a.mu.Unlock()
	if changed {
		a.d.Notify("STATUS=" + line)
	}
}

// statusLine is what `systemctl status mqha-agent` shows.
func statusLine(s control.Status) string {
	msg := "applied " + source.Short(s.Applied)
	if s.Refused != "" && s.Refused != s.Applied {
		msg += "; refused " + source.Short(s.Refused) + ": " + s.RefusedReason
	}
	if d := s.Decommission; d != nil {
		msg += "; " + map[bool]string{true: "decommissioning", false: "decommissioned"}[d.Done.IsZero()]
	}
	if s.FetchError != "" {
		msg += "; fetch error: " + s.FetchError
	}
	return msg
}

func (a *Agent) readState(name string) string {
	b, err := os.ReadFile(filepath.Join(a.cfg.StateDir, name))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		a.log.Warn("read state", "file", name, "err", err)
	}
	return strings.TrimSpace(string(b))
}

func (a *Agent) writeState(name, value string) {
	if err := atomicfile.Write(filepath.Join(a.cfg.StateDir, name), []byte(value+"\n"), 0o644); err != nil {
		a.log.Error("write state", "file", name, "err", err)
	}
}

func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }

// timing records how long a stage of converging the new commit took; an
// enforce of the applied commit is not recorded.
func (a *Agent) timing(stage string, d time.Duration) {
	if a.stages == nil && stage != "fetch+trust" {
		return // enforcing the applied commit, not converging a new one
	}
	a.stages = append(a.stages, control.Stage{Name: stage, Seconds: d.Seconds()})
	a.m.stage.WithLabelValues(stage).Observe(d.Seconds())
}
