package validate_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/mqha/mqha/internal/cluster"
	"github.com/mqha/mqha/internal/daemon"
	"github.com/mqha/mqha/internal/render"
	"github.com/mqha/mqha/internal/testtools"
	"github.com/mqha/mqha/internal/validate"
	"github.com/mqha/mqha/schema"
)

var layouts = []string{
	"../../cluster-repo-example",
	"../render/testdata/four-brokers",
	"../render/testdata/one-broker",
	"../render/testdata/three-nodes",
	"../render/testdata/standby",
}

// renderForHost renders node with this host's interface and real test
// certificates, so that the daemons' own checks can pass.
func renderForHost(t *testing.T, c *cluster.Cluster, tls map[string]cluster.TLS, node string) []render.File {
	t.Helper()
	cc := *c
	cc.TLS = tls[node]
	cc.Nodes = append([]cluster.Node(nil), c.Nodes...)
	iface := testtools.Interface(t)
	for i := range cc.Nodes {
		if cc.Nodes[i].Has(cluster.LB) {
			cc.Nodes[i].Interface = iface
		}
	}
	out, err := render.Node(&cc, node)
	if err != nil {
		t.Fatal(err)
	}
	return out.Files
}

// check validates the configuration files among files as the agent does.
func check(files []render.File) error {
	var errs []error
	for _, f := range files {
		if f.Kind == render.Config {
			if err := (daemon.Validator{Tools: validate.Tools{}}).Config(context.Background(), f.Path, f.Content); err != nil {
				errs = append(errs, fmt.Errorf("candidate %s rejected: %w", f.Path, err))
			}
		}
	}
	return errors.Join(errs...)
}

// TestRenderedConfigsPassRealTools runs every rendered configuration of every
// layout through nginx -t, keepalived --config-test and a real mosquitto start.
func TestRenderedConfigsPassRealTools(t *testing.T) {
	testtools.RequireRoot(t)
	testtools.Require(t, "nginx", "keepalived", "mosquitto")
	for _, dir := range layouts {
		c, err := schema.LoadDir(dir)
		if err != nil {
			t.Fatal(err)
		}
		tls := testtools.TLS(t, c)
		for _, n := range c.Nodes {
			t.Run(c.Name+"/"+n.Name, func(t *testing.T) {
				if err := check(renderForHost(t, c, tls, n.Name)); err != nil {
					t.Fatal(err)
				}
			})
		}
	}
}

// TestRHELNginxLayoutPassesNginx: the nginx configuration rendered for a
// RHEL-family node (user nginx, modules from /usr/share/nginx/modules, as
// nginx-mod-stream installs them) passes nginx -t. This Debian host is made
// to look like one for the test: a system user nginx and the stream
// module's include where RHEL puts it, both removed after.
func TestRHELNginxLayoutPassesNginx(t *testing.T) {
	testtools.RequireRoot(t)
	testtools.Require(t, "nginx", "useradd", "userdel")
	if exec.Command("id", "nginx").Run() != nil {
		if out, err := exec.Command("useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", "nginx").CombinedOutput(); err != nil {
			t.Fatalf("useradd nginx: %v %s", err, out)
		}
		t.Cleanup(func() { exec.Command("userdel", "nginx").Run() })
	}
	mods := "/usr/share/nginx/modules"
	mod, err := filepath.Glob("/usr/lib/nginx/modules/ngx_stream_module.so")
	if err != nil || len(mod) == 0 {
		t.Fatal("no ngx_stream_module.so on this host (libnginx-mod-stream)")
	}
	if _, err := os.Stat(mods); os.IsNotExist(err) {
		os.MkdirAll(mods, 0o755)
		t.Cleanup(func() { os.RemoveAll(mods) })
	}
	conf := filepath.Join(mods, "mod-stream.conf")
	if _, err := os.Stat(conf); os.IsNotExist(err) {
		os.WriteFile(conf, []byte("load_module \""+mod[0]+"\";\n"), 0o644)
		t.Cleanup(func() { os.Remove(conf) })
	}
	c, err := schema.LoadDir("../../cluster-repo-example")
	if err != nil {
		t.Fatal(err)
	}
	tls := testtools.TLS(t, c)
	cc := *c
	cc.TLS = tls["lb1"]
	out, err := render.NodeOn(&cc, "lb1", render.RHELNginx)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range out.Files {
		if f.Path != daemon.Nginx.Conf {
			continue
		}
		if !strings.Contains(string(f.Content), "user nginx;") || !strings.Contains(string(f.Content), "include /usr/share/nginx/modules/*.conf;") {
			t.Fatalf("not the RHEL layout:\n%s", f.Content)
		}
		if err := (daemon.Validator{Tools: validate.Tools{}}).Config(context.Background(), f.Path, f.Content); err != nil {
			t.Fatalf("nginx -t refuses the RHEL layout: %v", err)
		}
		return
	}
	t.Fatal("no nginx.conf rendered for lb1")
}

func TestBrokenCandidatesAreRejected(t *testing.T) {
	testtools.RequireRoot(t)
	testtools.Require(t, "nginx", "keepalived", "mosquitto")
	c, err := schema.LoadDir("../../cluster-repo-example")
	if err != nil {
		t.Fatal(err)
	}
	tls := testtools.TLS(t, c)
	unreadable := tls["broker1"].Key + ".private"
	orig, _ := os.ReadFile(tls["broker1"].Key)
	if err := os.WriteFile(unreadable, orig, 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, node, path, old, new, want string
	}{
		{"nginx typo", "lb1", daemon.Nginx.Conf, "proxy_timeout", "proxy_timeot", "unknown directive"},
		{"nginx upstream without servers", "lb1", daemon.Nginx.Conf, "server 10.20.0.2", "#", "no servers"},
		{"keepalived bad keyword", "lb1", daemon.Keepalived.Conf, "advert_int", "advert_intx", "Unknown keyword"},
		{"keepalived priority out of range", "lb1", daemon.Keepalived.Conf, "priority 150", "priority 300", "outside range"},
		{"mosquitto missing certificate", "broker1", daemon.Mosquitto.Conf, "certfile " + tls["broker1"].Cert, "certfile /nonexistent/x.crt", "Unable to load server certificate"},
		{"mosquitto key unreadable by its user", "broker1", daemon.Mosquitto.Conf, "keyfile " + tls["broker1"].Key, "keyfile " + unreadable, "Unable to load server key"},
		{"mosquitto unknown option", "bridge", daemon.Mosquitto.Conf, "try_private true", "try_privat true", "try_privat"},
		{"mosquitto ACL with a bad access type", "broker1", daemon.ACLFile, "pattern read $SYS/broker/+", "pattern reed $SYS/broker/+", "reed"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var f render.File
			for _, x := range renderForHost(t, c, tls, tt.node) {
				if x.Path == tt.path {
					f = x
				}
			}
			if !bytes.Contains(f.Content, []byte(tt.old)) {
				t.Fatalf("%s of %s has no %q", tt.path, tt.node, tt.old)
			}
			f.Content = bytes.ReplaceAll(f.Content, []byte(tt.old), []byte(tt.new))
			err := check([]render.File{f})
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("want an error mentioning %q, got %v", tt.want, err)
			}
			if testing.Verbose() {
				t.Log(err)
			}
		})
	}
}
