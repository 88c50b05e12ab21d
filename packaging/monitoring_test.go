package packaging

import (
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/mqha/mqha/internal/agent"
	"github.com/mqha/mqha/internal/testtools"
)

const (
	rules     = "prometheus/mqha.rules.yml"
	rulesTest = "prometheus/mqha.rules.test.yml"
	dashboard = "grafana/mqha.json"
)

func promtool(t *testing.T, dir string, args ...string) {
	t.Helper()
	cmd := exec.Command("promtool", args...)
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// TestAlertRules: the shipped rules load, and each alert fires on the
// series that should fire it and not on healthy ones (promtool's tests).
func TestAlertRules(t *testing.T) {
	testtools.Require(t, "promtool")
	promtool(t, "prometheus", "check", "rules", filepath.Base(rules))
	promtool(t, "prometheus", "test", "rules", filepath.Base(rulesTest))
}

type grafana struct {
	Panels []struct {
		Title   string `json:"title"`
		Targets []struct {
			Expr string `json:"expr"`
		} `json:"targets"`
	} `json:"panels"`
}

func dashboardExprs(t *testing.T) map[string]string {
	t.Helper()
	b, err := os.ReadFile(dashboard)
	if err != nil {
		t.Fatal(err)
	}
	var d grafana
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatalf("%s: %v", dashboard, err)
	}
	out := map[string]string{}
	for i, p := range d.Panels {
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for j, tg := range p.Targets {
			out[fmt.Sprintf("panel%d_%d", i, j)] = tg.Expr
		}
	}
	return out
}

// TestDashboardQueries: every query of the dashboard is valid PromQL
// (checked by promtool as recording rules).
func TestDashboardQueries(t *testing.T) {
	testtools.Require(t, "promtool")
	var b strings.Builder
	b.WriteString("groups:\n- name: dashboard\n  rules:\n")
	exprs := dashboardExprs(t)
	for _, k := range slices.Sorted(maps.Keys(exprs)) {
		q, _ := json.Marshal(exprs[k])
		fmt.Fprintf(&b, "  - record: dashboard:%s\n    expr: %s\n", k, q)
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "dashboard.rules.yml"), []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	promtool(t, dir, "check", "rules", "dashboard.rules.yml")
}

var metricName = regexp.MustCompile(`\bmqha_[a-z_]+`)

// TestMonitoringNamesRealMetrics: the rules and the dashboard name only
// metrics the agent serves, and the dashboard shows every one of them.
func TestMonitoringNamesRealMetrics(t *testing.T) {
	served := agent.MetricNames()
	known := func(m string) bool {
		for _, suffix := range []string{"", "_bucket", "_sum", "_count"} {
			if slices.Contains(served, strings.TrimSuffix(m, suffix)) && (suffix == "" || strings.HasSuffix(m, suffix)) {
				return true
			}
		}
		return false
	}
	r, err := os.ReadFile(rules)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range metricName.FindAllString(string(r), -1) {
		if !known(m) {
			t.Errorf("%s names %s, which the agent does not serve (%v)", rules, m, served)
		}
	}
	shown := map[string]bool{}
	for _, q := range dashboardExprs(t) {
		for _, m := range metricName.FindAllString(q, -1) {
			if !known(m) {
				t.Errorf("%s queries %s, which the agent does not serve", dashboard, m)
			}
			shown[strings.TrimSuffix(m, "_bucket")] = true
		}
	}
	for _, m := range served {
		if !shown[m] {
			t.Errorf("the dashboard does not show %s", m)
		}
	}
}
