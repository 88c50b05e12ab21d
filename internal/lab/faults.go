package lab

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"syscall"
	"time"
)

// Faults of whole nodes, for the node-loss scenarios: power off and on, and
// partitions, all on the host side of the nodes' network links.

// veth is the host side of node name's link to the lab bridge:
// systemd-nspawn names it "vb-" + the machine name, cut to 15 characters.
func veth(name string) string {
	v := "vb-" + name
	if len(v) > 15 {
		v = v[:15]
	}
	return v
}

// PowerOff cuts node name's link first (nothing it sends gets out, as when
// the power goes: no FIN, no RST, peers find out by timeouts), then kills
// every process in it. Its disk stays; /run (tmpfs) is gone. PowerOn boots
// it again.
func (c Config) PowerOff(ctx context.Context, name string) error {
	s, ok := c.Running()
	if !ok {
		return errors.New("the lab is not running")
	}
	n, ok := s.Node(name)
	if !ok {
		return fmt.Errorf("no node %s", name)
	}
	if _, err := run(ctx, "ip", "link", "set", veth(name), "down"); err != nil {
		return err
	}
	leader, err := n.Leader()
	if err != nil {
		return err
	}
	// SIGKILL to the container's init ends its PID namespace: every process
	// in the node dies at once.
	if err := syscall.Kill(leader, syscall.SIGKILL); err != nil {
		return fmt.Errorf("power off %s: %w", name, err)
	}
	if !waitGone(n.Nspawn, 15*time.Second) {
		syscall.Kill(n.Nspawn, syscall.SIGKILL)
		waitGone(n.Nspawn, 5*time.Second)
	}
	return nil
}

// PowerOn boots a node PowerOff left, on its disk as it was.
func (c Config) PowerOn(ctx context.Context, name string) error {
	s, err := c.Load()
	if err != nil {
		return err
	}
	i := -1
	for j, n := range s.Nodes {
		if n.Name == name {
			i = j
		}
	}
	if i < 0 {
		return fmt.Errorf("no node %s", name)
	}
	if alive(s.Nodes[i].Nspawn) {
		return fmt.Errorf("node %s is running", name)
	}
	n, err := c.launch(ctx, s.Nodes[i])
	// the link is new: nspawn made it again
	if n.Nspawn != 0 {
		s.Nodes[i] = n
		c.save(s)
	}
	return err
}

// Cut separates node name from the addresses given, both ways: each side
// routes the other into a blackhole (in its own network namespace; this
// host has no firewall tools and no tc actions). TCP between them then
// times out as across a broken link; everything else still flows. Heal
// removes the routes.
func (c Config) Cut(ctx context.Context, name string, addrs ...string) error {
	s, err := c.Load()
	if err != nil {
		return err
	}
	n, ok := s.Node(name)
	if !ok {
		return fmt.Errorf("no node %s", name)
	}
	for _, a := range addrs {
		if err := blackhole(ctx, n, a); err != nil {
			c.Heal(ctx)
			return fmt.Errorf("cut %s from %s: %w", name, strings.Join(addrs, ", "), err)
		}
		for _, o := range s.Nodes {
			if o.Addr == a {
				if err := blackhole(ctx, o, n.Addr); err != nil {
					c.Heal(ctx)
					return fmt.Errorf("cut %s from %s: %w", name, o.Name, err)
				}
			}
		}
	}
	return nil
}

func blackhole(ctx context.Context, n Node, addr string) error {
	pid, err := n.Leader()
	if err != nil {
		return err
	}
	_, err = run(ctx, "nsenter", "-t", fmt.Sprint(pid), "-n", "ip", "route", "replace", "blackhole", addr+"/32")
	return err
}

// Isolate cuts the nodes named from each other at the lab bridge (port
// isolation: isolated ports reach every port but each other), all traffic
// alike, VRRP adverts included (a keepalived bound to its interface sends
// past a blackhole route); they still reach every other node. Heal ends it.
func (c Config) Isolate(ctx context.Context, names ...string) error {
	for _, n := range names {
		if _, err := run(ctx, "bridge", "link", "set", "dev", veth(n), "isolated", "on"); err != nil {
			c.Heal(ctx)
			return fmt.Errorf("isolate %s: %w", n, err)
		}
	}
	return nil
}

// Heal removes every cut: the blackhole routes in every running node, the
// isolation of every node's port, a link unplugged.
func (c Config) Heal(ctx context.Context) error {
	s, err := c.Load()
	if err != nil {
		return err
	}
	var errs []error
	for _, n := range s.Nodes {
		pid, err := n.Leader()
		if err != nil {
			continue // powered off
		}
		if _, err := run(ctx, "nsenter", "-t", fmt.Sprint(pid), "-n", "ip", "route", "flush", "type", "blackhole"); err != nil {
			errs = append(errs, err)
		}
		if _, err := run(ctx, "bridge", "link", "set", "dev", veth(n.Name), "isolated", "off"); err != nil {
			errs = append(errs, err)
		}
		if err := c.Plug(ctx, n.Name); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Unplug takes node name's link to the lab down: the node is cut off from
// every other node, the VIP's segment and the git server, and keeps
// running. Plug (or Heal) brings the link back.
func (c Config) Unplug(ctx context.Context, name string) error {
	if _, err := run(ctx, "ip", "link", "set", "dev", veth(name), "down"); err != nil {
		return fmt.Errorf("unplug %s: %w", name, err)
	}
	return nil
}

// Plug brings node name's link to the lab up again.
func (c Config) Plug(ctx context.Context, name string) error {
	if _, err := run(ctx, "ip", "link", "set", "dev", veth(name), "up"); err != nil {
		return fmt.Errorf("plug %s back: %w", name, err)
	}
	return nil
}
