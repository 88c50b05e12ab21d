//go:build e2e

package e2e

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/mqha/mqha/internal/source"
	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"
)

// TestRepoTransports: a node pulls the cluster repository over https with a
// token (the server's certificate checked against ca-file) and over ssh
// with a key (the server's key checked against known_hosts), as real
// clusters do, and converges on a new commit over each. A wrong token and
// an unknown server key are refused with an error that says so, and the
// node keeps what it runs.
func TestRepoTransports(t *testing.T) {
	const n = "broker2"
	a := cfg.Access()
	orig := on(t, n, "cat", "/etc/mqha/agent.conf")
	put := func(path, content string, mode os.FileMode) {
		t.Helper()
		on(t, n, "sh", "-c", fmt.Sprintf("umask 077; mkdir -p /etc/mqha/git && echo %s | base64 -d > %s && chmod %o %s",
			base64.StdEncoding.EncodeToString([]byte(content)), path, mode, path))
	}
	read := func(p string) string {
		t.Helper()
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	put("/etc/mqha/git/token", read(a.Token), 0o600)
	put("/etc/mqha/git/ca.crt", read(a.CA), 0o644)
	put("/etc/mqha/git/id_ed25519", read(a.SSHKey), 0o600)
	put("/etc/mqha/git/known_hosts", read(a.KnownHosts), 0o644)
	// Everything but the repository's lines stays as the lab wrote it.
	var kept []string
	for _, l := range strings.Split(strings.TrimSpace(orig), "\n") {
		if !strings.HasPrefix(strings.TrimSpace(l), "repo") {
			kept = append(kept, l)
		}
	}
	reconfigure := func(lines ...string) {
		t.Helper()
		put("/etc/mqha/agent.conf", strings.Join(append(kept, lines...), "\n")+"\n", 0o640)
		on(t, n, "systemctl", "restart", "mqha-agent")
	}
	defer func() {
		put("/etc/mqha/agent.conf", orig, 0o640)
		onAny(t, n, "systemctl", "restart", "mqha-agent")
		onAny(t, n, "rm", "-rf", "/etc/mqha/git")
	}()

	for _, tt := range []struct {
		name  string
		conf  []string
		wrong []string // the same with a bad credential
		says  string   // what the refusal says
	}{
		{"https", []string{"repo = " + a.HTTPSURL, "token-file = /etc/mqha/git/token", "ca-file = /etc/mqha/git/ca.crt"},
			[]string{"repo = " + a.HTTPSURL, "token-file = /etc/mqha/git/wrong-token", "ca-file = /etc/mqha/git/ca.crt"}, "authentication required"},
		{"ssh", []string{"repo = " + a.SSHURL, "ssh-key = /etc/mqha/git/id_ed25519", "known-hosts = /etc/mqha/git/known_hosts"},
			[]string{"repo = " + a.SSHURL, "ssh-key = /etc/mqha/git/id_ed25519", "known-hosts = /etc/mqha/git/other_hosts"}, "key mismatch"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			reconfigure(tt.conf...)
			head := commit(t, "e2e: converge over "+tt.name, map[string]string{"NOTES": "pulled over " + tt.name + " at " + time.Now().Format(time.RFC3339Nano) + "\n"})
			d := waitFor(t, 30*time.Second, n+" applies the head over "+tt.name, func() bool {
				s := agentStatus(t, n)
				return s.Applied == head && s.FetchError == ""
			})
			s := agentStatus(t, n)
			if s.Repo != strings.Split(tt.conf[0], " = ")[1] {
				t.Errorf("status repo %q, want the %s URL", s.Repo, tt.name)
			}
			for _, w := range s.Insecure {
				if strings.Contains(w, "does not authenticate the server") {
					t.Errorf("%s is an authenticated transport, status says: %s", tt.name, w)
				}
			}
			report(t, "%s applied %s over %s %s after the push", n, head[:7], tt.name, d.Round(time.Millisecond))

			// The wrong credentials: another token, and a known_hosts line
			// with another key for the server's address (a server in the
			// middle would present that).
			put("/etc/mqha/git/wrong-token", "0123456789abcdef\n", 0o600)
			pub, _, _ := ed25519.GenerateKey(rand.Reader)
			otherKey, err := ssh.NewPublicKey(pub)
			if err != nil {
				t.Fatal(err)
			}
			put("/etc/mqha/git/other_hosts", knownhosts.Line(strings.Fields(read(a.KnownHosts))[:1], otherKey)+"\n", 0o644)
			reconfigure(tt.wrong...)
			next := commit(t, "e2e: not over a wrong "+tt.name+" credential", map[string]string{"NOTES": "refused over " + tt.name + "\n"})
			waitFor(t, 30*time.Second, n+" says why it cannot pull over "+tt.name, func() bool {
				return strings.Contains(agentStatus(t, n).FetchError, tt.says)
			})
			s = agentStatus(t, n)
			if s.Applied == next {
				t.Errorf("%s applied %s with a wrong credential", n, next[:7])
			}
			if strings.Contains(s.FetchError, read(a.Token)[:8]) {
				t.Errorf("the fetch error shows the token: %s", s.FetchError)
			}
			report(t, "wrong %s credential: %q, still on %s", tt.name, s.FetchError, source.Short(s.Applied))
		})
	}
}
