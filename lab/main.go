// Command mqha-lab runs the mqha lab: a real cluster of systemd-nspawn
// nodes on this machine. See README.md ("The lab").
package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/mqha/mqha/internal/lab"
)

const usage = `usage: mqha-lab up | down | status | node NAME ADDR [ROLE] | notify
       mqha-lab poweroff NAME | poweron NAME | cut NAME ADDR... | heal
environment: MQHA_LAB_SUBNET (10.231.7.0/24), MQHA_LAB_MIRROR (from apt sources),
MQHA_LAB_DIR (.lab), MQHA_LAB_CACHE (/var/cache/mqha-lab), MQHA_LAB_NODES (/var/lib/mqha-lab)
`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "mqha-lab:", err)
		os.Exit(2)
	}
}

func run(ctx context.Context, args []string) error {
	if len(args) == 0 {
		return fmt.Errorf("%s", usage)
	}
	root, err := os.Getwd()
	if err != nil {
		return err
	}
	c, err := lab.FromEnv(root)
	if err != nil {
		return err
	}
	c.Log = slog.New(slog.NewTextHandler(os.Stderr, nil))
	p := lab.Project{Root: root, Agent: filepath.Join(root, "bin", "mqha-agent")}
	switch args[0] {
	case "up":
		return c.Up(ctx, p)
	case "down":
		// Says what it removed; on a machine without a lab, nothing.
		start := time.Now()
		removed, err := c.Down(ctx)
		for _, r := range removed {
			fmt.Println("removed:", r)
		}
		if err != nil {
			return err
		}
		if len(removed) > 0 {
			fmt.Printf("lab is down in %s: no process, mount, directory, interface, route or cgroup of the lab is left\n", time.Since(start).Round(time.Millisecond))
		}
		return nil
	case "status":
		return c.Status(ctx, os.Stdout)
	case "notify":
		// Run by the served repository's post-receive hook.
		n, err := c.Notify(ctx)
		fmt.Printf("mqha lab: push notified to %d nodes\n", n)
		return err
	case "node":
		if len(args) != 3 && len(args) != 4 {
			return fmt.Errorf("node needs NAME and ADDR, and optionally the ROLE of its certificate (broker)\n%s", usage)
		}
		role := "broker"
		if len(args) == 4 {
			role = args[3]
		}
		start := time.Now()
		n, err := c.AddNode(ctx, p, args[1], args[2], role)
		if err != nil {
			return err
		}
		fmt.Printf("node %s (%s) is up in %s with the agent installed; add it to %s/cluster and push to make it part of the cluster\n",
			n.Name, n.Addr, time.Since(start).Round(time.Millisecond), c.Dir)
		return nil
	case "poweroff", "poweron":
		if len(args) != 2 {
			return fmt.Errorf("%s needs NAME\n%s", args[0], usage)
		}
		return map[string]func(context.Context, string) error{"poweroff": c.PowerOff, "poweron": c.PowerOn}[args[0]](ctx, args[1])
	case "git-serve":
		// Started by up in the background: the repository over https and ssh.
		return c.ServeGit(ctx, c.Log)
	case "heal":
		return c.Heal(ctx)
	case "cut":
		if len(args) < 3 {
			return fmt.Errorf("cut needs NAME and the addresses to cut it from\n%s", usage)
		}
		return c.Cut(ctx, args[1], args[2:]...)
	}
	return fmt.Errorf("unknown command %q\n%s", args[0], usage)
}
