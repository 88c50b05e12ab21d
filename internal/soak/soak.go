// Package soak is the soak's plan and its checker: a seeded schedule of
// faults and commits for the lab (schedule.go), the invariants checked over
// everything a run recorded (check.go), and the report an operator attaches
// to a change review: JSON, a text summary (report.go) and a timeline
// picture (timeline.go). The e2e suite runs it on the lab (e2e/soak_test.go):
// it carries the faults out, pushes the commits, keeps the load on and
// records what the checker reads. The checker is pure: it is unit-tested
// on recorded runs, and a broken agent makes it fail.
package soak

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Fault kinds. A daemon fault names its unit; git faults name no node.
const (
	Kill     = "kill"     // kill -9 the unit's processes (systemd or the agent restarts it)
	Stop     = "stop"     // systemctl stop, started again when the fault ends (unless repaired)
	Freeze   = "sigstop"  // SIGSTOP, SIGCONT when the fault ends
	PowerOff = "poweroff" // the node's container killed, booted again when the fault ends
	Cut      = "cut"      // the node's link down, up again when the fault ends
	GitDown  = "git-down" // the git server stopped
	GitHang  = "git-hang" // the git server accepts and never answers
	// The wall clock of the node's daemons stepped an hour (libfaketime on
	// mosquitto, nginx and keepalived; the agent, a static Go binary, is
	// out of LD_PRELOAD's reach, and the kernel's clock is the host's).
	ClockStep = "clock"
	// The node's state directory (/var/lib/mqha, a 64 MiB tmpfs during the
	// soak, so the host's disk is never touched) filled to the last byte.
	DiskFull = "disk-full"
)

// FaultKinds are every kind, in the order they are listed.
var FaultKinds = []string{Kill, Stop, Freeze, PowerOff, Cut, GitDown, GitHang, ClockStep, DiskFull}

// Commit kinds: each is pushed as a real commit and must converge, or be
// refused, as it would alone.
const (
	AddBroker    = "add-broker"    // the spare broker joins
	RemoveBroker = "remove-broker" // and leaves again
	Reload       = "reload"        // a setting the daemons reload (nginx, keepalived)
	Restart      = "restart"       // a setting that restarts mosquitto
	Refused      = "refused"       // a value the schema refuses
	Hostile      = "hostile"       // a definition too large to read
	// The standby bridge node leaves the definition (the other bridges
	// alone, no election) and joins again. While it is out no fault hits a
	// bridge node: one bridge node is what the design cannot lose.
	RemoveStandby = "remove-standby"
	AddStandby    = "add-standby"
)

// CommitKinds are every kind.
var CommitKinds = []string{AddBroker, RemoveBroker, Reload, Restart, Refused, Hostile, RemoveStandby, AddStandby}

// Units a daemon fault can hit.
var Units = []string{"mosquitto", "nginx", "keepalived", "mqha-agent"}

// Node is a node of the lab and what it runs.
type Node struct {
	Name  string
	Roles []string // lb, broker, bridge
	Spare bool     // not in the cluster until add-broker
	// Standby: the standby bridge node, in the cluster but for
	// remove-standby.
	Standby bool
}

// Runs reports whether the node runs unit.
func (n Node) Runs(unit string) bool {
	has := func(r string) bool { return slices.Contains(n.Roles, r) }
	switch unit {
	case "nginx":
		return has("lb")
	case "keepalived":
		return has("lb") || has("bridge")
	case "mosquitto":
		return has("broker") || has("bridge")
	}
	return unit == "mqha-agent"
}

// group is what the design tolerates one of at a time: one load balancer,
// one bridge node, one broker node down.
func (n Node) group() string {
	for _, r := range []string{"lb", "bridge", "broker"} {
		if slices.Contains(n.Roles, r) {
			return r
		}
	}
	return n.Name
}

// Config is one run: how long, which seed, which nodes, which faults and
// commits, how many clients.
type Config struct {
	Duration time.Duration
	Seed     uint64
	Faults   []string
	Commits  []string
	Clients  int
	// Gap is the mean time between two events of the schedule.
	Gap   time.Duration
	Nodes []Node
}

// Settings parse the soak's settings (make soak DURATION= SEED= FAULTS=
// COMMITS= CLIENTS=); every bad value is an error that names it and says
// what it accepts. An empty SEED picks one (printed with the run).
func Settings(get func(string) string) (Config, error) {
	c := Config{Duration: time.Hour, Faults: FaultKinds, Commits: CommitKinds, Clients: 200, Gap: 40 * time.Second}
	if v := get("DURATION"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d < time.Minute {
			return c, fmt.Errorf("DURATION=%q: want a duration of a minute or more, e.g. 60m", v)
		}
		c.Duration = d
	}
	if v := get("SEED"); v != "" {
		s, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			return c, fmt.Errorf("SEED=%q: want a non-negative integer (the seed a run printed replays it)", v)
		}
		c.Seed = s
	} else {
		c.Seed = rand.Uint64() >> 1
	}
	var err error
	if c.Faults, err = kinds(get("FAULTS"), "FAULTS", FaultKinds); err != nil {
		return c, err
	}
	if c.Commits, err = kinds(get("COMMITS"), "COMMITS", CommitKinds); err != nil {
		return c, err
	}
	if v := get("CLIENTS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 4 || n > 5000 {
			return c, fmt.Errorf("CLIENTS=%q: want a number of clients from 4 to 5000", v)
		}
		c.Clients = n
	}
	if v := get("GAP"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d < 5*time.Second {
			return c, fmt.Errorf("GAP=%q: want a duration of 5s or more (the mean time between events)", v)
		}
		c.Gap = d
	}
	return c, nil
}

// kinds reads a comma-separated subset of all ("" all, "none" none).
func kinds(v, name string, all []string) ([]string, error) {
	switch v {
	case "":
		return all, nil
	case "none":
		return nil, nil
	}
	var out []string
	for _, k := range strings.Split(v, ",") {
		k = strings.TrimSpace(k)
		if !slices.Contains(all, k) {
			return nil, fmt.Errorf("%s: unknown kind %q; the kinds are %s (or none)", name, k, strings.Join(all, ","))
		}
		out = append(out, k)
	}
	return out, nil
}

// Replay is the command that runs the same schedule again.
func (c Config) Replay() string {
	s := fmt.Sprintf("make soak DURATION=%s SEED=%d CLIENTS=%d", c.Duration, c.Seed, c.Clients)
	if !slices.Equal(c.Faults, FaultKinds) {
		s += " FAULTS=" + list(c.Faults)
	}
	if !slices.Equal(c.Commits, CommitKinds) {
		s += " COMMITS=" + list(c.Commits)
	}
	if c.Gap != 40*time.Second {
		s += " GAP=" + c.Gap.String()
	}
	return s
}

func list(k []string) string {
	if len(k) == 0 {
		return "none"
	}
	return strings.Join(k, ",")
}
