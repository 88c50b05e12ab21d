// Package probe asks the daemons whether they really serve, not just run:
// an MQTT round trip through a broker, bridge connection states, a TLS
// handshake through nginx to a broker, the VIP where keepalived put it. Both
// the fleet ordering (peers) and the health checks (this node) use it.
package probe

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
)

// Probe checks one thing once; nil means healthy.
type Probe func(ctx context.Context) error

// ErrNoAnswer marks a probe that got no answer in time: the daemon may be
// hung, or only busy. Only such failures count towards a hang; a refusal or
// a TLS error is an answer.
var ErrNoAnswer = errors.New("no answer")

// ErrUpstream marks a load balancer check that failed because no broker
// answers, directly either: not the load balancer's fault.
var ErrUpstream = errors.New("no broker answers")

// ErrBrokerDown marks a load balancer check that failed while some broker
// does not answer directly and others do: the path may lead to that broker
// (nginx picks it by the client's address), so the load balancer is not to
// blame, and the other load balancer, with the same brokers, can do no
// better.
var ErrBrokerDown = errors.New("a broker behind the load balancer does not answer")

// NoAnswer reports whether err says the daemon did not answer in time.
func NoAnswer(err error) bool {
	if err == nil || errors.Is(err, ErrUpstream) || errors.Is(err, ErrBrokerDown) {
		return false
	}
	var ne net.Error
	return errors.Is(err, ErrNoAnswer) || errors.Is(err, context.DeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout())
}

// ClientID is prefix and a random suffix: a client id for a clean
// session that no other client can guess and take over (mosquitto gives a
// session to whoever connects last under its id).
func ClientID(prefix string) string { return prefix + "-" + nonce() }

func nonce() string {
	b := make([]byte, 6)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// connect opens an MQTT connection with a clean session and no retries:
// a probe must fail fast when the broker does not answer.
func connect(ctx context.Context, addr string, tc *tls.Config, id string) (mqtt.Client, error) {
	c, _, err := connectAs(ctx, addr, tc, id, true, nil)
	return c, err
}

// connectAs is connect with the session's cleanness and a handler for
// what the session had queued (nil: none); it also says whether the broker
// had a session for id.
func connectAs(ctx context.Context, addr string, tc *tls.Config, id string, clean bool, queued mqtt.MessageHandler) (mqtt.Client, bool, error) {
	timeout := 2 * time.Second
	if d, ok := ctx.Deadline(); ok {
		timeout = max(time.Until(d), 100*time.Millisecond)
	}
	o := mqtt.NewClientOptions().AddBroker("ssl://" + addr).SetClientID(id).SetTLSConfig(tc).
		SetCleanSession(clean).SetAutoReconnect(false).SetConnectRetry(false).
		SetConnectTimeout(timeout).SetWriteTimeout(timeout).SetKeepAlive(30 * time.Second)
	if queued != nil {
		o.SetDefaultPublishHandler(queued)
	}
	c := mqtt.NewClient(o)
	tok := c.Connect()
	if !tok.WaitTimeout(timeout) {
		c.Disconnect(0)
		return nil, false, fmt.Errorf("%w: no MQTT CONNACK from %s within %s", ErrNoAnswer, addr, timeout)
	}
	if err := tok.Error(); err != nil {
		return nil, false, fmt.Errorf("MQTT connect to %s: %w", addr, err)
	}
	return c, tok.(*mqtt.ConnectToken).SessionPresent(), nil
}

func wait(ctx context.Context, tok mqtt.Token, what string) error {
	select {
	case <-tok.Done():
		return tok.Error()
	case <-ctx.Done():
		return fmt.Errorf("%s: %w: %w", what, ErrNoAnswer, ctx.Err())
	}
}

// freshEvery is how often the round-trip probe connects anew instead of
// reusing its connection: reusing spares the broker a TLS handshake and
// three log lines every few seconds, connecting anew still catches a
// listener that stopped accepting clients.
const freshEvery = 20

// keepIdle is how long the round-trip probe keeps its connection without
// being called (health rounds come every few seconds).
const keepIdle = 30 * time.Second

// MQTTRoundTrip publishes a QoS1 message to the broker at addr and waits
// for it to come back on a subscription. Topics under $mqha are not matched
// by a bridge's "#", so the probe stays on this broker. It keeps its
// connection between calls (every freshEvery-th call connects anew); any
// failure drops it.
func MQTTRoundTrip(addr string, tc *tls.Config, node string) Probe {
	return MQTTRoundTripUnder(HealthTopics, addr, tc, node)
}

// HealthTopics is where each node's agent probes its own mosquitto
// (HealthTopics/node/...): the brokers' ACL gives a node its own only.
const HealthTopics = "$mqha/health"

// MQTTRoundTripUnder is MQTTRoundTrip on a topic under prefix: a client
// that is not a node (the brokers' ACL keeps $mqha for nodes) uses one of
// its own.
func MQTTRoundTripUnder(prefix, addr string, tc *tls.Config, node string) Probe {
	var (
		mu     sync.Mutex
		c      mqtt.Client
		topic  string
		calls  int
		inbox  = make(chan string, 16)
		handle = func(_ mqtt.Client, m mqtt.Message) {
			select {
			case inbox <- string(m.Payload()):
			default:
			}
		}
	)
	drop := func() {
		if c != nil {
			c.Disconnect(50)
			c = nil
		}
	}
	// A probe nobody calls any more (its commit was replaced) lets its
	// connection go: every commit builds its own probes, and each kept
	// connection holds a client and its goroutines (the soak saw one more
	// per commit on every broker's agent).
	idle := time.AfterFunc(keepIdle, func() {
		mu.Lock()
		defer mu.Unlock()
		drop()
	})
	return func(ctx context.Context) (err error) {
		mu.Lock()
		defer mu.Unlock()
		defer idle.Reset(keepIdle)
		defer func() {
			if err != nil {
				drop()
			}
		}()
		calls++
		if c != nil && (calls%freshEvery == 0 || !c.IsConnectionOpen()) {
			drop()
		}
		if c == nil {
			id := "mqha-health-" + node + "-" + nonce()
			if c, err = connect(ctx, addr, tc, id); err != nil {
				return err
			}
			// Under the node's name: the brokers' ACL gives each node its
			// own health topics only.
			topic = prefix + "/" + node + "/" + id
			if err := wait(ctx, c.Subscribe(topic, 1, handle), "subscribe"); err != nil {
				return err
			}
		}
		ping := nonce()
		if err := wait(ctx, c.Publish(topic, 1, false, ping), "publish"); err != nil {
			return err
		}
		for {
			select {
			case got := <-inbox:
				if got == ping {
					return nil
				}
				// An answer to an earlier, timed-out round: keep waiting.
			case <-ctx.Done():
				return fmt.Errorf("%w: published message did not come back: broker is not delivering", ErrNoAnswer)
			}
		}
	}
}

// BridgeStates reads the retained $SYS/broker/connection/<id>/state of
// every bridge on the local broker and fails unless each is 1 (connected).
func BridgeStates(addr string, tc *tls.Config, node string, clientIDs []string) Probe {
	return MarkedBridgeStates(addr, tc, node, clientIDs, "", nil)
}

// MarkedBridgeStates is BridgeStates that first publishes mark() retained
// at topic on the local broker, for its bridges to carry out (a lone
// bridge's mark; no topic: none).
func MarkedBridgeStates(addr string, tc *tls.Config, node string, clientIDs []string, topic string, mark func() string) Probe {
	return func(ctx context.Context) error {
		if len(clientIDs) == 0 {
			return nil
		}
		c, err := connect(ctx, addr, tc, "mqha-health-bridge-"+node+"-"+nonce())
		if err != nil {
			return err
		}
		defer c.Disconnect(50)
		if topic != "" {
			if err := wait(ctx, c.Publish(topic, 1, true, mark()), "publish"); err != nil {
				return err
			}
		}
		var mu sync.Mutex
		state := map[string]string{}
		all := make(chan struct{})
		var once sync.Once
		if err := wait(ctx, c.Subscribe("$SYS/broker/connection/+/state", 1, func(_ mqtt.Client, m mqtt.Message) {
			id := strings.TrimSuffix(strings.TrimPrefix(m.Topic(), "$SYS/broker/connection/"), "/state")
			mu.Lock()
			state[id] = string(m.Payload())
			n := 0
			for _, w := range clientIDs {
				if _, ok := state[w]; ok {
					n++
				}
			}
			mu.Unlock()
			if n == len(clientIDs) {
				once.Do(func() { close(all) })
			}
		}), "subscribe"); err != nil {
			return err
		}
		select {
		case <-all:
		case <-ctx.Done():
		}
		mu.Lock()
		defer mu.Unlock()
		var down []string
		for _, w := range clientIDs {
			if state[w] != "1" {
				down = append(down, w)
			}
		}
		if len(down) > 0 {
			return fmt.Errorf("bridge connections down: %s", strings.Join(down, ", "))
		}
		return nil
	}
}

// MQTTConnects checks that the broker at addr takes an MQTT connection
// (CONNACK) and lets it go.
func MQTTConnects(addr string, tc *tls.Config, node string) Probe {
	return func(ctx context.Context) error {
		c, err := connect(ctx, addr, tc, "mqha-health-"+node+"-"+nonce())
		if err != nil {
			return err
		}
		c.Disconnect(50)
		return nil
	}
}

// EndSession ends the session the mosquitto at addr keeps for clientID,
// with its subscriptions and queued messages: it connects under that id
// with a clean session, which discards the old one, and leaves. The caller
// must know no live client uses the id: the newer connection takes it over.
func EndSession(ctx context.Context, addr string, tc *tls.Config, clientID string) error {
	c, err := connect(ctx, addr, tc, clientID)
	if err != nil {
		return err
	}
	c.Disconnect(50)
	return nil
}

// DrainSession takes over the session the mosquitto at addr keeps for
// clientID (clean session off; made when there was none), acknowledges
// what it had queued, and leaves the session in place: it returns how many
// messages it took and whether there was a session. Before it leaves it
// subscribes the session to subscribe (filter -> QoS) and unsubscribes it
// from unsubscribe, so the broker queues for the client what it asked
// for; it waits for the queue until no message came for quiet. The caller
// must know no live client uses the id: the newer connection takes the
// session over.
func DrainSession(ctx context.Context, addr string, tc *tls.Config, clientID string, subscribe map[string]byte, unsubscribe []string, quiet time.Duration) (int, bool, error) {
	var n atomic.Int64
	last := make(chan struct{}, 1)
	c, present, err := connectAs(ctx, addr, tc, clientID, false, func(mqtt.Client, mqtt.Message) {
		n.Add(1)
		select {
		case last <- struct{}{}:
		default:
		}
	})
	if err != nil {
		return 0, false, err
	}
	if len(subscribe) > 0 {
		if err := wait(ctx, c.SubscribeMultiple(subscribe, nil), "subscribe"); err != nil {
			c.Disconnect(50)
			return 0, present, err
		}
	}
	if len(unsubscribe) > 0 {
		if err := wait(ctx, c.Unsubscribe(unsubscribe...), "unsubscribe"); err != nil {
			c.Disconnect(50)
			return 0, present, err
		}
	}
	quietFor := time.NewTimer(quiet)
wait:
	for {
		select {
		case <-last:
			quietFor.Reset(quiet)
		case <-quietFor.C:
			break wait
		case <-ctx.Done():
			break wait
		}
	}
	// The acknowledgements go out before the DISCONNECT.
	c.Disconnect(100)
	return int(n.Load()), present, nil
}

// BridgesUp asks the mosquitto at addr for its bridge connections' retained
// $SYS/broker/connection/<id>/state and counts them: up (1) of all it has.
// Before, it publishes payload retained at topic (when topic is set): a
// bridge master's marker, which its bridges carry to the brokers.
func BridgesUp(ctx context.Context, addr string, tc *tls.Config, node, topic, payload string, settle time.Duration) (up, all int, err error) {
	c, err := connect(ctx, addr, tc, "mqha-health-bridge-"+node+"-"+nonce())
	if err != nil {
		return 0, 0, err
	}
	defer c.Disconnect(50)
	if topic != "" {
		if err := wait(ctx, c.Publish(topic, 1, true, payload), "publish"); err != nil {
			return 0, 0, err
		}
	}
	state, err := retained(ctx, c, "$SYS/broker/connection/+/state", settle)
	for _, v := range state {
		if v == "1" {
			up++
		}
	}
	return up, len(state), err
}

// ThroughBridge publishes a message on the broker at remote and waits for
// it to arrive at the mosquitto at local, carried by local's bridge from
// that broker: the bridge's data path, whatever its connection state says
// (a connection whose peer went silent still says up for 1.5 keepalives).
func ThroughBridge(ctx context.Context, local string, localTC *tls.Config, remote string, remoteTC *tls.Config, node, topic string) error {
	l, err := connect(ctx, local, localTC, "mqha-health-in-"+node+"-"+nonce())
	if err != nil {
		return err
	}
	defer l.Disconnect(50)
	got := make(chan string, 8)
	if err := wait(ctx, l.Subscribe(topic, 1, func(_ mqtt.Client, m mqtt.Message) {
		select {
		case got <- string(m.Payload()):
		default:
		}
	}), "subscribe"); err != nil {
		return err
	}
	r, err := connect(ctx, remote, remoteTC, "mqha-health-out-"+node+"-"+nonce())
	if err != nil {
		return err
	}
	defer r.Disconnect(50)
	ping := nonce()
	if err := wait(ctx, r.Publish(topic, 1, false, ping), "publish on "+remote); err != nil {
		return err
	}
	for {
		select {
		case m := <-got:
			if m == ping {
				return nil
			}
		case <-ctx.Done():
			return fmt.Errorf("%w: a message published on %s did not come through the bridge", ErrNoAnswer, remote)
		}
	}
}

// Retained reads the retained messages under filter at the broker at addr:
// topic -> payload.
func Retained(ctx context.Context, addr string, tc *tls.Config, node, filter string, settle time.Duration) (map[string]string, error) {
	c, err := connect(ctx, addr, tc, "mqha-health-read-"+node+"-"+nonce())
	if err != nil {
		return nil, err
	}
	defer c.Disconnect(50)
	return retained(ctx, c, filter, settle)
}

// retained subscribes to filter and collects what arrives within settle of
// the SUBACK (retained messages follow it at once).
func retained(ctx context.Context, c mqtt.Client, filter string, settle time.Duration) (map[string]string, error) {
	var mu sync.Mutex
	got := map[string]string{}
	if err := wait(ctx, c.Subscribe(filter, 1, func(_ mqtt.Client, m mqtt.Message) {
		mu.Lock()
		got[m.Topic()] = string(m.Payload())
		mu.Unlock()
	}), "subscribe"); err != nil {
		return nil, err
	}
	select {
	case <-time.After(settle):
	case <-ctx.Done():
	}
	mu.Lock()
	defer mu.Unlock()
	return maps.Clone(got), nil
}

// TLSAccepted completes a TLS handshake at addr and waits briefly for the
// server's verdict on the client certificate: with TLS 1.3 a client's
// handshake ends before the server checked its certificate, and a refusal
// arrives as an alert on the first read. No alert within the wait: accepted.
func TLSAccepted(addr string, tc *tls.Config, wait time.Duration) Probe {
	return func(ctx context.Context) error {
		d := tls.Dialer{NetDialer: &net.Dialer{}, Config: tc}
		conn, err := d.DialContext(ctx, "tcp", addr)
		if err != nil {
			return fmt.Errorf("TLS to %s: %w", addr, err)
		}
		defer conn.Close()
		conn.SetReadDeadline(time.Now().Add(wait))
		if _, err := conn.Read(make([]byte, 1)); err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				return nil
			}
			if errors.Is(err, io.EOF) {
				return fmt.Errorf("TLS to %s: the server closed the connection (certificate refused?)", addr)
			}
			return fmt.Errorf("TLS to %s: %w", addr, err)
		}
		return nil
	}
}

// TLSThrough completes a TLS handshake at addr (nginx's port), which only
// works when nginx passes the connection to a broker that answers.
func TLSThrough(addr string, tc *tls.Config) Probe {
	return func(ctx context.Context) error {
		d := tls.Dialer{NetDialer: &net.Dialer{}, Config: tc}
		conn, err := d.DialContext(ctx, "tcp", addr)
		if err != nil {
			return fmt.Errorf("TLS through %s: %w", addr, err)
		}
		return conn.Close()
	}
}

// directAfter is how long ThroughLB waits for the path before it also asks
// the brokers directly.
const directAfter = 300 * time.Millisecond

// ThroughLB is TLSThrough at a load balancer's client port; when it fails,
// the brokers are asked directly: if none answers the failure wraps
// ErrUpstream (the load balancer may be fine, there is nothing to pass
// to), if some do not it wraps ErrBrokerDown (the path may lead to one of
// them); only when all answer is the path itself at fault.
func ThroughLB(addr string, brokers []string, tc *tls.Config) Probe {
	through := TLSThrough(addr, tc)
	return func(ctx context.Context) error {
		done := make(chan error, 1)
		go func() { done <- through(ctx) }()
		var err error
		select {
		case err = <-done:
			if err == nil || len(brokers) == 0 {
				return err // a healthy path answers within milliseconds
			}
		case <-time.After(directAfter):
		}
		// The path is slow or failed: the brokers are asked directly, while
		// the path may still answer, so that a dead broker costs one
		// probe's time, not two (a round of checks waiting on a dead broker
		// holds up the agent's loop).
		// A second at least: the path may have used all of ctx's time.
		wait := time.Second
		if d, ok := ctx.Deadline(); ok {
			wait = max(wait, time.Until(d))
		}
		bctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), wait)
		defer cancel()
		type answer struct {
			broker string
			ok     bool
		}
		answers := make(chan answer, len(brokers))
		for _, b := range brokers {
			go func() { answers <- answer{b, TLSThrough(b, tc)(bctx) == nil} }()
		}
		if err == nil {
			if err = <-done; err == nil || len(brokers) == 0 {
				return err
			}
		}
		var silent []string
		for range brokers {
			if a := <-answers; !a.ok {
				silent = append(silent, a.broker)
			}
		}
		switch len(silent) {
		case 0:
			return err // every broker answers directly: the fault is on this path
		case len(brokers):
			return fmt.Errorf("%w directly either (%d tried): %w", ErrUpstream, len(brokers), err)
		}
		slices.Sort(silent)
		return fmt.Errorf("%w (%s, directly): %w", ErrBrokerDown, strings.Join(silent, ", "), err)
	}
}

// HasAddr reports whether this host has address ip on any interface.
func HasAddr(ip string) (bool, error) {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return false, err
	}
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok && n.IP.String() == ip {
			return true, nil
		}
	}
	return false, nil
}

// VIPServes checks that if this node holds the VIP, clients are served
// through it; a node without the VIP is fine (the peer holds it).
func VIPServes(vip string, port int, tc *tls.Config) Probe {
	return func(ctx context.Context) error {
		has, err := HasAddr(vip)
		if err != nil || !has {
			return err
		}
		if err := TLSThrough(net.JoinHostPort(vip, fmt.Sprint(port)), tc)(ctx); err != nil {
			return fmt.Errorf("this node holds the VIP but does not serve through it: %w", err)
		}
		return nil
	}
}
