package lab

import (
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The env file, exported, must not move the lab: every lab setting it
// names carries the value the lab uses.
func TestEnvFileDoesNotOverrideSettings(t *testing.T) {
	dir := t.TempDir()
	c := Config{Dir: dir, NodesDir: "/var/lib/mqha-lab", Subnet: netip.MustParsePrefix("10.231.7.0/24")}
	s := &State{Nodes: []Node{{Name: "lb1", Addr: "10.231.7.11"}, {Name: "broker1", Addr: "10.231.7.21"}}}
	if err := c.writeEnv(Project{Root: dir}, s); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(dir, "env"))
	if err != nil {
		t.Fatal(err)
	}
	settings := map[string]string{"MQHA_LAB_DIR": dir, "MQHA_LAB_NODES": c.NodesDir, "MQHA_LAB_SUBNET": c.Subnet.String(),
		"MQHA_LAB_CACHE": "", "MQHA_LAB_BRIDGE": "", "MQHA_LAB_DEB": "", "MQHA_LAB_MIRROR": ""}
	for _, line := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(line, "=")
		if !ok || strings.HasPrefix(k, "#") {
			continue
		}
		if want, isSetting := settings[k]; isSetting && strings.Trim(v, `"`) != want {
			t.Errorf("the env file sets the lab setting %s to %s (the lab uses %q)", k, v, want)
		}
	}
	if !strings.Contains(string(b), `MQHA_LAB_NODE_NAMES="lb1 broker1"`) {
		t.Errorf("no node list in:\n%s", b)
	}
}
