package agent

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestParseConfig(t *testing.T) {
	tests := []struct {
		name, in, err string
		check         func(Config) bool
	}{
		{"defaults", "repo = git://10.0.0.1/c.git\n", "", func(c Config) bool {
			return c.Branch == "main" && c.Poll == 5*time.Second && c.StateDir == "/var/lib/mqha" && c.Path == "."
		}},
		{"everything", "# comment\nrepo = https://git.example/c.git\nbranch = prod\npath = clusters/eu\nnode = lb1\npoll = 2s\ntoken-file = /etc/mqha/token\n", "", func(c Config) bool {
			return c.Branch == "prod" && c.Path == "clusters/eu" && c.Node == "lb1" && c.Poll == 2*time.Second && c.TokenFile == "/etc/mqha/token"
		}},
		{"empty is unconfigured", "", "", func(c Config) bool { return c.Repo == "" }},
		{"unknown key", "repo = git://h/c\nrepository = x\n", "agent.conf:2: unknown key \"repository\"", nil},
		{"no equals", "repo git://h/c\n", "agent.conf:1: want \"key = value\"", nil},
		{"bad poll", "poll = often\n", "agent.conf:1: \"often\" is not a duration", nil},
		{"poll too short", "poll = 10ms\n", "below the minimum", nil},
		{"bad scheme", "repo = ftp://h/c\n", "want a file://, git://", nil},
		{"token on ssh", "repo = ssh://git@h/c\ntoken-file = /t\n", "token-file only applies to https", nil},
		{"no host", "repo = git:\n", "names no server or path", nil},
		{"token in the URL", "repo = https://ghp_secret@h/c\n", "repo URL carries credentials (ghp_secret@)", nil},
		{"password in the URL", "repo = https://u:pw@h/c\n", "repo URL carries credentials", nil},
		{"password in an ssh URL", "repo = ssh://git:pw@h/c\n", "repo URL carries a password", nil},
		{"token over plain http", "repo = http://h/c\ntoken-file = /t\n", "token in clear: use an https:// repo URL", nil},
		{"definition size", "repo = git://h/c\nmax-definition-size = 16M\n", "", func(c Config) bool { return c.MaxDefinitionSize == 16<<20 }},
		{"bad size", "repo = git://h/c\nmax-definition-size = lots\n", "is not a size", nil},
		{"ca-file for https", "repo = https://h/c\nca-file = /etc/mqha/git-ca.crt\n", "", func(c Config) bool { return c.CAFile == "/etc/mqha/git-ca.crt" }},
		{"ca-file on git://", "repo = git://h/c\nca-file = /c\n", "ca-file only applies to https", nil},
		{"ssh user is no secret", "repo = ssh://git@h/c\nssh-key = /k\n", "", func(c Config) bool { return c.SSHKey == "/k" }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := ParseConfig("agent.conf", []byte(tt.in))
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("want error %q, got %v", tt.err, err)
				}
				return
			}
			if err != nil || !tt.check(c) {
				t.Fatalf("got %+v, %v", c, err)
			}
		})
	}
}

// TestEveryKeyParses sets each key of the table once, so that a key added
// to the table without a working setter fails here.
func TestEveryKeyParses(t *testing.T) {
	values := map[string]string{"poll": "2s", "fetch-timeout": "10s", "max-definition-size": "16M", "load-timeout": "30s", "load-memory": "512M", "settle": "1s", "health-interval": "1s", "verify-timeout": "5s", "allow-rewind": "true", "decommission": "false", "decommission-grace": "2m", "notify-url": "https://hooks.example.net/mqha"}
	for _, k := range Keys() {
		v, ok := values[k]
		if !ok {
			v = "x"
		}
		if k == "repo" {
			v = "git://h/c"
		}
		in := "repo = git://h/c\n" + k + " = " + v + "\n"
		if k == "token-file" || k == "ca-file" || k == "ssh-key" || k == "known-hosts" || k == "webhook-secret-file" {
			continue // need companions, covered above
		}
		if _, err := ParseConfig("agent.conf", []byte(in)); err != nil {
			t.Errorf("%s = %s: %v", k, v, err)
		}
	}
	if _, err := ParseConfig("agent.conf", []byte("nope = 1\n")); err == nil || !strings.Contains(err.Error(), strings.Join(Keys(), ", ")) {
		t.Errorf("the unknown-key error does not list the keys: %v", err)
	}
}

func TestCABundle(t *testing.T) {
	dir := t.TempDir()
	notPEM := filepath.Join(dir, "ca.txt")
	os.WriteFile(notPEM, []byte("not a certificate\n"), 0o644)
	if _, err := (Config{CAFile: notPEM}).CABundle(); err == nil || !strings.Contains(err.Error(), "holds no PEM certificate") {
		t.Errorf("a file without a certificate: %v", err)
	}
	if _, err := (Config{CAFile: filepath.Join(dir, "missing")}).CABundle(); err == nil || !strings.Contains(err.Error(), "ca-file") {
		t.Errorf("a missing file: %v", err)
	}
	if b, err := (Config{}).CABundle(); b != nil || err != nil {
		t.Errorf("no ca-file: %q, %v", b, err)
	}
}
