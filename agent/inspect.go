package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/mqha/mqha/internal/cluster"
	"github.com/mqha/mqha/internal/render"
)

// vet, nodes and render: the definition read and shown.

func (c *cmd) vet(args []string) error {
	fs, src := c.defCommand("vet")
	format := outputFlag(fs)
	cl, err := c.loadAfter(fs, src, args, format.check)
	if err != nil {
		return err
	}
	roles := map[string]int{}
	for _, r := range cluster.Roles {
		roles[string(r)] = len(cl.WithRole(r))
	}
	notes := cl.Notes()
	return format.emit(c.stdout, struct {
		Repo    string         `json:"repo"`
		Cluster string         `json:"cluster"`
		Valid   bool           `json:"valid"`
		Nodes   int            `json:"nodes"`
		Roles   map[string]int `json:"roles"`
		Notes   []string       `json:"notes,omitempty"`
	}{*src.repo, cl.Name, true, len(cl.Nodes), roles, notes}, func(w io.Writer) {
		fmt.Fprintf(w, "%s: cluster %s is valid: %d nodes (%d lb, %d broker, %d bridge)\n", *src.repo, cl.Name,
			len(cl.Nodes), roles["lb"], roles["broker"], roles["bridge"])
		for _, n := range notes {
			fmt.Fprintf(w, "note: %s\n", n)
		}
	})
}

func (c *cmd) nodes(args []string) error {
	fs, src := c.defCommand("nodes")
	format := outputFlag(fs)
	cl, err := c.loadAfter(fs, src, args, format.check)
	if err != nil {
		return err
	}
	type node struct {
		Name    string   `json:"name"`
		Address string   `json:"address"`
		Roles   []string `json:"roles"`
	}
	var out []node
	for _, n := range cl.Nodes {
		var roles []string
		for _, r := range n.Roles {
			roles = append(roles, string(r))
		}
		out = append(out, node{n.Name, n.Address, roles})
	}
	return format.emit(c.stdout, out, func(w io.Writer) {
		for _, n := range cl.Nodes {
			fmt.Fprintf(w, "%s %s %s\n", n.Name, n.Address, n.RoleList())
		}
	})
}

// output is a command's -o flag: text (for people) or json (for scripts).
type output struct{ format *string }

func outputFlag(fs *flag.FlagSet) output {
	return output{fs.String("o", "text", "output: text or json")}
}

func (o output) check() error {
	if *o.format != "text" && *o.format != "json" {
		return fmt.Errorf("-o %s: want text or json", *o.format)
	}
	return nil
}

// emit writes v as JSON, or text.
func (o output) emit(w io.Writer, v any, text func(io.Writer)) error {
	if *o.format == "json" {
		e := json.NewEncoder(w)
		e.SetIndent("", "  ")
		return e.Encode(v)
	}
	text(w)
	return nil
}

func (c *cmd) render(args []string) error {
	fs, src := c.defCommand("render")
	node := fs.String("node", "", "render this node")
	all := fs.Bool("all", false, "render every node, each under OUT/NAME/")
	out := fs.String("out", "", "output directory (required)")
	cl, err := c.loadAfter(fs, src, args, func() error {
		if *out == "" || (*node == "") == !*all {
			return errors.New("need --out DIR and exactly one of --node NAME or --all")
		}
		return nil
	})
	if err != nil {
		return err
	}
	targets := map[string]string{*node: *out}
	if *all {
		targets = map[string]string{}
		for _, n := range cl.Nodes {
			targets[n.Name] = filepath.Join(*out, n.Name)
		}
	}
	for name, dir := range targets {
		o, err := render.Node(cl, name)
		if err != nil {
			return err
		}
		for _, f := range o.Files {
			p := filepath.Join(dir, f.Path)
			if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
				return err
			}
			if err := os.WriteFile(p, f.Content, f.Mode); err != nil {
				return err
			}
			fmt.Fprintln(c.stdout, p)
		}
	}
	return nil
}
