//go:build e2e && soak

package e2e

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/mqha/mqha/internal/soak"
)

// The soak's node faults that need the node prepared before the run.
//
// Clock steps: mosquitto, nginx and keepalived run under libfaketime, their
// wall clock offset by what soakClock says ("+0" until a fault writes
// "+3600" or "-3600"). The kernel's clock is the host's (a container
// cannot step it without stepping the host), and the agent, a static Go
// binary, is out of LD_PRELOAD's reach: its clock is never stepped here.
//
// A full disk: the node's state directory becomes a 64 MiB tmpfs holding
// what it held, which the fault fills to the last byte: the host's disk is
// never touched. A node powered off and on since comes back on its own
// directory; a full-disk fault on it is then skipped, with an error, not
// carried out on the host's disk.
const (
	soakClock    = "/run/mqha-soak-clock"
	soakDropIn   = "soak-faketime.conf"
	soakStateDir = "/var/lib/mqha"
	soakFill     = soakStateDir + "/soak-fill"
	soakDiskSize = "64m"
)

var soakFaked = []string{"mosquitto", "nginx", "keepalived"}

// prepareSoakNodes readies every node for clock steps and a full disk.
// It restarts the faked daemons and the agent once, before the run.
func prepareSoakNodes(t *testing.T, nodes []soak.Node) {
	t.Helper()
	env := "LD_PRELOAD=/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1 FAKETIME_TIMESTAMP_FILE=" + soakClock +
		" FAKETIME_CACHE_DURATION=1 FAKETIME_DONT_FAKE_MONOTONIC=1"
	for _, n := range nodes {
		var units []string
		for _, u := range soakFaked {
			if n.Runs(u) {
				units = append(units, u)
			}
		}
		script := "set -e; echo +0 > " + soakClock + "\n"
		for _, u := range units {
			dir := "/etc/systemd/system/" + u + ".service.d"
			script += fmt.Sprintf("mkdir -p %s; printf '[Service]\\nEnvironment=\"%s\"\\n' > %s/%s\n",
				dir, strings.ReplaceAll(env, " ", "\" \""), dir, soakDropIn)
		}
		script += "systemctl daemon-reload\n"
		for _, u := range units {
			script += "if systemctl -q is-active " + u + "; then systemctl restart " + u + "; fi\n"
		}
		// The state directory onto a tmpfs, with what it holds.
		script += "if [ \"$(findmnt -n -o FSTYPE " + soakStateDir + ")\" != tmpfs ]; then " +
			"systemctl stop mqha-agent; rm -rf /run/mqha-soak-state; cp -a " + soakStateDir + " /run/mqha-soak-state; " +
			"mount -t tmpfs -o size=" + soakDiskSize + ",mode=0750 mqha-soak-state " + soakStateDir + "; " +
			"cp -a /run/mqha-soak-state/. " + soakStateDir + "/; rm -rf /run/mqha-soak-state; systemctl start mqha-agent; fi\n"
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		_, err := node(t, n.Name).Exec(ctx, "sh", "-c", script)
		cancel()
		if err != nil {
			t.Fatalf("prepare %s for the soak: %v", n.Name, err)
		}
	}
}

// stepClock sets the faked daemons' offset on node (0: back to the
// kernel's clock).
func stepClock(ctx context.Context, name string, d time.Duration) error {
	return exec1(ctx, name, "sh", "-c", fmt.Sprintf("echo %+d > %s", int(d.Seconds()), soakClock))
}

// fillDisk fills node's state directory, only where it is the soak's tmpfs.
func fillDisk(ctx context.Context, name string) error {
	out, err := exec1out(ctx, name, "findmnt", "-n", "-o", "FSTYPE", soakStateDir)
	if err != nil || strings.TrimSpace(out) != "tmpfs" {
		return fmt.Errorf("%s's %s is not the soak's tmpfs (the node rebooted since): not filled, the host's disk is not the soak's to fill", name, soakStateDir)
	}
	// dd ends with "No space left on device": that is the point.
	exec1(ctx, name, "dd", "if=/dev/zero", "of="+soakFill, "bs=1M")
	out, err = exec1out(ctx, name, "df", "--output=avail", "-B1", soakStateDir)
	if err != nil {
		return err
	}
	if f := strings.Fields(out); len(f) < 2 || f[len(f)-1] != "0" {
		return fmt.Errorf("%s's %s is not full: %s", name, soakStateDir, strings.TrimSpace(out))
	}
	return nil
}

func emptyDisk(ctx context.Context, name string) error {
	return exec1(ctx, name, "rm", "-f", soakFill)
}
