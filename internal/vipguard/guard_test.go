package vipguard

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// fakeHost plays keepalived's processes and the interface.
type fakeHost struct {
	procs   []Proc
	held    map[string]bool
	calls   []string
	linked  bool
	procErr error
}

func (h *fakeHost) guard() *Guard {
	return &Guard{
		Procs: func() ([]Proc, error) { return h.procs, h.procErr },
		Kill: func(context.Context) error {
			h.calls = append(h.calls, "kill")
			h.procs = nil
			return nil
		},
		Held: func(a Addr) (bool, error) { return h.held[a.Prefix.String()], nil },
		Release: func(a Addr) error {
			h.calls = append(h.calls, "release "+a.Prefix.String())
			h.held[a.Prefix.String()] = false
			return nil
		},
		StandDown: func() (string, error) {
			if !h.linked {
				return "", nil
			}
			h.linked = false
			h.calls = append(h.calls, "stand down")
			return "unlinked, mosquitto restarted", nil
		},
		Log: slog.New(slog.NewTextHandler(io.Discard, nil)),
	}
}

var vip = Addr{Prefix: netip.MustParsePrefix("10.0.0.100/24"), Interface: "eth0"}

func TestGuard(t *testing.T) {
	running := []Proc{{1, 'S'}, {2, 'S'}}
	stopped := []Proc{{1, 'T'}, {2, 'T'}}
	traced := []Proc{{1, 'S'}, {2, 't'}}
	tests := []struct {
		name   string
		watch  Watch
		procs  []Proc
		held   bool
		linked bool
		paused bool
		want   string // calls, joined by |
	}{
		{"running keepalived: nothing", Watch{Addrs: []Addr{vip}}, running, true, false, false, ""},
		{"stopped holder: killed, VIP released", Watch{Addrs: []Addr{vip}}, stopped, true, false, false, "kill|release 10.0.0.100/24"},
		{"traced VRRP child: the same", Watch{Addrs: []Addr{vip}}, traced, true, false, false, "kill|release 10.0.0.100/24"},
		{"stopped backup (no VIP): killed only", Watch{Addrs: []Addr{vip}}, stopped, false, false, false, "kill"},
		{"killed holder (kernel kept the VIP): released", Watch{Addrs: []Addr{vip}}, nil, true, false, false, "release 10.0.0.100/24"},
		{"gone and nothing held: nothing", Watch{Addrs: []Addr{vip}}, nil, false, false, false, ""},
		{"bridge master stopped: bridge stands down", Watch{Addrs: []Addr{vip}, Bridge: true}, stopped, true, true, false, "kill|release 10.0.0.100/24|stand down"},
		{"not a keepalived node: nothing", Watch{}, stopped, true, false, false, ""},
		{"suspended: nothing", Watch{Addrs: []Addr{vip}}, stopped, true, false, true, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := &fakeHost{procs: tt.procs, held: map[string]bool{"10.0.0.100/24": tt.held}, linked: tt.linked}
			g := h.guard()
			g.Set(tt.watch)
			g.Pause(tt.paused)
			// Many looks, one act: the guard acts once per episode.
			for range 5 {
				g.Once(context.Background())
			}
			if got := strings.Join(h.calls, "|"); got != tt.want {
				t.Errorf("calls %q, want %q", got, tt.want)
			}
		})
	}
}

// Once keepalived runs again, a later stop is a new episode.
func TestGuardActsAgainAfterRecovery(t *testing.T) {
	h := &fakeHost{procs: []Proc{{1, 'T'}}, held: map[string]bool{"10.0.0.100/24": true}}
	g := h.guard()
	g.Set(Watch{Addrs: []Addr{vip}})
	g.Once(context.Background())
	h.procs = []Proc{{3, 'S'}}
	g.Once(context.Background())
	h.procs, h.held["10.0.0.100/24"] = []Proc{{3, 'T'}}, true
	g.Once(context.Background())
	if got := strings.Join(h.calls, "|"); got != "kill|release 10.0.0.100/24|kill|release 10.0.0.100/24" {
		t.Errorf("calls %q", got)
	}
}

// Unreadable processes: no act (no evidence), and one warning.
func TestGuardWithoutEvidence(t *testing.T) {
	h := &fakeHost{procErr: errors.New("permission denied"), held: map[string]bool{"10.0.0.100/24": true}}
	g := h.guard()
	g.Set(Watch{Addrs: []Addr{vip}})
	for range 3 {
		g.Once(context.Background())
	}
	if len(h.calls) != 0 {
		t.Errorf("acted without evidence: %v", h.calls)
	}
}

func TestProcesses(t *testing.T) {
	root := t.TempDir()
	cgroupRoot, procRoot = filepath.Join(root, "cg"), filepath.Join(root, "proc")
	defer func() { cgroupRoot, procRoot = "/sys/fs/cgroup", "/proc" }()
	write := func(p, s string) {
		t.Helper()
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	stat := func(pid, state string) string {
		return pid + " (keepalived) " + state + " 1 1 1 0 -1 4194560 0 0 0 0 5 7 0 0 20 0 1 0 100 0 0"
	}
	write(filepath.Join(procRoot, "10", "stat"), stat("10", "S"))
	write(filepath.Join(procRoot, "11", "stat"), stat("11", "T"))
	write(filepath.Join(procRoot, "10", "comm"), "keepalived\n")
	write(filepath.Join(procRoot, "11", "comm"), "keepalived\n")

	// No cgroup file system: found by name.
	ps, err := Processes(Unit)
	if err != nil || len(ps) != 2 || Stopped(ps) != 1 {
		t.Fatalf("by name: %v, %v", ps, err)
	}
	// cgroup v2 without the unit's cgroup: not running.
	write(filepath.Join(cgroupRoot, "system.slice", "other.service", "cgroup.procs"), "")
	if ps, err := Processes(Unit); err != nil || len(ps) != 0 {
		t.Fatalf("unit not running: %v, %v", ps, err)
	}
	// The unit's cgroup, one pid gone meanwhile.
	write(filepath.Join(cgroupRoot, "system.slice", Unit, "cgroup.procs"), "10\n11\n12\n")
	if ps, err := Processes(Unit); err != nil || len(ps) != 2 || Stopped(ps) != 1 {
		t.Fatalf("from the cgroup: %v, %v", ps, err)
	}
}
