package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mqha/mqha/schema"

	"github.com/mqha/mqha/internal/agent"
	"github.com/mqha/mqha/internal/control"
	"github.com/mqha/mqha/internal/evaluate"
)

// TestMain: this test binary is also mqha-agent, as the CLI's child
// evaluations run it (os.Executable) with the hidden evaluate command, and
// as the signal test runs it with MQHA_TEST_CLI set.
func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == evaluate.Command {
		os.Exit(evaluate.Serve(os.Stdin, os.Stdout))
	}
	if os.Getenv("MQHA_TEST_CLI") != "" {
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
		stop()
		os.Exit(code)
	}
	os.Exit(m.Run())
}

func mqha(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := run(context.Background(), args, &out, &errb)
	return code, out.String(), errb.String()
}

// copyExample copies the example cluster repository to a temporary directory.
func copyExample(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	if out, err := exec.Command("cp", "-r", "../cluster-repo-example/.", dir).CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	return dir
}

func TestCommands(t *testing.T) {
	bad := t.TempDir()
	os.WriteFile(filepath.Join(bad, "c.cue"), []byte("package cluster\nname: \"x\"\nnodes: a: {address: \"10.0.0.1\", roles: [\"brokr\"]}\n"), 0o644)
	tests := []struct {
		name string
		args []string
		code int
		out  string // regexp the output (stdout+stderr) must match
	}{
		{"vet ok", []string{"vet", "--repo", "../cluster-repo-example"}, 0, `cluster mqtt is valid: 5 nodes \(2 lb, 2 broker, 1 bridge\)`},
		{"vet error with position", []string{"vet", "--repo", bad}, 2, `c\.cue:3:41: nodes\.a\.roles\.0: "brokr" is not allowed here`},
		{"vet missing repo", []string{"vet", "--repo", "/nonexistent"}, 2, `cluster repository /nonexistent`},
		{"nodes", []string{"nodes", "--repo", "../cluster-repo-example"}, 0, `(?m)^lb1 10\.20\.0\.11 lb$`},
		{"render needs a target", []string{"render", "--repo", "../cluster-repo-example", "--out", t.TempDir()}, 2, `exactly one of --node NAME or --all`},
		{"diff unknown node", []string{"diff", "--repo", "../cluster-repo-example", "--node", "nope", "--root", t.TempDir()}, 2, `node "nope" is not in cluster "mqtt"`},
		{"diff bad root", []string{"diff", "--repo", "../cluster-repo-example", "--node", "lb1", "--root", "/nonexistent"}, 2, `--root /nonexistent is not a directory`},
		{"diff fresh node", []string{"diff", "--repo", "../cluster-repo-example", "--node", "broker1", "--root", t.TempDir()}, 1, `mosquitto: start, configuration is new`},
		{"unknown command", []string{"frobnicate"}, 2, `unknown command "frobnicate"`},
		{"stray argument", []string{"vet", "extra"}, 2, `unexpected argument "extra"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, out, errs := mqha(t, tt.args...)
			if code != tt.code || !regexp.MustCompile(tt.out).MatchString(out+errs) {
				t.Errorf("exit %d (want %d)\nstdout:\n%s\nstderr:\n%s\nwant match: %s", code, tt.code, out, errs, tt.out)
			}
		})
	}
}

// TestAddBrokerChangesOnlyBridgeAndUpstream is the promise of cluster as
// data: adding one broker entry changes the bridge master's configuration
// (one more connection) and each load balancer's upstream (one more server),
// and nothing else on any existing node.
func TestAddBrokerChangesOnlyBridgeAndUpstream(t *testing.T) {
	repo := copyExample(t)
	live := t.TempDir()
	if code, _, errs := mqha(t, "render", "--repo", repo, "--all", "--out", live); code != 0 {
		t.Fatal(errs)
	}
	// Every node is in sync before the change.
	for _, n := range []string{"lb1", "lb2", "bridge", "broker1", "broker2"} {
		if code, out, errs := mqha(t, "diff", "--repo", repo, "--node", n, "--root", filepath.Join(live, n)); code != 0 {
			t.Fatalf("%s not in sync before the change: %s%s", n, out, errs)
		}
	}
	entry := "package cluster\n\nnodes: broker3: {address: \"10.20.0.23\", roles: [\"broker\"]}\n"
	if err := os.WriteFile(filepath.Join(repo, "broker3.cue"), []byte(entry), 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		node   string
		code   int
		files  []string // changed files
		added  []string // lines the diff adds (all of them)
		action string
	}{
		{"bridge", 1, []string{"/etc/mosquitto/mosquitto.conf"}, []string{
			"# To broker broker3.", "connection mqha-broker3", "address 10.20.0.23:8884",
			"remote_clientid mqtt-bridge-to-broker3", "bridge_protocol_version mqttv311", "try_private true",
			"cleansession false", "notifications true", "keepalive_interval 15", "restart_timeout 1 5",
			"start_type automatic", "bridge_cafile /etc/mqha/tls/ca.crt", "bridge_certfile /etc/mqha/tls/node.crt",
			"bridge_keyfile /etc/mqha/tls/node.key", "bridge_insecure false", "topic # both 2",
			"# Out only, retained: the mark that this node bridges, which another bridge",
			"# master (the bridge nodes cut off from each other, or one that runs an",
			"# older commit) finds on the brokers.", "topic $mqha/bridge/mqtt/# out 0",
			"# Both ways, retained: each broker's agent lists its persistent clients for",
			"# the other brokers' agents (one session per client id in the cluster).", "topic $mqha/sessions/mqtt/# both 1", ""},
			"mosquitto: restart, bridges changed and mosquitto cannot reload bridges"},
		{"lb1", 1, []string{"/etc/nginx/nginx.conf"}, []string{
			"        server 10.20.0.23:8883 max_fails=0; # broker3"},
			"nginx: reload, configuration changed"},
		{"lb2", 1, []string{"/etc/nginx/nginx.conf"}, []string{
			"        server 10.20.0.23:8883 max_fails=0; # broker3"},
			"nginx: reload, configuration changed"},
		// The other brokers only learn of it for their next start.
		{"broker1", 1, []string{"/etc/mosquitto/mqha-start.conf"}, []string{"peer broker3 10.20.0.23:8883"}, "mosquitto: none, up to date"},
		{"broker2", 1, []string{"/etc/mosquitto/mqha-start.conf"}, []string{"peer broker3 10.20.0.23:8883"}, "mosquitto: none, up to date"},
	}
	for _, tt := range tests {
		t.Run(tt.node, func(t *testing.T) {
			code, out, errs := mqha(t, "diff", "--repo", repo, "--node", tt.node, "--root", filepath.Join(live, tt.node))
			if code != tt.code {
				t.Fatalf("exit %d, want %d\n%s%s", code, tt.code, out, errs)
			}
			var files, added, removed []string
			for _, l := range strings.Split(out, "\n") {
				switch {
				case strings.HasPrefix(l, "+++ b"):
					files = append(files, strings.TrimPrefix(l, "+++ b"))
				case strings.HasPrefix(l, "+") && !strings.HasPrefix(l, "+++"):
					added = append(added, l[1:])
				case strings.HasPrefix(l, "-") && !strings.HasPrefix(l, "---"):
					removed = append(removed, l[1:])
				}
			}
			if strings.Join(files, " ") != strings.Join(tt.files, " ") {
				t.Errorf("changed files %v, want %v", files, tt.files)
			}
			if strings.Join(added, "\n") != strings.Join(tt.added, "\n") || len(removed) > 0 {
				t.Errorf("diff adds %q and removes %q; want it to add exactly %q", added, removed, tt.added)
			}
			if !strings.Contains(out, tt.action) {
				t.Errorf("plan lacks %q:\n%s", tt.action, out)
			}
			if tt.node == "lb1" && !strings.Contains(out, "keepalived: none, up to date") {
				t.Errorf("keepalived should not be touched:\n%s", out)
			}
		})
	}
}

type fakeAgent struct{ s control.Status }

func (f fakeAgent) Status() control.Status           { return f.s }
func (f fakeAgent) Sync(context.Context, bool) error { return nil }
func (f fakeAgent) Suspend(context.Context, string, bool) error {
	return nil
}
func (f fakeAgent) Resume(context.Context) error { return nil }

// status is a monitoring check: 0 healthy, 1 degraded, 2 cannot ask.
func TestStatusExitCodes(t *testing.T) {
	for _, tt := range []struct {
		name string
		s    *control.Status // nil: no agent listening
		code int
		out  string
	}{
		{"healthy", &control.Status{Node: "broker1", Applied: "abc"}, 0, "applied:  abc"},
		{"refused", &control.Status{Node: "broker1", Applied: "abc", Refused: "def", RefusedReason: "typo"}, 1, "degraded: refused commit def: typo"},
		{"unconfigured", &control.Status{Node: "broker1", Unconfigured: "set repo in /etc/mqha/agent.conf"}, 1, "NOT CONFIGURED: set repo"},
		{"no agent", nil, 2, "is mqha-agent running?"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			sock := filepath.Join(t.TempDir(), "agent.sock")
			if tt.s != nil {
				ctx, cancel := context.WithCancel(context.Background())
				defer cancel()
				go control.Serve(ctx, sock, fakeAgent{*tt.s})
				for i := 0; i < 100; i++ {
					if _, err := os.Stat(sock); err == nil {
						break
					}
					time.Sleep(10 * time.Millisecond)
				}
			}
			code, out, errs := mqha(t, "status", "--socket", sock)
			if code != tt.code || !strings.Contains(out+errs, tt.out) {
				t.Errorf("exit %d (want %d), output:\n%s%s\nwant %q", code, tt.code, out, errs, tt.out)
			}
		})
	}
}

// vet reads what the agents read: the committed tree of HEAD, warning about
// working-tree changes; --worktree reads those, --rev another commit.
func TestVetReadsTheCommit(t *testing.T) {
	repo, gitIn := exampleRepo(t)
	lb3 := "package cluster\n\nnodes: lb3: {address: \"10.20.0.13\", roles: [\"lb\"], priority: 50}\n"
	os.WriteFile(filepath.Join(repo, "lb3.cue"), []byte(lb3), 0o644)

	code, out, errs := mqha(t, "vet", "--repo", repo)
	if code != 0 || !strings.Contains(out, "valid: 5 nodes") || !strings.Contains(errs, "lb3.cue is not committed") || !strings.Contains(errs, "reading commit") {
		t.Errorf("vet of HEAD with an untracked file: exit %d\n%s%s", code, out, errs)
	}
	if code, out, errs = mqha(t, "vet", "--repo", repo, "--worktree"); code != 0 || !strings.Contains(out, "valid: 6 nodes") {
		t.Errorf("vet --worktree: exit %d\n%s%s", code, out, errs)
	}
	gitIn("add", "lb3.cue")
	gitIn("commit", "-qm", "lb3")
	if code, out, _ = mqha(t, "vet", "--repo", repo); code != 0 || !strings.Contains(out, "valid: 6 nodes") {
		t.Errorf("vet after committing lb3: exit %d %s", code, out)
	}
	if code, out, _ = mqha(t, "vet", "--repo", repo, "--rev", "HEAD~1"); code != 0 || !strings.Contains(out, "valid: 5 nodes") {
		t.Errorf("vet --rev HEAD~1: exit %d %s", code, out)
	}
	// The cases: moved into a subdirectory, or no package line.
	os.MkdirAll(filepath.Join(repo, "nodes"), 0o755)
	gitIn("mv", "lb3.cue", "nodes/lb3.cue")
	gitIn("commit", "-qm", "move")
	if code, _, errs = mqha(t, "vet", "--repo", repo); code != 2 || !strings.Contains(errs, "nodes/lb3.cue:1:1: this file is in a subdirectory") {
		t.Errorf("a node moved to a subdirectory: exit %d %s", code, errs)
	}
	os.WriteFile(filepath.Join(repo, "nodes", "lb3.cue"), []byte(strings.TrimPrefix(lb3, "package cluster\n")), 0o644)
	gitIn("mv", "nodes/lb3.cue", "lb3.cue")
	if code, _, errs = mqha(t, "vet", "--repo", repo, "--worktree"); code != 2 || !strings.Contains(errs, "lb3.cue:1:1: no package clause") {
		t.Errorf("a file without a package line: exit %d %s", code, errs)
	}
}

// A definition that computes without end (a 3000x3000 comprehension) is
// refused at --load-timeout, naming the flag; SIGTERM stops vet at once.
func TestVetIsBounded(t *testing.T) {
	repo := copyExample(t)
	bomb := "package cluster\n\nimport \"list\"\n\n_bomb: [for i in list.Range(0, 3000, 1) for j in list.Range(0, 3000, 1) {i * j}]\n_n: len(_bomb)\n"
	os.WriteFile(filepath.Join(repo, "bomb.cue"), []byte(bomb), 0o644)
	start := time.Now()
	code, _, errs := mqha(t, "vet", "--repo", repo, "--load-timeout", "2s")
	if took := time.Since(start); code != 2 || !strings.Contains(errs, "took over 2s: refused; raise --load-timeout") || took > 6*time.Second {
		t.Errorf("vet of a CUE bomb: exit %d after %s: %s", code, took.Round(time.Millisecond), errs)
	}
	code, _, errs = mqha(t, "vet", "--repo", repo, "--load-memory", "lots")
	if code != 2 || !strings.Contains(errs, `"lots" is not a size`) {
		t.Errorf("a bad --load-memory: exit %d %s", code, errs)
	}
	exe, _ := os.Executable()
	cmd := exec.Command(exe, "vet", "--repo", repo)
	cmd.Env = append(os.Environ(), "MQHA_TEST_CLI=1")
	var errb bytes.Buffer
	cmd.Stderr = &errb
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second)
	sent := time.Now()
	cmd.Process.Signal(syscall.SIGTERM)
	err := cmd.Wait()
	if took := time.Since(sent); took > time.Second || err == nil || !strings.Contains(errb.String(), "interrupted") {
		t.Errorf("vet after SIGTERM: ended %s later (%v): %s", took.Round(time.Millisecond), err, errb.String())
	}
}

// -o json on the commands that print state, and a refusal of other formats.
func TestOutputJSON(t *testing.T) {
	repo, _ := exampleRepo(t)
	var nodes []struct {
		Name, Address string
		Roles         []string
	}
	code, out, errs := mqha(t, "nodes", "--repo", repo, "-o", "json")
	if err := json.Unmarshal([]byte(out), &nodes); code != 0 || err != nil || len(nodes) != 5 || nodes[0].Name != "bridge" || nodes[0].Roles[0] != "bridge" {
		t.Errorf("nodes -o json: exit %d %v %s %s", code, err, out, errs)
	}
	var vet struct {
		Valid bool
		Nodes int
		Roles map[string]int
	}
	code, out, _ = mqha(t, "vet", "--repo", repo, "-o", "json")
	if err := json.Unmarshal([]byte(out), &vet); code != 0 || err != nil || !vet.Valid || vet.Nodes != 5 || vet.Roles["broker"] != 2 {
		t.Errorf("vet -o json: exit %d %v %s", code, err, out)
	}
	var diff []struct {
		Name    string
		Changed bool
		Plan    *struct{ Files []struct{ Path string } }
	}
	code, out, errs = mqha(t, "diff", "--repo", repo, "--from", "HEAD", "--to", "HEAD", "--worktree", "-o", "json")
	if err := json.Unmarshal([]byte(out), &diff); code != 0 || err != nil || len(diff) != 5 || diff[0].Changed {
		t.Errorf("diff --from -o json: exit %d %v %s %s", code, err, out, errs)
	}
	if code, _, errs = mqha(t, "nodes", "--repo", repo, "-o", "yaml"); code != 2 || !strings.Contains(errs, "-o yaml: want text or json") {
		t.Errorf("-o yaml: exit %d %s", code, errs)
	}
}

// The completion scripts: commands, then each command's own flags.
func TestCompletion(t *testing.T) {
	code, script, _ := mqha(t, "completion", "bash")
	if code != 0 {
		t.Fatalf("completion bash: exit %d", code)
	}
	complete := func(words ...string) string {
		t.Helper()
		sh := script + fmt.Sprintf("\nCOMP_WORDS=(%s); COMP_CWORD=%d; _mqha_agent; echo \"${COMPREPLY[*]}\"\n", strings.Join(words, " "), len(words)-1)
		out, err := exec.Command("bash", "-c", sh).CombinedOutput()
		if err != nil {
			t.Fatalf("%v: %s", err, out)
		}
		return strings.TrimSpace(string(out))
	}
	for _, tt := range []struct {
		words []string
		want  string
	}{
		{[]string{"mqha-agent", "fl"}, "fleet"},
		{[]string{"mqha-agent", "fleet", "--ca"}, "--ca --cafile"},
		{[]string{"mqha-agent", "vet", "--load-t"}, "--load-timeout"},
		{[]string{"mqha-agent", "pki", "is"}, "issue"},
		{[]string{"mqha-agent", "pki", "issue", "--al"}, "--all"},
		{[]string{"mqha-agent", "status", "-"}, "-o --repo --socket"},
	} {
		if got := complete(tt.words...); got != tt.want {
			t.Errorf("%v: %q, want %q", tt.words, got, tt.want)
		}
	}
	if code, zsh, _ := mqha(t, "completion", "zsh"); code != 0 || !strings.HasPrefix(zsh, "#compdef mqha-agent") {
		t.Errorf("completion zsh: exit %d %.40q", code, zsh)
	}
	if code, _, errs := mqha(t, "completion", "fish"); code != 2 || !strings.Contains(errs, "bash|zsh") {
		t.Errorf("completion fish: exit %d %s", code, errs)
	}
}

// A `git worktree` checkout is read like any (go-git used to miss its
// refs: "reference not found").
func TestVetInAGitWorktree(t *testing.T) {
	repo, gitIn := exampleRepo(t)
	wt := filepath.Join(t.TempDir(), "wt")
	gitIn("worktree", "add", "-q", "--detach", wt)
	if code, out, errs := mqha(t, "vet", "--repo", wt); code != 0 || !strings.Contains(out, "valid: 5 nodes") {
		t.Errorf("vet in a worktree of %s: exit %d\n%s%s", repo, code, out, errs)
	}
}

// diff --from REV: what a commit does to the whole fleet, summary first,
// added and removed nodes said as such.
func TestFleetDiff(t *testing.T) {
	repo, gitIn := exampleRepo(t)
	if code, out, errs := mqha(t, "diff", "--repo", repo, "--from", "HEAD"); code != 0 || !strings.Contains(out, "broker1: no change") {
		t.Errorf("no change: exit %d\n%s%s", code, out, errs)
	}
	os.WriteFile(filepath.Join(repo, "broker3.cue"), []byte("package cluster\n\nnodes: broker3: {address: \"10.20.0.23\", roles: [\"broker\"]}\n"), 0o644)
	gitIn("add", "-A")
	gitIn("commit", "-qm", "broker3")
	code, out, errs := mqha(t, "diff", "--repo", repo, "--from", "HEAD~1")
	summary, _, _ := strings.Cut(out, "\n===")
	for _, want := range []string{
		"bridge: 1 files changed; mosquitto restart",
		"broker1: 1 files changed; nothing restarts",
		"broker3: 4 files changed; mosquitto start (added by the commit)",
		"lb1: 1 files changed; nginx reload",
	} {
		if !strings.Contains(summary, want) {
			t.Errorf("summary lacks %q:\n%s", want, summary)
		}
	}
	if code != 1 || !strings.Contains(out, "=== lb1") || !strings.Contains(out, "+        server 10.20.0.23:8883 max_fails=0; # broker3") {
		t.Errorf("exit %d\n%s%s", code, out, errs)
	}
	// The working tree is HEAD's: reading the older commit warns of nothing.
	if strings.Contains(errs, "warning:") {
		t.Errorf("a committed file reads as uncommitted against the older commit:\n%s", errs)
	}
	// The other way: broker3 leaves.
	if _, out, _ := mqha(t, "diff", "--repo", repo, "--from", "HEAD", "--to", "HEAD~1"); !strings.Contains(out, "broker3: removed by the commit") {
		t.Errorf("a removed node is not said:\n%s", out)
	}
	if code, _, errs := mqha(t, "diff", "--repo", repo, "--from", "nope"); code != 2 || !strings.Contains(errs, "--from nope") {
		t.Errorf("a bad revision: exit %d %s", code, errs)
	}
}

// The fleet view marks what disagrees with the head: a node on another
// commit, a node without a status, a node with a problem.
func TestFleetView(t *testing.T) {
	cl, err := schema.LoadDir("../cluster-repo-example")
	if err != nil {
		t.Fatal(err)
	}
	head := strings.Repeat("a", 40)
	ok := func() control.Status { return control.Status{Applied: head, PublishedAt: time.Now()} }
	st := map[string]control.Status{"lb1": ok(), "lb2": ok(), "bridge": ok(), "broker1": ok(), "broker2": ok()}
	if code := fleetCode(cl, st, head); code != 0 {
		t.Errorf("all on the head and healthy: %d", code)
	}
	b := ok()
	b.Applied, b.Refused, b.RefusedReason = strings.Repeat("b", 40), head, "this node's certificate does not load"
	st["broker1"] = b
	delete(st, "lb2")
	// bridge stopped a minute ago; broker2's connections dropped.
	st["bridge"] = control.Status{Node: "bridge", Applied: head, PublishedAt: time.Now().Add(-time.Minute), Gone: "agent stopped at 2026-12-07T10:00:00Z"}
	st["broker2"] = control.Status{Node: "broker2", Gone: "agent went away: its connections to the brokers dropped (the brokers published its MQTT will)"}
	var out bytes.Buffer
	c := &cmd{stdout: &out}
	printFleet(c, cl, st, head, 3*time.Second)
	if code := fleetCode(cl, st, head); code != 1 {
		t.Errorf("a node behind and one silent: %d", code)
	}
	for _, want := range []string{"broker1    broker         bbbbbbbbbbbb≠", "refused commit aaaaaaaaaaaa: this node's certificate does not load", "lb2        lb             ?",
		"NOT REPORTED YET: no status on any broker after waiting 3s", "GONE: agent stopped at 2026-12-07T10:00:00Z; no status for 1m0s",
		"Agent went away: its connections to the brokers dropped"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("fleet view lacks %q:\n%s", want, out.String())
		}
	}
}

// exampleRepo is a git work tree holding the example definition, committed,
// and a function running git in it.
func exampleRepo(t *testing.T) (string, func(args ...string)) {
	t.Helper()
	repo := copyExample(t)
	gitIn := func(args ...string) {
		t.Helper()
		cmd := exec.Command("git", append([]string{"-C", repo}, args...)...)
		cmd.Env = append(os.Environ(), "GIT_AUTHOR_NAME=t", "GIT_AUTHOR_EMAIL=t@invalid", "GIT_COMMITTER_NAME=t", "GIT_COMMITTER_EMAIL=t@invalid")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("git %v: %v %s", args, err, out)
		}
	}
	gitIn("init", "-q", "-b", "main")
	gitIn("add", "-A")
	gitIn("commit", "-qm", "example")
	return repo, gitIn
}

// TestManPageIsComplete: the man page names every command, every agent.conf
// key and every metric (a new one must be documented to pass), and the
// operator's guide every metric.
func TestManPageIsComplete(t *testing.T) {
	b, err := os.ReadFile("../packaging/mqha-agent.8")
	if err != nil {
		t.Fatal(err)
	}
	man := strings.ReplaceAll(string(b), `\-`, "-")
	guide, err := os.ReadFile("../docs/operations.md")
	if err != nil {
		t.Fatal(err)
	}
	var commands []string
	for _, l := range strings.Split(usage, "\n") {
		if f := strings.Fields(l); len(f) > 0 && strings.HasPrefix(l, "  ") && !strings.HasPrefix(l, "   ") {
			commands = append(commands, f[0])
		}
	}
	if len(commands) < 10 {
		t.Fatalf("read %d commands from the usage", len(commands))
	}
	for _, c := range commands {
		if !strings.Contains(man, ".B "+c) {
			t.Errorf("the man page does not describe the command %s", c)
		}
	}
	for _, k := range agent.Keys() {
		if !strings.Contains(man, ".B "+k+"\n") {
			t.Errorf("the man page's CONFIGURATION does not describe agent.conf key %s", k)
		}
	}
	for _, m := range agent.MetricNames() {
		if !strings.Contains(man, m) {
			t.Errorf("the man page's METRICS do not name %s", m)
		}
		if !strings.Contains(string(guide), m) {
			t.Errorf("docs/operations.md does not name the metric %s", m)
		}
	}
}
