package health

import (
	"context"
	"slices"
	"time"
)

// StoppedEvery is how often WithStopped reads the daemons' process states.
const StoppedEvery = 500 * time.Millisecond

// WithStopped passes on the unit names events carries (systemd's state
// changes) and adds a unit whose main process has just been stopped (state
// T): a SIGSTOPped daemon stays "active" for systemd, which sends nothing,
// and waiting for the next health round costs up to a whole interval. It
// reads /proc under procRoot every `every` for the units watch returns,
// asking mainPID only when a unit's process is not known or has gone. Sends
// never block; the channel closes when ctx ends.
func WithStopped(ctx context.Context, events <-chan string, watch func() []string,
	mainPID func(ctx context.Context, unit string) (int, error), procRoot string, every time.Duration) <-chan string {
	out := make(chan string, 1)
	send := func(u string) {
		select {
		case out <- u:
		default:
		}
	}
	go func() {
		defer close(out)
		tick := time.NewTicker(every)
		defer tick.Stop()
		pids := map[string]int{}
		was := map[string]byte{}
		for {
			select {
			case <-ctx.Done():
				return
			case u, ok := <-events:
				if !ok {
					events = nil
					continue
				}
				delete(pids, u) // a state change may bring a new process
				send(u)
			case <-tick.C:
				units := watch()
				for u := range pids {
					if !slices.Contains(units, u) {
						delete(pids, u)
						delete(was, u)
					}
				}
				for _, u := range units {
					st, err := byte(0), error(nil)
					if pid := pids[u]; pid > 0 {
						st, err = ProcState(procRoot, pid)
					}
					if pids[u] <= 0 || err != nil {
						pid, perr := mainPID(ctx, u)
						if perr != nil || pid <= 0 {
							delete(pids, u)
							continue
						}
						pids[u] = pid
						if st, err = ProcState(procRoot, pid); err != nil {
							continue
						}
					}
					if st == 'T' && was[u] != 'T' {
						send(u)
					}
					was[u] = st
				}
			}
		}
	}()
	return out
}
