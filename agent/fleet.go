package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/mqha/mqha/internal/cluster"
	"github.com/mqha/mqha/internal/control"
	"github.com/mqha/mqha/internal/daemon"
	"github.com/mqha/mqha/internal/pki"
	"github.com/mqha/mqha/internal/source"
)

// fleet reads every node's published status from every broker (or
// --broker; the VIP when no broker answers) with a client certificate and prints one line per node of the
// definition, marking what disagrees with the head commit. Exit 0 when
// every node reported, runs the head and is healthy; 1 otherwise.
func (c *cmd) fleet(args []string) (int, error) {
	fs, src := c.defCommand("fleet")
	ca := fs.String("ca", "/etc/mqha/tls/ca.crt", "the cluster CA")
	fs.StringVar(ca, "cafile", *ca, "the same as --ca, as the mosquitto tools spell it")
	cert := fs.String("cert", "", "a client certificate of the cluster CA (mqha-agent pki client)")
	key := fs.String("key", "", "its key")
	broker := fs.String("broker", "", "where to read (default: the VIP's client port)")
	wait := fs.Duration("wait", 3*time.Second, "how long to wait for every node's status")
	format := fs.String("o", "text", "text or json")
	cl, err := c.loadAfter(fs, src, args, func() error {
		if *cert == "" || *key == "" {
			return fmt.Errorf("--cert and --key: a client certificate of the cluster CA (mqha-agent pki client NAME makes one)")
		}
		return nil
	})
	if err != nil {
		return exitError, err
	}
	head := ""
	if commit, _, ok, err := source.ReadWorkTree(*src.repo, *src.rev); err == nil && ok {
		head = commit.Hash
	}
	tc, err := pki.LoadTLS(*ca, *cert, *key)
	if err != nil {
		return exitError, err
	}
	// Every broker directly: each holds every node's status (brokers do not
	// share retained messages, each agent writes to each), and one that
	// missed a node's last status is made up for by another. Newest wins.
	var addrs []string
	if *broker != "" {
		addrs = []string{*broker}
	} else {
		for _, b := range cl.WithRole(cluster.Broker) {
			addrs = append(addrs, b.At(cl.Ports.Broker))
		}
	}
	statuses, read, errs := readAll(addrs, tc, daemon.StatusTopics(cl.Name), len(cl.Nodes), *wait)
	if len(read) == 0 && *broker == "" && cl.VIP != nil {
		// No broker answered directly (a firewall in between): the VIP.
		vip := cluster.HostPort(cl.VIP.Address, cl.Ports.Client)
		var more []error
		statuses, read, more = readAll([]string{vip}, tc, daemon.StatusTopics(cl.Name), len(cl.Nodes), *wait)
		errs = append(errs, more...)
	}
	if len(read) == 0 {
		return exitError, fmt.Errorf("no broker answered: %w", errors.Join(errs...))
	}
	for _, err := range errs {
		fmt.Fprintf(c.stderr, "mqha-agent fleet: %v (read the others)\n", err)
	}
	if *format == "json" {
		e := json.NewEncoder(c.stdout)
		e.SetIndent("", "  ")
		return fleetCode(cl, statuses, head), e.Encode(statuses)
	}
	fmt.Fprintf(c.stdout, "read from %s\n", strings.Join(read, ", "))
	printFleet(c, cl, statuses, head, *wait)
	return fleetCode(cl, statuses, head), nil
}

// fleetCode is 0 when every node of the definition reported, runs head (if
// known) and has no problem.
func fleetCode(cl *cluster.Cluster, st map[string]control.Status, head string) int {
	for _, n := range cl.Nodes {
		s, ok := st[n.Name]
		if !ok || s.PublishedAt.IsZero() || stale(s, time.Now()) || (head != "" && s.Applied != head) || len(s.Problems(time.Now())) > 0 {
			return exitChanges
		}
	}
	return exitOK
}

func printFleet(c *cmd, cl *cluster.Cluster, st map[string]control.Status, head string, wait time.Duration) {
	w := c.stdout
	fmt.Fprintf(w, "cluster %s, head %s\n", cl.Name, source.Short(head))
	fmt.Fprintf(w, "%-10s %-14s %-14s %-8s %-24s %s\n", "NODE", "ROLES", "APPLIED", "AGE", "ROLE NOW", "PROBLEMS")
	var names []string
	for _, n := range cl.Nodes {
		names = append(names, n.Name)
	}
	sort.Strings(names)
	for _, name := range names {
		n, _ := cl.Node(name)
		s, ok := st[name]
		if !ok {
			fmt.Fprintf(w, "%-10s %-14s %-14s %-8s %-24s %s\n", name, n.RoleList(), "?", "-", "-",
				fmt.Sprintf("NOT REPORTED YET: no status on any broker after waiting %s (its agent has not reached a broker yet)", wait))
			continue
		}
		if s.PublishedAt.IsZero() && s.Gone != "" {
			fmt.Fprintf(w, "%-10s %-14s %-14s %-8s %-24s %s\n", name, n.RoleList(), "?", "-", "-", strings.ToUpper(s.Gone[:1])+s.Gone[1:])
			continue
		}
		applied := source.Short(s.Applied)
		if head != "" && s.Applied != head {
			applied += "≠"
		}
		now := "-"
		switch {
		case s.HoldsVIP:
			now = "holds the VIP"
		case s.Bridge != nil && s.Bridge.Active:
			now = "bridge master"
		case s.Bridge != nil:
			now = "bridge standby"
		}
		if s.Suspended != nil {
			now = "SUSPENDED"
		}
		problems := s.Problems(time.Now())
		p := "ok"
		if len(problems) > 0 {
			p = strings.Join(problems, "; ")
		}
		switch {
		case stale(s, time.Now()) && s.Gone != "":
			p = fmt.Sprintf("GONE: %s; no status for %s; last said: %s", s.Gone, time.Since(s.PublishedAt).Round(time.Second), p)
		case stale(s, time.Now()):
			p = fmt.Sprintf("STALE: no status for %s and no goodbye (agent hung, or not reaching the brokers); last said: %s", time.Since(s.PublishedAt).Round(time.Second), p)
		}
		age := "-"
		if !s.PublishedAt.IsZero() {
			age = time.Since(s.PublishedAt).Round(time.Second).String()
		}
		fmt.Fprintf(w, "%-10s %-14s %-14s %-8s %-24s %s\n", name, n.RoleList(), applied, age, now, p)
		for _, cert := range s.Certificates {
			if warn := cert.Warning(time.Now()); warn != "" {
				fmt.Fprintf(w, "%-10s   %s\n", "", warn)
			}
		}
	}
	for name := range st {
		if _, ok := cl.Node(name); !ok {
			fmt.Fprintf(w, "%-10s not in the definition, still publishing (applied %s)\n", name, source.Short(st[name].Applied))
		}
	}
	// What the nodes did with the last commits, from their histories.
	for i, v := range control.Verdicts(st, 5) {
		if i == 0 {
			fmt.Fprintf(w, "\n%-14s %-24s %-16s %s\n", "COMMIT", "APPLIED ON", "VERDICT BY", "REFUSED ON")
		}
		var refused []string
		for node, why := range v.Refused {
			refused = append(refused, node+": "+why)
		}
		sort.Strings(refused)
		fmt.Fprintf(w, "%-14s %-24s %-16s %s\n", source.Short(v.Commit), strings.Join(v.Applied, ","), orDash(strings.Join(v.Judged, ",")), strings.Join(refused, "; "))
	}
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
