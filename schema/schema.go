// Package schema loads a cluster repository's CUE package, checks it against
// the embedded #Cluster schema and the rules CUE cannot express, and returns
// the typed cluster. Every error carries the file:line:col of the offending value.
package schema

import (
	_ "embed"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"

	"cuelang.org/go/cue"
	"cuelang.org/go/cue/cuecontext"
	cueerrors "cuelang.org/go/cue/errors"
	"cuelang.org/go/cue/load"
	"cuelang.org/go/cue/token"

	"github.com/mqha/mqha/internal/cluster"
)

//go:embed cluster.cue
var Source []byte

// schemaFile names the embedded schema in positions, so that errors found in
// it (values that only the schema defaulted) can be told from the user's.
const schemaFile = "mqha:schema/cluster.cue"

// LoadDir loads the cluster definition in the directory dir of the host.
func LoadDir(dir string) (*cluster.Cluster, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	if st, err := os.Stat(abs); err != nil {
		return nil, fmt.Errorf("cluster repository %s: %w", dir, err)
	} else if !st.IsDir() {
		return nil, fmt.Errorf("cluster repository %s is not a directory", dir)
	}
	return Load(os.DirFS(abs), ".")
}

// Load loads the CUE package in directory dir of fsys (for example a git
// commit's tree). File names in errors are relative to the root of fsys.
func Load(fsys fs.FS, dir string) (*cluster.Cluster, error) {
	// What CUE would skip silently is an error here: the agent and vet
	// read the same files the same way.
	if err := checkFiles(fsys, dir); err != nil {
		return nil, err
	}
	// A fresh context per load: a reused one grows with every load, and the
	// agent loads on every new commit for as long as it runs.
	ctx := cuecontext.New()
	dir = path.Clean("/" + dir)
	cfg := &load.Config{
		FS:  fsys,
		Dir: dir,
		// The package is all local: never ask a module registry.
		Env:        []string{"CUE_REGISTRY=none"},
		FromFSPath: func(p string) string { return strings.TrimPrefix(p, "/") },
	}
	insts := load.Instances([]string{"."}, cfg)
	if len(insts) != 1 {
		return nil, fmt.Errorf("cluster repository %s: expected one CUE package, found %d", dir, len(insts))
	}
	if err := insts[0].Err; err != nil {
		return nil, fromCUE(err, "check that the directory holds .cue files of a single package", cue.Value{})
	}
	user := ctx.BuildInstance(insts[0])
	if err := user.Err(); err != nil {
		return nil, fromCUE(err, "", cue.Value{})
	}
	def := ctx.CompileBytes(Source, cue.Filename(schemaFile)).LookupPath(cue.MakePath(cue.Def("Cluster")))
	if err := def.Err(); err != nil {
		return nil, fmt.Errorf("embedded schema is broken (a bug in mqha): %w", err)
	}
	v := user.Unify(def)
	if err := v.Validate(cue.Concrete(true), cue.Final()); err != nil {
		return nil, fromCUE(err, "", user)
	}
	c, err := decode(v)
	if err != nil {
		return nil, err
	}
	if errs := check(v, user, c); len(errs) > 0 {
		return nil, errs
	}
	return c, nil
}

// fromCUE turns CUE's errors into ours, located in the user's files. A value
// that matches none of a disjunction's choices arrives as several errors at
// one path, one per choice; they become one error naming the value, and the
// hint lists the choices. user, when it exists, supplies that value.
func fromCUE(err error, fallbackHint string, user cue.Value) Errors {
	var out Errors
	byPath := map[string]int{}
	for _, e := range cueerrors.Errors(err) {
		format, args := e.Msg()
		p := strings.Join(e.Path(), ".")
		x := Error{Path: p, Msg: fmt.Sprintf(format, args...), Hint: hintFor(p)}
		if x.Hint == "" {
			x.Hint = fallbackHint
		}
		if strings.Contains(x.Msg, "field not allowed") {
			x.Hint = "no such setting in the mqha schema (a typo?); see cluster-repo-example/README.md"
		}
		ps := append([]token.Pos{e.Position()}, e.InputPositions()...)
		if user.Exists() {
			// Some errors (list lengths) carry only the schema's position.
			ps = append(ps, user.LookupPath(cuePath(e.Path())).Pos())
		}
		if pos, ok := userPos(ps); ok {
			x.File, x.Line, x.Col = pos.Filename(), pos.Line(), pos.Column()
		}
		disj := strings.Contains(x.Msg, "empty disjunction") || strings.HasPrefix(x.Msg, "conflicting values")
		if i, ok := byPath[p]; ok && disj {
			if out[i].File == "" {
				out[i].File, out[i].Line, out[i].Col = x.File, x.Line, x.Col
			}
			continue
		}
		if disj && user.Exists() {
			if uv := user.LookupPath(cuePath(e.Path())); uv.Exists() {
				x.Msg = fmt.Sprintf("%v is not allowed here", uv)
			}
		}
		byPath[p] = len(out)
		out = append(out, x)
	}
	if len(out) == 0 && err != nil {
		// An error CUE cannot break down still says what it is.
		out = Errors{{Msg: err.Error(), Hint: fallbackHint}}
	}
	out.sort()
	return out
}

// userPos picks the first position in the user's files, skipping the schema.
func userPos(ps []token.Pos) (token.Pos, bool) {
	for _, p := range ps {
		if p.IsValid() && p.Filename() != schemaFile {
			return p, true
		}
	}
	return token.NoPos, false
}

type rawNode struct {
	Address   string   `json:"address"`
	Roles     []string `json:"roles"`
	Priority  int      `json:"priority"`
	Interface string   `json:"interface"`
}

type rawVIP struct {
	Address        string   `json:"address"`
	RouterID       int      `json:"routerID"`
	Interface      string   `json:"interface"`
	AdvertInterval float64  `json:"advertInterval"`
	Unicast        bool     `json:"unicast"`
	DNSNames       []string `json:"dnsNames"`
}

func (r *rawVIP) decode() *cluster.VIP {
	if r == nil {
		return nil
	}
	addr, prefix, _ := strings.Cut(r.Address, "/")
	var p int
	fmt.Sscanf(prefix, "%d", &p) // the schema checked it is a CIDR
	return &cluster.VIP{Address: addr, Prefix: p, RouterID: r.RouterID,
		Interface: r.Interface, AdvertInterval: r.AdvertInterval, Unicast: r.Unicast, DNSNames: r.DNSNames}
}

type raw struct {
	Name      string             `json:"name"`
	Nodes     map[string]rawNode `json:"nodes"`
	VIP       *rawVIP            `json:"vip"`
	BridgeVIP *rawVIP            `json:"bridgeVIP"`
	Ports     cluster.Ports      `json:"ports"`
	TLS       cluster.TLS        `json:"tls"`
	MQTT      cluster.MQTT       `json:"mqtt"`
	Limits    cluster.Limits     `json:"limits"`
	Timeouts  cluster.Timeouts   `json:"timeouts"`
	Rollout   cluster.Rollout    `json:"rollout"`
}

func decode(v cue.Value) (*cluster.Cluster, error) {
	var r raw
	if err := v.Decode(&r); err != nil {
		return nil, fromCUE(err, "", cue.Value{})
	}
	c := &cluster.Cluster{
		Name: r.Name, Ports: r.Ports, TLS: r.TLS, MQTT: r.MQTT, Limits: r.Limits, Timeouts: r.Timeouts, Rollout: r.Rollout,
	}
	c.VIP = r.VIP.decode()
	if c.BridgeVIP = r.BridgeVIP.decode(); c.BridgeVIP != nil {
		c.BridgeVIP.Unicast = true // always: check_unicast_src needs it
	}
	for name, rn := range r.Nodes {
		n := cluster.Node{Name: name, Address: rn.Address, Priority: rn.Priority, Interface: rn.Interface}
		for _, role := range rn.Roles {
			n.Roles = append(n.Roles, cluster.Role(role))
		}
		if n.Has(cluster.LB) && n.Interface == "" && c.VIP != nil {
			n.Interface = c.VIP.Interface
		}
		c.Nodes = append(c.Nodes, n)
	}
	sort.Slice(c.Nodes, func(i, j int) bool { return c.Nodes[i].Name < c.Nodes[j].Name })
	return c, nil
}
