// Package validate checks candidate configurations with the daemons' own
// tools before anything is written where a daemon would read it: nginx -t,
// keepalived --config-test, and a throwaway mosquitto on loopback (mosquitto
// 2.0 has no config-test flag).
package validate

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"time"
)

// Tools runs the real daemons' checks. The zero value uses the binaries on PATH.
type Tools struct {
	NginxBin, KeepalivedBin, MosquittoBin string // binaries; empty means the usual name on PATH
	// MosquittoWait bounds the trial start; zero means 10 s.
	MosquittoWait time.Duration
}

func or(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// candidate writes content to a private temporary file and returns its path.
func candidate(pattern string, content []byte) (string, func(), error) {
	f, err := os.CreateTemp("", pattern)
	if err != nil {
		return "", nil, fmt.Errorf("stage candidate: %w", err)
	}
	_, err = f.Write(content)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(f.Name())
		return "", nil, fmt.Errorf("stage candidate: %w", err)
	}
	return f.Name(), func() { os.Remove(f.Name()) }, nil
}

// toolEnv is the environment for the daemons' checks: the agent's own,
// without systemd's notification socket, which a trial daemon (mosquitto is
// a Type=notify service) would otherwise use to speak for the agent.
func toolEnv() []string {
	var env []string
	for _, e := range os.Environ() {
		if !strings.HasPrefix(e, "NOTIFY_SOCKET=") && !strings.HasPrefix(e, "WATCHDOG_") {
			env = append(env, e)
		}
	}
	return env
}

func run(ctx context.Context, name string, args ...string) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = toolEnv()
	out, err := cmd.CombinedOutput()
	if err != nil {
		var ee *exec.Error
		if errors.As(err, &ee) {
			return fmt.Errorf("%s is not installed: %w", name, err)
		}
		return fmt.Errorf("%s %s: %w\n%s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// Nginx checks a candidate nginx.conf with nginx -t.
func (t Tools) Nginx(ctx context.Context, content []byte) error {
	p, done, err := candidate("mqha-nginx-*.conf", content)
	if err != nil {
		return err
	}
	defer done()
	return run(ctx, or(t.NginxBin, "nginx"), "-t", "-q", "-c", p)
}

// AgentBin is where the packages install mqha-agent, whose commands a
// bridge node's keepalived runs.
const AgentBin = "/usr/bin/mqha-agent"

// Keepalived checks a candidate keepalived.conf with keepalived --config-test.
func (t Tools) Keepalived(ctx context.Context, content []byte) error {
	// keepalived refuses a script that does not exist. On a host without
	// the package (a workstation's diff --validate, the tests) the agent's
	// commands are checked as /bin/true: keepalived checks only that a
	// script exists and is safe to run, not its arguments.
	if _, err := os.Stat(AgentBin); err != nil {
		content = bytes.ReplaceAll(content, []byte(`"`+AgentBin+" "), []byte(`"/bin/true `))
	}
	p, done, err := candidate("mqha-keepalived-*.conf", content)
	if err != nil {
		return err
	}
	defer done()
	// --config-test exits non-zero on any problem it reports, including an
	// interface this host does not have.
	return run(ctx, or(t.KeepalivedBin, "keepalived"), "--config-test", "-f", p)
}

// Mosquitto starts the candidate as a throwaway broker: same options, TLS
// files and user, but its listeners on free loopback ports, no pid file or
// persistence, and its bridges pointed at a closed loopback port so that no
// traffic leaves this host. It passes when the broker accepts a TCP
// connection on its first listener.
func (t Tools) Mosquitto(ctx context.Context, content []byte) error {
	return t.mosquitto(ctx, content, false)
}

// mosquitto runs the trial; acl keeps the candidate's acl_file (the ACL's
// own trial), else it is dropped: the live file is validated on its own.
func (t Tools) mosquitto(ctx context.Context, content []byte, acl bool) error {
	trial, port, err := trialMosquitto(content, acl)
	if err != nil {
		return err
	}
	p, done, err := candidate("mqha-mosquitto-*.conf", trial)
	if err != nil {
		return err
	}
	defer done()
	wait := t.MosquittoWait
	if wait == 0 {
		wait = 10 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	out := &trialLog{running: make(chan struct{})}
	cmd := exec.Command(or(t.MosquittoBin, "mosquitto"), "-c", p)
	cmd.Stdout, cmd.Stderr = out, out
	cmd.Env = toolEnv()
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start trial mosquitto: %w", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	defer func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			<-exited
		}
	}()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-out.running:
			// Logged once every listener is open with its certificate and
			// key loaded: the candidate starts.
			return nil
		case err := <-exited:
			return fmt.Errorf("trial mosquitto exited (%v):\n%s", err, strings.TrimSpace(out.String()))
		case <-ctx.Done():
			return fmt.Errorf("trial mosquitto did not listen within %s:\n%s", wait, strings.TrimSpace(out.String()))
		case <-tick.C:
			c, err := net.DialTimeout("tcp", net.JoinHostPort("127.0.0.1", port), 100*time.Millisecond)
			if err != nil {
				continue
			}
			c.Close()
			// mosquitto opens a listener's socket before it loads the
			// listener's certificate and key: listening is not yet passing.
			// It exits within milliseconds when a file does not load.
			select {
			case <-out.running:
				return nil
			case err := <-exited:
				return fmt.Errorf("trial mosquitto exited (%v):\n%s", err, strings.TrimSpace(out.String()))
			case <-time.After(trialGrace):
				return nil
			}
		}
	}
}

// MosquittoBridges checks a file of bridge connections that a configuration
// includes (include_dir): started in a trial broker of its own, with one
// listener to tell when it runs.
func (t Tools) MosquittoBridges(ctx context.Context, content []byte) error {
	return t.Mosquitto(ctx, append([]byte("listener 0\nallow_anonymous false\n"), content...))
}

// MosquittoACL checks an access control list in a trial broker of its own.
func (t Tools) MosquittoACL(ctx context.Context, content []byte) error {
	p, done, err := candidate("mqha-acl-*.acl", content)
	if err != nil {
		return err
	}
	defer done()
	// The trial's user (mosquitto) must read it.
	os.Chmod(p, 0o644)
	return t.mosquitto(ctx, []byte("listener 0\nallow_anonymous false\nacl_file "+p+"\n"), true)
}

// trialGrace is how long a trial broker must stay up once it listens.
const trialGrace = 500 * time.Millisecond

// trialMosquitto rewrites a configuration for a trial start and returns it
// with the port of its first listener.
func trialMosquitto(content []byte, acl bool) ([]byte, string, error) {
	var b strings.Builder
	// The standard log types, so that the "running" line (information) and
	// any load error show whatever the candidate sets.
	b.WriteString("log_dest stderr\nlog_type error\nlog_type warning\nlog_type notice\nlog_type information\npersistence false\n")
	first := ""
	closed, err := freePort() // nothing listens here: bridges fail at once
	if err != nil {
		return nil, "", err
	}
	for _, line := range strings.Split(string(content), "\n") {
		fields := strings.Fields(line)
		if len(fields) == 0 || strings.HasPrefix(fields[0], "#") {
			continue
		}
		switch fields[0] {
		case "pid_file", "log_dest", "persistence", "persistence_location", "autosave_interval":
			continue
		case "include_dir":
			// The live directory, not the candidate: what it holds (the
			// bridges) is validated as a file of its own.
			continue
		case "acl_file":
			if !acl {
				continue // the live file, validated on its own (MosquittoACL)
			}
		case "listener":
			port, err := freePort()
			if err != nil {
				return nil, "", err
			}
			if first == "" {
				first = port
			}
			line = "listener " + port + " 127.0.0.1"
		case "address":
			line = "address 127.0.0.1:" + closed
		}
		b.WriteString(line + "\n")
	}
	if first == "" {
		return nil, "", errors.New("configuration has no listener")
	}
	return []byte(b.String()), first, nil
}

func freePort() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", fmt.Errorf("find a free loopback port: %w", err)
	}
	defer l.Close()
	_, port, _ := net.SplitHostPort(l.Addr().String())
	return port, nil
}

// trialLog collects a trial broker's output (written by exec's goroutines
// while the loop reads it) and signals mosquitto's "running" line.
type trialLog struct {
	mu      sync.Mutex
	buf     bytes.Buffer
	running chan struct{}
	once    sync.Once
}

var runningLine = regexp.MustCompile(`mosquitto version \S+ running`)

func (l *trialLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.buf.Write(p)
	if runningLine.Match(l.buf.Bytes()) {
		l.once.Do(func() { close(l.running) })
	}
	return len(p), nil
}

func (l *trialLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}
