//go:build e2e

package e2e

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	runc "github.com/containerd/go-runc"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// testPauseUpdate is TestRuntime's pause-update: a container that
// writes a counter to a bind-mounted directory every second, and its
// cgroup's pids.max and memory.max, is paused (state paused, the counter
// stops), resumed (it goes on), updated (the new limits show inside, and
// in events --stats; a limit beyond the VM's size is refused and changes
// nothing), paused
// again and deleted by force, which leaves nothing.
func testPauseUpdate(t *testing.T, ctx context.Context) {
	r, state := runtimeClient(t)
	bundle, spec := makeBundle(t, "sh", "-c",
		"i=0; while :; do i=$((i+1)); echo $i >/data/tick.new; mv /data/tick.new /data/tick; "+
			"echo $(cat /sys/fs/cgroup/pids.max) $(cat /sys/fs/cgroup/memory.max) $(nproc) >/data/limits.new; "+
			"mv /data/limits.new /data/limits; sleep 1; done")
	data := t.TempDir()
	spec.Mounts = append(spec.Mounts, specs.Mount{Destination: "/data", Type: "bind", Source: data, Options: []string{"rbind", "rw"}},
		specs.Mount{Destination: "/sys/fs/cgroup", Type: "cgroup", Source: "cgroup", Options: []string{"ro", "nosuid", "noexec", "nodev"}})
	// A cgroup namespace, as docker gives on cgroup v2: the container's
	// /sys/fs/cgroup is then its own cgroup, not the hierarchy's root.
	spec.Linux.Namespaces = append(spec.Linux.Namespaces, specs.LinuxNamespace{Type: specs.CgroupNamespace})
	limit, quota, period := int64(256<<20), int64(200000), uint64(100000)
	spec.Linux.Resources = &specs.LinuxResources{
		Memory: &specs.LinuxMemory{Limit: &limit},
		CPU:    &specs.LinuxCPU{Quota: &quota, Period: &period},
	}
	writeSpec(t, bundle, spec)
	const id = "ctl"
	_, pid := createContainer(t, ctx, r, id, bundle)
	if err := r.Start(ctx, id); err != nil {
		t.Fatalf("start: %v (log: %s)", err, readFile(r.Log))
	}
	tick := func() string { return strings.TrimSpace(readFile(filepath.Join(data, "tick"))) }
	limits := func() string { return strings.TrimSpace(readFile(filepath.Join(data, "limits"))) }
	waitFor := func(what string, ok func() bool) {
		t.Helper()
		for deadline := time.Now().Add(60 * time.Second); !ok(); time.Sleep(200 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("%s: not within 60 s (tick %q, limits %q)", what, tick(), limits())
			}
		}
	}
	waitFor("the first ticks", func() bool { n, _ := strconv.Atoi(tick()); return n >= 2 && limits() != "" })
	if got, want := limits(), "max 268435456 2"; got != want {
		t.Errorf("pids.max memory.max nproc: %q, want %q", got, want)
	}

	if err := r.Pause(ctx, id); err != nil {
		t.Fatalf("pause: %v (log: %s)", err, readFile(r.Log))
	}
	wantStatus(t, ctx, r, id, "paused")
	time.Sleep(time.Second) // a write under way when paused lands
	before := tick()
	time.Sleep(4 * time.Second)
	if after := tick(); after != before {
		t.Errorf("the counter went on while paused: %s, then %s", before, after)
	}
	// events --stats and update need the guest: refused while paused.
	if _, err := r.Stats(ctx, id); err == nil {
		t.Errorf("events --stats of a paused container succeeded")
	}
	pids := int64(40)
	if err := r.Update(ctx, id, &specs.LinuxResources{Pids: &specs.LinuxPids{Limit: &pids}}); err == nil {
		t.Errorf("update of a paused container succeeded")
	}
	if err := r.Resume(ctx, id); err != nil {
		t.Fatalf("resume: %v (log: %s)", err, readFile(r.Log))
	}
	wantStatus(t, ctx, r, id, "running")
	if err := r.Resume(ctx, id); err == nil || !strings.Contains(readFile(r.Log), "container not paused") {
		t.Errorf("resume of a running container: %v, want container not paused (log: %s)", err, readFile(r.Log))
	}
	waitFor("the counter after resume", func() bool { return tick() != before })

	// update: the new limits show in the container's cgroup.
	mem := int64(128 << 20)
	if err := r.Update(ctx, id, &specs.LinuxResources{Pids: &specs.LinuxPids{Limit: &pids}, Memory: &specs.LinuxMemory{Limit: &mem}}); err != nil {
		t.Fatalf("update: %v (log: %s)", err, readFile(r.Log))
	}
	waitFor("the updated limits", func() bool { return limits() == "40 134217728 2" })
	// events --stats (go-runc's Stats, as a shim would call it): the
	// container's cgroup in the VM, the new limits in it.
	st, err := r.Stats(ctx, id)
	if err != nil {
		t.Fatalf("events --stats: %v (log: %s)", err, readFile(r.Log))
	}
	if st.Pids.Limit != 40 || st.Pids.Current < 2 || st.Memory.Usage.Limit != 128<<20 || st.Memory.Usage.Usage == 0 || st.Cpu.Usage.Total == 0 {
		t.Errorf("events --stats: pids %+v, memory usage %+v, cpu usage %+v; want the updated limits (40 pids, 128 MiB), sh and sleep, some memory and CPU time",
			st.Pids, st.Memory.Usage, st.Cpu.Usage)
	}
	// Beyond the VM: refused, and nothing changes.
	big, many := int64(2<<30), int64(400000)
	for name, res := range map[string]*specs.LinuxResources{
		"memory": {Memory: &specs.LinuxMemory{Limit: &big}, Pids: &specs.LinuxPids{Limit: &pids}},
		"cpus":   {CPU: &specs.LinuxCPU{Quota: &many, Period: &period}},
	} {
		if err := r.Update(ctx, id, res); err == nil {
			t.Errorf("update with too much %s succeeded", name)
		}
	}
	time.Sleep(3 * time.Second)
	if got := limits(); got != "40 134217728 2" {
		t.Errorf("limits after the refused updates: %q", got)
	}

	// Paused again, delete --force ends it all.
	if err := r.Pause(ctx, id); err != nil {
		t.Fatalf("pause again: %v (log: %s)", err, readFile(r.Log))
	}
	if err := r.Delete(ctx, id, nil); err == nil {
		t.Errorf("delete of a paused container without --force succeeded")
	}
	if err := r.Delete(ctx, id, &runc.DeleteOpts{Force: true}); err != nil {
		t.Fatalf("delete --force: %v (log: %s)", err, readFile(r.Log))
	}
	waitPid(t, pid)
	checkNothingLeft(t, state)
	if _, err := os.Stat(filepath.Join(data, "tick")); err != nil {
		t.Errorf("the bind-mounted directory: %v", err)
	}
}
