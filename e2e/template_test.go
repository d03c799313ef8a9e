//go:build e2e

package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vesselvm/vessel/devices/usernet"
)

// templateProbe is what the containers of TestRunTemplate print: the
// guest kernel's boot time (btime in /proc/stat: the template's boot in
// every clone of one template, since a clone's clocks go on from the
// template's), a fresh UUID from its random number generator, the
// container's host name, the guest's wall clock, and a page fetched from
// the host over the user network. (The boot ID would not do: the kernel
// makes it when it is first read, after the restore.)
const templateProbe = `awk '/^btime/ {print $2}' /proc/stat; cat /proc/sys/kernel/random/uuid; hostname; date +%%s; wget -q -O - http://%s:%d/`

// TestRunTemplate: the first `vessel run` builds the template (a VM
// booted up to its agent, snapshotted into the cache) and restores it;
// the second restores the same template; --no-template boots. Clones of
// the template share its boot time but read different random numbers,
// have their own host names, the host's time, and a working network; a
// cold boot has a boot time of its own.
func TestRunTemplate(t *testing.T) {
	if *guestMode {
		t.Skip("host half only")
	}
	port := loopbackPage(t, "template-ok")
	cache := t.TempDir()
	env := append(runEnv(t), "VESSEL_TEMPLATE_DIR="+cache)
	probe := fmt.Sprintf(templateProbe, usernet.HostName, port)
	type out struct {
		btime      int64
		uuid, host string
	}
	run := func(what string, extra ...string) out {
		t.Helper()
		args := append([]string{"--rm", "--network", "user,host-loopback"}, extra...)
		args = append(args, runImage, "sh", "-c", probe)
		start := time.Now()
		r := vesselRun(t, env, "", args...)
		end := time.Now()
		lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
		if r.code != 0 || len(lines) != 5 || lines[4] != "template-ok" {
			t.Fatalf("%s:\n%v", what, r)
		}
		if r.stderr != "" {
			t.Errorf("%s wrote to stderr:\n%s", what, r.stderr)
		}
		sec, _ := strconv.ParseInt(lines[3], 10, 64)
		if at := time.Unix(sec, 0); at.Before(start.Add(-2*time.Second)) || at.After(end.Add(2*time.Second)) {
			t.Errorf("%s: guest time %v outside the run [%v, %v]", what, at, start, end)
		}
		t.Logf("%s: %v", what, r.elapsed.Round(time.Millisecond))
		btime, err := strconv.ParseInt(lines[0], 10, 64)
		if err != nil {
			t.Fatalf("%s: btime %q", what, lines[0])
		}
		return out{btime, lines[1], lines[2]}
	}
	first := run("first run (builds the template)")
	ents, _ := os.ReadDir(cache)
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	snaps, _ := filepath.Glob(filepath.Join(cache, "*", "snapshot", "vm.state"))
	if len(snaps) != 1 {
		t.Fatalf("template cache holds %v, want one template", names)
	}
	second := run("second run (restores it)")
	cold := run("--no-template run (boots)", "--no-template")
	if d := first.btime - second.btime; d < -2 || d > 2 {
		t.Errorf("the two runs' kernels booted at %d and %d: not one template's clones", first.btime, second.btime)
	}
	if first.uuid == second.uuid {
		t.Errorf("both clones of the template read UUID %s: the restored kernel did not reseed", first.uuid)
	}
	if first.host == second.host {
		t.Errorf("both clones are named %s", first.host)
	}
	if cold.btime-first.btime < 3 {
		t.Errorf("the --no-template run's kernel booted at %d, with the template's (%d)", cold.btime, first.btime)
	}
}
