package source

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/go-git/go-git/v5/plumbing"
	"github.com/go-git/go-git/v5/plumbing/object"
	"github.com/hiddeco/sshsig"
	"golang.org/x/crypto/ssh"
)

// Trust is the set of keys whose commit signatures the agent accepts: PGP
// public keys (armored blocks) and SSH public keys (authorized_keys lines).
type Trust struct {
	pgp []string // one armored key ring per block
	ssh []ssh.PublicKey
}

const pgpBegin, pgpEnd = "-----BEGIN PGP PUBLIC KEY BLOCK-----", "-----END PGP PUBLIC KEY BLOCK-----"

// LoadTrust reads a trusted-keys file. Unparsable content is an error, not
// skipped: a key that silently fails to load would refuse every commit.
func LoadTrust(path string) (*Trust, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("trusted keys: %w", err)
	}
	t := &Trust{}
	rest := string(b)
	for {
		i := strings.Index(rest, pgpBegin)
		if i < 0 {
			break
		}
		j := strings.Index(rest[i:], pgpEnd)
		if j < 0 {
			return nil, fmt.Errorf("%s: unterminated PGP key block", path)
		}
		t.pgp = append(t.pgp, rest[i:i+j+len(pgpEnd)]+"\n")
		rest = rest[:i] + rest[i+j+len(pgpEnd):]
	}
	for n, line := range strings.Split(rest, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, _, _, _, err := ssh.ParseAuthorizedKey([]byte(line))
		if err != nil {
			return nil, fmt.Errorf("%s:%d: not an SSH public key or PGP block: %w", path, n+1, err)
		}
		t.ssh = append(t.ssh, k)
	}
	if len(t.pgp)+len(t.ssh) == 0 {
		return nil, fmt.Errorf("%s holds no keys", path)
	}
	return t, nil
}

// ErrUnsigned is returned for a commit that carries no signature.
var ErrUnsigned = errors.New("commit is not signed")

// Verify checks that commit hash is signed by a trusted key and says by whom.
func (r *Repo) Verify(hash string, t *Trust) (string, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	c, err := r.repo.CommitObject(plumbing.NewHash(hash))
	if err != nil {
		return "", err
	}
	return t.verify(c)
}

func (t *Trust) verify(c *object.Commit) (string, error) {
	sig := strings.TrimSpace(c.PGPSignature) // go-git keeps SSH signatures here too
	switch {
	case sig == "":
		return "", ErrUnsigned
	case strings.HasPrefix(sig, "-----BEGIN SSH SIGNATURE-----"):
		s, err := sshsig.Unarmor([]byte(sig))
		if err != nil {
			return "", fmt.Errorf("bad SSH signature: %w", err)
		}
		msg, err := payload(c)
		if err != nil {
			return "", err
		}
		for _, k := range t.ssh {
			if sshsig.Verify(bytes.NewReader(msg), s, k, s.HashAlgorithm, "git") == nil {
				return "ssh " + ssh.FingerprintSHA256(k), nil
			}
		}
		return "", fmt.Errorf("SSH signature by %s, which is not a trusted key", ssh.FingerprintSHA256(s.PublicKey))
	case strings.HasPrefix(sig, "-----BEGIN PGP SIGNATURE-----"):
		for _, ring := range t.pgp {
			if e, err := c.Verify(ring); err == nil {
				return fmt.Sprintf("pgp %X", e.PrimaryKey.Fingerprint), nil
			}
		}
		return "", errors.New("PGP signature by a key that is not trusted")
	}
	return "", errors.New("unknown signature format")
}

// payload is what a commit's signature covers: the commit without it.
func payload(c *object.Commit) ([]byte, error) {
	enc := &plumbing.MemoryObject{}
	if err := c.EncodeWithoutSignature(enc); err != nil {
		return nil, err
	}
	rd, err := enc.Reader()
	if err != nil {
		return nil, err
	}
	defer rd.Close()
	var buf bytes.Buffer
	_, err = buf.ReadFrom(rd)
	return buf.Bytes(), err
}

// Descends reports whether commit hash has ancestor among its ancestors (or
// is it). The mirror is shallow; it is deepened only as far as needed.
func (r *Repo) Descends(ctx context.Context, hash, ancestor string) (bool, error) {
	for _, depth := range []int{0, 20, 200, 2000, -1} {
		if depth != 0 {
			r.mu.Lock()
			err := r.fetch(ctx, max(depth, 0)) // -1: the whole history
			r.mu.Unlock()
			if err != nil {
				return false, err
			}
		}
		found, complete, err := r.reaches(hash, ancestor)
		if err != nil || found || complete {
			return found, err
		}
	}
	// The whole history fetched and the walk still breaks off: unknown is
	// an error (retried), never a "no" (that refuses the commit).
	return false, fmt.Errorf("cannot tell whether %s descends from %s: their history is incomplete even after fetching all of %s", Short(hash), Short(ancestor), r.Branch)
}

// reaches walks the parents of hash looking for ancestor; complete is false
// when the walk hit the shallow boundary.
func (r *Repo) reaches(hash, ancestor string) (found, complete bool, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	want := plumbing.NewHash(ancestor)
	seen := map[plumbing.Hash]bool{}
	queue := []plumbing.Hash{plumbing.NewHash(hash)}
	complete = true
	for len(queue) > 0 {
		h := queue[0]
		queue = queue[1:]
		if h == want {
			return true, true, nil
		}
		if seen[h] {
			continue
		}
		seen[h] = true
		c, err := r.repo.CommitObject(h)
		if err != nil {
			complete = false // beyond what the shallow mirror holds
			continue
		}
		queue = append(queue, c.ParentHashes...)
	}
	return false, complete, nil
}
