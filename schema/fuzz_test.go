package schema_test

import (
	"errors"
	"os"
	"strings"
	"testing"
	"testing/fstest"

	"github.com/mqha/mqha/internal/render"
	"github.com/mqha/mqha/schema"
)

// FuzzLoad adds an arbitrary file to the example definition: loading never
// panics, every error says something (with where, for schema errors), and
// whatever loads renders for every node.
func FuzzLoad(f *testing.F) {
	example, err := os.ReadFile("../cluster-repo-example/cluster.cue")
	if err != nil {
		f.Fatal(err)
	}
	for _, seed := range []string{
		"package cluster\n",
		"package cluster\n\nmqtt: maxQueuedMessages: 100000000000000000000000000000\n",
		"package cluster\n\nnodes: broker3: {address: \"10.20.0.23\", roles: [\"broker\"]}\n",
		"package cluster\n\nnodes: bridge: priority: 20\nnodes: bridge2: {address: \"10.20.0.24\", roles: [\"bridge\"], priority: 10}\n",
		"package cluster\n\nvip: advertInterval: 0.07\n",
		"package cluster\n\ntls: ca: \"/etc/ssl/certs/x.pem\"\n",
		"package other\n",
		"nodes: x: 1",
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, extra string) {
		c, err := schema.Load(fstest.MapFS{"cluster.cue": {Data: example}, "extra.cue": {Data: []byte(extra)}}, ".")
		if err != nil {
			if strings.TrimSpace(err.Error()) == "" {
				t.Fatalf("an empty error for %q", extra)
			}
			var errs schema.Errors
			if errors.As(err, &errs) {
				for _, e := range errs {
					if e.Msg == "" && e.Hint == "" {
						t.Fatalf("an error without a message for %q: %+v", extra, e)
					}
				}
			}
			return
		}
		for _, n := range c.Nodes {
			if _, err := render.Node(c, n.Name); err != nil {
				t.Fatalf("%q loads but node %s does not render: %v", extra, n.Name, err)
			}
		}
	})
}
