package agent

import (
	"bytes"
	"fmt"
	"os"

	"github.com/mqha/mqha/internal/notify"
)

// setNotify points the notifier at agent.conf's notify-url and secret;
// without a usable secret it sends nothing and says why.
func (a *Agent) setNotify() error {
	url := a.cfg.NotifyURL
	if url == "" {
		a.notifier.Set("", nil)
		return nil
	}
	if a.cfg.NotifySecretFile == "" {
		a.notifier.Set("", nil)
		return fmt.Errorf("notify-url is set but notify-secret-file is not: events are signed with it, so none is sent")
	}
	b, err := os.ReadFile(a.cfg.NotifySecretFile)
	if err != nil {
		a.notifier.Set("", nil)
		return fmt.Errorf("notify-secret-file: %w; no event is sent", err)
	}
	if b = bytes.TrimSpace(b); len(b) < 16 {
		a.notifier.Set("", nil)
		return fmt.Errorf("notify-secret-file %s holds %d bytes: want at least 16 random ones; no event is sent", a.cfg.NotifySecretFile, len(b))
	}
	a.notifier.Set(url, b)
	return nil
}

// emit posts one of this node's events (the record calls it as facts
// change; never blocks).
func (a *Agent) emit(kind, commit, reason string) {
	e := notify.Event{Node: a.node, Kind: kind, Commit: commit, Reason: reason, At: a.d.Now()}
	if v := a.view; v != nil {
		e.Cluster = v.Cluster.Name
	}
	a.notifier.Send(e)
}
