package agent

import (
	"context"
	"fmt"
	"os/exec"
	"slices"
	"strings"
	"time"

	"github.com/mqha/mqha/internal/control"
	"github.com/mqha/mqha/internal/daemon"
)

// mosquitto 2.0 has no counter of the messages it drops when a session's
// queue is full (max_queued_messages/bytes); it logs this line once each
// time a session starts dropping. The agent follows mosquitto's journal,
// counts those episodes per client, and shows them in status and metrics,
// so that losing acknowledged messages is never silent.
const dropLine = "Outgoing messages are being dropped for client "

// dropPoll is how often mosquitto's journal is read for drops.
const dropPoll = 5 * time.Second

// watchDrops reads mosquitto's new journal entries every dropPoll until ctx
// ends. It polls with a cursor instead of following: inotify, which
// journalctl --follow waits on, did not fire inside the agent's sandbox on
// the lab's overlay file systems.
func (a *Agent) watchDrops(ctx context.Context) {
	cursor, failing := "", false
	for {
		// A node without mosquitto (a load balancer) has nothing to read.
		if slices.Contains(a.runs(), daemon.Mosquitto.Unit) {
			lines, next, err := a.d.Journal(ctx, daemon.Mosquitto.Unit, cursor)
			switch {
			case err != nil && !failing:
				a.log.Error("cannot read mosquitto's journal: dropped messages will not be reported", "err", err)
				failing = true
			case err == nil:
				failing = false
				if cursor != "" { // the first read only finds where "now" is
					a.countDrops(lines)
				}
				if next != "" {
					cursor = next
				}
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(dropPoll):
		}
	}
}

// countDrops counts the drop episodes among log lines.
func (a *Agent) countDrops(lines []string) {
	for _, l := range lines {
		_, client, ok := strings.Cut(l, dropLine)
		if !ok {
			continue
		}
		client = strings.TrimSuffix(strings.TrimSpace(client), ".")
		a.m.drops.WithLabelValues(client).Inc()
		a.log.Warn("mosquitto is dropping messages for a client: its queue is full (mqtt.maxQueuedMessages/maxQueuedBytes)", "client", client)
		now := a.d.Now()
		a.update(func(s *control.Status) {
			for i := range s.Drops {
				if s.Drops[i].Client == client {
					s.Drops[i].Episodes++
					s.Drops[i].Last = now
					return
				}
			}
			s.Drops = append(s.Drops, control.Drop{Client: client, Episodes: 1, Last: now})
		})
	}
}

// journal returns a unit's journal messages after cursor (none, with an
// empty cursor: then it only finds the cursor of the newest entry) and the
// cursor to continue from.
func journal(ctx context.Context, unit, cursor string) ([]string, string, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	args := []string{"--unit=" + unit, "--output=cat", "--show-cursor", "--no-pager", "--quiet"}
	if cursor == "" {
		args = append(args, "--lines=1")
	} else {
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
