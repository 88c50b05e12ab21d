package evaluate

import (
	"context"
	"os"
	"strings"
	"testing"
	"testing/fstest"
	"time"
)

// The test binary is the child too, as the agent's binary is in a node.
func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == Command {
		os.Exit(Serve(os.Stdin, os.Stdout))
	}
	os.Exit(m.Run())
}

func files(t *testing.T, extra string) fstest.MapFS {
	t.Helper()
	b, err := os.ReadFile("../../cluster-repo-example/cluster.cue")
	if err != nil {
		t.Fatal(err)
	}
	return fstest.MapFS{"cluster.cue": {Data: b}, "extra.cue": {Data: []byte(extra)}}
}

func TestChild(t *testing.T) {
	exe, _ := os.Executable()
	lim := Limits{Timeout: 5 * time.Second, Memory: 256 << 20}
	for _, tt := range []struct {
		name, extra string
		want        string // in the error; "" for success
		within      time.Duration
	}{
		{"a definition", "package cluster\n", "", 5 * time.Second},
		{"a schema error keeps its position", "package cluster\n\nvip: routerId: 7\n", "extra.cue:3:6", 5 * time.Second},
		// 461 bytes that ran past 90 s in the agent itself.
		{"a CUE bomb is stopped at a bound", "package cluster\n\nimport \"list\"\n\n_big: [for x in list.Range(0,1000,1) for y in list.Range(0,1000,1) {x*y}]\n", "refused; raise load-", 10 * time.Second},
	} {
		t.Run(tt.name, func(t *testing.T) {
			start := time.Now()
			c, err := Child(context.Background(), exe, files(t, tt.extra), lim)
			took := time.Since(start)
			switch {
			case tt.want == "" && (err != nil || c == nil || len(c.Nodes) != 5):
				t.Fatalf("got %v, %v", c, err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Fatalf("got %v, want an error with %q", err, tt.want)
			}
			if took > tt.within {
				t.Errorf("took %s, want within %s", took, tt.within)
			}
			t.Logf("%s: %s, %v", tt.name, took.Round(time.Millisecond), err)
		})
	}
}

// A definition that fills memory is stopped at the memory bound.
func TestChildMemoryBound(t *testing.T) {
	exe, _ := os.Executable()
	bomb := "package cluster\n\nimport \"list\"\n\n_big: [for x in list.Range(0,1000,1) for y in list.Range(0,1000,1) {x*y}]\n"
	start := time.Now()
	_, err := Child(context.Background(), exe, files(t, bomb), Limits{Timeout: time.Minute, Memory: 64 << 20})
	if err == nil || !strings.Contains(err.Error(), "raise load-memory") {
		t.Fatalf("got %v, want the memory bound named", err)
	}
	t.Logf("stopped after %s: %v", time.Since(start).Round(time.Millisecond), err)
}
