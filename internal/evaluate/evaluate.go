// Package evaluate loads a cluster definition in a child process (the
// agent's own binary) bounded in time and memory: a commit is input from
// whoever can push, and CUE can be made to compute for minutes or fill
// gigabytes in a few hundred bytes. The child is killed at the bound and
// the commit refused with the bound named; the agent goes on serving.
package evaluate

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing/fstest"
	"time"

	"github.com/mqha/mqha/internal/cluster"
	"github.com/mqha/mqha/schema"
)

// Command is the hidden mqha-agent subcommand the child runs.
const Command = "evaluate-definition"

// Limits bound one evaluation.
type Limits struct {
	Timeout time.Duration // agent.conf load-timeout
	Memory  int64         // bytes of resident memory; agent.conf load-memory
	// Knobs name how to raise each bound in a refusal (default: the
	// agent.conf keys; the CLI names its flags).
	TimeoutKnob, MemoryKnob string
}

// DefaultLimits are agent.conf's defaults for load-timeout and
// load-memory, and the CLI's for --load-timeout and --load-memory.
var DefaultLimits = Limits{Timeout: 20 * time.Second, Memory: 256 << 20}

func (l Limits) knobs() (string, string) {
	t, m := l.TimeoutKnob, l.MemoryKnob
	if t == "" {
		t = "load-timeout in agent.conf"
	}
	if m == "" {
		m = "load-memory in agent.conf"
	}
	return t, m
}

// request is what the parent writes to the child's stdin.
type request struct {
	Files map[string][]byte `json:"files"`
}

// reply is what the child writes to its stdout.
type reply struct {
	Cluster *cluster.Cluster `json:"cluster,omitempty"`
	Error   string           `json:"error,omitempty"`
}

// Child evaluates files (a commit's definition) with the agent's binary exe
// in a child process within lim.
func Child(ctx context.Context, exe string, files fs.FS, lim Limits) (*cluster.Cluster, error) {
	req := request{Files: map[string][]byte{}}
	err := fs.WalkDir(files, ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := fs.ReadFile(files, p)
		req.Files[p] = b
		return err
	})
	if err != nil {
		return nil, err
	}
	in, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, lim.Timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, exe, Command)
	cmd.Stdin = bytes.NewReader(in)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start the definition's evaluation (%s %s): %w", exe, Command, err)
	}
	// Resident memory is watched from here: a limit inside the child
	// (RLIMIT_AS) would also count the Go runtime's address reservations.
	over := make(chan int64, 1)
	done := make(chan struct{})
	go func() {
		t := time.NewTicker(50 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				if rss := residentBytes(cmd.Process.Pid); rss > lim.Memory {
					over <- rss
					cmd.Process.Kill()
					return
				}
			}
		}
	}()
	werr := cmd.Wait()
	close(done)
	timeoutKnob, memoryKnob := lim.knobs()
	select {
	case rss := <-over:
		return nil, fmt.Errorf("evaluating the definition used over %d MiB of memory (%d MiB when stopped): refused; raise %s if the definition really needs it", lim.Memory>>20, rss>>20, memoryKnob)
	default:
	}
	switch {
	case errors.Is(ctx.Err(), context.DeadlineExceeded):
		return nil, fmt.Errorf("evaluating the definition took over %s: refused; raise %s if the definition really needs it", lim.Timeout, timeoutKnob)
	case ctx.Err() != nil:
		return nil, fmt.Errorf("evaluating the definition: interrupted (%w)", ctx.Err())
	}
	var r reply
	if err := json.Unmarshal(out.Bytes(), &r); err != nil {
		return nil, fmt.Errorf("evaluating the definition failed (%v): %s", werr, strings.TrimSpace(errb.String()))
	}
	if r.Error != "" {
		return nil, errors.New(r.Error)
	}
	return r.Cluster, nil
}

// Serve is the child: it reads a request on stdin, evaluates it and writes
// the reply on stdout. It returns the exit code.
func Serve(stdin io.Reader, stdout io.Writer) int {
	var req request
	if err := json.NewDecoder(stdin).Decode(&req); err != nil {
		fmt.Fprintln(os.Stderr, "read the definition:", err)
		return 2
	}
	files := mapFS(req.Files)
	c, err := schema.Load(files, ".")
	r := reply{Cluster: c}
	if err != nil {
		r = reply{Error: err.Error()}
	}
	if err := json.NewEncoder(stdout).Encode(r); err != nil {
		return 2
	}
	return 0
}

// residentBytes is a process's resident memory (0 when gone).
func residentBytes(pid int) int64 {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmRSS:" {
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			return kb << 10
		}
	}
	return 0
}

func mapFS(m map[string][]byte) fs.FS {
	f := fstest.MapFS{}
	for k, v := range m {
		f[k] = &fstest.MapFile{Data: v, Mode: 0o644}
	}
	return f
}
