package sessions

import (
	"testing"
	"time"
)

// What mosquitto logs and what a peer lists come from outside the agent:
// no line, listing or filter may crash it, a listed filter the policy
// subscribes must be one Shadowable accepts, and a client connected here
// is never visited.
func FuzzSessions(f *testing.F) {
	f.Add("1001: New client connected from 10.0.0.1:1 as a (p2, c0, k30, u'client').", "1002: a 1 t/#", `{"clients":["a","b"],"subs":{"b":{"x/+":1,"$share/g/t":1}},"at":5}`)
	f.Add("1001: Expiring client a due to timeout.", "1002: Client a closed its connection.", `{"ended":{"a":5},"at":5}`)
	f.Add("Bad socket read/write on client : x", "a 3 #/x", `{"clients":["a"],"subs":{"a":{"#/x":7}},"at":1}`)
	f.Fuzz(func(t *testing.T, line1, line2, listing string) {
		tr := NewTracker()
		tr.Self = "broker1"
		now := time.Unix(2000, 0)
		for _, l := range []string{"1000: mosquitto version 2.0.11 starting", line1, line2} {
			tr.Observe(l, now)
		}
		tr.Held()
		tr.Ended(now)
		l, err := Decode([]byte(listing))
		if err != nil {
			return
		}
		peers := map[string]Listed{}
		peers["b"], _, _ = Receive(Listed{}, l, now, 0)
		peers["c"], _, _ = Receive(Listed{}, l, now, l.At-1) // live
		visits, _ := NewPolicy().Decide(tr, peers, now)
		here := map[string]bool{}
		for _, id := range tr.Here() {
			here[id] = true
		}
		for _, v := range visits {
			if here[v.ID] {
				t.Fatalf("visit of %q, connected here", v.ID)
			}
			for f, q := range v.Subscribe {
				if why := Shadowable(f, q); why != "" {
					t.Fatalf("subscribes %q at %d: %s", f, q, why)
				}
			}
		}
		Ends(tr, peers, now)
	})
}
