package lab

import "testing"

func TestMountPaths(t *testing.T) {
	for _, c := range []struct {
		p, dir string
		under  bool
	}{
		{"/var/lib/mqha-lab/lb1/root", "/var/lib/mqha-lab", true},
		{"/var/lib/mqha-lab", "/var/lib/mqha-lab/", true},
		{"/var/lib/mqha-lab2/lb1/root", "/var/lib/mqha-lab", false},
		{"/mqha-lab/lb1/payload/init.scope", "/mqha-lab", true},
		{"/process_api/5ff9", "/mqha-lab", false},
	} {
		if got := under(c.p, c.dir); got != c.under {
			t.Errorf("under(%q, %q) = %v", c.p, c.dir, got)
		}
	}
	for in, want := range map[string]string{
		`/var/lib/mqha\040lab/x`: "/var/lib/mqha lab/x",
		`/plain`:                 "/plain",
		`/odd\04`:                `/odd\04`,
	} {
		if got := unescapeMount(in); got != want {
			t.Errorf("unescapeMount(%q) = %q, want %q", in, got, want)
		}
	}
}
