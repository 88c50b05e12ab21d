package verdict

import (
	"crypto/x509"
	"sync"
	"time"
)

// Known holds the verdicts an agent trusts, fed from the other nodes'
// statuses (any goroutine) and asked by the agent's loop.
type Known struct {
	mu      sync.Mutex
	against map[string]Verdict // commit -> the first trusted verdict on it
	cleared map[string]bool    // commits an operator asked to try again
	forged  int
}

// Take reads the verdicts node `from` published. It returns those it did
// not know, and an error for each it does not trust (counted as forged).
// A verdict must come from the node that signed it: a status carries only
// its own node's.
func (k *Known) Take(from string, signed []Signed, roots *x509.CertPool, cluster string, now time.Time) (fresh []Verdict, forged []error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.against == nil {
		k.against = map[string]Verdict{}
	}
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
		if _, ok := k.against[v.Commit]; ok || k.cleared[v.Commit] {
			continue
		}
		k.against[v.Commit] = v
		fresh = append(fresh, v)
	}
	return fresh, forged
}

type errNotFrom struct{ node, from string }

func (e errNotFrom) Error() string {
	return "a verdict of node " + e.node + " in the status of node " + e.from
}

// Against returns the trusted verdict on commit, if any.
func (k *Known) Against(commit string) (Verdict, bool) {
	k.mu.Lock()
	defer k.mu.Unlock()
	v, ok := k.against[commit]
	return v, ok
}

// Clear forgets the verdict on commit and ignores any that comes again: an
// operator asked the fleet to try it again.
func (k *Known) Clear(commit string) {
	k.mu.Lock()
	defer k.mu.Unlock()
	delete(k.against, commit)
	if k.cleared == nil {
		k.cleared = map[string]bool{}
	}
	k.cleared[commit] = true
}

// Forged is how many verdicts were not trusted so far.
func (k *Known) Forged() int {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.forged
}
