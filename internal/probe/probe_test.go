package probe

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// silent accepts connections and never answers: a stopped daemon, as the
// kernel completes the TCP handshake for it.
func silent(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			t.Cleanup(func() { c.Close() })
		}
	}()
	return l.Addr().String()
}

func closedPort(t *testing.T) string {
	t.Helper()
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := l.Addr().String()
	l.Close()
	return addr
}

func TestNoAnswerTellsSilenceFromRefusal(t *testing.T) {
	tc := &tls.Config{ServerName: "x"}
	ctx := func() context.Context {
		c, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		t.Cleanup(cancel)
		return c
	}
	if err := TLSThrough(silent(t), tc)(ctx()); !NoAnswer(err) {
		t.Errorf("a silent listener: %v, want no answer", err)
	}
	if err := TLSThrough(closedPort(t), tc)(ctx()); err == nil || NoAnswer(err) {
		t.Errorf("a closed port: %v, want a refusal (an answer)", err)
	}
	if err := MQTTRoundTrip(silent(t), tc, "n")(ctx()); !NoAnswer(err) {
		t.Errorf("MQTT to a silent listener: %v, want no answer", err)
	}
}

func TestThroughLBBlamesUpstream(t *testing.T) {
	tc := &tls.Config{ServerName: "x"}
	c, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	// nginx answers nothing and no broker answers directly either.
	err := ThroughLB(silent(t), []string{closedPort(t), closedPort(t)}, tc)(c)
	if !errors.Is(err, ErrUpstream) || NoAnswer(err) {
		t.Errorf("no broker answers: %v, want ErrUpstream (not nginx's fault)", err)
	}
	// A broker answers directly while the path through nginx is silent:
	// nginx's fault, and a hang candidate.
	srv := httptest.NewTLSServer(http.NotFoundHandler())
	defer srv.Close()
	pool := x509.NewCertPool()
	pool.AddCert(srv.Certificate())
	good := &tls.Config{RootCAs: pool, ServerName: "example.com"}
	c2, cancel2 := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel2()
	err = ThroughLB(silent(t), []string{srv.Listener.Addr().String(), srv.Listener.Addr().String()}, good)(c2)
	if !NoAnswer(err) || errors.Is(err, ErrUpstream) || errors.Is(err, ErrBrokerDown) {
		t.Errorf("every broker answers directly: %v, want no answer from nginx", err)
	}
	// One broker answers, one does not: the path may lead to the silent
	// one (nginx picks by address): not nginx's fault, not a hang.
	c3, cancel3 := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel3()
	closed := closedPort(t)
	err = ThroughLB(silent(t), []string{closed, srv.Listener.Addr().String()}, good)(c3)
	if !errors.Is(err, ErrBrokerDown) || NoAnswer(err) || !strings.Contains(err.Error(), closed) {
		t.Errorf("one broker silent: %v, want ErrBrokerDown naming %s", err, closed)
	}
}
