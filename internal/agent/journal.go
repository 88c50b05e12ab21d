package agent

import (
	"context"
	"fmt"
	"iter"
	"os/exec"
	"regexp"
	"slices"
	"strings"
	"time"
)

// mosquitto 2.0 has no counter of the messages it drops when a session's
// queue is full (max_queued_messages/bytes); it logs this line once each
// time a session starts dropping. The agent follows mosquitto's journal,
// counts those episodes per client, and shows them in status and metrics,
// so that losing acknowledged messages is never silent.
const dropLine = "Outgoing messages are being dropped for client "

// keepalived with check_unicast_src logs, and drops, a VRRP advert from an
// address that is not a unicast peer: a host on the segment claiming the
// VIP. The agent counts them per source, so that is never silent either
// (a flood of them can still make the backup miss the master's adverts and
// take over, measured with keepalived 2.2.7).
var forgedLine = regexp.MustCompile(`unicast source address (\S+) not a unicast peer`)

// countForged counts the forged adverts among keepalived's log lines.
func (a *Agent) countForged(lines []string) {
	for src, n := range count(lines, func(l string) (string, bool) {
		m := forgedLine.FindStringSubmatch(l)
		if m == nil {
			return "", false
		}
		return m[1], true
	}) {
		a.log.Warn("keepalived dropped VRRP adverts from a host that is not a load balancer of the cluster", "source", src, "adverts", n)
		a.facts.Forged(src, n)
	}
}

// countDrops counts the drop episodes among mosquitto's log lines.
func (a *Agent) countDrops(lines []string) {
	for client, n := range count(lines, func(l string) (string, bool) {
		_, client, ok := strings.Cut(l, dropLine)
		return strings.TrimSuffix(strings.TrimSpace(client), "."), ok
	}) {
		a.log.Warn("mosquitto is dropping messages for a client: its queue is full (mqtt.maxQueuedMessages/maxQueuedBytes)", "client", client, "episodes", n)
		a.facts.Dropped(client, n)
	}
}

// count counts the lines match picks, by the key it names, in the order
// of each key's first line.
func count(lines []string, match func(string) (string, bool)) iter.Seq2[string, int] {
	per := map[string]int{}
	var order []string
	for _, l := range lines {
		if k, ok := match(l); ok {
			if per[k] == 0 {
				order = append(order, k)
			}
			per[k]++
		}
	}
	return func(yield func(string, int) bool) {
		for _, k := range order {
			if !yield(k, per[k]) {
				return
			}
		}
	}
}

// journalPoll is how often the daemons' journals are read.
const journalPoll = 5 * time.Second

// followJournal hands unit's new journal entries to handle every
// journalPoll, while this node runs unit, until ctx ends. It polls with a
// cursor instead of following: inotify, which journalctl --follow waits on,
// did not fire inside the agent's sandbox on the lab's overlay file systems.
func (a *Agent) followJournal(ctx context.Context, unit, what string, handle func([]string)) {
	cursor, failing := "", false
	for {
		// A node without the daemon has nothing to read.
		if slices.Contains(a.daemons.runs(), unit) {
			lines, next, err := a.d.Journal(ctx, unit, cursor)
			switch {
			case err != nil && !failing:
				a.log.Error("cannot read a daemon's journal: "+what+" will not be reported", "unit", unit, "err", err)
				failing = true
			case err == nil:
				failing = false
				if cursor != "" { // the first read only finds where "now" is
					handle(lines)
				}
				if next != "" {
					cursor = next
				}
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(journalPoll):
		}
	}
}

// journalFromStart, as a cursor, asks for every message of the unit's
// running instance (since it last started).
const journalFromStart = "@start"

// journal returns a unit's journal messages after cursor (none, with an
// empty cursor: then it only finds the cursor of the newest entry) and the
// cursor to continue from.
func journal(ctx context.Context, unit, cursor string) ([]string, string, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	args := []string{"--unit=" + unit, "--output=cat", "--show-cursor", "--no-pager", "--quiet"}
	switch cursor {
	case "":
		args = append(args, "--lines=1")
	case journalFromStart:
		out, err := exec.CommandContext(ctx, "systemctl", "show", "--property=InvocationID", "--value", unit).Output()
		id := strings.TrimSpace(string(out))
		if err != nil || id == "" {
			return nil, "", fmt.Errorf("systemctl show %s: no invocation (%v): is it running?", unit, err)
		}
		args = []string{"_SYSTEMD_INVOCATION_ID=" + id, "--output=cat", "--show-cursor", "--no-pager", "--quiet"}
	default:
		args = append(args, "--after-cursor="+cursor)
	}
	out, err := exec.CommandContext(ctx, "journalctl", args...).Output()
	if err != nil {
		return nil, "", fmt.Errorf("journalctl %s: %w", strings.Join(args, " "), err)
	}
	var lines []string
	next := ""
	for _, l := range strings.Split(strings.TrimRight(string(out), "\n"), "\n") {
		if c, ok := strings.CutPrefix(l, "-- cursor: "); ok {
			next = c
			continue
		}
		lines = append(lines, l)
	}
	return lines, next, nil
}
