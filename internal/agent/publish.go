package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"strings"
	"sync"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/mqha/mqha/internal/cluster"
	"github.com/mqha/mqha/internal/daemon"
	"github.com/mqha/mqha/internal/probe"
)

// The fleet at a glance without a central server: every agent publishes its
// status, retained, on every broker ($mqha/status/CLUSTER/NODE, which only
// this node may write), so `mqha-agent fleet` reads the whole fleet through
// the VIP with a client certificate.

// publishEvery is how often the status is published (its age in the fleet
// view says how fresh it is); it changes with every health round anyway.
const publishEvery = 5 * time.Second

// statusTarget is where the status goes, as of the applied commit.
type statusTarget struct {
	topic   string
	brokers []string // host:port of every broker's client listener
	key     string
	v       *View
}

// A view without a certificate (a node decommissioned before a restart)
// publishes nothing: it has nothing to connect with.
func statusTargetOf(v *View) statusTarget {
	if v.TLS == nil {
		return statusTarget{}
	}
	t := statusTarget{topic: daemon.StatusTopics(v.Cluster.Name) + "/" + v.Node.Name, v: v}
	for _, b := range v.Cluster.WithRole(cluster.Broker) {
		t.brokers = append(t.brokers, b.At(v.Cluster.Ports.Broker))
	}
	// The commit's certificate and CA too: a client keeps the TLS it was
	// made with, so one made under a commit with a wrong CA would never
	// connect again after the fix (seen: the load balancers' statuses
	// missing from the brokers until a broker was added).
	t.key = fmt.Sprintf("%s %s %s", t.topic, strings.Join(t.brokers, ","), v.TLSID)
	return t
}

// publisher holds where the status goes: the loop sets it as commits
// apply (and kicks the publisher, so a new commit is said at once),
// PublishStatus reads it.
type publisher struct {
	mu     sync.Mutex
	target statusTarget
	kick   chan struct{} // made by New
}

func (p *publisher) set(t statusTarget) {
	p.mu.Lock()
	p.target = t
	p.mu.Unlock()
	select {
	case p.kick <- struct{}{}:
	default:
	}
}

// kickNow has the publisher say the status and this node's verdicts now.
func (p *publisher) kickNow() {
	select {
	case p.kick <- struct{}{}:
	default:
	}
}

func (p *publisher) get() statusTarget {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.target
}

// WillTopic is where a node's goodbye is retained, beside its status: the
// broker publishes the agent's MQTT will there when its connection drops,
// the agent a "stopped" when it stops; each connect clears it.
func WillTopic(statusTopic string) string { return statusTopic + "/will" }

// Will is what WillTopic holds.
type Will struct {
	Reason string    `json:"reason"` // "connection lost" (the broker's), "stopped" (the agent's)
	At     time.Time `json:"at,omitzero"`
}

// PublishStatus runs until ctx ends: it keeps a connection to every broker
// of the applied commit and publishes the status when it connects, when
// the commit changes and every publishEvery; its will says when it went
// away, and a stop says so before it disconnects.
func (a *Agent) PublishStatus(ctx context.Context) {
	tick := time.NewTicker(publishEvery)
	defer tick.Stop()
	var (
		key     string
		clients []mqtt.Client
		topic   string
		said    string // the verdicts last published
	)
	// publish sends the status, made once, to clients that are connected.
	publish := func(clients ...mqtt.Client) {
		t := a.publish.get()
		if t.v == nil {
			return
		}
		s := a.Status()
		if t.v.Cluster.VIP != nil && t.v.Node.Has(cluster.LB) {
			s.HoldsVIP, _ = probe.HasAddr(t.v.Cluster.VIP.Address)
		}
		s.PublishedAt = a.d.Now()
		out, err := json.Marshal(s)
		if err != nil {
			return
		}
		for _, c := range clients {
			if c.IsConnectionOpen() {
				c.Publish(t.topic, 1, true, out)
			}
		}
	}
	defer func() {
		stopped, _ := json.Marshal(Will{Reason: "stopped", At: a.d.Now()})
		for _, c := range clients {
			if c.IsConnectionOpen() {
				c.Publish(WillTopic(topic), 1, true, stopped).WaitTimeout(time.Second)
			}
			c.Disconnect(100)
		}
	}()
	for {
		t := a.publish.get()
		if t.v != nil && t.key != key {
			for _, c := range clients {
				c.Disconnect(100)
			}
			clients, key, topic = nil, t.key, t.topic
			will, _ := json.Marshal(Will{Reason: "connection lost"})
			for _, b := range t.brokers {
				host, _, _ := net.SplitHostPort(b)
				o := mqtt.NewClientOptions().AddBroker("ssl://"+b).SetClientID(probe.ClientID("mqha-"+t.v.Cluster.Name+"-status-"+t.v.Node.Name)).
					SetTLSConfig(daemon.WithName(t.v.TLS, host)).SetCleanSession(true).SetAutoReconnect(true).
					SetConnectRetry(true).SetConnectRetryInterval(5*time.Second).SetMaxReconnectInterval(30*time.Second).
					SetConnectTimeout(5*time.Second).SetKeepAlive(10*time.Second).
					SetBinaryWill(WillTopic(t.topic), will, 1, true).
					SetOnConnectHandler(func(c mqtt.Client) {
						// Back: no goodbye stands, and the status at once;
						// this node's verdicts, and the others' to read.
						c.Publish(WillTopic(t.topic), 1, true, []byte{})
						go publish(c)
						go a.verdictsOnConnect(c, t.v)
					})
				c := mqtt.NewClient(o)
				c.Connect()
				clients = append(clients, c)
			}
		}
		publish(clients...)
		// This node's verdicts when they change (a connect says them too):
		// retained, read by every agent, so not every round.
		if vs, _ := json.Marshal(a.facts.Verdicts()); t.v != nil && string(vs) != said {
			said = string(vs)
			for _, c := range clients {
				a.publishVerdicts(c, t.v)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		case <-a.publish.kick:
		}
	}
}
