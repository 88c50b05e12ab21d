package bridgerole

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/mqha/mqha/internal/atomicfile"
)

// Dir holds the role's files; /run: a rebooted node starts with none.
var Dir = "/run/mqha"

func statePath() string   { return filepath.Join(Dir, "bridge-state.json") }
func checkPath() string   { return filepath.Join(Dir, "bridge-check.json") }
func leavingPath() string { return filepath.Join(Dir, "bridge-leaving") }

// SetLeaving says this node is leaving the cluster (why; "": it is not):
// the agent of a node that a commit removed writes it at once, and the
// check then fails, so that keepalived moves the role away now rather
// than when the node's units stop after it drained (the peer, which runs
// the same commit, may already bridge alone: the two would take the
// brokers' sessions from each other meanwhile).
func SetLeaving(why string) error {
	if why == "" {
		if err := os.Remove(leavingPath()); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		return nil
	}
	if err := os.MkdirAll(Dir, 0o755); err != nil {
		return err
	}
	return atomicfile.Write(leavingPath(), []byte(why+"\n"), 0o644)
}

// leaving is why this node is leaving the cluster ("" when it is not).
func leaving() string {
	b, err := os.ReadFile(leavingPath())
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

// State is the role as keepalived last said it (bridge-notify writes it).
type State struct {
	// State is keepalived's: MASTER, BACKUP, FAULT or STOP.
	State string    `json:"state"`
	Since time.Time `json:"since"`
	// SinceBoot is Since on the boot clock (CLOCK_BOOTTIME), which a step of
	// the wall clock does not move: the check's grace counts on it.
	SinceBoot time.Duration `json:"sinceBoot"`
	Priority  int           `json:"priority"`
	// Previous is the state before; Takeovers and StandDowns count the
	// moves into and out of MASTER since boot.
	Previous   string `json:"previous,omitempty"`
	Takeovers  int    `json:"takeovers"`
	StandDowns int    `json:"standDowns"`
}

// Master reports whether this node is the bridge master.
func (s State) Master() bool { return s.State == "MASTER" }

// Check is the last result of the track script (bridge-check writes it).
type Check struct {
	At     time.Time `json:"at"`
	OK     bool      `json:"ok"`
	Reason string    `json:"reason,omitempty"`
	// Busy counts the checks in a row whose mosquitto did not answer but was
	// not stopped (busy, or restarting): one is forgiven, two fail.
	Busy int `json:"busy,omitempty"`
	// Reached is when (boot clock) a standby last reached a broker's bridge
	// listener, and ReachErr what it got when it did not: a standby asks
	// the brokers every reachEvery, not every second.
	Reached  time.Duration `json:"reached,omitempty"`
	ReachErr string        `json:"reachErr,omitempty"`
	// Seq counts the marks this node published as master; Seen is what it
	// last read of every master's mark; HoldUntil (boot clock) ends its
	// standing down for a master of higher priority. SeenAt (boot clock)
	// is when it read Seen.
	Seq       int               `json:"seq,omitempty"`
	Seen      map[string]string `json:"seen,omitempty"`
	SeenAt    time.Duration     `json:"seenAt,omitempty"`
	HoldUntil time.Duration     `json:"holdUntil,omitempty"`
	// ProbedAt (boot clock) is the master's last probe through its
	// bridges; ProbeFails counts those in a row that came through nowhere.
	ProbedAt   time.Duration `json:"probedAt,omitempty"`
	ProbeFails int           `json:"probeFails,omitempty"`
	// Down counts the master's checks in a row with no connection up.
	Down int `json:"down,omitempty"`
}

// Read returns the role's state and last check (zero values when missing:
// keepalived has not run the instance yet).
func Read() (State, Check, error) {
	var s State
	var c Check
	if err := readJSON(statePath(), &s); err != nil {
		return s, c, err
	}
	return s, c, readJSON(checkPath(), &c)
}

func readJSON(p string, v any) error {
	b, err := os.ReadFile(p)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("%s: %w", p, err)
	}
	return nil
}

func writeJSON(p string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return err
	}
	return atomicfile.Write(p, append(b, '\n'), 0o644)
}

// lock holds the role's lock file until the returned func is called.
func lock() (func(), error) {
	if err := os.MkdirAll(Dir, 0o755); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(filepath.Join(Dir, "bridge.lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, err
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("lock %s: %w", f.Name(), err)
	}
	return func() { f.Close() }, nil
}

// bootClock is the time since boot, suspend included: a wall clock step
// does not move it.
func bootClock() time.Duration {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts); err != nil {
		return 0
	}
	return time.Duration(ts.Nano())
}
