package agent

import (
	"context"
	"io/fs"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/mqha/mqha/internal/cluster"
	"github.com/mqha/mqha/internal/evaluate"
	"github.com/mqha/mqha/schema"
)

// A reload applies what can change while running and names what cannot.
func TestReloadConfig(t *testing.T) {
	h := newHarness(t, "broker1", "", map[string]string{"c1": ""})
	h.src.head = "c1"
	h.poll()
	cfg := h.a.cfg
	cfg.Poll, cfg.VerifyTimeout, cfg.AllowRewind = 2*time.Second, 7*time.Second, true
	if err := h.a.Reload(h.ctx, cfg, verifier{}); err != nil {
		t.Fatal(err)
	}
	var got Config
	var signed bool
	h.onLoop(func() { got, signed = h.a.cfg, h.a.d.Verifier != nil })
	if got.Poll != 2*time.Second || got.VerifyTimeout != 7*time.Second || !got.AllowRewind || !signed {
		t.Errorf("not applied: %+v", got)
	}
	cfg.Repo, cfg.Branch, cfg.Poll = "git://elsewhere/c.git", "prod", 3*time.Second
	err := h.a.Reload(h.ctx, cfg, nil)
	if err == nil || err.Error() != "repo, branch changed: needs a restart (systemctl restart mqha-agent); kept the running values" {
		t.Errorf("got %v", err)
	}
	h.onLoop(func() { got, signed = h.a.cfg, h.a.d.Verifier != nil })
	if got.Repo != "git://example/cluster.git" || got.Branch != "main" || got.Poll != 3*time.Second || signed {
		t.Errorf("repo or branch changed while running, or the rest was not applied: %+v (verifier %v)", got, signed)
	}
}

// The bounds on reading and evaluating a commit take effect on reload:
// the next commit is read and evaluated within the new ones.
func TestReloadAppliesTheLoadBounds(t *testing.T) {
	h := newHarness(t, "broker1", "", map[string]string{"c1": "", "c2": "mqtt: maxQueuedMessages: 2000"})
	var lims []evaluate.Limits
	h.a.d.LoadDefinition = func(_ context.Context, files fs.FS, lim evaluate.Limits) (*cluster.Cluster, error) {
		lims = append(lims, lim)
		return schema.Load(files, ".")
	}
	h.src.head = "c1"
	h.poll()
	cfg := h.a.cfg
	cfg.LoadTimeout, cfg.LoadMemory, cfg.MaxDefinitionSize = 3*time.Second, 64<<20, 1<<20
	if err := h.a.Reload(h.ctx, cfg, nil); err != nil {
		t.Fatal(err)
	}
	h.src.mu.Lock()
	h.src.head = "c2"
	h.src.mu.Unlock()
	h.poll()
	if s := h.a.Status(); s.Applied != "c2" {
		t.Fatalf("c2 not applied: %+v", s)
	}
	want := []evaluate.Limits{{Timeout: 20 * time.Second, Memory: 256 << 20}, {Timeout: 3 * time.Second, Memory: 64 << 20}}
	if len(lims) != 2 || lims[0] != want[0] || lims[1] != want[1] {
		t.Errorf("evaluated within %+v, want %+v", lims, want)
	}
	h.src.mu.Lock()
	sizes := h.src.maxBytes
	h.src.mu.Unlock()
	if len(sizes) < 2 || sizes[len(sizes)-1] != 1<<20 {
		t.Errorf("read with max-definition-size %v, want the reloaded 1M last", sizes)
	}
}

// Each key of agent.conf is said once, in the keys table, to apply on
// reload or need a restart; the man page and the packaged example say the
// same of each.
func TestReloadRuleDocumented(t *testing.T) {
	man, err := os.ReadFile("../../packaging/mqha-agent.8")
	if err != nil {
		t.Fatal(err)
	}
	conf, err := os.ReadFile("../../packaging/agent.conf")
	if err != nil {
		t.Fatal(err)
	}
	text := strings.ReplaceAll(string(man), `\-`, "-")
	for _, k := range keys {
		// The man page: the key's paragraph, up to the next.
		i := strings.Index(text, ".TP\n.B "+k.name+"\n")
		if i < 0 {
			t.Errorf("the man page does not describe %s", k.name)
			continue
		}
		para := text[i+4:]
		if j := regexp.MustCompile(`\n\.(TP|SH)`).FindStringIndex(para); j != nil {
			para = para[:j[0]]
		}
		if says := strings.Contains(para, "Needs a restart."); says != (k.when == onRestart) {
			t.Errorf("man page, %s: says \"Needs a restart.\": %v; the keys table: restart %v", k.name, says, k.when == onRestart)
		}
		// The example: the key's paragraph, up to the blank line above it.
		lines := strings.Split(string(conf), "\n")
		at := -1
		for n, l := range lines {
			if regexp.MustCompile(`^#?` + regexp.QuoteMeta(k.name) + ` = `).MatchString(l) {
				at = n
				break
			}
		}
		if at < 0 {
			t.Errorf("the example agent.conf does not show %s", k.name)
			continue
		}
		says := false
		for n := at - 1; n >= 0 && lines[n] != ""; n-- {
			says = says || strings.HasPrefix(lines[n], "# ") && strings.Contains(lines[n], "[restart]")
		}
		if says != (k.when == onRestart) {
			t.Errorf("example agent.conf, %s: marked [restart]: %v; the keys table: restart %v", k.name, says, k.when == onRestart)
		}
	}
}
