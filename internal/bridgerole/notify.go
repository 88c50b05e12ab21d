package bridgerole

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/mqha/mqha/internal/daemon"
)

// Where the rendered connections are and where mosquitto includes them
// (variables for tests).
var (
	connections = daemon.BridgesFile
	link        = daemon.BridgesLink
)

// RestartMosquitto restarts mosquitto without waiting for the job: a
// mosquitto that is SIGSTOPped gets SIGTERM then SIGCONT from systemd, and
// keepalived must not wait on us meanwhile.
func RestartMosquitto() error {
	out, err := exec.Command("systemctl", "restart", "--no-block", daemon.Mosquitto.Unit).CombinedOutput()
	if err != nil {
		return fmt.Errorf("systemctl restart %s: %w: %s", daemon.Mosquitto.Unit, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// Notify makes this node bridge, or not, as keepalived's state says (MASTER,
// BACKUP, FAULT, STOP): on MASTER the connections are linked into mosquitto's
// include directory, on any other state the link goes first; when that
// changed, restart restarts mosquitto (it reads bridges only at start). It
// records the state, and says what it did.
func Notify(state string, priority int, restart func() error) (string, error) {
	switch state {
	case "MASTER", "BACKUP", "FAULT", "STOP":
	default:
		return "", fmt.Errorf("unknown keepalived state %q: want MASTER, BACKUP, FAULT or STOP", state)
	}
	// keepalived runs notify and the track script on their own: one at a
	// time here, and the state is written before the link changes, so a
	// check never undoes what a notify is doing.
	unlock, err := lock()
	if err != nil {
		return "", err
	}
	defer unlock()
	old, _, err := Read()
	if err != nil {
		old = State{} // a damaged file: start counting again
	}
	want := state == "MASTER"
	s := State{State: state, Since: time.Now(), SinceBoot: bootClock(), Priority: priority,
		Previous: old.State, Takeovers: old.Takeovers, StandDowns: old.StandDowns}
	if old.State == state {
		// keepalived may say a state twice (at start): the same stretch.
		s.Since, s.SinceBoot, s.Previous = old.Since, old.SinceBoot, old.Previous
	}
	if want && !old.Master() {
		s.Takeovers++
	}
	if !want && old.Master() {
		s.StandDowns++
	}
	if err := writeJSON(statePath(), s); err != nil {
		return "", err
	}
	return bridge(want, restart)
}

// bridge makes this node's mosquitto bridge (want) or not: the link made or
// taken out, and mosquitto restarted when that changed. It says what it did.
func bridge(want bool, restart func() error) (string, error) {
	_, lerr := os.Lstat(link)
	linked := lerr == nil
	var did string
	switch {
	case want && !linked:
		if _, err := os.Stat(connections); err != nil {
			return "", fmt.Errorf("elected bridge master, but the bridge connections are not rendered (%w): has this node's agent applied a commit with standbys?", err)
		}
		if err := os.MkdirAll(filepath.Dir(link), 0o755); err != nil {
			return "", err
		}
		tmp := link + ".new"
		os.Remove(tmp)
		if err := os.Symlink(connections, tmp); err != nil {
			return "", err
		}
		if err := os.Rename(tmp, link); err != nil {
			return "", err
		}
		did = "bridge connections linked in"
	case !want && linked:
		if err := os.Remove(link); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return "", err
		}
		did = "bridge connections taken out"
	default:
		return "nothing to change", nil
	}
	if err := restart(); err != nil {
		return did, err
	}
	return did + "; mosquitto restarted", nil
}
