package lab

import (
	"context"
	"fmt"
	"io"
	"path/filepath"
	"strings"
	"time"

	"github.com/mqha/mqha/schema"
)

func or(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// Status writes, per node, its roles, unit states and what its agent
// applied, and which load balancer holds the VIP.
func (c Config) Status(ctx context.Context, w io.Writer) error {
	s, ok := c.Running()
	if !ok {
		fmt.Fprintln(w, "the lab is not running (make lab)")
		if left := c.Leftovers(ctx); len(left) > 0 {
			fmt.Fprintf(w, "leftovers: %s\n", strings.Join(left, "; "))
		}
		return nil
	}
	head, _ := c.Head(ctx)
	roles := map[string]string{}
	if cl, err := schema.LoadDir(filepath.Join(c.Dir, "cluster")); err == nil {
		for _, n := range cl.Nodes {
			roles[n.Name] = n.RoleList()
		}
	} else {
		fmt.Fprintf(w, "the cluster repository does not load: %v\n", err)
	}
	fmt.Fprintf(w, "cluster repository %s/cluster at %.12s; VIP %s:9000\n", c.Dir, head, c.VIP())
	fmt.Fprintf(w, "%-10s %-14s %-16s %-34s %s\n", "NODE", "ADDRESS", "ROLES", "UNITS", "AGENT")
	for _, n := range s.Nodes {
		ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		units := []string{}
		for _, u := range []string{"mosquitto", "nginx", "keepalived", "mqha-agent"} {
			out, _ := n.Exec(ctx, "systemctl", "is-active", u)
			if st := strings.TrimSpace(out); st != "inactive" {
				units = append(units, u+"="+st)
			}
		}
		vip := ""
		if out, _ := n.Exec(ctx, "ip", "-4", "-o", "addr", "show", "dev", "host0"); strings.Contains(out, " "+c.VIP()+"/") {
			vip = " (holds VIP)"
		}
		fmt.Fprintf(w, "%-10s %-14s %-16s %-34s %s%s\n", n.Name, n.Addr, or(roles[n.Name], "(not defined)"), strings.Join(units, " "), AgentStatus(ctx, n), vip)
		cancel()
	}
	return nil
}
