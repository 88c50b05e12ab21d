package schema

import (
	"fmt"
	"io/fs"
	"path"
	"sort"
	"strings"

	"cuelang.org/go/cue"
	"cuelang.org/go/cue/parser"
)

// checkFiles reports every .cue file under dir that CUE would not load as
// part of the definition: one in a subdirectory, one without a package
// clause, one of another package. CUE skips those silently, so a node
// written in such a file would simply be missing from the cluster; here
// each is an error with its path and what to do. Syntax errors are reported
// as such. A directory without .cue files says what was expected.
func checkFiles(fsys fs.FS, dir string) error {
	root := strings.TrimPrefix(path.Clean("/"+dir), "/")
	if root == "" {
		root = "."
	}
	var errs Errors
	pkgs := map[string][]string{}
	n := 0
	err := fs.WalkDir(fsys, root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			// cue.mod holds a CUE module's own files; dot directories
			// (.git, .github) are not the definition.
			if p != root && (d.Name() == "cue.mod" || strings.HasPrefix(d.Name(), ".")) {
				return fs.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(p, ".cue") {
			return nil
		}
		if path.Dir(p) != root {
			errs = append(errs, Error{File: p, Line: 1, Col: 1,
				Msg:  "this file is in a subdirectory, and only the .cue files directly in " + root + " make the definition: it would be ignored",
				Hint: "move it to " + root + " (or out of the repository)"})
			return nil
		}
		n++
		src, err := fs.ReadFile(fsys, p)
		if err != nil {
			return err
		}
		f, err := parser.ParseFile(p, src)
		if err != nil {
			errs = append(errs, fromCUE(err, "a CUE syntax error: fix the file at this position (cue fmt shows it too)", cue.Value{})...)
			return nil
		}
		name := f.PackageName()
		if name == "" {
			errs = append(errs, Error{File: p, Line: 1, Col: 1,
				Msg:  "no package clause: CUE would leave this file out of the definition",
				Hint: "start it with the package line of the other files (package cluster)"})
			return nil
		}
		pkgs[name] = append(pkgs[name], p)
		return nil
	})
	if err != nil {
		return fmt.Errorf("cluster repository %s: %w", dir, err)
	}
	if n == 0 && len(errs) == 0 {
		return fmt.Errorf("cluster repository %s has no .cue files: expected the cluster definition, a CUE package (see cluster-repo-example)", dir)
	}
	if len(pkgs) > 1 {
		// The package most files use is the definition; the others stand out.
		names := make([]string, 0, len(pkgs))
		for k := range pkgs {
			names = append(names, k)
		}
		sort.Slice(names, func(i, j int) bool {
			if len(pkgs[names[i]]) != len(pkgs[names[j]]) {
				return len(pkgs[names[i]]) > len(pkgs[names[j]])
			}
			return names[i] < names[j]
		})
		for _, other := range names[1:] {
			for _, f := range pkgs[other] {
				errs = append(errs, Error{File: f, Line: 1, Col: 1,
					Msg:  fmt.Sprintf("package %s, but the definition is package %s: this file would not be loaded with it", other, names[0]),
					Hint: "use `package " + names[0] + "`"})
			}
		}
	}
	if len(errs) > 0 {
		errs.sort()
		return errs
	}
	return nil
}
