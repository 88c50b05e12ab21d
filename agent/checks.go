package main

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
	"time"

	"github.com/mqha/mqha/internal/cluster"
	"github.com/mqha/mqha/internal/daemon"
	"github.com/mqha/mqha/internal/health"
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

func withName(tc *tls.Config, name string) *tls.Config { return daemon.WithName(tc, name) }

// healthChecks are the checks of the daemons node n runs.
func healthChecks(cl *cluster.Cluster, n cluster.Node, tc *tls.Config) []health.Check {
	var checks []health.Check
	for _, d := range daemon.For(n) {
		checks = append(checks, d.Checks(cl, n, tc)...)
	}
	return checks
}

// probeTimeout bounds one probe; the loop runs every health-interval. A
// loopback TLS + MQTT round trip takes milliseconds: 1.5 s means hung.
const probeTimeout = 1500 * time.Millisecond

// recheckAfter is how soon a failed check runs again, instead of waiting
// for the next round: a hung broker is confirmed (and killed) sooner.
const recheckAfter = time.Second
