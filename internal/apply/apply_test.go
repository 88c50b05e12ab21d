package apply_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mqha/mqha/internal/apply"
	"github.com/mqha/mqha/internal/daemon"
	"github.com/mqha/mqha/internal/plan"
	"github.com/mqha/mqha/internal/render"
	"github.com/mqha/mqha/internal/unit"
	"github.com/mqha/mqha/schema"
)

// fakeSystemd records calls and plays units: a unit listed in failOn ends
// up failed after a start, restart or reload.
type fakeSystemd struct {
	states map[string]string
	failOn map[string]bool
	calls  []string
	// first: states a unit reports before states says (one per call).
	first map[string][]string
}

// cancelAware is systemd over D-Bus: calls with an ended context fail.
type cancelAware struct{ *fakeSystemd }

func (c cancelAware) Do(ctx context.Context, a unit.Action, u string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return c.fakeSystemd.Do(ctx, a, u)
}

func (f *fakeSystemd) State(_ context.Context, u string) (unit.State, error) {
	if q := f.first[u]; len(q) > 0 {
		f.first[u] = q[1:]
		return unit.State{ActiveState: q[0], LoadState: "loaded"}, nil
	}
	s := f.states[u]
	if s == "" {
		s = "inactive"
	}
	return unit.State{ActiveState: s, LoadState: "loaded"}, nil
}
func (f *fakeSystemd) DaemonReload(context.Context) error {
	f.calls = append(f.calls, "daemon-reload")
	return nil
}
func (f *fakeSystemd) Do(_ context.Context, a unit.Action, u string) error {
	f.calls = append(f.calls, string(a)+" "+u)
	switch {
	case a == unit.Stop:
		f.states[u] = "inactive"
	case f.failOn[u]:
		f.states[u] = "failed"
		delete(f.failOn, u) // the rollback's restart works
	default:
		f.states[u] = "active"
	}
	return nil
}
func (f *fakeSystemd) Enable(_ context.Context, u string) error {
	f.calls = append(f.calls, "enable "+u)
	return nil
}
func (f *fakeSystemd) Disable(_ context.Context, u string) error {
	f.calls = append(f.calls, "disable "+u)
	return nil
}

type fakeValidator struct{ err error }

func (v fakeValidator) Config(context.Context, string, []byte) error { return v.err }

// setup renders node of the example into a plan against root, with the
// files in old already on disk.
func setup(t *testing.T, node string, old map[string]string, states map[string]string) (string, *plan.Plan, *fakeSystemd) {
	t.Helper()
	root := t.TempDir()
	for p, content := range old {
		full := filepath.Join(root, p)
		os.MkdirAll(filepath.Dir(full), 0o755)
		if err := os.WriteFile(full, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	c, err := schema.LoadDir("../../cluster-repo-example")
	if err != nil {
		t.Fatal(err)
	}
	out, err := render.Node(c, node)
	if err != nil {
		t.Fatal(err)
	}
	sd := &fakeSystemd{states: states, failOn: map[string]bool{}}
	st := map[string]unit.State{}
	for _, u := range daemon.Units() {
		s, _ := sd.State(context.Background(), u)
		st[u] = s
	}
	p, err := plan.Make(out, os.DirFS(root), st)
	if err != nil {
		t.Fatal(err)
	}
	return root, p, sd
}

func read(t *testing.T, root, p string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(root, p))
	if err != nil {
		return "<missing>"
	}
	return string(b)
}

func TestApplyWritesAndRestarts(t *testing.T) {
	old := map[string]string{daemon.Mosquitto.Conf: "# Debian default\n"}
	root, p, sd := setup(t, "broker1", old, map[string]string{daemon.Mosquitto.Unit: "active"})
	a := &apply.Applier{Root: root, BackupDir: "/var/lib/mqha/backup", Systemd: sd, Validator: fakeValidator{}}
	if err := a.Apply(context.Background(), p); err != nil {
		t.Fatal(err)
	}
	if got := read(t, root, daemon.Mosquitto.Conf); !strings.HasPrefix(got, plan.Marker) {
		t.Errorf("mosquitto.conf not written: %q", got)
	}
	if got := read(t, root, "/var/lib/mqha/backup"+daemon.Mosquitto.Conf); got != old[daemon.Mosquitto.Conf] {
		t.Errorf("previous file not kept: %q", got)
	}
	want := "daemon-reload|restart mosquitto.service"
	if got := strings.Join(sd.calls, "|"); got != want {
		t.Errorf("calls %s, want %s", got, want)
	}
	// No temporary files are left beside the written ones.
	leftovers, _ := filepath.Glob(filepath.Join(root, "etc/mosquitto/.*"))
	if len(leftovers) > 0 {
		t.Errorf("left behind: %v", leftovers)
	}
}

// A unit still reloading (or activating) right after the apply is waited
// for, not taken for a failure.
func TestReloadingIsWaitedFor(t *testing.T) {
	old := map[string]string{daemon.Mosquitto.Conf: "# Debian default\n"}
	root, p, sd := setup(t, "broker1", old, map[string]string{daemon.Mosquitto.Unit: "active"})
	sd.first = map[string][]string{daemon.Mosquitto.Unit: {"active", "reloading", "reloading", "activating"}}
	a := &apply.Applier{Root: root, BackupDir: "/var/lib/mqha/backup", Systemd: sd, Validator: fakeValidator{}}
	if err := a.Apply(context.Background(), p); err != nil {
		t.Fatalf("a unit reloading after the apply failed it: %v (calls %v)", err, sd.calls)
	}
}

func TestInvalidCandidateWritesNothing(t *testing.T) {
	old := map[string]string{daemon.Nginx.Conf: "# old nginx\n"}
	root, p, sd := setup(t, "lb1", old, map[string]string{daemon.Nginx.Unit: "active", daemon.Keepalived.Unit: "active"})
	a := &apply.Applier{Root: root, Systemd: sd, Validator: fakeValidator{errors.New("nginx -t: unknown directive")}}
	err := a.Apply(context.Background(), p)
	if !errors.Is(err, apply.ErrInvalid) {
		t.Fatalf("want ErrInvalid, got %v", err)
	}
	if got := read(t, root, daemon.Nginx.Conf); got != old[daemon.Nginx.Conf] {
		t.Errorf("nginx.conf changed to %q", got)
	}
	if read(t, root, daemon.Keepalived.Conf) != "<missing>" {
		t.Error("keepalived.conf written although validation failed")
	}
	if len(sd.calls) != 0 {
		t.Errorf("systemd touched: %v", sd.calls)
	}
}

func TestFailedUnitIsRolledBack(t *testing.T) {
	old := map[string]string{daemon.Mosquitto.Conf: "# previous good config\n"}
	root, p, sd := setup(t, "broker1", old, map[string]string{daemon.Mosquitto.Unit: "active"})
	sd.failOn[daemon.Mosquitto.Unit] = true
	a := &apply.Applier{Root: root, BackupDir: "/backup", Systemd: sd, Validator: fakeValidator{}}
	err := a.Apply(context.Background(), p)
	if err == nil || !strings.Contains(err.Error(), "rolled back") {
		t.Fatalf("want a rolled-back error, got %v", err)
	}
	if got := read(t, root, daemon.Mosquitto.Conf); got != old[daemon.Mosquitto.Conf] {
		t.Errorf("mosquitto.conf not restored: %q", got)
	}
	if got := read(t, root, daemon.Mosquitto.DropIn()); got != "<missing>" {
		t.Errorf("new drop-in not removed: %q", got)
	}
	want := "daemon-reload|restart mosquitto.service|daemon-reload|restart mosquitto.service"
	if got := strings.Join(sd.calls, "|"); got != want {
		t.Errorf("calls %s, want %s", got, want)
	}
	if sd.states[daemon.Mosquitto.Unit] != "active" {
		t.Errorf("mosquitto is %s after rollback", sd.states[daemon.Mosquitto.Unit])
	}
}

func TestUpToDateDoesNothing(t *testing.T) {
	root, p, sd := setup(t, "broker1", nil, map[string]string{daemon.Mosquitto.Unit: "active"})
	a := &apply.Applier{Root: root, Systemd: sd, Validator: fakeValidator{}}
	if err := a.Apply(context.Background(), p); err != nil {
		t.Fatal(err)
	}
	// Second round: files are in place, the unit runs: nothing to do.
	c, _ := schema.LoadDir("../../cluster-repo-example")
	out, _ := render.Node(c, "broker1")
	p2, err := plan.Make(out, os.DirFS(root), map[string]unit.State{daemon.Mosquitto.Unit: {ActiveState: "active", LoadState: "loaded"}})
	if err != nil {
		t.Fatal(err)
	}
	if !p2.Empty() {
		t.Errorf("second plan is not empty: %+v", p2.Units)
	}
	n := len(sd.calls)
	if err := a.Apply(context.Background(), p2); err != nil || len(sd.calls) != n {
		t.Errorf("empty plan made calls %v (err %v)", sd.calls[n:], err)
	}
}

func TestStartsStoppedUnitsAndStopsDroppedRoles(t *testing.T) {
	// broker1 runs nginx although the definition gives it no lb role.
	root, p, sd := setup(t, "broker1", nil, map[string]string{daemon.Nginx.Unit: "active"})
	a := &apply.Applier{Root: root, Systemd: sd, Validator: fakeValidator{}}
	if err := a.Apply(context.Background(), p); err != nil {
		t.Fatal(err)
	}
	want := "daemon-reload|enable mosquitto.service|start mosquitto.service|disable nginx.service|stop nginx.service"
	if got := strings.Join(sd.calls, "|"); got != want {
		t.Errorf("calls %s, want %s", got, want)
	}
}

func TestUnhealthyAfterApplyIsRolledBack(t *testing.T) {
	old := map[string]string{daemon.Mosquitto.Conf: "# previous good config\n"}
	root, p, sd := setup(t, "broker1", old, map[string]string{daemon.Mosquitto.Unit: "active"})
	gated := false
	a := &apply.Applier{Root: root, Systemd: sd, Validator: fakeValidator{},
		Gate:   func(context.Context, *plan.Plan) error { gated = true; return nil },
		Verify: func(context.Context, *plan.Plan) error { return errors.New("MQTT round trip failed") }}
	err := a.Apply(context.Background(), p)
	if err == nil || !strings.Contains(err.Error(), "MQTT round trip failed") || !strings.Contains(err.Error(), "rolled back") {
		t.Fatalf("got %v", err)
	}
	if !gated {
		t.Error("the gate was not consulted")
	}
	if got := read(t, root, daemon.Mosquitto.Conf); got != old[daemon.Mosquitto.Conf] {
		t.Errorf("not restored: %q", got)
	}
}

// SIGTERM while verifying: the rollback still runs to its end.
func TestRollbackOutlivesCancellation(t *testing.T) {
	old := map[string]string{daemon.Mosquitto.Conf: "# previous good config\n"}
	root, p, sd := setup(t, "broker1", old, map[string]string{daemon.Mosquitto.Unit: "active"})
	ctx, cancel := context.WithCancel(context.Background())
	a := &apply.Applier{Root: root, Systemd: cancelAware{sd}, Validator: fakeValidator{},
		Verify: func(context.Context, *plan.Plan) error { cancel(); return errors.New("stopping") }}
	err := a.Apply(ctx, p)
	if err == nil || strings.Contains(err.Error(), "ROLLBACK FAILED") || !strings.Contains(err.Error(), "rolled back") {
		t.Fatalf("got %v", err)
	}
	if got := read(t, root, daemon.Mosquitto.Conf); got != old[daemon.Mosquitto.Conf] {
		t.Errorf("not restored: %q", got)
	}
}

func TestGateRefusalWritesNothing(t *testing.T) {
	root, p, sd := setup(t, "broker1", nil, map[string]string{daemon.Mosquitto.Unit: "active"})
	a := &apply.Applier{Root: root, Systemd: sd, Validator: fakeValidator{},
		Gate: func(context.Context, *plan.Plan) error { return errors.New("broker2 is not serving") }}
	if err := a.Apply(context.Background(), p); err == nil || !strings.Contains(err.Error(), "nothing was written") {
		t.Fatalf("got %v", err)
	}
	if read(t, root, daemon.Mosquitto.Conf) != "<missing>" || len(sd.calls) != 0 {
		t.Errorf("gate refusal still changed things: %v", sd.calls)
	}
}

// Settle follows a start or restart only: a reload starts no process, and
// the change is live without the wait. Every stage is timed.
func TestSettleOnlyAfterAStart(t *testing.T) {
	for _, tt := range []struct {
		name  string
		plan  func(p *plan.Plan)
		waits bool
	}{
		{"reload", func(p *plan.Plan) {
			for i := range p.Units {
				if p.Units[i].Action != unit.None {
					p.Units[i].Action = unit.Reload
				}
			}
		}, false},
		{"restart", func(p *plan.Plan) {}, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			old := map[string]string{daemon.Mosquitto.Conf: "# Debian default\n"}
			root, p, sd := setup(t, "broker1", old, map[string]string{daemon.Mosquitto.Unit: "active"})
			tt.plan(p)
			var stages []string
			a := &apply.Applier{Root: root, Systemd: sd, Validator: fakeValidator{}, Settle: 300 * time.Millisecond,
				Timing: func(s string, _ time.Duration) { stages = append(stages, s) }}
			start := time.Now()
			if err := a.Apply(context.Background(), p); err != nil {
				t.Fatal(err)
			}
			if waited := time.Since(start) >= 300*time.Millisecond; waited != tt.waits {
				t.Errorf("waited %s; want the settle: %v", time.Since(start), tt.waits)
			}
			if got := strings.Join(stages, " "); got != "validate gate units settle verify" {
				t.Errorf("stages timed: %s", got)
			}
		})
	}
}

// killedAt is systemd with the agent killed at its first unit job: the
// files are written, no unit took them.
type killedAt struct{ *fakeSystemd }

func (k killedAt) Do(context.Context, unit.Action, string) error { panic("agent killed") }

// An agent killed between writing the files and restarting the units
// leaves its journal; at start Replay restarts the units that run, so the
// daemons take the files on disk, which the next plan finds up to date.
func TestJournalReplaysAnInterruptedApply(t *testing.T) {
	old := map[string]string{daemon.Mosquitto.Conf: "# previous good config\n"}
	root, p, sd := setup(t, "broker1", old, map[string]string{daemon.Mosquitto.Unit: "active"})
	journal := filepath.Join(t.TempDir(), "apply-journal.json")
	a := &apply.Applier{Root: root, Systemd: killedAt{sd}, Validator: fakeValidator{}, Journal: journal}
	func() {
		defer func() { recover() }()
		a.Apply(context.Background(), p)
	}()
	if got := read(t, root, daemon.Mosquitto.Conf); got == old[daemon.Mosquitto.Conf] {
		t.Fatal("the test needs the files written before the kill")
	}
	if _, err := os.Stat(journal); err != nil {
		t.Fatalf("no journal left by the interrupted apply: %v", err)
	}
	sd.calls = nil
	did, err := apply.Replay(context.Background(), journal, sd)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(sd.calls, "|") != "daemon-reload|restart mosquitto.service" || len(did) == 0 {
		t.Errorf("replay did %v (calls %v), want mosquitto restarted", did, sd.calls)
	}
	if _, err := os.Stat(journal); !os.IsNotExist(err) {
		t.Error("the journal outlived its replay")
	}
	if did, _ := apply.Replay(context.Background(), journal, sd); did != nil {
		t.Errorf("a second replay did %v", did)
	}
}

// A finished apply, and a rolled back one, leave no journal.
func TestJournalRemovedWhenDone(t *testing.T) {
	for _, verify := range []error{nil, errors.New("not serving")} {
		old := map[string]string{daemon.Mosquitto.Conf: "# previous good config\n"}
		root, p, sd := setup(t, "broker1", old, map[string]string{daemon.Mosquitto.Unit: "active"})
		journal := filepath.Join(t.TempDir(), "apply-journal.json")
		seen := false
		a := &apply.Applier{Root: root, Systemd: sd, Validator: fakeValidator{}, Journal: journal,
			Verify: func(context.Context, *plan.Plan) error {
				_, err := os.Stat(journal)
				seen = err == nil
				return verify
			}}
		a.Apply(context.Background(), p)
		if !seen {
			t.Error("no journal while the apply ran")
		}
		if _, err := os.Stat(journal); !os.IsNotExist(err) {
			t.Errorf("journal left after an apply (verify error %v)", verify)
		}
	}
}
