package bridgerole

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/mqha/mqha/internal/daemon"
	"github.com/mqha/mqha/internal/probe"
)

// CheckConfig is what the track script checks, and with which certificate.
type CheckConfig struct {
	Local   string   // this node's mosquitto (its client listener)
	Name    string   // this node's name (client ids)
	Brokers []string // the brokers' bridge listeners
	// LocalTLS presents the node's certificate and verifies the local
	// listener's (its name set); BridgeTLS verifies the brokers with the node
	// CA, as the bridges do.
	LocalTLS, BridgeTLS *tls.Config
	// PIDFile is mosquitto's: a process that is stopped or gone fails at
	// once, one that runs but did not answer gets a second chance.
	PIDFile string
	// Restart restarts mosquitto, when the check finds it bridging against
	// keepalived's state (or not bridging as master) and puts that right.
	Restart func() error
	// Markers are the bridge masters' marks (daemon.MarkerTopics), and
	// Priority this node's: of two masters at once, the lower stands down.
	Markers  string
	Priority int
	// Probes is where the master's probe goes through its bridges
	// (daemon.ProbeTopics); empty: no probe.
	Probes string
	// BrokerClient are the brokers' client listeners, where the marks are
	// read (with LocalTLS, which trusts the cluster CA).
	BrokerClient []string
}

const (
	// answerWithin bounds the local MQTT connect; the whole check stays
	// within keepalived's script timeout.
	answerWithin = 800 * time.Millisecond
	// masterGrace: after a take-over the restarted mosquitto connects its
	// bridges within a second or two (restart_timeout 1 5).
	masterGrace = 5 * time.Second
	// settle is how long the master listens for its bridges' states.
	settle = 150 * time.Millisecond
	// reachEvery: a standby that reached a broker asks again only then.
	reachEvery = 5 * time.Second
	// probeEvery: the master sends a probe through its bridges this often
	// (every check while one failed); probeFails failing in a row fail the
	// check.
	probeEvery  = 3 * time.Second
	probeWithin = time.Second
	probeFails  = 3
	// holdDown: a master that stood down for another master of higher
	// priority (they cannot hear each other) stays out this long while that
	// one's mark stays fresh, instead of taking the role again at once.
	holdDown = 60 * time.Second
	// marksFrom: the marks are read on this many brokers at most.
	marksFrom = 3
)

// Run is one run of the track script: nil passes. It records the result.
// First it makes mosquitto bridge as keepalived's last state says, should
// anything else have changed that (a link made or removed by hand, /run
// emptied): repaired is what it did then ("" when nothing).
func Run(ctx context.Context, cfg CheckConfig) (repaired string, err error) {
	unlock, err := lock()
	if err != nil {
		return "", err
	}
	st, last, _ := Read()
	did, err := bridge(st.Master(), cfg.Restart)
	unlock()
	if err != nil {
		return "", err
	}
	if did != "nothing to change" {
		repaired = did
	}
	// What the last check counted goes on; its verdict is made anew.
	c := last
	c.At, c.Reason = time.Now(), ""
	err = check(ctx, cfg, st, &c)
	c.OK = err == nil
	if err != nil {
		c.Reason = err.Error()
	}
	if werr := writeJSON(checkPath(), c); werr != nil && err == nil {
		return repaired, werr
	}
	return repaired, err
}

func check(ctx context.Context, cfg CheckConfig, st State, c *Check) error {
	if why := leaving(); why != "" {
		return fmt.Errorf("this node is leaving the cluster (%s): it takes no bridge role", why)
	}
	lctx, cancel := context.WithTimeout(ctx, answerWithin)
	defer cancel()
	var up, all int
	var err error
	if st.Master() {
		c.Seq++
		mark := ""
		if cfg.Markers != "" {
			mark = cfg.Markers + "/" + cfg.Name
		}
		up, all, err = probe.BridgesUp(lctx, cfg.Local, cfg.LocalTLS, cfg.Name, mark, fmt.Sprintf("%d %d", cfg.Priority, c.Seq), settle)
	} else {
		err = probe.MQTTConnects(cfg.Local, cfg.LocalTLS, cfg.Name)(lctx)
	}
	if err != nil {
		why := notRunning(cfg.PIDFile)
		if why == stopped {
			return fmt.Errorf("mosquitto %s: %w", why, err)
		}
		// Busy, or restarting (a notify, a commit or systemd restarts it in
		// well under a second): forgiven once, not twice in a row.
		if c.Busy++; c.Busy >= 2 {
			if why == "" {
				why = fmt.Sprintf("runs but answered no MQTT connect within %s", answerWithin)
			}
			return fmt.Errorf("mosquitto %s, %d checks in a row: %w", why, c.Busy, err)
		}
		return nil
	}
	c.Busy = 0
	if st.Master() {
		// Just elected, or mosquitto just (re)started (a commit restarted
		// it): its bridges are still connecting.
		if bootClock()-st.SinceBoot < masterGrace || startedWithin(cfg.PIDFile, masterGrace) {
			return nil
		}
		if up < all {
			// A connection down: a broker restarting, or another master
			// taking the sessions over (a tug of war). The marks say: the
			// lower stands down, the higher stays, whatever its
			// connections say meanwhile.
			marks, at := readMarks(ctx, cfg)
			higher, lower := otherMasters(marks, at, cfg, c)
			if higher != "" {
				c.HoldUntil = bootClock() + holdDown
				return fmt.Errorf("another bridge master, %s, bridges too (the bridge nodes cannot hear each other): standing down for at least %s", higher, holdDown)
			}
			if lower != "" {
				return nil
			}
		}
		// None up twice in a row (the marks are read anew in between: a
		// tug of war shows there, and then the lower master stands down).
		if up == 0 {
			if c.Down++; c.Down >= 2 {
				return fmt.Errorf("bridge master with none of its %d bridge connections up, %d checks in a row: it carries nothing between brokers", all, c.Down)
			}
			return nil
		}
		c.Down = 0
		return probeBridges(ctx, cfg, c)
	}
	// A lone bridge node bridging: it runs another commit than this node
	// (one of the two has not fetched the commit that added or removed the
	// standby) and cannot hand over; taking the role would take the
	// brokers' bridge sessions from it in turn, again and again.
	marks, at := readMarks(ctx, cfg) // once a check: the two rules below read the same
	if lone := loneBridge(marks, at, cfg); lone != "" {
		return fmt.Errorf("%s bridges as the lone bridge node of its definition (its mark is fresh): this node takes no bridge role meanwhile; one of the two runs an older commit (compare them in mqha-agent fleet)", lone)
	}
	if bootClock() < c.HoldUntil {
		if other, _ := otherMasters(marks, at, cfg, c); other != "" {
			return fmt.Errorf("standing down while %s bridges (until its mark goes stale, %s at most)", other, time.Duration(c.HoldUntil-bootClock()).Round(time.Second))
		}
	}
	// A standby (or a node in FAULT): could it bridge if elected?
	if c.ReachErr == "" && c.Reached > 0 && bootClock()-c.Reached < reachEvery {
		return nil
	}
	if len(cfg.Brokers) == 0 {
		c.Reached, c.ReachErr = bootClock(), ""
		return nil
	}
	var errs []error
	for _, b := range cfg.Brokers {
		bctx, cancel := context.WithTimeout(ctx, answerWithin)
		err := probe.TLSAccepted(b, bridgeTLS(cfg.BridgeTLS, b), 150*time.Millisecond)(bctx)
		cancel()
		if err == nil {
			c.Reached, c.ReachErr = bootClock(), ""
			return nil
		}
		errs = append(errs, err)
	}
	err = fmt.Errorf("reaches no broker's bridge listener with this node's certificate: %w", errors.Join(errs...))
	c.ReachErr = err.Error()
	return err
}

// probeBridges sends a probe from each broker through this master's
// bridges at once (every probeEvery, and every check while they fail): a
// bridge whose connection says up but whose peer went silent carries
// nothing. One probe through passes; none through probeFails checks in a
// row fails. The probe queues behind what the bridge carries, so a burst
// it needs more than probeWithin to drain counts once, not as a failure.
func probeBridges(ctx context.Context, cfg CheckConfig, c *Check) error {
	if cfg.Probes == "" || len(cfg.BrokerClient) == 0 || c.ProbeFails == 0 && bootClock()-c.ProbedAt < probeEvery {
		return nil
	}
	c.ProbedAt = bootClock()
	pctx, cancel := context.WithTimeout(ctx, probeWithin)
	defer cancel()
	errs := make(chan error, len(cfg.BrokerClient))
	for _, b := range cfg.BrokerClient {
		go func() {
			errs <- probe.ThroughBridge(pctx, cfg.Local, cfg.LocalTLS, b, bridgeTLS(cfg.LocalTLS, b), cfg.Name, cfg.Probes+"/"+cfg.Name)
		}()
	}
	var failed []error
	for range cfg.BrokerClient {
		if err := <-errs; err != nil {
			failed = append(failed, err)
			continue
		}
		c.ProbeFails = 0
		return nil
	}
	if c.ProbeFails++; c.ProbeFails >= probeFails {
		return fmt.Errorf("no probe came through this master's bridges from any broker, %d checks in a row: %w", c.ProbeFails, errors.Join(failed...))
	}
	return nil
}

// otherMasters reads the marks read on broker b and returns a
// master of higher and one of lower priority than this node whose mark
// changed since the last check read it (masters bridging now), or "".
// What it read is kept in c.
func otherMasters(marks map[string]string, b string, cfg CheckConfig, c *Check) (higher, lower string) {
	if b == "" {
		return "", ""
	}
	// Changed within the last few seconds: read long ago, any change
	// since says nothing about now.
	recent := bootClock()-c.SeenAt < 3*time.Second
	seen := map[string]string{}
	for node, v := range marks {
		seen[node] = v
		var prio, seq int
		if node != cfg.Name && daemon.LoneMarkFresh(v, time.Now()) {
			higher = fmt.Sprintf("%s (a lone bridge node, its mark fresh on %s)", node, b)
			continue
		}
		if node == cfg.Name || !recent || c.Seen[node] == "" || c.Seen[node] == v {
			continue
		}
		if _, err := fmt.Sscanf(v, "%d %d", &prio, &seq); err != nil || prio == daemon.LonePriority {
			continue
		}
		who := fmt.Sprintf("%s (priority %d, its mark fresh on %s)", node, prio, b)
		if prio > cfg.Priority {
			higher = who
		} else if lower == "" {
			lower = who
		}
	}
	c.Seen, c.SeenAt = seen, bootClock()
	return higher, lower
}

// loneBridge is another node bridging as the lone bridge node of its
// definition (its mark, read on broker b, fresh), or "".
func loneBridge(marks map[string]string, b string, cfg CheckConfig) string {
	for node, v := range marks {
		if node != cfg.Name && daemon.LoneMarkFresh(v, time.Now()) {
			return fmt.Sprintf("%s (its mark on %s)", node, b)
		}
	}
	return ""
}

// readMarks reads every bridge node's mark on a broker: all are asked at
// once, and of those that answered within answerWithin the first in the
// definition's order is taken (the same broker each time while it answers:
// the marks are compared from one read to the next). It returns node ->
// mark, and the broker ("" when none answered).
func readMarks(ctx context.Context, cfg CheckConfig) (map[string]string, string) {
	if cfg.Markers == "" || len(cfg.BrokerClient) == 0 {
		return nil, ""
	}
	rctx, cancel := context.WithTimeout(ctx, answerWithin)
	defer cancel()
	type answer struct {
		broker string
		marks  map[string]string
		err    error
	}
	// Every master's mark is on every broker: three to ask are enough, and
	// a standby asks every second, whatever the number of brokers.
	asked := cfg.BrokerClient[:min(len(cfg.BrokerClient), marksFrom)]
	answers := make(chan answer, len(asked))
	for _, b := range asked {
		go func() {
			marks, err := probe.Retained(rctx, b, bridgeTLS(cfg.LocalTLS, b), cfg.Name, cfg.Markers+"/+", settle)
			answers <- answer{b, marks, err}
		}()
	}
	got := map[string]map[string]string{}
	for range asked {
		a := <-answers
		if a.err == nil {
			got[a.broker] = a.marks
		}
	}
	for _, b := range asked {
		if marks, ok := got[b]; ok {
			out := map[string]string{}
			for topic, v := range marks {
				out[strings.TrimPrefix(topic, cfg.Markers+"/")] = v
			}
			return out, b
		}
	}
	return nil, ""
}

// bridgeTLS verifies broker addr (host:port) by its address, as a bridge
// does.
func bridgeTLS(tc *tls.Config, addr string) *tls.Config {
	host, _, _ := net.SplitHostPort(addr)
	return daemon.WithName(tc, host)
}

// startedWithin reports whether the process in pidFile started less than d
// ago (boot clock; /proc/PID/stat's starttime counts clock ticks since boot).
func startedWithin(pidFile string, d time.Duration) bool {
	f := procStat(pidFile)
	if len(f) < 20 {
		return false
	}
	ticks, err := strconv.ParseInt(f[19], 10, 64) // field 22, counted after the state (field 3)
	if err != nil {
		return false
	}
	const clkTck = 100 // USER_HZ on Linux
	return bootClock()-time.Duration(ticks)*time.Second/clkTck < d
}

// procStat is /proc/PID/stat of the process in pidFile from its state on
// (field 3 on: the command before it may hold spaces).
func procStat(pidFile string) []string {
	b, err := os.ReadFile(pidFile)
	if err != nil {
		return nil
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return nil
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return nil
	}
	s := string(stat)
	i := strings.LastIndex(s, ")")
	if i < 0 {
		return nil
	}
	return strings.Fields(s[i+1:])
}

// stopped is notRunning's word for a process stopped by a signal: hung
// for good, unlike one restarting.
const stopped = "is stopped (SIGSTOP?)"

// notRunning says why mosquitto cannot answer ("" when it runs): no
// process, or one stopped (SIGSTOP) or a zombie.
func notRunning(pidFile string) string {
	if pidFile == "" {
		return ""
	}
	f := procStat(pidFile)
	if len(f) == 0 {
		return "is not running (no live process in " + pidFile + ")"
	}
	switch f[0] {
	case "T", "t":
		return stopped
	case "Z", "X":
		return "is dead"
	}
	return ""
}
