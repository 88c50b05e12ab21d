package main

import (
	"bufio"
	"bytes"
	"fmt"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/mqha/mqha/internal/control"

	"github.com/go-git/go-git/v5/plumbing/transport"
	githttp "github.com/go-git/go-git/v5/plumbing/transport/http"
	gitssh "github.com/go-git/go-git/v5/plumbing/transport/ssh"
)

// agentConfig is /etc/mqha/agent.conf: "key = value" lines, # comments.
type agentConfig struct {
	Repo       string        // git URL: file://, git://, https://, ssh://
	Branch     string        // default main
	Path       string        // directory of the cluster package in the repo
	Node       string        // default: the hostname
	Poll       time.Duration // default 5s
	StateDir   string        // default /var/lib/mqha
	TokenFile  string        // https: file holding a token (sent as basic auth password)
	SSHKey     string        // ssh: private key file
	KnownHosts string        // ssh: known_hosts file
	Settle     time.Duration // how long units must stay up after a change

	HealthInterval    time.Duration // health checks, default 3s
	VerifyTimeout     time.Duration // health after an apply before rolling back, default 20s
	TrustedKeys       string        // file of PGP/SSH public keys; set: only signed commits apply
	AllowRewind       bool          // accept a branch that no longer descends from the applied commit
	Socket            string        // control socket, default /run/mqha/agent.sock
	Listen            string        // address for /metrics and /hook; empty: none
	WebhookSecretFile string        // shared secret for /hook
}

func defaultConfig() agentConfig {
	return agentConfig{Branch: "main", Path: ".", Poll: 5 * time.Second, StateDir: "/var/lib/mqha", Settle: 500 * time.Millisecond,
		HealthInterval: 3 * time.Second, VerifyTimeout: 20 * time.Second, Socket: control.DefaultSocket}
}

// parseConfig reads the agent's configuration; every problem names its line.
func parseConfig(name string, data []byte) (agentConfig, error) {
	c := defaultConfig()
	sc := bufio.NewScanner(bytes.NewReader(data))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			return c, fmt.Errorf("%s:%d: want \"key = value\", got %q", name, n, line)
		}
		k, v = strings.TrimSpace(k), strings.TrimSpace(v)
		var err error
		switch k {
		case "repo":
			c.Repo = v
		case "branch":
			c.Branch = v
		case "path":
			c.Path = v
		case "node":
			c.Node = v
		case "poll":
			c.Poll, err = duration(v, time.Second)
		case "settle":
			c.Settle, err = duration(v, 0)
		case "state-dir":
			c.StateDir = v
		case "token-file":
			c.TokenFile = v
		case "ssh-key":
			c.SSHKey = v
		case "known-hosts":
			c.KnownHosts = v
		case "health-interval":
			c.HealthInterval, err = duration(v, 500*time.Millisecond)
		case "verify-timeout":
			c.VerifyTimeout, err = duration(v, time.Second)
		case "trusted-keys":
			c.TrustedKeys = v
		case "allow-rewind":
			c.AllowRewind, err = strconv.ParseBool(v)
		case "socket":
			c.Socket = v
		case "listen":
			c.Listen = v
		case "webhook-secret-file":
			c.WebhookSecretFile = v
		default:
			err = fmt.Errorf("unknown key %q (keys: repo, branch, path, node, poll, settle, state-dir, token-file, ssh-key, known-hosts, health-interval, verify-timeout, trusted-keys, allow-rewind, socket, listen, webhook-secret-file)", k)
		}
		if err != nil {
			return c, fmt.Errorf("%s:%d: %w", name, n, err)
		}
	}
	if c.Repo != "" {
		u, err := url.Parse(c.Repo)
		if err != nil || (u.Scheme != "file" && u.Scheme != "git" && u.Scheme != "https" && u.Scheme != "http" && u.Scheme != "ssh") {
			return c, fmt.Errorf("%s: repo %q: want a file://, git://, http(s):// or ssh:// URL", name, c.Repo)
		}
		if c.TokenFile != "" && !strings.HasPrefix(u.Scheme, "http") {
			return c, fmt.Errorf("%s: token-file only applies to https repositories", name)
		}
		if c.SSHKey != "" && u.Scheme != "ssh" {
			return c, fmt.Errorf("%s: ssh-key only applies to ssh repositories", name)
		}
	}
	if c.WebhookSecretFile != "" && c.Listen == "" {
		return c, fmt.Errorf("%s: webhook-secret-file needs listen (the address the webhook is served on)", name)
	}
	if c.Branch == "" {
		return c, fmt.Errorf("%s: branch is empty", name)
	}
	return c, sc.Err()
}

func duration(v string, min time.Duration) (time.Duration, error) {
	d, err := time.ParseDuration(v)
	if err != nil {
		return 0, fmt.Errorf("%q is not a duration (e.g. 5s)", v)
	}
	if d < min {
		return 0, fmt.Errorf("%s is below the minimum %s", d, min)
	}
	return d, nil
}

// auth builds the transport credentials the configuration names.
func (c agentConfig) auth() (transport.AuthMethod, error) {
	switch {
	case c.TokenFile != "":
		tok, err := os.ReadFile(c.TokenFile)
		if err != nil {
			return nil, fmt.Errorf("token-file: %w", err)
		}
		return &githttp.BasicAuth{Username: "mqha", Password: strings.TrimSpace(string(tok))}, nil
	case c.SSHKey != "":
		u, _ := url.Parse(c.Repo)
		user := "git"
		if u.User != nil {
			user = u.User.Username()
		}
		keys, err := gitssh.NewPublicKeysFromFile(user, c.SSHKey, "")
		if err != nil {
			return nil, fmt.Errorf("ssh-key: %w", err)
		}
		if c.KnownHosts == "" {
			return nil, fmt.Errorf("ssh-key needs known-hosts: the server's key must be checked")
		}
		cb, err := gitssh.NewKnownHostsCallback(c.KnownHosts)
		if err != nil {
			return nil, fmt.Errorf("known-hosts: %w", err)
		}
		keys.HostKeyCallback = cb
		return keys, nil
	}
	return nil, nil
}
