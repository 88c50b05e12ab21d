package agent

import (
	"crypto/x509"
	"fmt"
	"net/url"
	"os"
	"strings"

	"github.com/go-git/go-git/v5/plumbing/transport"
	githttp "github.com/go-git/go-git/v5/plumbing/transport/http"
	gitssh "github.com/go-git/go-git/v5/plumbing/transport/ssh"
)

// How agent.conf reaches the repository: credentials and trusted CAs.

// Auth builds the transport credentials the configuration names.
func (c Config) Auth() (transport.AuthMethod, error) {
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

// CABundle reads ca-file: the certificates that may sign the git server's
// (an internal CA), trusted besides the system's. nil when none is set.
func (c Config) CABundle() ([]byte, error) {
	if c.CAFile == "" {
		return nil, nil
	}
	b, err := os.ReadFile(c.CAFile)
	if err != nil {
		return nil, fmt.Errorf("ca-file: %w", err)
	}
	if !x509.NewCertPool().AppendCertsFromPEM(b) {
		return nil, fmt.Errorf("ca-file %s holds no PEM certificate", c.CAFile)
	}
	return b, nil
}
