package agent

import (
	"sync"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/mqha/mqha/internal/bridgerole"
	"github.com/mqha/mqha/internal/control"
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
