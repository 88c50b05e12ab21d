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
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/mqha/mqha/internal/agent"
	"github.com/mqha/mqha/internal/cluster"
	"github.com/mqha/mqha/internal/evaluate"
	"github.com/mqha/mqha/internal/plan"
	"github.com/mqha/mqha/internal/render"
	"github.com/mqha/mqha/internal/systemd"
	"github.com/mqha/mqha/internal/unit"
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
  vet     [--repo DIR] [--rev REV | --worktree]      validate the cluster definition (by default
                                                     the committed HEAD, as the agents read it)
  nodes   [--repo DIR] [--rev REV | --worktree]      list nodes: NAME ADDRESS ROLES
  render  [--repo DIR] (--node NAME | --all) --out DIR
                                                     write the rendered files under DIR
  diff    [--repo DIR] [--node NAME] [--root DIR]    show what apply would change, and the plan
  diff    --from REV [--to REV] [--all | --node NAME] [--validate]
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
  version                                            print the version

exit codes: 0 ok, 1 differences (diff) or degraded (status), 2 error
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
	case evaluate.Command:
		// Hidden: the agent evaluates each commit's definition in a
		// child of its own binary, bounded (internal/evaluate).
		return evaluate.Serve(os.Stdin, stdout)
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

func (c *cmd) vet(args []string) error {
	fs, repo := c.flags("vet")
	src := c.defFlags(fs, repo)
	if err := parse(fs, args); err != nil {
		return err
	}
	cl, err := c.definition(src)
	if err != nil {
		return err
	}
	fmt.Fprintf(c.stdout, "%s: cluster %s is valid: %d nodes (%d lb, %d broker, %d bridge)\n", *repo, cl.Name,
		len(cl.Nodes), len(cl.WithRole(cluster.LB)), len(cl.WithRole(cluster.Broker)), len(cl.WithRole(cluster.Bridge)))
	return nil
}

func (c *cmd) nodes(args []string) error {
	fs, repo := c.flags("nodes")
	src := c.defFlags(fs, repo)
	if err := parse(fs, args); err != nil {
		return err
	}
	cl, err := c.definition(src)
	if err != nil {
		return err
	}
	for _, n := range cl.Nodes {
		fmt.Fprintf(c.stdout, "%s %s %s\n", n.Name, n.Address, n.RoleList())
	}
	return nil
}

func (c *cmd) render(args []string) error {
	fs, repo := c.flags("render")
	src := c.defFlags(fs, repo)
	node := fs.String("node", "", "render this node")
	all := fs.Bool("all", false, "render every node, each under OUT/NAME/")
	out := fs.String("out", "", "output directory (required)")
	if err := parse(fs, args); err != nil {
		return err
	}
	if *out == "" || (*node == "") == !*all {
		return errors.New("need --out DIR and exactly one of --node NAME or --all")
	}
	cl, err := c.definition(src)
	if err != nil {
		return err
	}
	targets := map[string]string{*node: *out}
	if *all {
		targets = map[string]string{}
		for _, n := range cl.Nodes {
			targets[n.Name] = filepath.Join(*out, n.Name)
		}
	}
	for name, dir := range targets {
		o, err := render.Node(cl, name)
		if err != nil {
			return err
		}
		for _, f := range o.Files {
			p := filepath.Join(dir, f.Path)
			if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
				return err
			}
			if err := os.WriteFile(p, f.Content, f.Mode); err != nil {
				return err
			}
			fmt.Fprintln(c.stdout, p)
		}
	}
	return nil
}

// load reads the definition and renders the node (default: this host),
// sized for host (the agent sizes for the machine it runs on).
// load renders node from src; live: for this machine, as its agent does
// (its limits, its bridge secret), else from the definition alone.
func (c *cmd) load(src defSource, node string, live bool) (*cluster.Cluster, *render.Output, error) {
	node, err := agent.NodeName(node)
	if err != nil {
		return nil, nil, fmt.Errorf("no --node: %w", err)
	}
	cl, err := c.definition(src)
	if err != nil {
		return nil, nil, err
	}
	var host render.Host
	if n, ok := cl.Node(node); ok && live {
		host = agent.LocalHost()
		if host.BridgeSecret, err = agent.BridgeSecret(cl, n); err != nil {
			return nil, nil, err
		}
	}
	out, err := render.NodeOn(cl, node, host)
	return cl, out, err
}

func (c *cmd) diff(args []string) (int, error) {
	fs, repo := c.flags("diff")
	src := c.defFlags(fs, repo)
	node := fs.String("node", "", "node to diff (default: this host's name; with --from, every node)")
	root := fs.String("root", "/", "compare with the files under this directory")
	from := fs.String("from", "", "compare two commits for the fleet: from this one (e.g. origin/main)")
	to := fs.String("to", "HEAD", "with --from: to this one")
	all := fs.Bool("all", false, "with --from: every node (the default when --node is not given)")
	check := fs.Bool("validate", false, "with --from: run the daemons' own checks on the changed files, where installed here")
	if err := parse(fs, args); err != nil {
		return exitError, err
	}
	if *from != "" {
		if *all && *node != "" {
			return exitError, errors.New("--all and --node: pick one")
		}
		f := false
		old, err := c.definition(defSource{repo: src.repo, rev: from, worktree: &f})
		if err != nil {
			return exitError, fmt.Errorf("--from %s: %w", *from, err)
		}
		cur, err := c.definition(defSource{repo: src.repo, rev: to, worktree: src.worktree})
		if err != nil {
			return exitError, fmt.Errorf("--to %s: %w", *to, err)
		}
		changed, err := fleetDiff(c.ctx, c.stdout, old, cur, *node, *check)
		switch {
		case err != nil:
			return exitError, err
		case changed:
			return exitChanges, nil
		}
		return exitOK, nil
	}
	if st, err := os.Stat(*root); err != nil || !st.IsDir() {
		return exitError, fmt.Errorf("--root %s is not a directory", *root)
	}
	// On the live root, render as the agent on this machine does.
	cl, out, err := c.load(src, *node, filepath.Clean(*root) == "/")
	if err != nil {
		return exitError, err
	}
	// Unit states only mean something for the live root of this machine.
	var states map[string]unit.State
	statesNote := "unit states not read (--root is not /): decided from files alone"
	if filepath.Clean(*root) == "/" {
		if sd, err := systemd.Connect(c.ctx, time.Duration(cl.Timeouts.Unit)*time.Second); err != nil {
			statesNote = "unit states unknown (" + err.Error() + "): decided from files alone"
		} else {
			defer sd.Close()
			if states, err = agent.UnitStates(c.ctx, sd); err != nil {
				return exitError, err
			}
		}
	}
	p, err := plan.Make(out, os.DirFS(*root), states)
	if err != nil {
		return exitError, err
	}
	for _, ch := range p.Changes {
		fmt.Fprint(c.stdout, ch.Diff)
	}
	fmt.Fprintf(c.stdout, "\nplan for node %s (%s):\n", p.Node, out.Node.RoleList())
	if !p.StatesKnown {
		fmt.Fprintf(c.stdout, "  note: %s\n", statesNote)
	}
	writePlan(c.stdout, p)
	if p.Empty() {
		return exitOK, nil
	}
	return exitChanges, nil
}

func writePlan(w io.Writer, p *plan.Plan) {
	if p.DaemonReload {
		fmt.Fprintln(w, "  systemd: daemon-reload, drop-ins changed")
	}
	for _, u := range p.Units {
		fmt.Fprintf(w, "  %s: %s, %s\n", strings.TrimSuffix(u.Name, ".service"), u.Action, u.Reason)
	}
}

func (c *cmd) apply(args []string) error {
	fs, repo := c.flags("apply")
	node := fs.String("node", "", "node to apply (default: this host's name)")
	stateDir := fs.String("state-dir", "/var/lib/mqha", "where previous files are kept (under backup/)")
	settle := fs.Duration("settle", 500*time.Millisecond, "how long units must stay up after a change")
	if err := parse(fs, args); err != nil {
		return err
	}
	// apply writes what the directory holds (a one-shot on this node).
	wt := true
	cl, out, err := c.load(defSource{repo: repo, rev: new(string), worktree: &wt}, *node, true)
	if err != nil {
		return err
	}
	sd, err := systemd.Connect(c.ctx, time.Duration(cl.Timeouts.Unit)*time.Second)
	if err != nil {
		return err
	}
	defer sd.Close()
	p, err := agent.ConvergeOutput(c.ctx, out, sd, *stateDir, *settle, c.log, agent.Hooks{})
	if p != nil {
		writePlan(c.stdout, p)
	}
	if err != nil {
		return err
	}
	fmt.Fprintf(c.stdout, "node %s: applied\n", p.Node)
	return nil
}
