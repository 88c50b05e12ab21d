package agent

import (
	"log/slog"
	"os"
	"strings"
	"sync"

	"github.com/mqha/mqha/internal/atomicfile"
	"github.com/mqha/mqha/internal/daemon"
)

// Reasons that hold this load balancer out of VRRP.
const (
	faultGate   = "gate"   // the rollout gate gave the VIP away before restarting nginx
	faultHealth = "health" // nginx does not serve and was not repaired
)

// Fault owns keepalived's track file: the file says 1 (FAULT: give up the
// VIP) while any reason holds, 0 when none does. Each holder sets and
// clears its own reason, so that one cannot clear another's.
type Fault struct {
	path string
	log  *slog.Logger

	mu      sync.Mutex
	reasons map[string]bool
}

// newFault takes over the file as an earlier run left it (it lives in /run
// and outlasts an agent restart): a fault the file holds stays held, as
// health's, until nginx is seen serving, which clears it. A fault nobody
// owned would keep this load balancer out of VRRP until a reboot. The
// gate's reason is dropped: no rollout is under way at start.
func newFault(path string, log *slog.Logger) *Fault {
	if path == "" {
		path = daemon.FaultFile
	}
	f := &Fault{path: path, log: log, reasons: map[string]bool{}}
	if b, err := os.ReadFile(path); err == nil && strings.TrimSpace(string(b)) != "0" && strings.TrimSpace(string(b)) != "" {
		f.reasons[faultHealth] = true
		log.Warn("keepalived's fault file holds a fault from before this start: kept until nginx is seen serving", "file", path)
	}
	return f
}

// Set adds reason and writes the file.
func (f *Fault) Set(reason string) error { return f.change(reason, true) }

// Clear removes reason and writes the file.
func (f *Fault) Clear(reason string) error { return f.change(reason, false) }

// Holds reports whether reason is set.
func (f *Fault) Holds(reason string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.reasons[reason]
}

func (f *Fault) change(reason string, on bool) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if on {
		f.reasons[reason] = true
	} else {
		delete(f.reasons, reason)
	}
	v := "0\n"
	if len(f.reasons) > 0 {
		v = "1\n"
	}
	return atomicfile.Write(f.path, []byte(v), 0o644)
}

// gate is the rollout gate's hold on the fault file.
func (f *Fault) gate(on bool) error {
	if on {
		return f.Set(faultGate)
	}
	return f.Clear(faultGate)
}
