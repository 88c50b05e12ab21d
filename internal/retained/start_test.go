package retained

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/mqha/mqha/internal/testtools"
)

func TestStartFileRoundTrip(t *testing.T) {
	for _, s := range []Start{
		{Relay: true},
		{},
		{Peers: []Peer{{"broker2", "10.0.0.2:8883"}, {"broker3", "[fd00::3]:8883"}}},
	} {
		got, err := Parse(s.Marshal("Managed by mqha-agent."))
		if err != nil || got.Relay != s.Relay || fmt.Sprint(got.Peers) != fmt.Sprint(s.Peers) {
			t.Errorf("%+v came back as %+v, %v", s, got, err)
		}
	}
	for _, bad := range []string{"relay now\n", "peer broker2\n", "peer broker2 10.0.0.2\n", "keep\n"} {
		if _, err := Parse([]byte(bad)); err == nil || !strings.Contains(err.Error(), "line 1") {
			t.Errorf("%q: err %v, want one naming line 1", bad, err)
		}
	}
}

func TestPrepare(t *testing.T) {
	answers := func(up ...string) Dial {
		return func(_ context.Context, addr string) error {
			for _, u := range up {
				if u == addr {
					return nil
				}
			}
			return errors.New("refused")
		}
	}
	peers := []Peer{{"b2", "b2:8883"}, {"b3", "b3:8883"}}
	for _, tc := range []struct {
		name  string
		start Start
		dial  Dial
		strip bool
	}{
		{"relay", Start{Relay: true}, answers(), true},
		{"only broker", Start{}, answers(), false},
		{"a peer answers", Start{Peers: peers}, answers("b3:8883"), true},
		{"no peer answers", Start{Peers: peers}, answers(), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			db := filepath.Join(t.TempDir(), "mosquitto.db")
			os.WriteFile(db, file(6, cfg(true), store(1, "r"), retain(1)), 0o600)
			var log bytes.Buffer
			if err := tc.start.Prepare(context.Background(), db, tc.dial, slog.New(slog.NewTextHandler(&log, nil))); err != nil {
				t.Fatal(err)
			}
			b, _ := os.ReadFile(db)
			if stripped := bytes.Equal(b, file(6, cfg(true))); stripped != tc.strip {
				t.Errorf("stripped %v, want %v; log: %s", stripped, tc.strip, log.String())
			}
		})
	}
}

// With a real mosquitto: what it saved, stripped, it loads again without
// the retained messages and with its sessions and their queued messages,
// a retained one among them.
func TestStripRealMosquitto(t *testing.T) {
	testtools.Require(t, "mosquitto")
	dir := t.TempDir()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	conf := filepath.Join(dir, "mosquitto.conf")
	user := "" // as root, mosquitto would become "mosquitto" and could not write here
	if os.Geteuid() == 0 {
		user = "user root\n"
	}
	os.WriteFile(conf, []byte(fmt.Sprintf(user+"persistence true\npersistence_location %s/\nautosave_interval 3600\nallow_anonymous true\nlog_dest none\nlistener %d 127.0.0.1\n", dir, port)), 0o644)
	addr := "tcp://127.0.0.1:" + strconv.Itoa(port)
	run := func() (stop func()) {
		cmd := exec.Command("mosquitto", "-c", conf)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
			if c, err := net.Dial("tcp", "127.0.0.1:"+strconv.Itoa(port)); err == nil {
				c.Close()
				break
			}
			if time.Now().After(deadline) {
				cmd.Process.Kill()
				t.Fatal("mosquitto did not listen within 5 s")
			}
		}
		return func() { cmd.Process.Signal(syscall.SIGTERM); cmd.Wait() }
	}
	var mu sync.Mutex
	got := map[string]string{}
	connect := func(id string, clean bool) (mqtt.Client, bool) {
		o := mqtt.NewClientOptions().AddBroker(addr).SetClientID(id).SetCleanSession(clean).
			SetDefaultPublishHandler(func(_ mqtt.Client, m mqtt.Message) {
				mu.Lock()
				got[id+" "+m.Topic()] = string(m.Payload())
				mu.Unlock()
			})
		c := mqtt.NewClient(o)
		tok := c.Connect()
		if !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
			t.Fatalf("connect %s: %v", id, tok.Error())
		}
		return c, tok.(*mqtt.ConnectToken).SessionPresent()
	}
	wait := func(tok mqtt.Token) {
		if !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
			t.Fatal(tok.Error())
		}
	}

	stop := run()
	s, _ := connect("s", false)
	wait(s.Subscribe("q", 1, nil))
	s.Disconnect(50)
	p, _ := connect("p", true)
	wait(p.Publish("r/1", 1, true, "a"))
	wait(p.Publish("r/2", 1, true, "b"))
	wait(p.Publish("q", 1, true, "queued and retained"))
	p.Disconnect(50)
	stop() // saves the database

	st, err := Strip(filepath.Join(dir, "mosquitto.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("stripped: %+v", st)
	if st.Retained != 3 || st.Stores != 2 || !st.Clean {
		t.Errorf("stripped %+v, want 3 retained, 2 stores, saved at shutdown", st)
	}

	stop = run()
	defer stop()
	r, _ := connect("r", true)
	wait(r.Subscribe("#", 1, nil))
	back, present := connect("s", false)
	time.Sleep(500 * time.Millisecond)
	r.Disconnect(50)
	back.Disconnect(50)
	mu.Lock()
	defer mu.Unlock()
	if !present || got["s q"] != "queued and retained" {
		t.Errorf("session present %v, got %v; want the session and its queued message", present, got)
	}
	for k := range got {
		if strings.HasPrefix(k, "r ") {
			t.Errorf("a retained message survived: %s", k)
		}
	}
}
