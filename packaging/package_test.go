// Package packaging holds the unit, configuration and maintainer scripts of
// the .deb and .rpm; its test builds both and checks what they contain.
package packaging

import (
	"crypto/sha256"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/mqha/mqha/internal/testtools"
)

func sh(t *testing.T, name string, args ...string) string {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Dir = ".."
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %v: %v\n%s", name, args, err, out)
	}
	return string(out)
}

func sum(t *testing.T, path string) string {
	b, err := os.ReadFile(filepath.Join("..", path))
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("%x", sha256.Sum256(b))
}

func TestPackages(t *testing.T) {
	testtools.Require(t, "make", "dpkg-deb", "rpm", "lintian")
	sh(t, "make", "packages")
	deb, rpm := "dist/mqha-agent_amd64.deb", "dist/mqha-agent.x86_64.rpm"
	debSum, rpmSum := sum(t, deb), sum(t, rpm)

	t.Run("deb contents", func(t *testing.T) {
		list := sh(t, "dpkg-deb", "-c", deb)
		for _, want := range []string{
			"-rwxr-xr-x root/root .* ./usr/bin/mqha-agent",
			"-rw-r--r-- root/root .* ./lib/systemd/system/mqha-agent.service",
			"-rw-r----- root/root .* ./etc/mqha/agent.conf",
			"./usr/share/man/man8/mqha-agent.8.gz",
			"./usr/share/doc/mqha-agent/copyright",
			"./usr/share/doc/mqha-agent/operations.md",
			"./usr/share/doc/mqha-agent/bridge.md",
			"./usr/share/doc/mqha-agent/clients.md",
			"./usr/share/bash-completion/completions/mqha-agent",
			"./usr/share/zsh/vendor-completions/_mqha-agent",
			"./usr/share/doc/mqha-agent/changelog.Debian.gz",
			"./usr/share/mqha/prometheus/mqha.rules.yml",
			"./usr/share/mqha/grafana/mqha.json",
		} {
			if !matchLine(list, want) {
				t.Errorf("deb lacks %s:\n%s", want, list)
			}
		}
		info := sh(t, "dpkg-deb", "-I", deb)
		for _, want := range []string{"Depends: systemd, dbus", "Suggests: mosquitto, nginx, libnginx-mod-stream, keepalived", "Section: net"} {
			if !strings.Contains(info, want) {
				t.Errorf("control lacks %q:\n%s", want, info)
			}
		}
		if strings.Contains(info, "Recommends:") {
			t.Errorf("the package recommends daemons a node of some role does not need:\n%s", info)
		}
		if conf := sh(t, "dpkg-deb", "-f", deb, "Package"); strings.TrimSpace(conf) != "mqha-agent" {
			t.Errorf("package name %q", conf)
		}
		dir := t.TempDir()
		sh(t, "dpkg-deb", "-e", deb, dir)
		conffiles, _ := os.ReadFile(filepath.Join(dir, "conffiles"))
		if strings.TrimSpace(string(conffiles)) != "/etc/mqha/agent.conf" {
			t.Errorf("conffiles: %q", conffiles)
		}
		for _, s := range []string{"postinst", "prerm", "postrm"} {
			if _, err := os.Stat(filepath.Join(dir, s)); err != nil {
				t.Errorf("no %s script", s)
			}
		}
	})
	t.Run("lintian has no errors", func(t *testing.T) {
		cmd := exec.Command("lintian", "--allow-root", deb)
		cmd.Dir = ".."
		out, _ := cmd.CombinedOutput()
		for _, l := range strings.Split(string(out), "\n") {
			if strings.HasPrefix(l, "E:") {
				t.Errorf("lintian: %s", l)
			}
		}
	})
	t.Run("rpm contents", func(t *testing.T) {
		list := sh(t, "rpm", "-qpl", rpm)
		for _, want := range []string{"/usr/bin/mqha-agent", "/usr/lib/systemd/system/mqha-agent.service", "/etc/mqha/agent.conf",
			"/usr/share/bash-completion/completions/mqha-agent", "/usr/share/zsh/site-functions/_mqha-agent"} {
			if !strings.Contains(list, want+"\n") {
				t.Errorf("rpm lacks %s:\n%s", want, list)
			}
		}
		if conf := sh(t, "rpm", "-qpc", rpm); strings.TrimSpace(conf) != "/etc/mqha/agent.conf" {
			t.Errorf("rpm config files: %q", conf)
		}
		req := sh(t, "rpm", "-qp", "--requires", rpm)
		for _, want := range []string{"systemd", "dbus"} {
			if !strings.Contains(req, want) {
				t.Errorf("rpm requires lack %s:\n%s", want, req)
			}
		}
		scripts := sh(t, "rpm", "-qp", "--scripts", rpm)
		for _, want := range []string{"postinstall scriptlet", "preuninstall scriptlet", "postuninstall scriptlet"} {
			if !strings.Contains(scripts, want) {
				t.Errorf("rpm lacks %s", want)
			}
		}
	})
	t.Run("rpmlint", func(t *testing.T) {
		testtools.Require(t, "rpmlint")
		real, err := filepath.EvalSymlinks(filepath.Join("..", rpm)) // rpmlint checks the file name against the package
		if err != nil {
			t.Fatal(err)
		}
		out, err := exec.Command("rpmlint", "-r", "rpmlintrc", real).CombinedOutput()
		if err != nil || !strings.Contains(string(out), "0 errors, 0 warnings") {
			t.Errorf("rpmlint (packaging/rpmlintrc filters what is justified): %v\n%s", err, out)
		}
		docs := sh(t, "rpm", "-qp", "--docfiles", rpm)
		for _, want := range []string{"/usr/share/doc/mqha-agent/README.md", "/usr/share/man/man8/mqha-agent.8.gz"} {
			if !strings.Contains(docs, want) {
				t.Errorf("rpm does not list %s as documentation:\n%s", want, docs)
			}
		}
	})
	t.Run("rpm scratch install runs its scriptlets", func(t *testing.T) {
		testtools.RequireRoot(t) // rpm chroots into --root to run scriptlets
		root := t.TempDir()
		// A root with a shell (the host's, with its libraries) and nothing
		// else: the scriptlets run, systemd is absent, as in an image build.
		shell, err := filepath.EvalSymlinks("/bin/sh")
		if err != nil {
			t.Fatal(err)
		}
		libs := sh(t, "ldd", shell)
		files := []string{shell}
		for _, f := range strings.Fields(libs) {
			if strings.HasPrefix(f, "/") {
				files = append(files, f)
			}
		}
		for _, f := range files {
			b, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			os.MkdirAll(filepath.Join(root, filepath.Dir(f)), 0o755)
			if err := os.WriteFile(filepath.Join(root, f), b, 0o755); err != nil {
				t.Fatal(err)
			}
		}
		os.MkdirAll(filepath.Join(root, "bin"), 0o755)
		if shell != "/bin/sh" {
			os.Symlink(shell, filepath.Join(root, "bin", "sh"))
		}
		out := sh(t, "rpm", "-i", "--root", root, "--nodeps", "-vv", rpm)
		for _, want := range []string{"%post(", "scriptlet start"} {
			if !strings.Contains(out, want) {
				t.Errorf("rpm -i ran no %s scriptlet:\n%s", want, out)
			}
		}
		if strings.Contains(out, "scriptlet failed") {
			t.Errorf("a scriptlet failed:\n%s", out)
		}
		for _, f := range []string{"usr/bin/mqha-agent", "usr/lib/systemd/system/mqha-agent.service", "etc/mqha/agent.conf"} {
			if _, err := os.Stat(filepath.Join(root, f)); err != nil {
				t.Errorf("not installed: %s", f)
			}
		}
		erase := sh(t, "rpm", "-e", "--root", root, "--nodeps", "-vv", "mqha-agent")
		if strings.Contains(erase, "scriptlet failed") {
			t.Errorf("an erase scriptlet failed:\n%s", erase)
		}
	})
	t.Run("reproducible", func(t *testing.T) {
		sh(t, "make", "packages")
		if sum(t, deb) != debSum || sum(t, rpm) != rpmSum {
			t.Error("a second build of the same commit differs")
		}
	})
}

// matchLine reports whether a line of out contains every space-separated
// field of pattern in order (".*" skips anything).
func matchLine(out, pattern string) bool {
	for _, l := range strings.Split(out, "\n") {
		rest, ok := l, true
		for _, f := range strings.Fields(pattern) {
			if f == ".*" {
				continue
			}
			i := strings.Index(rest, f)
			if i < 0 {
				ok = false
				break
			}
			rest = rest[i+len(f):]
		}
		if ok {
			return true
		}
	}
	return false
}
