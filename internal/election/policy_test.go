package election

import (
	"strings"
	"testing"
	"time"
)

func TestDecide(t *testing.T) {
	t0 := time.Date(2026, 11, 27, 5, 0, 0, 0, time.UTC)
	now := t0.Add(time.Minute)
	hi := Candidate{"bridge", 20}
	lo := Candidate{"bridge2", 10}
	active := func(c Candidate, since time.Time, age time.Duration) Seen {
		return Seen{Beat{Node: c.Name, Priority: c.Priority, Active: true, Since: since}, now.Add(-age)}
	}
	standby := func(c Candidate, age time.Duration) Seen {
		return Seen{Beat{Node: c.Name, Priority: c.Priority}, now.Add(-age)}
	}
	peers := func(s ...Seen) map[string]Seen {
		m := map[string]Seen{}
		for _, x := range s {
			m[x.Node] = x
		}
		return m
	}
	ok := Obs{Now: now, Start: t0, Brokers: 2, LastBroker: now, Local: true, LastLocal: now}
	with := func(f func(*Obs)) Obs { o := ok; f(&o); return o }
	tests := []struct {
		name     string
		me       Candidate
		obs      Obs
		want     Decision
		reason   string
		conflict bool
	}{
		{"standby hears the master", lo, with(func(o *Obs) { o.Peers = peers(active(hi, t0, 300*time.Millisecond)) }), Stay, "bridge is the bridge master", false},
		{"master silent 1 s: not yet", lo, with(func(o *Obs) { o.Peers = peers(active(hi, t0, time.Second)) }), Stay, "bridge is the bridge master", false},
		{"master silent 2.1 s: take over", lo, with(func(o *Obs) { o.Peers = peers(active(hi, t0, 2100*time.Millisecond)) }), TakeOver, "no bridge master for 2.1s", false},
		{"no broker reached: never take over", lo, with(func(o *Obs) { o.Brokers = 0; o.Peers = peers(active(hi, t0, time.Minute)) }), Stay, "reaches no broker", false},
		{"own mosquitto down: never take over", lo, with(func(o *Obs) { o.Local = false; o.Peers = peers(active(hi, t0, time.Minute)) }), Stay, "own mosquitto does not serve", false},
		{"just started: listen first", lo, with(func(o *Obs) { o.Start = now.Add(-time.Second) }), Stay, "taking over after 2s", false},
		{"a live standby of higher priority goes first", lo, with(func(o *Obs) {
			o.Start = now.Add(-2500 * time.Millisecond)
			o.Peers = peers(standby(hi, 100*time.Millisecond))
		}), Stay, "taking over after 3s", false},
		{"after the higher one's turn, the lower goes", lo, with(func(o *Obs) {
			o.Start = now.Add(-3100 * time.Millisecond)
			o.Peers = peers(standby(hi, 100*time.Millisecond))
		}), TakeOver, "taking over", false},
		{"bootstrap: the highest goes after the dead time", hi, with(func(o *Obs) {
			o.Start = now.Add(-2100 * time.Millisecond)
			o.Peers = peers(standby(lo, 100*time.Millisecond))
		}), TakeOver, "", false},
		{"master keeps the role", hi, with(func(o *Obs) { o.Active, o.Since = true, t0; o.Peers = peers(standby(lo, 0)) }), Stay, "active bridge master", false},
		{"tug of war: the later claim stands down", lo, with(func(o *Obs) { o.Active, o.Since = true, t0.Add(time.Second); o.Peers = peers(active(hi, t0, 0)) }), StandDown, "tug of war: bridge has been the bridge master since", true},
		{"tug of war: the incumbent stays, even of lower priority", lo, with(func(o *Obs) { o.Active, o.Since = true, t0; o.Peers = peers(active(hi, t0.Add(time.Second), 0)) }), Stay, "it stands down", true},
		{"tug of war at the same instant: priority decides", lo, with(func(o *Obs) { o.Active, o.Since = true, t0; o.Peers = peers(active(hi, t0, 0)) }), StandDown, "tug of war", true},
		{"a stale claim is no tug of war", lo, with(func(o *Obs) {
			o.Active, o.Since = true, t0.Add(time.Second)
			o.Peers = peers(active(hi, t0, 5*time.Second))
		}), Stay, "active bridge master", false},
		{"cut off from every broker: stand down after the fence", hi, with(func(o *Obs) { o.Active, o.Since, o.Brokers, o.LastBroker = true, t0, 0, now.Add(-3*time.Second) }), StandDown, "reaches no broker for 3s", false},
		{"cut off briefly: stay", hi, with(func(o *Obs) { o.Active, o.Since, o.Brokers, o.LastBroker = true, t0, 0, now.Add(-time.Second) }), Stay, "active", false},
		{"own mosquitto gone: stand down after the fence", hi, with(func(o *Obs) { o.Active, o.Since, o.Local, o.LastLocal = true, t0, false, now.Add(-4*time.Second) }), StandDown, "own mosquitto took no beat", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v := Decide(tt.me, tt.obs, DefaultTiming)
			if v.Decision != tt.want || !strings.Contains(v.Reason, tt.reason) || v.Conflict != tt.conflict {
				t.Errorf("got %s (%q, conflict %v), want %s (...%s..., conflict %v)", v.Decision, v.Reason, v.Conflict, tt.want, tt.reason, tt.conflict)
			}
		})
	}
}
