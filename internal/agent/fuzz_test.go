package agent

import (
	"net/url"
	"strings"
	"testing"
)

// FuzzParseConfig: agent.conf never panics the parser, and what it accepts
// holds together (a repo URL of a known scheme and no credentials in it).
func FuzzParseConfig(f *testing.F) {
	for _, seed := range []string{
		"repo = git://h/c\n",
		"repo = https://h/c\ntoken-file = /t\nmax-definition-size = 8M\n",
		"repo = ssh://git@h/c\nssh-key = /k\nknown-hosts = /kh\n",
		"poll = 5s\nfetch-timeout = 1s\n",
		"repo = https://u:p@h/c\n",
		"= =\n",
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, in string) {
		c, err := ParseConfig("agent.conf", []byte(in))
		if err != nil {
			if err.Error() == "" {
				t.Fatalf("an empty error for %q", in)
			}
			return
		}
		if c.Repo != "" && !strings.Contains(c.Repo, "://") {
			t.Fatalf("accepted repo %q", c.Repo)
		}
		// Credentials are the URL's user part ("@" in a path or a fragment
		// is none: the fuzzer found "http://0#@").
		if u, err := url.Parse(c.Repo); c.Repo != "" && (err != nil || u.User != nil && u.Scheme != "ssh") {
			t.Fatalf("accepted credentials in %q", c.Repo)
		}
	})
}
