package agent

import (
	"context"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/mqha/mqha/internal/bridgerole"
	"github.com/mqha/mqha/internal/cluster"
	"github.com/mqha/mqha/internal/control"
	"github.com/mqha/mqha/internal/daemon"
)

// The bridge role with standbys is keepalived's (internal/bridgerole): the
// agent renders keepalived's instance, the connections and the commands,
// and reports what keepalived's notify and track script last wrote. Nothing
// here decides who bridges: a stopped, busy or restarting agent changes
// nothing.

// bridgeRole is whether keepalived elects the bridge master on this node
// (set by the loop from the applied commit) and what it last reported.
type bridgeRole struct {
	read func() (bridgerole.State, bridgerole.Check, error)

	mu     sync.Mutex
	elects bool
}

func (b *bridgeRole) set(elects bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.elects = elects
}

// status is the bridge role as keepalived last said it, on a bridge node of
// a cluster with standbys (nil elsewhere).
func (b *bridgeRole) status() *control.Bridge {
	b.mu.Lock()
	elects := b.elects
	b.mu.Unlock()
	if !elects {
		return nil
	}
	st, ck, err := b.read()
	s := &control.Bridge{Active: st.Master(), State: st.State, Since: st.Since, Takeovers: st.Takeovers,
		StandDowns: st.StandDowns, CheckOK: ck.OK, Check: ck.Reason, CheckedAt: ck.At}
	if s.State == "" {
		s.State = "UNKNOWN"
		s.Check = "keepalived has not run the bridge instance yet"
	}
	if err != nil {
		s.Check = err.Error()
	}
	return s
}

// bridgeCollector exports the bridge role for Prometheus.
type bridgeCollector struct{ b *bridgeRole }

var (
	bridgeActiveDesc    = prometheus.NewDesc("mqha_bridge_active", "1 while this bridge node is the bridge master (keepalived's bridge instance is MASTER; bridge nodes of clusters with standbys).", nil, nil)
	bridgeTakeoversDesc = prometheus.NewDesc("mqha_bridge_takeovers_total", "Times this bridge node became bridge master since boot.", nil, nil)
	bridgeStandDesc     = prometheus.NewDesc("mqha_bridge_standdowns_total", "Times this bridge node stopped being bridge master since boot.", nil, nil)
	bridgeCheckDesc     = prometheus.NewDesc("mqha_bridge_check_ok", "1 when keepalived's last bridge check on this node passed (as master: a bridge connection up; as standby: a broker reached), 0 when it failed (the instance is in FAULT).", nil, nil)
)

func (c bridgeCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{bridgeActiveDesc, bridgeTakeoversDesc, bridgeStandDesc, bridgeCheckDesc} {
		ch <- d
	}
}

func (c bridgeCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.b.status()
	if s == nil {
		return
	}
	b := func(x bool) float64 {
		if x {
			return 1
		}
		return 0
	}
	ch <- prometheus.MustNewConstMetric(bridgeActiveDesc, prometheus.GaugeValue, b(s.Active))
	ch <- prometheus.MustNewConstMetric(bridgeTakeoversDesc, prometheus.CounterValue, float64(s.Takeovers))
	ch <- prometheus.MustNewConstMetric(bridgeStandDesc, prometheus.CounterValue, float64(s.StandDowns))
	ch <- prometheus.MustNewConstMetric(bridgeCheckDesc, prometheus.GaugeValue, b(s.CheckOK))
}

// endRemovedBridges ends, once a commit is applied, the local sessions of
// the bridge connections it removed from this node (a broker left the
// definition, this node lost the bridge role, the bridge secret changed).
// mosquitto keeps each connection's local side as a session under
// "local.<client id>" (cleansession false) and restores it from its
// persistence at every start, connection or not: a removed one would queue
// every message the brokers send until its queue is full, and drop from
// then on, for ever. The applied commit restarted mosquitto without those
// connections, so no live bridge uses the ids.
func (a *Agent) endRemovedBridges(ctx context.Context, old, cur *View) {
	if old == nil || len(old.BridgeIDs) == 0 {
		return
	}
	local := cluster.HostPort("127.0.0.1", cur.Cluster.Ports.Broker)
	tc := daemon.WithName(cur.TLS, cur.Node.Address)
	for _, id := range old.BridgeIDs {
		if slices.Contains(cur.BridgeIDs, id) {
			continue
		}
		id = daemon.LocalBridgeID(id)
		var err error
		for try := 0; try < 3; try++ {
			if try > 0 {
				time.Sleep(time.Second)
			}
			ctx, cancel := context.WithTimeout(ctx, probeTimeout)
			err = a.d.EndSession(ctx, local, tc, id)
			cancel()
			if err == nil {
				break
			}
		}
		if err != nil {
			a.log.Error("end a removed bridge connection's local session: mosquitto queues every message for it until it is ended; end it by hand with a client certificate of the cluster: mosquitto_sub -i <session> -t x -E (clean session)",
				"session", id, "at", local, "err", err)
			continue
		}
		a.log.Info("ended a removed bridge connection's local session", "session", id)
	}
}
