package main

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"os"
	"strconv"
	"time"

	"github.com/mqha/mqha/internal/cluster"
	"github.com/mqha/mqha/internal/health"
	"github.com/mqha/mqha/internal/probe"
	"github.com/mqha/mqha/internal/render"
)

// nodeTLS is the node's own certificate as a client, trusting the cluster CA.
func nodeTLS(cl *cluster.Cluster) (*tls.Config, error) {
	ca, err := os.ReadFile(cl.TLS.CA)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(ca) {
		return nil, fmt.Errorf("%s holds no certificate", cl.TLS.CA)
	}
	cert, err := tls.LoadX509KeyPair(cl.TLS.Cert, cl.TLS.Key)
	if err != nil {
		return nil, err
	}
	return &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}, nil
}

func withName(tc *tls.Config, name string) *tls.Config {
	c := tc.Clone()
	c.ServerName = name
	return c
}

// healthChecks are the checks of node n's roles.
func healthChecks(cl *cluster.Cluster, n cluster.Node, tc *tls.Config) []health.Check {
	var checks []health.Check
	local := net.JoinHostPort("127.0.0.1", strconv.Itoa(cl.Ports.Broker))
	if n.Has(cluster.Broker) || n.Has(cluster.Bridge) {
		// The local listener presents the node's certificate (its address).
		checks = append(checks, health.Check{Name: "mosquitto", Unit: render.Mosquitto, HungAfter: 2,
			Probe: probe.MQTTRoundTrip(local, withName(tc, n.Address), n.Name)})
	}
	if ids := render.BridgeClientIDs(cl, n); len(ids) > 0 {
		checks = append(checks, health.Check{Name: "bridge",
			Probe: probe.BridgeStates(local, withName(tc, n.Address), n.Name, ids)})
	}
	if n.Has(cluster.LB) && cl.VIP != nil {
		// Brokers' certificates carry the VIP: what clients verify.
		viaVIP := withName(tc, cl.VIP.Address)
		checks = append(checks,
			health.Check{Name: "nginx", Unit: render.Nginx, HungAfter: 2,
				Probe: probe.TLSThrough(net.JoinHostPort("127.0.0.1", strconv.Itoa(cl.Ports.Client)), viaVIP)},
			health.Check{Name: "keepalived", Unit: render.Keepalived,
				Probe: probe.VIPServes(cl.VIP.Address, cl.Ports.Client, viaVIP)})
	}
	return checks
}

// probeTimeout bounds one probe; the loop runs every health-interval. A
// loopback TLS + MQTT round trip takes milliseconds: 1.5 s means hung.
const probeTimeout = 1500 * time.Millisecond

// recheckAfter is how soon a failed check runs again, instead of waiting
// for the next round: a hung broker is confirmed (and killed) sooner.
const recheckAfter = time.Second
