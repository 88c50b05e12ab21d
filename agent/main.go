// Command mqha-agent runs a highly available Mosquitto MQTT service from a
// cluster definition kept in git. See README.md.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/mqha/mqha/internal/evaluate"
	"github.com/mqha/mqha/internal/retained"
)

var version = "dev"

// Exit codes.
const (
	exitOK       = 0
	exitChanges  = 1 // diff: applying would change something
	exitDegraded = 1 // status: the node is degraded
	exitError    = 2
)

const usage = `usage: mqha-agent COMMAND [flags]

commands:
  vet     [--repo DIR] [--rev REV | --worktree] [-o json]
                                                     validate the cluster definition (by default
                                                     the committed HEAD, as the agents read it)
  nodes   [--repo DIR] [--rev REV | --worktree] [-o json]
                                                     list nodes: NAME ADDRESS ROLES
  render  [--repo DIR] (--node NAME | --all) --out DIR
                                                     write the rendered files under DIR
  diff    [--repo DIR] [--node NAME] [--root DIR] [-o json]
                                                     show what apply would change, and the plan
  diff    --from REV [--to REV] [--all | --node NAME] [--validate] [-o json]
                                                     what a change does to every node: a summary,
                                                     then each node's diffs and plan (for a PR)
  apply   [--repo DIR] [--node NAME]                 validate, write and reload/restart (as root)
  pki     init|issue|client --dir DIR ...            cluster CA, node and client certificates
  run     [--config FILE]                            the agent: pull, converge, keep healthy, forever
  status  [-o json]                                  ask the running agent what it applied and how it is
                                                     (exit 0 healthy, 1 degraded, 2 cannot ask)
  sync    [--retry]                                  ask the running agent to pull and converge now
                                                     (--retry: try a refused commit again)
  fleet   [--repo DIR] --cert F --key F [--ca|--cafile F] [--broker ADDR] [-o json]
                                                     every node's status, read from every broker with a
                                                     client certificate (exit 0 all on head and healthy)
  suspend [--reason TEXT] [--no-repair]              stop converging and reverting drift (an incident);
                                                     health repair goes on unless --no-repair
  resume                                             end a suspension and converge now
  completion bash|zsh                                print the shell completion script
  version                                            print the version (also --version)

vet, nodes, render, diff, apply and fleet evaluate the definition in a bounded child,
as the agent does: --load-timeout D (20s), --load-memory SIZE (256M).
exit codes: 0 ok, 1 differences (diff) or degraded (status, fleet), 2 error (a refused definition too)
`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Stdout, os.Stderr))
}

type cmd struct {
	ctx    context.Context
	stdout io.Writer
	stderr io.Writer
	log    *slog.Logger
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return exitError
	}
	c := &cmd{ctx: ctx, stdout: stdout, stderr: stderr,
		log: slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))}
	var err error
	code := exitOK
	switch args[0] {
	case "vet":
		err = c.vet(args[1:])
	case "nodes":
		err = c.nodes(args[1:])
	case "render":
		err = c.render(args[1:])
	case "diff":
		code, err = c.diff(args[1:])
	case "apply":
		err = c.apply(args[1:])
	case "pki":
		err = c.pki(args[1:])
	case "run":
		err = c.run(args[1:])
	case "status":
		code, err = c.status(args[1:])
	case "sync":
		err = c.syncNow(args[1:])
	case "fleet":
		code, err = c.fleet(args[1:])
	case "suspend", "resume":
		err = c.suspend(args[0], args[1:])
	case "bridge-notify":
		err = c.bridgeNotify(args[1:])
	case "bridge-check":
		err = c.bridgeCheck(args[1:])
	case retained.Command:
		err = c.mosquittoStart(args[1:])
	case evaluate.Command:
		// Hidden: the agent evaluates each commit's definition in a
		// child of its own binary, bounded (internal/evaluate).
		return evaluate.Serve(os.Stdin, stdout)
	case "completion":
		err = c.completion(args[1:])
	case "version", "--version":
		fmt.Fprintln(stdout, "mqha-agent", version)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
	default:
		fmt.Fprintf(stderr, "mqha-agent: unknown command %q\n\n%s", args[0], usage)
		return exitError
	}
	if err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintf(stderr, "mqha-agent %s: %v\n", args[0], err)
		}
		return exitError
	}
	return code
}

// flags makes a flag set for one command; --repo is common to all.
func (c *cmd) flags(name string) (*flag.FlagSet, *string) {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(c.stderr)
	repo := fs.String("repo", ".", "directory of the cluster definition (a CUE package)")
	return fs, repo
}

func parse(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	return nil
}
