//go:build soakbroken

package health

import (
	"sync"
	"time"
)

// A deliberately broken agent, for showing that the soak's checker fails
// (make lab AGENT_TAGS=soakbroken; never in a package): it kills
// mosquitto, serving and healthy, once every two minutes.
func init() {
	var mu sync.Mutex
	last := time.Now()
	brokenKill = func(unit string) bool {
		mu.Lock()
		defer mu.Unlock()
		if unit != "mosquitto.service" || time.Since(last) < 2*time.Minute {
			return false
		}
		last = time.Now()
		return true
	}
}
