package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"github.com/spf13/cobra"

	"github.com/vesselvm/vessel/guest/agentproto"
)

// statusPaused is runtime-spec's status of a container whose VM's vCPUs
// are stopped (pause).
const statusPaused = "paused"

// Control operations of pause, resume and update.
const (
	opPause  = "pause"
	opResume = "resume"
	opUpdate = "update"
)

// maxResources bounds update's --resources JSON.
const maxResources = 1 << 20

func newPause(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "pause ID",
		Short: "stop the container's VM's vCPUs (the whole container stops)",
		Args:  exactID,
		RunE: func(_ *cobra.Command, args []string) error {
			return g.ctl(args[0], ctlRequest{Op: opPause})
		},
	}
}

func newResume(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "resume ID",
		Short: "let a paused container's VM run again",
		Args:  exactID,
		RunE: func(_ *cobra.Command, args []string) error {
			return g.ctl(args[0], ctlRequest{Op: opResume})
		},
	}
}

// updateFlags are runc update's.
type updateFlags struct {
	resources  string
	memory     string
	cpuQuota   int64
	cpuPeriod  uint64
	cpusetCPUs string
	pidsLimit  int64
}

func newUpdate(g *globals) *cobra.Command {
	var f updateFlags
	c := &cobra.Command{
		Use:   "update [--resources FILE|-] [flags] ID",
		Short: "change the container's cgroup limits, inside its VM's size",
		Args:  exactID,
		RunE: func(c *cobra.Command, args []string) error {
			r, err := f.read(c, os.Stdin)
			if err != nil {
				return err
			}
			return g.ctl(args[0], ctlRequest{Op: opUpdate, Resources: r})
		},
	}
	addUpdateFlags(c, &f)
	return c
}

// addUpdateFlags adds runc update's flags.
func addUpdateFlags(c *cobra.Command, f *updateFlags) {
	fl := c.Flags()
	fl.StringVarP(&f.resources, "resources", "r", "", "a JSON file of linux.resources (- for stdin)")
	fl.StringVar(&f.memory, "memory", "", "memory limit in bytes (k, m, g suffixes)")
	fl.Int64Var(&f.cpuQuota, "cpu-quota", 0, "CPU CFS quota in microseconds")
	fl.Uint64Var(&f.cpuPeriod, "cpu-period", 0, "CPU CFS period in microseconds")
	fl.StringVar(&f.cpusetCPUs, "cpuset-cpus", "", "the VM's CPUs the container may use (0-3,5)")
	fl.Int64Var(&f.pidsLimit, "pids-limit", 0, "maximum number of tasks")
}

// read makes the resources of an update: --resources's JSON, then the
// individual flags given on top of it, as runc does.
func (f *updateFlags) read(c *cobra.Command, stdin io.Reader) (*specs.LinuxResources, error) {
	r := &specs.LinuxResources{}
	if f.resources != "" {
		var in io.Reader = stdin
		if f.resources != "-" {
			file, err := os.Open(f.resources)
			if err != nil {
				return nil, errorf("--resources: %v", err)
			}
			defer file.Close()
			in = file
		}
		b, err := io.ReadAll(io.LimitReader(in, maxResources+1))
		if err != nil {
			return nil, errorf("--resources: %v", err)
		}
		if len(b) > maxResources {
			return nil, errorf("--resources: more than %d bytes", maxResources)
		}
		if err := json.Unmarshal(b, r); err != nil {
			return nil, errorf("--resources: not linux.resources JSON: %v", err)
		}
	}
	set := c.Flags().Changed
	if set("memory") {
		n, err := parseBytes(f.memory)
		if err != nil {
			return nil, errorf("--memory %q: %v", f.memory, err)
		}
		if r.Memory == nil {
			r.Memory = &specs.LinuxMemory{}
		}
		r.Memory.Limit = &n
	}
	if set("cpu-quota") || set("cpu-period") || set("cpuset-cpus") {
		if r.CPU == nil {
			r.CPU = &specs.LinuxCPU{}
		}
		if set("cpu-quota") {
			r.CPU.Quota = &f.cpuQuota
		}
		if set("cpu-period") {
			r.CPU.Period = &f.cpuPeriod
		}
		if set("cpuset-cpus") {
			r.CPU.Cpus = f.cpusetCPUs
		}
	}
	if set("pids-limit") {
		r.Pids = &specs.LinuxPids{Limit: &f.pidsLimit}
	}
	return r, nil
}

// parseBytes reads a size as runc's --memory: a number of bytes with an
// optional binary suffix (b, k, m, g, t; case and a trailing b ignored).
// -1 means no limit.
func parseBytes(s string) (int64, error) {
	t := strings.ToLower(strings.TrimSpace(s))
	if t == "-1" {
		return -1, nil
	}
	mult := int64(1)
	for _, u := range []struct {
		suffix string
		m      int64
	}{{"tb", 1 << 40}, {"gb", 1 << 30}, {"mb", 1 << 20}, {"kb", 1 << 10}, {"t", 1 << 40}, {"g", 1 << 30}, {"m", 1 << 20}, {"k", 1 << 10}, {"b", 1}} {
		if strings.HasSuffix(t, u.suffix) {
			t, mult = strings.TrimSuffix(t, u.suffix), u.m
			break
		}
	}
	n, err := strconv.ParseInt(t, 10, 64)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("want a number of bytes with an optional k, m, g or t")
	}
	if n > (1<<62)/mult {
		return 0, fmt.Errorf("too large")
	}
	return n * mult, nil
}

// checkUpdate refuses resources a VM of cpus vCPUs and memory bytes
// cannot give the container: a memory limit beyond the VM's RAM less
// what the guest needs, a CPU quota of more CPUs than vCPUs, a cpuset
// naming CPUs the VM does not have. Limits it cannot check (pids, I/O
// weights) go to the guest's runc, which refuses what is invalid.
func checkUpdate(r *specs.LinuxResources, cpus int, memory uint64) error {
	if r == nil {
		return fmt.Errorf("no resources to update")
	}
	if m := r.Memory; m != nil && m.Limit != nil && *m.Limit > 0 {
		room := uint64(0)
		if memory > guestOverhead {
			room = memory - guestOverhead
		}
		if uint64(*m.Limit) > room {
			return fmt.Errorf("memory limit %d MiB: the container's VM has %d MiB, of which %d MiB can go to the container",
				*m.Limit>>20, memory>>20, room>>20)
		}
	}
	if c := r.CPU; c != nil {
		if c.Quota != nil && *c.Quota > 0 {
			period := uint64(100000)
			if c.Period != nil && *c.Period > 0 {
				period = *c.Period
			}
			if n := (uint64(*c.Quota) + period - 1) / period; n > uint64(cpus) {
				return fmt.Errorf("CPU quota %d per %d µs: %d CPUs, but the container's VM has %d vCPUs", *c.Quota, period, n, cpus)
			}
		}
		if c.Cpus != "" {
			if err := checkCPUList(c.Cpus, cpus); err != nil {
				return fmt.Errorf("cpuset %q: %v", c.Cpus, err)
			}
		}
		if c.Mems != "" && c.Mems != "0" {
			return fmt.Errorf("cpuset mems %q: the container's VM has memory node 0 only", c.Mems)
		}
	}
	return nil
}

// checkCPUList checks that a cpuset list names only CPUs 0 to cpus-1.
func checkCPUList(list string, cpus int) error {
	if _, err := countCPUs(list); err != nil {
		return err
	}
	for _, part := range strings.Split(list, ",") {
		part = strings.TrimSpace(part)
		if _, hi, isRange := strings.Cut(part, "-"); isRange {
			part = hi
		}
		if n, _ := strconv.Atoi(part); n >= cpus {
			return fmt.Errorf("CPU %d: the container's VM has vCPUs 0-%d", n, cpus-1)
		}
	}
	return nil
}

// ctl sends a pause, resume or update to the container's VMM process.
func (g *globals) ctl(id string, req ctlRequest) error {
	dir, rec, err := g.load(id)
	if err != nil {
		return err
	}
	if rec.Sandbox != "" && req.Op != opUpdate {
		return errorf("%s of a pod's container: not supported by vessel-runtime (its VM is its sandbox's)", req.Op)
	}
	if !rec.vmmAlive() {
		return errorf("container not running")
	}
	_, err = call(dir, req)
	return err
}

// handleControl carries out pause, resume and update in the VMM
// process; ok is false for another operation. st is the status when the
// request came.
func (p *vmmProc) handleControl(ctx context.Context, req ctlRequest, st string) (rep ctlReply, ok bool) {
	fail := func(format string, args ...any) (ctlReply, bool) {
		return ctlReply{Status: st, Error: fmt.Sprintf(format, args...)}, true
	}
	switch req.Op {
	case opPause:
		p.mu.Lock()
		defer p.mu.Unlock()
		if p.status != statusRunning && p.status != statusCreated {
			return fail("container not running")
		}
		if err := p.vm.Pause(); err != nil {
			return fail("%v", p.guestFailure("pause", err))
		}
		p.unpaused, p.status = p.status, statusPaused
		return ctlReply{Status: statusPaused}, true
	case opResume:
		p.mu.Lock()
		if p.status != statusPaused {
			p.mu.Unlock()
			return fail("container not paused")
		}
		if err := p.vm.Resume(); err != nil {
			p.mu.Unlock()
			return fail("%v", p.guestFailure("resume", err))
		}
		p.status = p.unpaused
		status := p.status
		// Signals a kill sent while paused, in order, as a frozen
		// cgroup's processes get them when thawed: sent without the
		// lock, which a kill, state or delete meanwhile takes.
		sigs := p.held
		p.held = nil
		p.mu.Unlock()
		for _, h := range sigs {
			if rep := p.signalIn(ctx, p.id, h.exec, status, h.sig); rep.Error != "" {
				p.logf("resume: deliver signal %d: %s", h.sig, rep.Error)
			}
		}
		return ctlReply{Status: status}, true
	case opUpdate:
		if st != statusCreated && st != statusRunning {
			return fail("cannot update a container that is %s", st)
		}
		if err := checkUpdate(req.Resources, p.vmCPUs, p.vmMemory); err != nil {
			return fail("update: %v", err)
		}
		if _, err := p.ag.Call(ctx, agentproto.Request{Op: agentproto.OpUpdate, Container: p.id,
			Resources: req.Resources}); err != nil {
			return fail("%v", p.agentError("update", err))
		}
		return ctlReply{Status: st}, true
	}
	return ctlReply{}, false
}

// heldSignal is a kill's signal kept while the VM is paused.
type heldSignal struct {
	sig  int
	exec string // the exec'd process it is for ("": the container's)
}

// holdSignal keeps a kill's signal for resume if the VM is paused; it
// reports whether it did.
func (p *vmmProc) holdSignal(sig heldSignal) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.status != statusPaused {
		return false
	}
	if len(p.held) < 64 {
		p.held = append(p.held, sig)
	}
	return true
}

// unpause resumes a paused VM for the end of the container (delete):
// its teardown goes through the guest.
func (p *vmmProc) unpause() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.status == statusPaused && p.vm.Resume() == nil {
		p.status = p.unpaused
	}
}
