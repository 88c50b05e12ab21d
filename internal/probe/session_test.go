package probe_test

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/mqha/mqha/internal/cluster"
	"github.com/mqha/mqha/internal/pki"
	"github.com/mqha/mqha/internal/probe"
	"github.com/mqha/mqha/internal/testtools"
)

// A real mosquitto on loopback with mutual TLS, as the agent meets its own.
func mosquitto(t *testing.T) (string, *tls.Config) {
	t.Helper()
	testtools.Require(t, "mosquitto")
	c := &cluster.Cluster{Name: "t", Nodes: []cluster.Node{{Name: "n", Address: "127.0.0.1"}}}
	files := testtools.TLS(t, c)["n"]
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	dir := filepath.Dir(files.Cert)
	conf := filepath.Join(dir, "mosquitto.conf")
	os.WriteFile(conf, []byte(fmt.Sprintf("persistence false\nallow_anonymous false\nlog_dest stderr\nlistener %d 127.0.0.1\ncafile %s\ncertfile %s\nkeyfile %s\nrequire_certificate true\nuse_identity_as_username true\n",
		port, files.CA, files.Cert, files.Key)), 0o644)
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, "mosquitto", "-c", conf)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); cmd.Wait() })
	tc, err := pki.LoadTLS(files.CA, files.Cert, files.Key)
	if err != nil {
		t.Fatal(err)
	}
	tc.ServerName = "127.0.0.1"
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	for deadline := time.Now().Add(5 * time.Second); ; {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("mosquitto did not listen within 5 s")
		}
		time.Sleep(20 * time.Millisecond)
	}
	return addr, tc
}

// connect connects id with clean session off; it says whether the broker
// had a session and counts what it delivers.
func connect(t *testing.T, addr string, tc *tls.Config, id string, got *int) (mqtt.Client, bool) {
	t.Helper()
	o := mqtt.NewClientOptions().AddBroker("ssl://" + addr).SetClientID(id).SetTLSConfig(tc).SetCleanSession(false).
		SetDefaultPublishHandler(func(mqtt.Client, mqtt.Message) { *got++ })
	c := mqtt.NewClient(o)
	tok := c.Connect()
	if !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("connect %s: %v", id, tok.Error())
	}
	return c, tok.(*mqtt.ConnectToken).SessionPresent()
}

// DrainSession takes what a session queued and leaves it with its
// subscriptions; EndSession ends it.
func TestDrainAndEndSession(t *testing.T) {
	addr, tc := mosquitto(t)
	ctx := context.Background()
	var got int
	c, _ := connect(t, addr, tc, "x", &got)
	if tok := c.Subscribe("t", 1, nil); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	c.Disconnect(50)
	pub, _ := connect(t, addr, tc, "pub", new(int))
	for i := range 30 {
		pub.Publish("t", 1, false, strconv.Itoa(i)).WaitTimeout(5 * time.Second)
	}
	pub.Disconnect(50)

	n, present, err := probe.DrainSession(ctx, addr, tc, "x", nil, nil, 150*time.Millisecond)
	if err != nil || n != 30 || !present {
		t.Fatalf("drain: %d messages, session present %v, %v; want 30, true", n, present, err)
	}
	back, present := connect(t, addr, tc, "x", &got)
	time.Sleep(300 * time.Millisecond)
	back.Disconnect(50)
	if !present || got != 0 {
		t.Errorf("after the drain: session present %v, %d messages; want the session and nothing", present, got)
	}
	if err := probe.EndSession(ctx, addr, tc, "x"); err != nil {
		t.Fatal(err)
	}
	again, present := connect(t, addr, tc, "x", &got)
	again.Disconnect(50)
	if present {
		t.Error("the session outlived EndSession")
	}
}

// A visit to a broker without a session for the id makes its shadow: a
// session with the subscriptions given, which queues for the client; a
// later visit changes them.
func TestDrainSessionMakesShadow(t *testing.T) {
	addr, tc := mosquitto(t)
	ctx := context.Background()
	n, present, err := probe.DrainSession(ctx, addr, tc, "s", map[string]byte{"a/#": 1, "b": 1}, nil, 150*time.Millisecond)
	if err != nil || n != 0 || present {
		t.Fatalf("shadow: %d messages, session present %v, %v; want 0, false", n, present, err)
	}
	pub, _ := connect(t, addr, tc, "pub", new(int))
	send := func(topic string, k int) {
		for i := range k {
			pub.Publish(topic, 1, false, strconv.Itoa(i)).WaitTimeout(5 * time.Second)
		}
	}
	send("a/x", 5)
	send("b", 3)
	send("c", 4)
	// The next visit takes the 8 queued and moves the session from b to c.
	if n, present, err := probe.DrainSession(ctx, addr, tc, "s", map[string]byte{"c": 1}, []string{"b"}, 150*time.Millisecond); err != nil || n != 8 || !present {
		t.Fatalf("visit: %d messages, session present %v, %v; want 8, true", n, present, err)
	}
	send("b", 3)
	send("c", 4)
	send("a/y", 2)
	var got int
	c, present := connect(t, addr, tc, "s", &got)
	time.Sleep(300 * time.Millisecond)
	c.Disconnect(50)
	pub.Disconnect(50)
	if !present || got != 6 {
		t.Errorf("the client on its shadow: session present %v, %d messages; want true, 6 (c and a/#, not b)", present, got)
	}
}
