package agent

import (
	"context"
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"time"

	"github.com/mqha/mqha/internal/cluster"
)

// closeRemovedBrokers runs on a load balancer once a commit that removed
// brokers is applied: nginx's old workers keep every connection they hold
// (no worker_shutdown_timeout), so the ones to a removed broker are closed
// here, and those clients reconnect to the brokers that remain. Clients of
// every other broker keep their connections.
func (a *Agent) closeRemovedBrokers(ctx context.Context, old, cur *View) {
	if old == nil || !cur.Node.Has(cluster.LB) {
		return
	}
	kept := map[string]bool{}
	for _, b := range cur.Cluster.WithRole(cluster.Broker) {
		kept[b.At(cur.Cluster.Ports.Broker)] = true
	}
	for _, b := range old.Cluster.WithRole(cluster.Broker) {
		port := old.Cluster.Ports.Broker
		if kept[b.At(port)] {
			continue
		}
		if err := a.d.CloseConns(ctx, b.Address, port); err != nil {
			a.log.Error("close the connections to a removed broker; its clients stay on it until they reconnect", "broker", b.Name, "err", err)
			continue
		}
		a.log.Info("closed the connections to a removed broker; its clients reconnect to the others", "broker", b.Name, "address", b.Address)
	}
}

// closeConns destroys this host's established TCP connections to addr:port
// (nginx's side of proxied clients) with ss -K (sock_diag; CAP_NET_ADMIN).
func closeConns(ctx context.Context, addr string, port int) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "ss", "-K", "-tn", "state", "established",
		"dst", addr, "dport", "=", ":"+strconv.Itoa(port)).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ss -K dst %s dport %d: %w: %s", addr, port, err, strings.TrimSpace(string(out)))
	}
	return nil
}
