package main

import (
	"fmt"
	"runtime"
	"strconv"
	"strings"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/vesselvm/vessel/vmm"
)

// guestOverhead is the RAM a container's VM needs besides the container:
// the guest kernel, the initramfs unpacked in RAM (init, agent, runc),
// and their processes. Measured in the guest at boot: about 90 MiB in
// use before the container starts; the rest is headroom for the page
// cache of the container's files and runc's work.
const guestOverhead = 160 << 20

// vmSize is the VM for a container: linux.resources sizes it as docker's
// --memory and --cpus (or --cpuset-cpus) mean it, and the global
// --vm-memory and --vm-cpus are the defaults. The memory limit stays
// the container's cgroup limit in the guest; the VM gets it plus
// guestOverhead. vCPUs: the CPU quota over its period, rounded up, else
// the number of CPUs in the cpuset; at most the cpuset's and the host's.
// create (choosing the VM's template) and the VMM process (in the
// cpuset's cgroup) compute the same size.
func (g *globals) vmSize(s *specs.Spec) (cpus int, memory uint64, err error) {
	cpus, memory = g.cpus, uint64(g.memoryMiB)<<20
	var r *specs.LinuxResources
	if s.Linux != nil {
		r = s.Linux.Resources
	}
	if r != nil && r.Memory != nil && r.Memory.Limit != nil && *r.Memory.Limit > 0 {
		limit := uint64(*r.Memory.Limit)
		if limit > 1<<46 {
			return 0, 0, fmt.Errorf("linux.resources.memory.limit %d: more than a VM can have", limit)
		}
		memory = (limit + guestOverhead + 4095) &^ 4095
	}
	if r != nil && r.CPU != nil {
		if r.CPU.Quota != nil && *r.CPU.Quota > 0 {
			period := uint64(100000)
			if r.CPU.Period != nil && *r.CPU.Period > 0 {
				period = *r.CPU.Period
			}
			cpus = int((uint64(*r.CPU.Quota) + period - 1) / period)
		}
		if r.CPU.Cpus != "" {
			// No more vCPUs than the cpuset's CPUs, which are all the
			// VMM process (born in that cpuset) may run on; without a
			// quota, as many.
			n, err := countCPUs(r.CPU.Cpus)
			if err != nil {
				return 0, 0, fmt.Errorf("linux.resources.cpu.cpus %q: %v", r.CPU.Cpus, err)
			}
			if r.CPU.Quota == nil || *r.CPU.Quota <= 0 {
				cpus = n
			}
			cpus = min(cpus, n)
		}
	}
	cpus = max(1, min(cpus, runtime.NumCPU()))
	if err := vmm.CheckResources(cpus, memory); err != nil {
		return 0, 0, fmt.Errorf("the container's VM (%d vCPUs, %d MiB): %v", cpus, memory>>20, err)
	}
	return cpus, memory, nil
}

// countCPUs counts the CPUs of a cpuset list ("0-3,5").
func countCPUs(list string) (int, error) {
	n := 0
	for _, part := range strings.Split(list, ",") {
		lo, hi, isRange := strings.Cut(strings.TrimSpace(part), "-")
		a, err := strconv.Atoi(lo)
		if err != nil || a < 0 {
			return 0, fmt.Errorf("bad CPU %q", part)
		}
		b := a
		if isRange {
			if b, err = strconv.Atoi(hi); err != nil || b < a {
				return 0, fmt.Errorf("bad CPU range %q", part)
			}
		}
		if b-a >= 4096 {
			return 0, fmt.Errorf("CPU range %q too large", part)
		}
		n += b - a + 1
	}
	return n, nil
}

// guestResources is linux.resources as the guest's runc applies it: the
// cpuset names the host's CPUs and memory nodes, which the VM does not
// have (its vCPUs are the set), and the block I/O entries of a device
// (weightDevice, the throttles) name host devices by number, which the
// guest does not have either (runc fails writing io.max for a device
// the kernel does not know); the rest applies as given, the block I/O
// weight included.
func guestResources(r *specs.LinuxResources) *specs.LinuxResources {
	if r == nil {
		return nil
	}
	rr := *r
	if c := r.CPU; c != nil && (c.Cpus != "" || c.Mems != "") {
		cpu := *c
		cpu.Cpus, cpu.Mems = "", ""
		rr.CPU = &cpu
	}
	if b := r.BlockIO; b != nil {
		rr.BlockIO = &specs.LinuxBlockIO{Weight: b.Weight, LeafWeight: b.LeafWeight}
	}
	return &rr
}
