package render_test

import (
	"bytes"
	"fmt"
	"slices"
	"strings"
	"testing"
	"testing/fstest"

	"github.com/mqha/mqha/internal/render"
	"github.com/mqha/mqha/schema"
)

// FuzzNames renders a cluster whose broker has a fuzzed name and address:
// whatever the schema accepts renders, and the files are those of a plain
// rendering with the name and address put in, nothing else: a name or an
// address can never add a line or an option to a configuration.
func FuzzNames(f *testing.F) {
	f.Add("broker3", "10.20.0.23")
	f.Add("b", "10.20.0.9")
	f.Add("x-1", "192.168.1.1")
	f.Add("evil\nlistener 1883", "10.20.0.23")
	f.Add("b3", "10.20.0.23 listener 1883")
	def := func(name, addr string) string {
		return fmt.Sprintf(`package cluster
name: "mqtt"
vip: {address: "10.20.0.100/24", routerID: 42}
nodes: {
	lb1: {address: "10.20.0.11", roles: ["lb"], priority: 150}
	lb2: {address: "10.20.0.12", roles: ["lb"], priority: 100}
	bridge: {address: "10.20.0.20", roles: ["bridge"]}
	broker1: {address: "10.20.0.21", roles: ["broker"]}
	%q: {address: %q, roles: ["broker"]}
}
`, name, addr)
	}
	const plainName, plainAddr = "zzplainzz", "10.20.0.77"
	plain, err := schema.Load(fstest.MapFS{"c.cue": {Data: []byte(def(plainName, plainAddr))}}, ".")
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, name, addr string) {
		c, err := schema.Load(fstest.MapFS{"c.cue": {Data: []byte(def(name, addr))}}, ".")
		if err != nil || name == plainName || addr == plainAddr {
			return // refused: fine
		}
		for _, node := range []string{"lb1", "bridge", name} {
			pn := node
			if node == name {
				pn = plainName
			}
			got, err := render.Node(c, node)
			if err != nil {
				t.Fatalf("%q %q loads but %s does not render: %v", name, addr, node, err)
			}
			want, err := render.Node(plain, pn)
			if err != nil {
				t.Fatal(err)
			}
			if len(got.Files) != len(want.Files) {
				t.Fatalf("%s: %d files, plain %d", node, len(got.Files), len(want.Files))
			}
			for i := range got.Files {
				w := bytes.ReplaceAll(want.Files[i].Content, []byte(plainName), []byte(name))
				w = bytes.ReplaceAll(w, []byte(plainAddr), []byte(addr))
				// The same lines (nodes are listed in name order, so a
				// name may move its line, never add one).
				if g, w := lines(got.Files[i].Content), lines(w); !slices.Equal(g, w) {
					t.Fatalf("%s %s with name %q address %q differs from the plain rendering beyond the name and address", node, got.Files[i].Path, name, addr)
				}
			}
		}
	})
}

func lines(b []byte) []string {
	l := strings.Split(string(b), "\n")
	slices.Sort(l)
	return l
}
