package agent

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/mqha/mqha/internal/apply"
	"github.com/mqha/mqha/internal/daemon"
	"github.com/mqha/mqha/internal/source"
	"github.com/mqha/mqha/internal/verdict"
)

// A commit's fate is the fleet's (package verdict). This node signs a
// verdict on a commit it applied and could not verify; the status
// publisher keeps this node's verdicts retained on every broker
// ($mqha/verdict/CLUSTER/NODE, which only this node may write) and reads
// the others'. A commit with a trusted verdict is not applied here, and if
// it was (a load balancer takes a commit seconds before a broker fails
// it), this node goes back to the commit it applied before.

// fleetRefused starts the reason of a refusal that follows another node's
// verdict (a withdrawn verdict releases such a refusal).
const fleetRefused = "refused by the fleet"

// verdictTopic is where node publishes its verdicts.
func verdictTopic(cluster, node string) string {
	return daemon.VerdictTopics(cluster) + "/" + node
}

// previousServes bounds how long the rolled-back daemons get to serve
// again before a verdict is given (verify-timeout, if shorter).
const previousServes = 15 * time.Second

// judgeIfPreviousServes gives a verdict on commit, which did not verify
// here, when the daemons serve again with the applied commit after the
// rollback: then the commit failed, not this node. A node in trouble of
// its own (killed daemons, a cut network) fails with the previous commit
// too, and its failure stays its own.
func (a *Agent) judgeIfPreviousServes(ctx context.Context, commit string, err error) {
	if a.view == nil {
		return
	}
	if verr := a.verifyChecks(ctx, a.view.Checks, min(previousServes, a.cfg.VerifyTimeout)); verr != nil {
		a.log.Warn("no verdict on a commit that did not verify: this node does not serve with the commit before it either, so the trouble may be its own",
			"commit", source.Short(commit), "err", verr)
		return
	}
	a.judge(commit, err)
}

// judge signs this node's verdict on commit, which it could not verify
// (err), with the node certificate of the applied commit.
func (a *Agent) judge(commit string, err error) {
	for _, s := range a.facts.Verdicts() {
		if committed(s) == commit {
			return // said already (before the rollback)
		}
	}
	v := a.view
	if v == nil || v.TLS == nil || len(v.TLS.Certificates) == 0 {
		a.log.Warn("no verdict on a commit this node could not verify: no node certificate applied to sign it with", "commit", source.Short(commit))
		return
	}
	s, serr := verdict.Sign(verdict.Verdict{Cluster: v.Cluster.Name, Commit: commit, Node: a.node, Reason: oneLine(err.Error()), At: a.d.Now()},
		v.TLS.Certificates[0])
	if serr != nil {
		a.log.Error("sign the verdict on a commit this node could not verify", "commit", source.Short(commit), "err", serr)
		return
	}
	a.facts.Judge(s)
	a.log.Warn("verdict: this node could not verify the commit; the fleet will not apply it", "commit", source.Short(commit))
	a.publish.kickNow()
}

// fleetVerdict is the refusal of commit for another node's verdict, if
// there is one.
func (a *Agent) fleetVerdict(commit string) error {
	v, ok := a.verdicts.Against(commit)
	if !ok || v.Node == a.node {
		return nil
	}
	return fmt.Errorf("commit %s: %s: node %s could not verify it (%s) at %s; not applied here (mqha-agent sync --retry on %s tries it again fleet-wide)",
		source.Short(commit), fleetRefused, v.Node, v.Reason, v.At.UTC().Format("15:04:05Z"), v.Node)
}

// takeVerdicts reads what node published on a broker (any goroutine) and
// has the loop act on what is new.
func (a *Agent) takeVerdicts(v *View, roots *x509.CertPool, node string, payload []byte) {
	var signed []verdict.Signed
	if len(payload) > 0 {
		if err := json.Unmarshal(payload, &signed); err != nil {
			a.m.verdicts.WithLabelValues("untrusted").Inc()
			a.log.Warn("verdicts that do not read, ignored", "node", node, "err", err)
			return
		}
	}
	fresh, forged := a.verdicts.Take(node, signed, roots, v.Cluster.Name, a.d.Now())
	for _, err := range forged {
		a.m.verdicts.WithLabelValues("untrusted").Inc()
		a.log.Warn("a verdict not trusted, ignored", "published_as", node, "err", err)
	}
	for _, f := range fresh {
		if f.Node != a.node {
			a.m.verdicts.WithLabelValues("learned").Inc()
			a.log.Warn("verdict of another node: the fleet will not apply the commit", "commit", source.Short(f.Commit), "node", f.Node, "reason", f.Reason)
		}
	}
	// Fresh verdicts, and withdrawn ones, change what the loop must do.
	a.nudge("verdicts", a.obeyVerdicts)
}

// obeyVerdicts runs on the loop: a verdict on the applied commit takes this
// node back to the commit it applied before; a withdrawn verdict releases a
// refusal it made.
func (a *Agent) obeyVerdicts(ctx context.Context) {
	f := a.facts.get()
	if f.refused != "" && f.holdRefused && strings.Contains(f.refusedReason, fleetRefused) {
		if _, still := a.verdicts.Against(f.refused); !still {
			a.log.Info("the verdict on a commit refused here was withdrawn: trying it again", "commit", source.Short(f.refused))
			a.facts.Retry()
			a.startPull(ctx, true)
		}
	}
	applied := f.applied
	err := a.fleetVerdict(applied)
	if applied == "" || err == nil || f.suspended != nil {
		return
	}
	prev := ""
	for _, h := range f.history {
		if h.Result == "applied" && h.Commit != applied {
			prev = h.Commit
			break
		}
	}
	if prev == "" {
		a.log.Error("the applied commit has a verdict against it, and no earlier commit is known to go back to", "commit", source.Short(applied), "err", err)
		return
	}
	a.m.verdicts.WithLabelValues("obeyed").Inc()
	a.log.Warn("the applied commit has a verdict against it: going back to the one applied before", "commit", source.Short(applied), "back_to", source.Short(prev), "err", err)
	v, lerr := a.load(ctx, prev)
	if lerr == nil {
		lerr = a.apply(ctx, v)
	}
	if lerr != nil {
		a.log.Error("go back to the commit applied before the one the fleet refused", "back_to", source.Short(prev), "err", lerr)
		return
	}
	a.facts.Refuse(applied, fmt.Errorf("%w; this node had applied it and went back to %s (rolled back)", err, source.Short(prev)))
}

// nodeRoots are the CAs a node certificate of v's cluster chains to.
func nodeRoots(v *View) (*x509.CertPool, error) {
	f := v.Cluster.TLS
	if f.NodeCA == "" || f.NodeCA == f.CA {
		if v.TLS == nil {
			return nil, errors.New("no TLS")
		}
		return v.TLS.RootCAs, nil
	}
	b, err := os.ReadFile(f.NodeCA)
	if err != nil {
		return nil, fmt.Errorf("tls.nodeCA: %w", err)
	}
	p := x509.NewCertPool()
	if !p.AppendCertsFromPEM(b) {
		return nil, fmt.Errorf("tls.nodeCA %s holds no certificate", f.NodeCA)
	}
	return p, nil
}

// verdictsOnConnect is what the status publisher does on each broker it
// connects to: say this node's verdicts, read the others', and follow the
// canary's status when the applied commit names one.
func (a *Agent) verdictsOnConnect(c mqtt.Client, v *View) {
	roots, err := nodeRoots(v)
	if err != nil {
		a.log.Warn("cannot check the fleet's verdicts", "err", err)
		return
	}
	a.publishVerdicts(c, v)
	prefix := daemon.VerdictTopics(v.Cluster.Name) + "/"
	c.Subscribe(prefix+"+", 1, func(_ mqtt.Client, m mqtt.Message) {
		a.takeVerdicts(v, roots, strings.TrimPrefix(m.Topic(), prefix), m.Payload())
	})
	if canary := v.Cluster.Rollout.Canary; canary != "" && canary != a.node {
		c.Subscribe(daemon.StatusTopics(v.Cluster.Name)+"/"+canary, 1, func(_ mqtt.Client, m mqtt.Message) {
			var st struct{ Applied string }
			if json.Unmarshal(m.Payload(), &st) == nil {
				a.canary.Store(st.Applied)
			}
		})
	}
}

// canaryWaitStep is how often a node waiting for the canary looks again.
const canaryWaitStep = 200 * time.Millisecond

// waitCanary holds a new commit until the canary of the applied definition
// applied it (its status says so) or some node gave a verdict on it, for
// at most the definition's canaryWait. It reports how the wait ended.
func (a *Agent) waitCanary(ctx context.Context, commit string) string {
	applied := a.view
	if applied == nil {
		return ""
	}
	r := applied.Cluster.Rollout
	if r.Canary == "" || r.Canary == a.node {
		return ""
	}
	wait := time.Duration(r.CanaryWait) * time.Second
	start := time.Now()
	for {
		if got, _ := a.canary.Load().(string); got == commit {
			return "the canary " + r.Canary + " applied it"
		}
		if _, ok := a.verdicts.Against(commit); ok {
			return "a verdict"
		}
		if time.Since(start) > wait {
			a.log.Warn("going ahead without the canary: it did not apply the commit in time", "canary", r.Canary, "waited", wait, "commit", source.Short(commit))
			return "the canary's wait ran out"
		}
		select {
		case <-ctx.Done():
			return "stopped"
		case <-time.After(canaryWaitStep):
		}
	}
}

// publishVerdicts puts this node's verdicts, retained, on c's broker.
func (a *Agent) publishVerdicts(c mqtt.Client, v *View) {
	out, _ := json.Marshal(a.facts.Verdicts())
	if c.IsConnectionOpen() {
		c.Publish(verdictTopic(v.Cluster.Name, a.node), 1, true, out)
	}
}

// unverified reports whether err says a commit did not verify after it was
// applied (the commit's doing: a verdict for the fleet), not that this node
// failed to apply it.
func unverified(err error) bool { return errors.Is(err, apply.ErrUnverified) }
