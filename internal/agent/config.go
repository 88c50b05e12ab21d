package agent

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/mqha/mqha/internal/control"
	"github.com/mqha/mqha/internal/evaluate"
)

// Config is /etc/mqha/agent.conf: "key = value" lines, # comments.
type Config struct {
	Repo   string        // git URL: file://, git://, https://, ssh://
	Branch string        // default main
	Path   string        // directory of the cluster package in the repo
	Node   string        // default: the hostname
	Poll   time.Duration // default 5s
	// FetchTimeout bounds each network call to the repository (ls-remote,
	// fetch, deepening): a git server that never answers costs this.
	FetchTimeout time.Duration // default 30s
	// MaxDefinitionSize bounds the .cue files of a commit together, in
	// bytes (source.DefaultMaxBytes): checked before any is read.
	MaxDefinitionSize int64
	// LoadTimeout and LoadMemory bound the evaluation of a commit's
	// definition (a child process): default 20s and 256M.
	LoadTimeout time.Duration
	LoadMemory  int64
	StateDir    string        // default /var/lib/mqha
	TokenFile   string        // https: file holding a token (sent as basic auth password)
	CAFile      string        // https: CA bundle for the git server, besides the system's
	SSHKey      string        // ssh: private key file
	KnownHosts  string        // ssh: known_hosts file
	Settle      time.Duration // how long units must stay up after a change

	HealthInterval    time.Duration // health checks, default 3s
	VerifyTimeout     time.Duration // health after an apply before rolling back, default 20s
	TrustedKeys       string        // file of PGP/SSH public keys; set: only signed commits apply
	AllowRewind       bool          // accept a branch that no longer descends from the applied commit
	Socket            string        // control socket, default /run/mqha/agent.sock
	Listen            string        // address for /metrics and /hook; empty: none
	WebhookSecretFile string        // shared secret for /hook
	// Decommission: when a commit removes this node, stop and disable its
	// units once the others let go of it (default true); false keeps it
	// serving its last configuration. DecommissionGrace bounds the wait.
	Decommission      bool
	DecommissionGrace time.Duration // default 60s
	// NotifyURL receives this node's events (applied, refused, rolled
	// back, decommissioned, failed over) as signed JSON; "" none.
	// NotifySecretFile holds the HMAC key (at least 16 bytes).
	NotifyURL        string
	NotifySecretFile string
}

func defaultConfig() Config {
	return Config{Branch: "main", Path: ".", Poll: 5 * time.Second, FetchTimeout: 30 * time.Second, LoadTimeout: evaluate.DefaultLimits.Timeout, LoadMemory: evaluate.DefaultLimits.Memory, StateDir: "/var/lib/mqha", Settle: 500 * time.Millisecond,
		HealthInterval: 3 * time.Second, VerifyTimeout: 20 * time.Second, Socket: control.DefaultSocket,
		Decommission: true, DecommissionGrace: time.Minute}
}

// applies says when a changed key takes effect.
type applies bool

const (
	onReload  applies = true  // systemctl reload mqha-agent
	onRestart applies = false // systemctl restart mqha-agent
)

// key is one key of agent.conf: how it is parsed into its field, and
// whether a reload applies it.
type key struct {
	name    string
	when    applies
	set     func(c *Config, v string) error
	differs func(a, b *Config) bool
	take    func(dst, src *Config)
}

func field[T comparable](name string, when applies, ptr func(*Config) *T, parse func(string) (T, error)) key {
	return key{name: name, when: when,
		set: func(c *Config, v string) error {
			x, err := parse(v)
			if err == nil {
				*ptr(c) = x
			}
			return err
		},
		differs: func(a, b *Config) bool { return *ptr(a) != *ptr(b) },
		take:    func(dst, src *Config) { *ptr(dst) = *ptr(src) }}
}

// keys is every key of agent.conf: the one table the parser, its errors,
// the reload, the man page and the example configuration follow (their
// tests read it).
var keys = []key{
	field("repo", onRestart, func(c *Config) *string { return &c.Repo }, text),
	field("branch", onRestart, func(c *Config) *string { return &c.Branch }, text),
	field("path", onRestart, func(c *Config) *string { return &c.Path }, text),
	field("node", onRestart, func(c *Config) *string { return &c.Node }, text),
	field("poll", onReload, func(c *Config) *time.Duration { return &c.Poll }, atLeast(time.Second)),
	field("fetch-timeout", onReload, func(c *Config) *time.Duration { return &c.FetchTimeout }, atLeast(time.Second)),
	field("max-definition-size", onReload, func(c *Config) *int64 { return &c.MaxDefinitionSize }, ParseSize),
	field("load-timeout", onReload, func(c *Config) *time.Duration { return &c.LoadTimeout }, atLeast(time.Second)),
	field("load-memory", onReload, func(c *Config) *int64 { return &c.LoadMemory }, ParseSize),
	field("settle", onReload, func(c *Config) *time.Duration { return &c.Settle }, atLeast(0)),
	field("state-dir", onRestart, func(c *Config) *string { return &c.StateDir }, text),
	field("token-file", onRestart, func(c *Config) *string { return &c.TokenFile }, text),
	field("ca-file", onRestart, func(c *Config) *string { return &c.CAFile }, text),
	field("ssh-key", onRestart, func(c *Config) *string { return &c.SSHKey }, text),
	field("known-hosts", onRestart, func(c *Config) *string { return &c.KnownHosts }, text),
	field("health-interval", onReload, func(c *Config) *time.Duration { return &c.HealthInterval }, atLeast(500*time.Millisecond)),
	field("verify-timeout", onReload, func(c *Config) *time.Duration { return &c.VerifyTimeout }, atLeast(time.Second)),
	field("trusted-keys", onReload, func(c *Config) *string { return &c.TrustedKeys }, text),
	field("allow-rewind", onReload, func(c *Config) *bool { return &c.AllowRewind }, boolean),
	field("socket", onRestart, func(c *Config) *string { return &c.Socket }, text),
	field("listen", onRestart, func(c *Config) *string { return &c.Listen }, text),
	field("webhook-secret-file", onReload, func(c *Config) *string { return &c.WebhookSecretFile }, text),
	field("decommission", onReload, func(c *Config) *bool { return &c.Decommission }, boolean),
	field("decommission-grace", onReload, func(c *Config) *time.Duration { return &c.DecommissionGrace }, atLeast(0)),
	field("notify-url", onReload, func(c *Config) *string { return &c.NotifyURL }, webURL),
	field("notify-secret-file", onReload, func(c *Config) *string { return &c.NotifySecretFile }, text),
}

// webURL is an http or https URL with a host ("" none).
func webURL(v string) (string, error) {
	if v == "" {
		return "", nil
	}
	u, err := url.Parse(v)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return "", fmt.Errorf("%q: want an http:// or https:// URL", v)
	}
	return v, nil
}

func text(v string) (string, error) { return v, nil }

func boolean(v string) (bool, error) {
	b, err := strconv.ParseBool(v)
	if err != nil {
		return false, fmt.Errorf("%q: want true or false", v)
	}
	return b, nil
}

func atLeast(min time.Duration) func(string) (time.Duration, error) {
	return func(v string) (time.Duration, error) { return duration(v, min) }
}

// reloadKeys copies into cur the keys of next that a reload applies and
// that changed; it names those, and the changed ones that need a restart
// (kept at their running value).
func reloadKeys(cur, next *Config) (took, restart []string) {
	for _, k := range keys {
		switch {
		case !k.differs(cur, next):
		case k.when == onReload:
			k.take(cur, next)
			took = append(took, k.name)
		default:
			restart = append(restart, k.name)
		}
	}
	return took, restart
}

// ReloadKeys are the keys a reload applies; the others need a restart.
func ReloadKeys() []string {
	var out []string
	for _, k := range keys {
		if k.when == onReload {
			out = append(out, k.name)
		}
	}
	return out
}

// Keys are the names agent.conf accepts.
func Keys() []string {
	out := make([]string, len(keys))
	for i, k := range keys {
		out[i] = k.name
	}
	return out
}

// ParseConfig reads the agent's configuration; every problem names its line.
func ParseConfig(name string, data []byte) (Config, error) {
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
		i := slices.IndexFunc(keys, func(x key) bool { return x.name == k })
		var err error
		if i < 0 {
			err = fmt.Errorf("unknown key %q (keys: %s)", k, strings.Join(Keys(), ", "))
		} else {
			err = keys[i].set(&c, v)
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
		if u.Scheme != "file" && u.Host == "" || u.Scheme == "file" && u.Path == "" {
			return c, fmt.Errorf("%s: repo %q names no server or path: want e.g. %s://git.example.net/ops/cluster.git", name, c.Repo, u.Scheme)
		}
		if u.User != nil && u.Scheme != "ssh" {
			// A token as user or password ends up in logs, errors, the
			// status and process listings.
			return c, fmt.Errorf("%s: repo URL carries credentials (%s@): put a token in token-file (https) or use ssh-key, and remove them from the URL", name, u.User.Username())
		}
		if _, set := u.User.Password(); set {
			return c, fmt.Errorf("%s: repo URL carries a password: use ssh-key with known-hosts, and remove it from the URL", name)
		}
		if c.TokenFile != "" && u.Scheme == "http" {
			return c, fmt.Errorf("%s: token-file over plain http would send the token in clear: use an https:// repo URL", name)
		}
		if c.TokenFile != "" && u.Scheme != "https" {
			return c, fmt.Errorf("%s: token-file only applies to https repositories", name)
		}
		if c.CAFile != "" && u.Scheme != "https" {
			return c, fmt.Errorf("%s: ca-file only applies to https repositories", name)
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

// ParseSize parses a byte count with an optional K, M or G (binary)
// suffix (agent.conf's sizes; the CLI's --load-memory).
func ParseSize(v string) (int64, error) {
	mult := int64(1)
	switch {
	case strings.HasSuffix(v, "K"):
		mult, v = 1<<10, strings.TrimSuffix(v, "K")
	case strings.HasSuffix(v, "M"):
		mult, v = 1<<20, strings.TrimSuffix(v, "M")
	case strings.HasSuffix(v, "G"):
		mult, v = 1<<30, strings.TrimSuffix(v, "G")
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("%q is not a size (e.g. 8M)", v)
	}
	return n * mult, nil
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

// NodeName is the node this agent runs: configured, else the host name up
// to its first dot.
func NodeName(configured string) (string, error) {
	if configured != "" {
		return configured, nil
	}
	h, err := os.Hostname()
	if err != nil {
		return "", fmt.Errorf("no node name configured and no host name: %w", err)
	}
	name, _, _ := strings.Cut(h, ".")
	if name == "" {
		return "", errors.New("no node name configured and the host name is empty")
	}
	return name, nil
}
