package agent

import (
	"context"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"syscall"

	"github.com/mqha/mqha/internal/health"
	"github.com/mqha/mqha/internal/render"
)

// LocalHost reads what this host is and allows: the hard RLIMIT_NOFILE
// (which the services systemd starts inherit as their ceiling), fs.nr_open,
// and the distribution's nginx layout (its user and module directory).
func LocalHost() render.Host {
	h := nginxLayout()
	h.CPUs = runtime.NumCPU()
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err == nil && rl.Max < 1<<31 {
		h.NoFileMax = int(rl.Max)
	}
	if b, err := os.ReadFile("/proc/sys/fs/nr_open"); err == nil {
		if n, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && (h.NoFileMax == 0 || n < h.NoFileMax) {
			h.NoFileMax = n
		}
	}
	return h
}

// checkWarnings reports what will fail if nobody acts. For each daemon of
// the applied commit it compares the descriptor limit in force (its
// processes' /proc/PID/limits) with the rendered one, and the clients that
// holds with limits.clients: a shortfall is a warning in status and a 0 in
// mqha_limit_ok, never silent. It also warns 30 days before the node's
// certificate or the CA expires.
func (a *Agent) checkWarnings(ctx context.Context) {
	v := a.view
	if v == nil {
		return
	}
	var warns []string
	for _, l := range v.Output.Limits {
		ok := true
		name := strings.TrimSuffix(l.Unit, ".service")
		if l.Clients < l.Wanted {
			ok = false
			what, fix := "limits.clients", "raise the host's limit"
			if name == "mosquitto" {
				what, fix = "its share of limits.clients (over the brokers)", "add brokers, or raise the host's limit"
			}
			warns = append(warns, fmt.Sprintf("%s holds at most %d clients (this host allows %d descriptors per process), fewer than %s, %d: %s",
				name, l.Clients, l.NoFile, what, l.Wanted, fix))
		}
		if pid, err := a.d.Systemd.MainPID(ctx, l.Unit); err == nil && pid > 0 {
			for _, p := range append([]int{pid}, health.Children("/proc", pid)...) {
				if got, err := openFilesLimit(p); err == nil && got < l.NoFile {
					ok = false
					warns = append(warns, fmt.Sprintf("%s (pid %d) runs with %d open files, configured %d: the limit is not in force", name, p, got, l.NoFile))
					break
				}
			}
		}
		a.m.limitOK.WithLabelValues(l.Unit).Set(map[bool]float64{true: 1, false: 0}[ok])
	}
	now := a.d.Now()
	for _, c := range v.Certs {
		a.m.certExpiry.WithLabelValues(c.Name).Set(float64(c.NotAfter.Unix()))
		if w := c.Warning(now); w != "" {
			warns = append(warns, w)
		}
	}
	a.facts.SetWarnings(warns, v.Certs)
}

// openFilesLimit is the soft "Max open files" of process pid.
func openFilesLimit(pid int) (int, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/limits", pid))
	if err != nil {
		return 0, err
	}
	for _, l := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(l, "Max open files"); ok {
			f := strings.Fields(rest)
			if len(f) > 0 {
				if f[0] == "unlimited" {
					return 1 << 30, nil
				}
				return strconv.Atoi(f[0])
			}
		}
	}
	return 0, fmt.Errorf("no open files limit in /proc/%d/limits", pid)
}

// nginxLayout tells Debian's nginx (www-data, modules-enabled) from a RHEL
// family one (nginx, /usr/share/nginx/modules) by what the node has;
// Debian's when neither shows.
func nginxLayout() render.Host {
	passwd, _ := os.ReadFile("/etc/passwd")
	has := func(user string) bool { return strings.Contains("\n"+string(passwd), "\n"+user+":") }
	if _, err := os.Stat("/etc/nginx/modules-enabled"); err == nil || has("www-data") {
		return render.DebianNginx
	}
	if _, err := os.Stat("/usr/share/nginx/modules"); err == nil || has("nginx") {
		return render.RHELNginx
	}
	return render.DebianNginx
}
