package agent

import (
	"os"
	"strings"
	"testing"

	"github.com/mqha/mqha/internal/health"
)

// The fault file has one owner; the gate's reason and health's reason are
// held separately, so one cannot clear the other's.
func TestFaultReasons(t *testing.T) {
	h := newHarness(t, "lb1", "", nil)
	f := h.a.fault
	f.gate(true)
	f.Set(faultHealth)
	f.gate(false)
	if got := faultFile(t, h); got != "1" {
		t.Fatalf("the gate cleared health's fault: file says %s", got)
	}
	f.Clear(faultHealth)
	if got := faultFile(t, h); got != "0" {
		t.Fatalf("no reason left, file says %s", got)
	}
}

// A fault the file held before the agent started is owned by health: kept
// until nginx is seen serving, then cleared (it used to stay forever).
func TestFaultFromBeforeAStartIsCleared(t *testing.T) {
	h := newHarness(t, "lb1", "", map[string]string{"c1": ""})
	os.WriteFile(h.a.fault.path, []byte("1\n"), 0o644)
	h.a.fault = newFault(h.a.fault.path, h.a.log)
	if !h.a.fault.Holds(faultHealth) || faultFile(t, h) != "1" {
		t.Fatal("a fault from before the start was dropped or not owned")
	}
	h.result(health.Result{Name: "nginx", OK: true})
	if h.a.fault.Holds(faultHealth) || faultFile(t, h) != "0" {
		t.Fatal("nginx serves, yet the fault from before the start holds")
	}
}

// The VIP policy: nginx failing twice gives up the VIP, but only to a peer
// that serves and never while nginx is busy rather than hung; a healthy
// nginx takes part again.
func TestVIPPolicy(t *testing.T) {
	h := newHarness(t, "lb1", "", map[string]string{"c1": ""})
	h.src.head = "c1"
	h.poll()
	fail := func(n int) health.Result {
		return health.Result{Name: "nginx", OK: false, Failures: n, Error: "refused"}
	}

	h.result(fail(1))
	if h.a.fault.Holds(faultHealth) {
		t.Fatal("one failure gave up the VIP")
	}
	h.result(fail(2))
	if h.a.fault.Holds(faultHealth) || h.probes == 0 {
		t.Fatal("gave up the VIP without a serving peer (or never asked the peer)")
	}
	h.mu.Lock()
	h.peerOK = true
	h.mu.Unlock()
	busy := fail(3)
	busy.Busy = true
	h.result(busy)
	if h.a.fault.Holds(faultHealth) {
		t.Fatal("gave up the VIP for a busy nginx (no answer, but its workers progress)")
	}
	down := fail(3)
	down.BrokerDown = true
	h.result(down)
	if h.a.fault.Holds(faultHealth) {
		t.Fatal("gave up the VIP because a broker behind nginx does not answer")
	}
	h.result(fail(3))
	if !h.a.fault.Holds(faultHealth) || faultFile(t, h) != "1" {
		t.Fatal("kept the VIP although nginx failed and the peer serves")
	}
	h.result(health.Result{Name: "mosquitto", OK: true})
	if !h.a.fault.Holds(faultHealth) {
		t.Fatal("another check's result cleared nginx's fault")
	}
	h.result(health.Result{Name: "nginx", OK: true})
	if h.a.fault.Holds(faultHealth) || faultFile(t, h) != "0" {
		t.Fatal("a serving nginx is still out of VRRP")
	}
	// Stopped (SIGSTOP) and silent: given up at the first failure.
	stopped := fail(1)
	stopped.Stopped = true
	h.result(stopped)
	if !h.a.fault.Holds(faultHealth) {
		t.Fatal("kept the VIP on a stopped nginx until a second failure")
	}
}

// A load balancer closes the connections to a broker a commit removed (and
// only those), once the commit is applied; other nodes close nothing.
func TestRemovedBrokerConnectionsClosed(t *testing.T) {
	withBroker3 := `nodes: broker3: {address: "10.20.0.23", roles: ["broker"]}`
	for _, tt := range []struct {
		node string
		want string
	}{{"lb1", "10.20.0.23:8883"}, {"lb2", "10.20.0.23:8883"}, {"broker1", ""}, {"bridge", ""}} {
		h := newHarness(t, tt.node, "", map[string]string{"c1": withBroker3, "c2": "", "c3": withBroker3})
		h.src.head = "c1"
		h.poll()
		h.src.head = "c3" // adding a broker closes nothing
		h.src.commits["c3"] = definition(t, withBroker3+"\nmqtt: maxQueuedMessages: 2000")
		h.poll()
		if c := h.closedConns(); len(c) != 0 {
			t.Errorf("%s: closed %v on a commit that removed no broker", tt.node, c)
		}
		h.src.head = "c2"
		h.poll()
		if got := strings.Join(h.closedConns(), " "); got != tt.want {
			t.Errorf("%s: closed %q, want %q", tt.node, got, tt.want)
		}
	}
}

func faultFile(t *testing.T, h *harness) string {
	t.Helper()
	b, err := os.ReadFile(h.a.fault.path)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}
