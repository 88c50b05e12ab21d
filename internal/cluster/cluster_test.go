package cluster

import "testing"

func TestHostPort(t *testing.T) {
	for _, tt := range []struct {
		host string
		want string
	}{{"10.0.0.1", "10.0.0.1:8883"}, {"fd00::1", "[fd00::1]:8883"}, {"broker1", "broker1:8883"}} {
		if got := (Node{Address: tt.host}).At(8883); got != tt.want {
			t.Errorf("%s: %s, want %s", tt.host, got, tt.want)
		}
	}
}
