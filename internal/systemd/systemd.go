// Package systemd drives units through systemd's D-Bus API. Every call is
// bounded by a timeout: a D-Bus call without one can hang an agent forever.
package systemd

import (
	"context"
	"fmt"
	"slices"
	"sync/atomic"
	"syscall"
	"time"

	sd "github.com/coreos/go-systemd/v22/dbus"

	"github.com/mqha/mqha/internal/unit"
)

// DBus is a connection to systemd. It is not safe for concurrent use.
type DBus struct {
	conn    *sd.Conn
	timeout atomic.Int64 // ns; the definition's timeouts.unit, which may change
}

// Connect opens the system bus (or, as root without a bus daemon, systemd's
// private socket). timeout bounds each later call and each job.
func Connect(ctx context.Context, timeout time.Duration) (*DBus, error) {
	// The connection lives as long as the context given to go-systemd, so
	// the connect timeout is enforced here rather than by a child context.
	type result struct {
		conn *sd.Conn
		err  error
	}
	ch := make(chan result, 1)
	go func() {
		conn, err := sd.NewWithContext(ctx)
		ch <- result{conn, err}
	}()
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case r := <-ch:
		if r.err != nil {
			return nil, fmt.Errorf("connect to systemd over D-Bus: %w (is systemd PID 1 and dbus running?)", r.err)
		}
		d := &DBus{conn: r.conn}
		d.SetTimeout(timeout)
		return d, nil
	case <-timer.C:
		go func() { // close the late connection, if it ever comes
			if r := <-ch; r.conn != nil {
				r.conn.Close()
			}
		}()
		return nil, fmt.Errorf("connect to systemd over D-Bus: no answer within %s", timeout)
	}
}

func (d *DBus) Close() { d.conn.Close() }

// SetTimeout bounds every later call and job (timeouts.unit).
func (d *DBus) SetTimeout(t time.Duration) { d.timeout.Store(int64(t)) }

// Timeout is the bound in force.
func (d *DBus) Timeout() time.Duration { return time.Duration(d.timeout.Load()) }

// State returns the unit's load and active state.
func (d *DBus) State(ctx context.Context, name string) (unit.State, error) {
	ctx, cancel := context.WithTimeout(ctx, d.Timeout())
	defer cancel()
	props, err := d.conn.GetUnitPropertiesContext(ctx, name)
	if err != nil {
		return unit.State{}, fmt.Errorf("read state of %s: %w", name, err)
	}
	s := unit.State{}
	s.ActiveState, _ = props["ActiveState"].(string)
	s.LoadState, _ = props["LoadState"].(string)
	// Job is (id, path); id 0 when none is pending.
	if j, ok := props["Job"].([]interface{}); ok && len(j) > 0 {
		id, _ := j[0].(uint32)
		s.Job = id != 0
	}
	return s, nil
}

// MainPID returns the unit's main process, 0 when it has none.
func (d *DBus) MainPID(ctx context.Context, name string) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, d.Timeout())
	defer cancel()
	p, err := d.conn.GetServicePropertyContext(ctx, name, "MainPID")
	if err != nil {
		return 0, fmt.Errorf("read main PID of %s: %w", name, err)
	}
	pid, ok := p.Value.Value().(uint32)
	if !ok {
		return 0, fmt.Errorf("main PID of %s: unexpected %T", name, p.Value.Value())
	}
	return int(pid), nil
}

// DaemonReload makes systemd re-read unit files and drop-ins.
func (d *DBus) DaemonReload(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, d.Timeout())
	defer cancel()
	if err := d.conn.ReloadContext(ctx); err != nil {
		return fmt.Errorf("systemctl daemon-reload: %w", err)
	}
	return nil
}

// Do runs action on unit and waits for its job to finish.
func (d *DBus) Do(ctx context.Context, action unit.Action, name string) error {
	ctx, cancel := context.WithTimeout(ctx, d.Timeout())
	defer cancel()
	type jobFunc func(context.Context, string, string, chan<- string) (int, error)
	var f jobFunc
	switch action {
	case unit.Start:
		f = d.conn.StartUnitContext
	case unit.Restart:
		f = d.conn.RestartUnitContext
	case unit.Reload:
		// A unit without ExecReload cannot reload; restarting is then the
		// only way to apply a change.
		f = d.conn.ReloadOrRestartUnitContext
	case unit.Stop:
		f = d.conn.StopUnitContext
	case unit.None:
		return nil
	default:
		return fmt.Errorf("unknown action %q for %s", action, name)
	}
	// Buffered: go-systemd must never block delivering the result.
	done := make(chan string, 1)
	if _, err := f(ctx, name, "replace", done); err != nil {
		return fmt.Errorf("%s %s: %w", action, name, err)
	}
	select {
	case res := <-done:
		if res != "done" {
			return fmt.Errorf("%s %s: job %s (see journalctl -u %s)", action, name, res, name)
		}
		return nil
	case <-ctx.Done():
		return fmt.Errorf("%s %s: no result within %s (see systemctl status %s)", action, name, d.Timeout(), name)
	}
}

// Enable makes unit start at boot; Disable undoes it.
func (d *DBus) Enable(ctx context.Context, name string) error {
	ctx, cancel := context.WithTimeout(ctx, d.Timeout())
	defer cancel()
	if _, _, err := d.conn.EnableUnitFilesContext(ctx, []string{name}, false, true); err != nil {
		return fmt.Errorf("enable %s: %w", name, err)
	}
	return nil
}

func (d *DBus) Disable(ctx context.Context, name string) error {
	ctx, cancel := context.WithTimeout(ctx, d.Timeout())
	defer cancel()
	if _, err := d.conn.DisableUnitFilesContext(ctx, []string{name}, false); err != nil {
		return fmt.Errorf("disable %s: %w", name, err)
	}
	return nil
}

// Kill sends sig to the unit's main process.
func (d *DBus) Kill(ctx context.Context, name string, sig syscall.Signal) error {
	ctx, cancel := context.WithTimeout(ctx, d.Timeout())
	defer cancel()
	if err := d.conn.KillUnitWithTarget(ctx, name, sd.Main, int32(sig)); err != nil {
		return fmt.Errorf("kill %s: %w", name, err)
	}
	return nil
}

// WatchUnits reports the name of a unit whose SubState changes (running,
// dead, failed, ...), as systemd signals it, for the units watch returns at
// that moment. Property changes that leave the SubState as it was (systemd
// loading a unit to answer a query, for one) are not reported, or a check
// that queries units would wake itself forever. Sends never block.
//
// It uses the properties subscriber: the sub-state subscriber makes a D-Bus
// call for every signal inside go-systemd's single dispatch goroutine, which
// then falls behind and delays the job results every start and restart
// waits for (seen as 10 s stalls in the lab).
func (d *DBus) WatchUnits(watch func() []string) (<-chan string, error) {
	if err := d.conn.Subscribe(); err != nil {
		return nil, fmt.Errorf("subscribe to systemd signals: %w", err)
	}
	updates := make(chan *sd.PropertiesUpdate, 256)
	errs := make(chan error, 8)
	d.conn.SetPropertiesSubscriber(updates, errs)
	out := make(chan string, 1)
	go func() {
		last := map[string]string{}
		for {
			select {
			case u, ok := <-updates:
				if !ok {
					return
				}
				v, ok := u.Changed["SubState"]
				if !ok {
					continue
				}
				sub, _ := v.Value().(string)
				if !slices.Contains(watch(), u.UnitName) || last[u.UnitName] == sub {
					continue
				}
				last[u.UnitName] = sub
				select {
				case out <- u.UnitName:
				default:
				}
			case <-errs:
			}
		}
	}()
	return out, nil
}
