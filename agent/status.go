package main

import (
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/mqha/mqha/internal/control"
	"github.com/mqha/mqha/internal/source"
)

// status prints what the running agent says and exits 0 when the node is
// healthy on its applied commit, 1 when it is degraded (a refused commit, a
// fetch error, a failing check, a limit warning, recent drops, not
// configured), 2 when the agent cannot be asked: usable as a monitoring
// check.
func (c *cmd) status(args []string) (int, error) {
	fs, _ := c.flags("status")
	out := fs.String("o", "text", "output: text or json")
	sock := fs.String("socket", control.DefaultSocket, "the agent's control socket")
	if err := parse(fs, args); err != nil {
		return exitError, err
	}
	s, err := control.NewClient(*sock).Status(c.ctx)
	if err != nil {
		return exitError, err
	}
	if err := c.printStatus(s, *out); err != nil {
		return exitError, err
	}
	problems := s.Problems(time.Now())
	if len(problems) == 0 {
		return exitOK, nil
	}
	if *out == "text" {
		fmt.Fprintf(c.stdout, "degraded: %s\n", strings.Join(problems, "; "))
	}
	return exitDegraded, nil
}

func (c *cmd) syncNow(args []string) error {
	fs, _ := c.flags("sync")
	sock := fs.String("socket", control.DefaultSocket, "the agent's control socket")
	retry := fs.Bool("retry", false, "try a refused commit again (after fixing what refused it on this node)")
	if err := parse(fs, args); err != nil {
		return err
	}
	start := time.Now()
	s, err := control.NewClient(*sock).Sync(c.ctx, *retry)
	if err != nil {
		return err
	}
	fmt.Fprintf(c.stdout, "synced in %s\n", time.Since(start).Round(time.Millisecond))
	return c.printStatus(s, "text")
}

func (c *cmd) suspend(what string, args []string) error {
	fs, _ := c.flags(what)
	sock := fs.String("socket", control.DefaultSocket, "the agent's control socket")
	reason, noRepair := new(string), new(bool)
	if what == "suspend" {
		reason = fs.String("reason", "", "why (shown in status)")
		noRepair = fs.Bool("no-repair", false, "stop health repair too")
	}
	if err := parse(fs, args); err != nil {
		return err
	}
	var s *control.Status
	var err error
	if what == "suspend" {
		s, err = control.NewClient(*sock).Suspend(c.ctx, *reason, *noRepair)
	} else {
		s, err = control.NewClient(*sock).Resume(c.ctx)
	}
	if err != nil {
		return err
	}
	return c.printStatus(s, "text")
}

func (c *cmd) printStatus(s *control.Status, format string) error {
	if format == "json" {
		e := json.NewEncoder(c.stdout)
		e.SetIndent("", "  ")
		return e.Encode(s)
	}
	if format != "text" {
		return fmt.Errorf("-o %s: want text or json", format)
	}
	w := c.stdout
	fmt.Fprintf(w, "node:     %s (%s), mqha-agent %s\n", s.Node, s.Roles, s.Version)
	if s.Unconfigured != "" {
		fmt.Fprintf(w, "NOT CONFIGURED: %s\n", s.Unconfigured)
		return nil
	}
	fmt.Fprintf(w, "repo:     %s (%s)\n", s.Repo, s.Branch)
	fmt.Fprintf(w, "applied:  %s %s (%s)\n", source.Short(s.Applied), s.AppliedSubject, ago(s.AppliedAt))
	if s.Refused != "" && s.Refused != s.Applied {
		fmt.Fprintf(w, "refused:  %s: %s\n", source.Short(s.Refused), s.RefusedReason)
	}
	fmt.Fprintf(w, "fetched:  %s", ago(s.LastFetch))
	if s.FetchError != "" {
		fmt.Fprintf(w, ", error: %s", s.FetchError)
	}
	fmt.Fprintln(w)
	for _, c := range s.Certificates {
		fmt.Fprintf(w, "cert %-5s %s expires %s (in %d days)\n", c.Name+":", c.File, c.NotAfter.Format("2006-01-02"), int(time.Until(c.NotAfter).Hours()/24))
	}
	if d := s.Decommission; d != nil {
		if d.Done.IsZero() {
			fmt.Fprintf(w, "DECOMMISSIONING since %s (commit %s does not list this node): %s\n", d.Since.Format(time.RFC3339), source.Short(d.Commit), d.State)
		} else {
			fmt.Fprintf(w, "DECOMMISSIONED at %s: %s\n", d.Done.Format(time.RFC3339), d.State)
		}
	}
	if p := s.Suspended; p != nil {
		repair := "health repair on"
		if p.NoRepair {
			repair = "health repair OFF"
		}
		fmt.Fprintf(w, "SUSPENDED since %s (%s): %s\n", p.Since.Format(time.RFC3339), repair, p.Reason)
		if s.Pending != "" {
			fmt.Fprintf(w, "pending:  %s (applied on resume)\n", source.Short(s.Pending))
		}
	}
	for _, i := range s.Insecure {
		fmt.Fprintf(c.stdout, "INSECURE  %s\n", i)
	}
	for _, warning := range s.Warnings {
		fmt.Fprintf(c.stdout, "WARNING   %s\n", warning)
	}
	if b := s.Bridge; b != nil {
		role := map[string]string{"MASTER": "bridge MASTER", "BACKUP": "standby (BACKUP)", "FAULT": "FAULT: cannot bridge",
			"STOP": "keepalived stopped: not bridging"}[b.State]
		if role == "" {
			role = b.State
		}
		if !b.Since.IsZero() {
			role += " since " + b.Since.Format(time.RFC3339)
		}
		check := "check passes"
		if !b.CheckOK {
			check = "check FAILS: " + b.Check
		}
		fmt.Fprintf(w, "bridge:   %s (keepalived); %s; %d take-overs, %d stand-downs since boot\n", role, check, b.Takeovers, b.StandDowns)
	}
	for _, f := range s.ForgedAdverts {
		fmt.Fprintf(w, "FORGED    VRRP adverts from %s, not a load balancer of the cluster: %d dropped by keepalived, last %s (find that host: a flood can move the VIP between the load balancers)\n", f.Source, f.Adverts, ago(f.Last))
	}
	for _, d := range s.Drops {
		fmt.Fprintf(w, "DROPPED   mosquitto dropped messages for client %s: %d times, last %s (queue full: raise mqtt.maxQueuedMessages/maxQueuedBytes, or find the slow consumer)\n", d.Client, d.Episodes, ago(d.Last))
	}
	for _, r := range s.Checks {
		state := "ok"
		if !r.OK {
			state = "FAIL " + r.Error
		}
		fmt.Fprintf(w, "check %-11s %s (%s, %d repairs)\n", r.Name+":", state, ago(r.At), r.Repairs)
	}
	// The last three; status -o json has HistoryLen.
	for i, h := range s.History {
		if i == 3 {
			break
		}
		why := h.Subject
		if h.Reason != "" {
			why = h.Reason
		}
		fmt.Fprintf(w, "history:  %s %-7s in %.1fs, %s: %s\n", source.Short(h.Commit), h.Result, h.Seconds, ago(h.At), why)
	}
	return nil
}

func ago(t time.Time) string {
	if t.IsZero() {
		return "never"
	}
	return time.Since(t).Round(time.Second).String() + " ago"
}
