package verdict

import (
	"crypto/x509"
	"maps"
	"slices"
	"sync"
	"time"
)

// Known holds the verdicts an agent trusts, as each node last published
// them (a node that withdraws one, after an operator's retry, withdraws it
// for everyone). Fed from the brokers (any goroutine), asked by the loop.
type Known struct {
	mu     sync.Mutex
	by     map[string][]Verdict // node -> its trusted verdicts
	forged int
}

// Take reads the verdicts node `from` publishes now, replacing what it
// published before. It returns the commits that no node had a verdict on
// before, and an error for each verdict it does not trust (counted as
// forged): a node may publish only its own.
func (k *Known) Take(from string, signed []Signed, roots *x509.CertPool, cluster string, now time.Time) (fresh []Verdict, forged []error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.by == nil {
		k.by = map[string][]Verdict{}
	}
	var mine []Verdict
	for _, s := range signed {
		v, err := s.Open(roots, cluster, now)
		if err == nil && v.Node != from {
			err = errNotFrom{v.Node, from}
		}
		if err != nil {
			k.forged++
			forged = append(forged, err)
			continue
		}
		if _, known := k.against(v.Commit); !known {
			fresh = append(fresh, v)
		}
		mine = append(mine, v)
	}
	k.by[from] = mine
	return fresh, forged
}

type errNotFrom struct{ node, from string }

func (e errNotFrom) Error() string {
	return "a verdict of node " + e.node + " published as node " + e.from + "'s"
}

// Against returns a trusted verdict on commit, if any node has one.
func (k *Known) Against(commit string) (Verdict, bool) {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.against(commit)
}

func (k *Known) against(commit string) (Verdict, bool) {
	for _, node := range slices.Sorted(maps.Keys(k.by)) {
		for _, v := range k.by[node] {
			if v.Commit == commit {
				return v, true
			}
		}
	}
	return Verdict{}, false
}

// Forged is how many verdicts were not trusted so far.
func (k *Known) Forged() int {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.forged
}
