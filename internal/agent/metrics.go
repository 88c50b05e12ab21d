package agent

import (
	"regexp"
	"sort"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/mqha/mqha/internal/health"
)

type metrics struct {
	reg           *prometheus.Registry
	own           []prometheus.Collector // the mqha_ metrics (MetricNames)
	applied       *prometheus.GaugeVec
	converges     *prometheus.CounterVec
	fetchErrors   prometheus.Counter
	checkOK       *prometheus.GaugeVec
	repairs       *prometheus.GaugeVec
	drift         prometheus.Counter
	drops         *prometheus.CounterVec
	limitOK       *prometheus.GaugeVec
	stage         *prometheus.HistogramVec
	certExpiry    *prometheus.GaugeVec
	suspended     prometheus.Gauge
	decommission  prometheus.Gauge
	forged        *prometheus.CounterVec
	vipReleased   *prometheus.CounterVec
	verdicts      *prometheus.CounterVec
	notifications *prometheus.CounterVec
}

func newMetrics() *metrics {
	m := &metrics{reg: prometheus.NewRegistry(),
		applied:     prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "mqha_applied_commit_info", Help: "The commit this node applied (value 1)."}, []string{"commit"}),
		converges:   prometheus.NewCounterVec(prometheus.CounterOpts{Name: "mqha_converges_total", Help: "Converge attempts on new commits by result."}, []string{"result"}),
		fetchErrors: prometheus.NewCounter(prometheus.CounterOpts{Name: "mqha_fetch_errors_total", Help: "Failed checks of the cluster repository."}),
		checkOK:     prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "mqha_health_check_ok", Help: "1 when the last run of a health check passed."}, []string{"check"}),
		repairs:     prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "mqha_health_repairs", Help: "Repairs made by a health check since the agent started."}, []string{"check"}),
		drift:       prometheus.NewCounter(prometheus.CounterOpts{Name: "mqha_drift_reverted_total", Help: "Hand edits of managed files reverted."}),
		drops: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "mqha_mosquitto_drop_episodes_total",
			Help: "Times mosquitto started dropping messages for a client whose queue was full (acknowledged messages lost)."}, []string{"client"}),
	}
	m.limitOK = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "mqha_limit_ok",
		Help: "1 when a daemon's descriptor limit is in force and holds limits.clients; 0 otherwise (see status)."}, []string{"unit"})
	m.stage = prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "mqha_converge_stage_seconds",
		Help:    "How long each stage of converging a new commit took.",
		Buckets: []float64{.01, .05, .1, .25, .5, 1, 2, 5, 10, 30, 60}}, []string{"stage"})
	m.certExpiry = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "mqha_certificate_expiry_timestamp_seconds",
		Help: "When the node's certificate (cert=node) and the CA (cert=ca; each CA of a file holding several: cert=\"ca SUBJECT\") expire, as a Unix time."}, []string{"cert"})
	m.suspended = prometheus.NewGauge(prometheus.GaugeOpts{Name: "mqha_suspended", Help: "1 while an operator suspended the agent (mqha-agent suspend): no converging, no drift revert."})
	m.decommission = prometheus.NewGauge(prometheus.GaugeOpts{Name: "mqha_decommission", Help: "0 while the definition lists this node, 1 while it drains after a commit removed it, 2 once its units are stopped and disabled."})
	m.forged = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "mqha_vrrp_forged_adverts_total",
		Help: "VRRP adverts keepalived dropped because they came from a host that is not the other load balancer (check_unicast_src), by source."}, []string{"source"})
	m.vipReleased = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "mqha_vip_released_total",
		Help: "Addresses the agent deleted from this node's interfaces because keepalived, which held them, was stopped (SIGSTOP) or not running, by why."}, []string{"why"})
	m.verdicts = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "mqha_verdicts_total",
		Help: "Verdicts on commits: given by this node (what=\"given\"), learned from another node (\"learned\"), not trusted (\"untrusted\": unsigned, forged, not a node's), commits refused or rolled back because of one (\"obeyed\")."}, []string{"what"})
	m.notifications = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "mqha_notifications_total",
		Help: "Events posted to the notify-url webhook, by result: sent, failed (given up after 5 tries), dropped (the queue was full)."}, []string{"result"})
	m.own = []prometheus.Collector{m.notifications, m.verdicts, m.vipReleased, m.forged, m.decommission, m.suspended, m.applied, m.converges, m.fetchErrors, m.checkOK, m.repairs, m.drift, m.drops, m.limitOK, m.stage, m.certExpiry}
	m.reg.MustRegister(m.own...)
	m.reg.MustRegister(prometheus.NewGoCollector(), prometheus.NewProcessCollector(prometheus.ProcessCollectorOpts{}))
	return m
}

// MetricNames lists the mqha_ metrics the agent serves: what the man page,
// the alert rules and the dashboard may name (their tests read it).
func MetricNames() []string {
	ch := make(chan *prometheus.Desc, 64)
	go func() {
		k := newSessionKeeper()
		for _, c := range append(append(newMetrics().own, bridgeCollector{}), k.collectors()...) {
			c.Describe(ch)
		}
		close(ch)
	}()
	var out []string
	for d := range ch {
		if m := fqName.FindStringSubmatch(d.String()); m != nil {
			out = append(out, m[1])
		}
	}
	sort.Strings(out)
	return out
}

var fqName = regexp.MustCompile(`fqName: "([^"]+)"`)

func (m *metrics) setApplied(hash string) {
	m.applied.Reset()
	m.applied.WithLabelValues(hash).Set(1)
}

func (m *metrics) checked(r health.Result) {
	ok := 0.0
	if r.OK {
		ok = 1
	}
	m.checkOK.WithLabelValues(r.Name).Set(ok)
	m.repairs.WithLabelValues(r.Name).Set(float64(r.Repairs))
}
