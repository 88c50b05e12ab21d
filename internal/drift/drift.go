// Package drift notices hand edits of the files the agent manages, so they
// are reverted at once rather than at the next poll. It watches the files'
// directories (an editor's rename-over would end a watch on the file).
package drift

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/fsnotify/fsnotify"
)

// Watch reports a path of files each time one of them changes, at most once
// per debounce interval (one save is often several events). On a kernel
// queue overflow it reports "" (something may have changed: check all).
func Watch(ctx context.Context, files []string, debounce time.Duration) (<-chan string, error) {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return nil, fmt.Errorf("drift watcher: %w", err)
	}
	managed := map[string]bool{}
	dirs := map[string]bool{}
	for _, f := range files {
		managed[f] = true
		dirs[filepath.Dir(f)] = true
	}
	for d := range dirs {
		if err := w.Add(d); err != nil && !errors.Is(err, os.ErrNotExist) {
			w.Close()
			return nil, fmt.Errorf("watch %s: %w", d, err)
		}
	}
	out := make(chan string, 1)
	go func() {
		defer w.Close()
		var pending string
		var timer <-chan time.Time
		for {
			select {
			case <-ctx.Done():
				return
			case ev, ok := <-w.Events:
				if !ok {
					return
				}
				// The agent's own temporary files come and go while it writes.
				if !managed[ev.Name] || strings.Contains(filepath.Base(ev.Name), ".mqha-") {
					continue
				}
				if pending == "" {
					timer = time.After(debounce)
				}
				pending = ev.Name
			case err, ok := <-w.Errors:
				if !ok {
					return
				}
				if errors.Is(err, fsnotify.ErrEventOverflow) {
					select {
					case out <- "":
					default:
					}
				}
			case <-timer:
				select {
				case out <- pending:
				default:
				}
				pending, timer = "", nil
			}
		}
	}()
	return out, nil
}
