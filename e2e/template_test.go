//go:build e2e

package e2e

import (
	"encoding/json"
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
// container's host name, its network interface's MAC, the guest's wall clock, and a page fetched from
// the host over the user network. (The boot ID would not do: the kernel
// makes it when it is first read, after the restore.)
const templateProbe = `awk '/^btime/ {print $2}' /proc/stat; cat /proc/sys/kernel/random/uuid; hostname; cat /sys/class/net/eth0/address; date +%%s; wget -q -O - http://%s:%d/`

// TestRunTemplate: the first `vessel run` builds the template (a VM
// booted up to its agent, snapshotted into the cache) and restores it;
// the second restores the same template; --no-template boots. Clones of
// the template share its boot time but read different random numbers,
// have their own host names and MACs, the host's time, and a working network; a
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
		btime           int64
		uuid, host, mac string
	}
	run := func(what string, extra ...string) out {
		t.Helper()
		metrics := filepath.Join(t.TempDir(), "metrics.json")
		args := append([]string{"--rm", "--network", "user,host-loopback", "--metrics", metrics}, extra...)
		args = append(args, runImage, "sh", "-c", probe)
		start := time.Now()
		r := vesselRun(t, env, "", args...)
		end := time.Now()
		lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
		if r.code != 0 || len(lines) != 6 || lines[5] != "template-ok" {
			t.Fatalf("%s:\n%v", what, r)
		}
		if r.stderr != "" {
			t.Errorf("%s wrote to stderr:\n%s", what, r.stderr)
		}
		sec, _ := strconv.ParseInt(lines[4], 10, 64)
		if at := time.Unix(sec, 0); at.Before(start.Add(-2*time.Second)) || at.After(end.Add(2*time.Second)) {
			t.Errorf("%s: guest time %v outside the run [%v, %v]", what, at, start, end)
		}
		t.Logf("%s: %v; its steps: %s", what, r.elapsed.Round(time.Millisecond), runSteps(t, metrics))
		btime, err := strconv.ParseInt(lines[0], 10, 64)
		if err != nil {
			t.Fatalf("%s: btime %q", what, lines[0])
		}
		return out{btime, lines[1], lines[2], lines[3]}
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
	// The template's own MAC (cmd/vessel's templateMAC) is nobody's.
	for _, o := range []out{first, second} {
		if o.mac == "52:54:00:76:73:6c" {
			t.Errorf("a clone kept the template's MAC %s", o.mac)
		}
	}
	if first.mac == second.mac {
		t.Errorf("both clones have MAC %s", first.mac)
	}
	if cold.btime-first.btime < 3 {
		t.Errorf("the --no-template run's kernel booted at %d, with the template's (%d)", cold.btime, first.btime)
	}
}

// runSteps formats the steps a `vessel run --metrics` file records, as
// "name ms, ...".
func runSteps(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Errorf("--metrics: %v", err)
		return ""
	}
	var m struct {
		Phases []struct {
			Name string  `json:"name"`
			MS   float64 `json:"ms"`
		} `json:"phases"`
	}
	if err := json.Unmarshal(b, &m); err != nil {
		t.Errorf("--metrics: %v:\n%s", err, b)
		return ""
	}
	var parts []string
	for _, p := range m.Phases {
		parts = append(parts, fmt.Sprintf("%s %.0f ms", p.Name, p.MS))
	}
	return strings.Join(parts, ", ")
}
