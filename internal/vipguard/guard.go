// Package vipguard keeps a node whose keepalived no longer speaks VRRP
// from holding the addresses keepalived manages there.
//
// A stopped keepalived (SIGSTOP, a tracer) or a killed one sends no
// adverts, so its peer takes the address after about three advert
// intervals (0.6 s at the default 0.2 s), while this node's kernel keeps
// it: two holders answer ARP for one address until keepalived runs again.
// The soak measured 19 s of two VIP holders for a keepalived stopped 19 s.
// The guard looks every 100 ms, well inside the peer's wait, and when
// keepalived is stopped or gone it kills it (systemd starts it again, as
// BACKUP), deletes the addresses from their interfaces and, on a bridge
// node, stands the bridge role down (takes the bridge connections out), so
// that the peer alone holds them. It runs on its own goroutine: a busy
// agent loop does not delay it.
//
//   - guard.go: the watch (Guard) and what it does.
//   - procs.go: keepalived's processes and their states.
//   - addr.go: the addresses on the interfaces (netlink).
package vipguard

import (
	"context"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/mqha/mqha/internal/bridgerole"
)

// Interval is how often the guard looks: well under the three advert
// intervals (0.6 s by default) a peer waits before it takes over.
const Interval = 100 * time.Millisecond

// Addr is an address keepalived holds on this node while it is master.
type Addr struct {
	Prefix    netip.Prefix
	Interface string
}

func (a Addr) String() string { return a.Prefix.String() + " dev " + a.Interface }

// Watch is what keepalived manages on this node, from the applied commit.
type Watch struct {
	Addrs []Addr
	// Bridge: keepalived elects the bridge master here; its addresses
	// released, the bridge role stands down too.
	Bridge bool
}

// Guard watches keepalived and releases what a silent one holds.
type Guard struct {
	// Procs lists keepalived's processes (nil: Processes of keepalived.service).
	Procs func() ([]Proc, error)
	// Kill sends SIGKILL to every keepalived process (its unit restarts it).
	Kill func(ctx context.Context) error
	// Held reports whether a is on its interface; Release deletes it (nil:
	// the functions of this package, through netlink).
	Held    func(a Addr) (bool, error)
	Release func(a Addr) error
	// StandDown takes this node out of the bridge role: the bridge
	// connections unlinked, mosquitto restarted when they were linked (nil:
	// as keepalived's notify on STOP does).
	StandDown func() (string, error)
	// OnRelease counts each release (a metric).
	OnRelease func(why string)
	Log       *slog.Logger

	mu     sync.Mutex
	watch  Watch
	paused bool
	// acted: released since keepalived was last seen running, so a
	// stopped or absent keepalived is handled once, not every 100 ms.
	acted  bool
	warned string
}

// Set says what keepalived manages here (the loop, on each applied commit).
// A nil Guard guards nothing.
func (g *Guard) Set(w Watch) {
	if g == nil {
		return
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	g.watch = w
}

// Pause stops the guard from acting (the operator suspended repairs).
func (g *Guard) Pause(p bool) {
	if g == nil {
		return
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	g.paused = p
}

// Run looks every Interval until ctx ends.
func (g *Guard) Run(ctx context.Context) {
	if g == nil {
		return
	}
	t := time.NewTicker(Interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			g.Once(ctx)
		}
	}
}

// Once looks at keepalived once and acts when it is stopped or gone. It
// says what it did ("" for nothing).
func (g *Guard) Once(ctx context.Context) string {
	g.mu.Lock()
	w, paused := g.watch, g.paused
	g.mu.Unlock()
	if paused || len(w.Addrs) == 0 && !w.Bridge {
		return ""
	}
	procs, err := g.procs()
	if err != nil {
		g.warnOnce("cannot read keepalived's processes: the VIP is not guarded against a stopped keepalived", err)
		return ""
	}
	stopped := Stopped(procs)
	if len(procs) > 0 && stopped == 0 {
		g.mu.Lock()
		g.acted, g.warned = false, ""
		g.mu.Unlock()
		return ""
	}
	g.mu.Lock()
	acted := g.acted
	g.acted = true
	g.mu.Unlock()
	if acted {
		return ""
	}
	why := "not running"
	if stopped > 0 {
		why = "stopped"
		// A stopped process sends no adverts and does not take SIGTERM;
		// killed, systemd starts it again and it comes back as BACKUP.
		g.Log.Warn("keepalived is stopped (SIGSTOP or a tracer): killing it, so that it comes back as BACKUP",
			"unit", Unit, "stopped_processes", stopped)
		if err := g.Kill(ctx); err != nil {
			g.Log.Error("kill the stopped keepalived", "unit", Unit, "err", err)
		}
	}
	var did []string
	held, release, standDown := g.hooks()
	for _, a := range w.Addrs {
		on, err := held(a)
		if err != nil {
			g.Log.Error("read the interface's addresses", "address", a.String(), "err", err)
			continue
		}
		if !on {
			continue
		}
		if err := release(a); err != nil {
			g.Log.Error("release an address keepalived holds here", "address", a.String(), "err", err,
				"fix", "ip address del "+a.String())
			continue
		}
		did = append(did, "released "+a.Prefix.String())
		if g.OnRelease != nil {
			g.OnRelease(why)
		}
	}
	if w.Bridge {
		if s, err := standDown(); err != nil {
			g.Log.Error("stand the bridge role down", "err", err)
		} else if s != "" && s != "nothing to change" {
			did = append(did, "bridge: "+s)
		}
	}
	if stopped > 0 {
		did = append([]string{"killed keepalived"}, did...)
	}
	if len(did) == 0 {
		return ""
	}
	g.Log.Warn("keepalived is "+why+": released what it held here, so that its peer alone holds it", "did", strings.Join(did, "; "))
	return strings.Join(did, "; ")
}

// hooks are Held, Release and StandDown, or what they default to.
func (g *Guard) hooks() (held func(Addr) (bool, error), release func(Addr) error, standDown func() (string, error)) {
	held, release, standDown = g.Held, g.Release, g.StandDown
	if held == nil {
		held = Held
	}
	if release == nil {
		release = Release
	}
	if standDown == nil {
		standDown = func() (string, error) { return bridgerole.Notify("STOP", 0, bridgerole.RestartMosquitto) }
	}
	return held, release, standDown
}

func (g *Guard) procs() ([]Proc, error) {
	if g.Procs != nil {
		return g.Procs()
	}
	return Processes(Unit)
}

func (g *Guard) warnOnce(msg string, err error) {
	g.mu.Lock()
	again := g.warned == err.Error()
	g.warned = err.Error()
	g.mu.Unlock()
	if !again {
		g.Log.Warn(msg, "err", err)
	}
}
