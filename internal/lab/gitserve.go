package lab

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/subtle"
	"crypto/tls"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/cgi"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"

	"github.com/mqha/mqha/internal/pki"
)

// The lab serves its cluster repository the ways real clusters reach theirs:
// git:// (git daemon), https with a token, and ssh with a key checked
// against known_hosts. GitAccess names what a node needs for the last two.
type GitAccess struct {
	HTTPSURL   string // https://HOST:8443/cluster.git
	SSHURL     string // ssh://git@HOST:2222/cluster.git
	Token      string // file: the token https wants (basic auth password)
	CA         string // file: the CA that signed the https server's certificate
	SSHKey     string // file: the private key the ssh server accepts
	KnownHosts string // file: the ssh server's host key
}

const (
	gitHTTPSPort = "8443"
	gitSSHPort   = "2222"
)

// Access says where the lab's https and ssh git access lives.
func (c Config) Access() GitAccess {
	d := c.accessDir()
	return GitAccess{
		HTTPSURL:   "https://" + net.JoinHostPort(c.HostAddr(), gitHTTPSPort) + "/cluster.git",
		SSHURL:     "ssh://git@" + net.JoinHostPort(c.HostAddr(), gitSSHPort) + "/cluster.git",
		Token:      filepath.Join(d, "token"),
		CA:         filepath.Join(d, "ca.crt"),
		SSHKey:     filepath.Join(d, "id_ed25519"),
		KnownHosts: filepath.Join(d, "known_hosts"),
	}
}

func (c Config) accessDir() string { return filepath.Join(c.Dir, "git-access") }

// makeGitAccess writes the credentials of both transports: a token, a CA and
// the https server's certificate, the ssh host key, a client key and the
// known_hosts line a node checks the server against.
func (c Config) makeGitAccess() error {
	d, a := c.accessDir(), c.Access()
	if err := os.MkdirAll(d, 0o700); err != nil {
		return err
	}
	tok := make([]byte, 20)
	rand.Read(tok)
	ca, err := pki.NewCA("lab git server", time.Now())
	if err != nil {
		return err
	}
	crt, key, err := ca.Issue(pki.Leaf{Name: "lab git server", IPs: []net.IP{net.ParseIP(c.HostAddr())}, Server: true}, time.Now())
	if err != nil {
		return err
	}
	hostPub, hostKey, _ := ed25519.GenerateKey(rand.Reader)
	_, clientKey, _ := ed25519.GenerateKey(rand.Reader)
	hostPEM, err := ssh.MarshalPrivateKey(hostKey, "lab git server")
	if err != nil {
		return err
	}
	clientPEM, err := ssh.MarshalPrivateKey(clientKey, "mqha lab node")
	if err != nil {
		return err
	}
	sshHostPub, err := ssh.NewPublicKey(hostPub)
	if err != nil {
		return err
	}
	files := map[string][]byte{
		a.Token:                          []byte(hex.EncodeToString(tok) + "\n"),
		a.CA:                             ca.CertPEM(),
		filepath.Join(d, "server.crt"):   crt,
		filepath.Join(d, "server.key"):   key,
		filepath.Join(d, "ssh_host_key"): pem.EncodeToMemory(hostPEM),
		a.SSHKey:                         pem.EncodeToMemory(clientPEM),
		a.KnownHosts:                     []byte(knownhosts.Line([]string{knownhosts.Normalize(net.JoinHostPort(c.HostAddr(), gitSSHPort))}, sshHostPub) + "\n"),
	}
	for p, b := range files {
		if err := os.WriteFile(p, b, 0o600); err != nil {
			return err
		}
	}
	return nil
}

// startGitServe runs `mqha-lab git-serve DIR` in the background (its own
// session, like git daemon) and waits until both ports answer.
func (c Config) startGitServe(ctx context.Context, s *State) error {
	self := s.Lab
	if self == "" {
		return errors.New("the lab state names no mqha-lab binary to serve git with: bring the lab up again (make lab)")
	}
	log, _ := os.Create(filepath.Join(c.Dir, "git-serve.log"))
	cmd := exec.Command(self, "git-serve", c.Dir)
	cmd.Env = append(os.Environ(), "MQHA_LAB_DIR="+c.Dir, "MQHA_LAB_SUBNET="+c.Subnet.String())
	cmd.Stdout, cmd.Stderr = log, log
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start the lab's https/ssh git server: %w", err)
	}
	go cmd.Wait()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		if answers(net.JoinHostPort(c.HostAddr(), gitHTTPSPort)) && answers(net.JoinHostPort(c.HostAddr(), gitSSHPort)) {
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("the lab's git server does not answer on %s:%s and :%s; see %s/git-serve.log", c.HostAddr(), gitHTTPSPort, gitSSHPort, c.Dir)
}

func answers(addr string) bool {
	conn, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
	if err == nil {
		conn.Close()
	}
	return err == nil
}

// ServeGit serves Dir/git/cluster.git read-only over https (the token as
// basic auth password, git http-backend behind it) and ssh (the lab's node
// key only, git upload-pack), on the lab bridge's host address, until ctx
// ends or a SIGTERM.
func (c Config) ServeGit(ctx context.Context, log *slog.Logger) error {
	ctx, stop := signal.NotifyContext(ctx, syscall.SIGTERM, os.Interrupt)
	defer stop()
	d, a := c.accessDir(), c.Access()
	tok, err := os.ReadFile(a.Token)
	if err != nil {
		return fmt.Errorf("%w (lab-up writes it)", err)
	}
	cert, err := tls.LoadX509KeyPair(filepath.Join(d, "server.crt"), filepath.Join(d, "server.key"))
	if err != nil {
		return err
	}
	hostKey, err := readSigner(filepath.Join(d, "ssh_host_key"))
	if err != nil {
		return err
	}
	nodeKey, err := readSigner(a.SSHKey)
	if err != nil {
		return err
	}
	execPath, err := exec.Command("git", "--exec-path").Output()
	if err != nil {
		return fmt.Errorf("git --exec-path: %w", err)
	}
	root := filepath.Join(c.Dir, "git")
	backend := &cgi.Handler{
		Path: filepath.Join(strings.TrimSpace(string(execPath)), "git-http-backend"),
		Env:  []string{"GIT_PROJECT_ROOT=" + root, "GIT_HTTP_EXPORT_ALL=1"},
	}
	srv := &http.Server{
		Addr:              net.JoinHostPort(c.HostAddr(), gitHTTPSPort),
		Handler:           httpsGit(strings.TrimSpace(string(tok)), backend, log),
		TLSConfig:         &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12},
		ReadHeaderTimeout: 5 * time.Second,
		IdleTimeout:       30 * time.Second,
	}
	hl, err := net.Listen("tcp", srv.Addr)
	if err != nil {
		return err
	}
	sl, err := net.Listen("tcp", net.JoinHostPort(c.HostAddr(), gitSSHPort))
	if err != nil {
		hl.Close()
		return err
	}
	sshConf := &ssh.ServerConfig{
		PublicKeyCallback: func(m ssh.ConnMetadata, k ssh.PublicKey) (*ssh.Permissions, error) {
			if subtle.ConstantTimeCompare(k.Marshal(), nodeKey.PublicKey().Marshal()) == 1 {
				return nil, nil
			}
			log.Info("ssh key refused", "from", m.RemoteAddr())
			return nil, errors.New("key not authorized")
		},
	}
	sshConf.AddHostKey(hostKey)
	go func() {
		<-ctx.Done()
		srv.Close()
		sl.Close()
	}()
	go serveSSH(sl, sshConf, root, log)
	log.Info("serving the cluster repository", "https", a.HTTPSURL, "ssh", a.SSHURL)
	if err := srv.ServeTLS(hl, "", ""); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

func readSigner(path string) (ssh.Signer, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return ssh.ParsePrivateKey(b)
}

// httpsGit lets a fetch with the token through to git http-backend; pushes
// are refused (the lab's clone pushes to the bare repository directly).
func httpsGit(token string, backend http.Handler, log *slog.Logger) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, pw, ok := r.BasicAuth()
		if !ok || subtle.ConstantTimeCompare([]byte(pw), []byte(token)) != 1 {
			log.Info("https: no or a wrong token", "from", r.RemoteAddr, "path", r.URL.Path)
			w.Header().Set("WWW-Authenticate", `Basic realm="mqha lab"`)
			http.Error(w, "a token is required", http.StatusUnauthorized)
			return
		}
		if strings.HasSuffix(r.URL.Path, "/git-receive-pack") || r.URL.Query().Get("service") == "git-receive-pack" {
			http.Error(w, "read-only", http.StatusForbidden)
			return
		}
		backend.ServeHTTP(w, r)
	})
}

func serveSSH(l net.Listener, conf *ssh.ServerConfig, root string, log *slog.Logger) {
	for {
		nc, err := l.Accept()
		if err != nil {
			return
		}
		go func() {
			nc.SetDeadline(time.Now().Add(10 * time.Second)) // the handshake
			sc, chans, reqs, err := ssh.NewServerConn(nc, conf)
			if err != nil {
				log.Info("ssh handshake failed", "from", nc.RemoteAddr(), "err", err)
				nc.Close()
				return
			}
			nc.SetDeadline(time.Now().Add(2 * time.Minute)) // bounded sessions
			defer sc.Close()
			go ssh.DiscardRequests(reqs)
			for nch := range chans {
				if nch.ChannelType() != "session" {
					nch.Reject(ssh.UnknownChannelType, "sessions only")
					continue
				}
				ch, creqs, err := nch.Accept()
				if err != nil {
					continue
				}
				go sshSession(ch, creqs, root, log)
			}
		}()
	}
}

// sshSession runs the one command a fetch asks for, git-upload-pack of a
// repository under root; anything else is refused.
func sshSession(ch ssh.Channel, reqs <-chan *ssh.Request, root string, log *slog.Logger) {
	defer ch.Close()
	for req := range reqs {
		if req.Type != "exec" {
			req.Reply(req.Type == "env", nil) // git sends GIT_PROTOCOL; harmless
			continue
		}
		var p struct{ Command string }
		if ssh.Unmarshal(req.Payload, &p) != nil {
			req.Reply(false, nil)
			return
		}
		repo, err := uploadPackRepo(p.Command, root)
		if err != nil {
			log.Info("ssh command refused", "command", p.Command, "err", err)
			req.Reply(false, nil)
			return
		}
		req.Reply(true, nil)
		cmd := exec.Command("git", "upload-pack", repo)
		cmd.Stdin, cmd.Stdout, cmd.Stderr = ch, ch, ch.Stderr()
		status := uint32(0)
		if err := cmd.Run(); err != nil {
			status = 1
			var ee *exec.ExitError
			if errors.As(err, &ee) {
				status = uint32(ee.ExitCode())
			}
		}
		ch.CloseWrite()
		ch.SendRequest("exit-status", false, ssh.Marshal(struct{ Status uint32 }{status}))
		return
	}
}

// uploadPackRepo parses `git-upload-pack '/cluster.git'` into the
// repository's path under root.
func uploadPackRepo(command, root string) (string, error) {
	name, arg, ok := strings.Cut(command, " ")
	if !ok || name != "git-upload-pack" {
		return "", errors.New("only git-upload-pack is served")
	}
	rel := strings.TrimPrefix(strings.Trim(arg, "'\""), "/")
	p := filepath.Join(root, rel)
	if rel == "" || strings.Contains(rel, "..") || !strings.HasPrefix(p, root+string(filepath.Separator)) {
		return "", fmt.Errorf("%q is not a repository here", arg)
	}
	if _, err := os.Stat(filepath.Join(p, "HEAD")); err != nil {
		return "", fmt.Errorf("%q is not a repository here", arg)
	}
	return p, nil
}
