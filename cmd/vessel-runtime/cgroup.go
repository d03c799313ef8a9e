package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/vesselvm/vessel/internal/cgroup"
)

// cgroupRoot is where the host's cgroup v2 hierarchy is mounted.
const cgroupRoot = cgroup.Root

// vmmOverhead is the host memory a VMM process uses besides its guest's
// RAM (Go runtime, device buffers, the 9P servers): its cgroup's
// memory.max is the VM's size plus this.
const vmmOverhead = 64 << 20

// hostCgroup is the host cgroup a container's VMM process is born in
// (clone3's CLONE_INTO_CGROUP): the spec's linux.cgroupsPath, as runc
// would make it, with limits for the whole VM from linux.resources. The
// container's own cgroup, with the spec's limits as given, is in the
// guest; this one bounds what the VM costs the host (its vCPU and
// device threads, its guest RAM), so that the manager's limits and
// accounting (docker stats, the kubelet's eviction, a pod's memory.max)
// see the VM. pids is left to the guest's cgroup: the VMM's threads
// are not the container's processes.
type hostCgroup struct {
	Dir string `json:"dir"`
	// Made are the groups create made (the deepest last), removed by
	// delete.
	Made []string `json:"made,omitempty"`
}

// cgroupDir is the host directory for a spec's cgroupsPath: with
// --systemd-cgroup, runc's "slice:prefix:name" (the directory systemd
// gives the scope prefix-name.scope in that slice); else a path, from
// the hierarchy's root when absolute, from the runtime's own cgroup's
// parent when relative. "" when the spec names none.
func cgroupDir(path string, systemd bool) (string, error) {
	if path == "" {
		return "", nil
	}
	if systemd {
		parts := strings.Split(path, ":")
		if len(parts) != 3 || parts[2] == "" {
			return "", fmt.Errorf("linux.cgroupsPath %q: with --systemd-cgroup it is slice:prefix:name", path)
		}
		slice, err := expandSlice(parts[0])
		if err != nil {
			return "", fmt.Errorf("linux.cgroupsPath %q: %v", path, err)
		}
		unit := parts[2]
		if !strings.HasSuffix(unit, ".slice") {
			if parts[1] != "" {
				unit = parts[1] + "-" + unit
			}
			unit += ".scope"
		}
		if strings.ContainsAny(unit, "/\x00") || unit == "." || unit == ".." {
			return "", fmt.Errorf("linux.cgroupsPath %q: bad unit name %q", path, unit)
		}
		return filepath.Join(cgroupRoot, slice, unit), nil
	}
	if strings.ContainsRune(path, 0) {
		return "", fmt.Errorf("linux.cgroupsPath %q: NUL byte", path)
	}
	if !filepath.IsAbs(path) {
		own, err := cgroup.Own()
		if err != nil {
			return "", fmt.Errorf("linux.cgroupsPath %q: relative to the runtime's cgroup: %v", path, err)
		}
		path = filepath.Join(filepath.Dir(own), path)
	}
	// Cleaned from "/", no ".." climbs out of the hierarchy.
	rel := filepath.Clean("/" + path)
	if rel == "/" {
		return "", fmt.Errorf("linux.cgroupsPath %q: the hierarchy's root", path)
	}
	return filepath.Join(cgroupRoot, rel), nil
}

// expandSlice turns a systemd slice name into its cgroup path, as systemd
// nests them: "a-b-c.slice" is a.slice/a-b.slice/a-b-c.slice; "" is
// system.slice (runc's default); "-.slice" is the root.
func expandSlice(slice string) (string, error) {
	if slice == "" {
		return "system.slice", nil
	}
	if slice == "-.slice" {
		return "", nil
	}
	name, ok := strings.CutSuffix(slice, ".slice")
	if !ok || name == "" || strings.ContainsAny(name, "/\x00") || strings.HasPrefix(name, "-") ||
		strings.HasSuffix(name, "-") || strings.Contains(name, "--") {
		return "", fmt.Errorf("bad slice name %q", slice)
	}
	var dirs []string
	prefix := ""
	for _, part := range strings.Split(name, "-") {
		prefix += part
		dirs = append(dirs, prefix+".slice")
		prefix += "-"
	}
	return filepath.Join(dirs...), nil
}

// cgroupLimits are the cgroup v2 files written for a VM of that size
// under the spec's resources, in the order they are written (the cpuset
// before the rest, as runc does): the whole VM's memory (when the spec
// limits memory), the CPU quota and weight as asked, the cpuset, and the
// block I/O weight and throttles (ioLimits).
func cgroupLimits(r *specs.LinuxResources, vmMemory uint64) []cgroup.Limit {
	var out []cgroup.Limit
	if r == nil {
		return out
	}
	if c := r.CPU; c != nil {
		if c.Cpus != "" {
			out = append(out, cgroup.Limit{File: "cpuset.cpus", Value: c.Cpus})
		}
		if c.Mems != "" {
			out = append(out, cgroup.Limit{File: "cpuset.mems", Value: c.Mems})
		}
	}
	if r.Memory != nil && r.Memory.Limit != nil && *r.Memory.Limit > 0 {
		out = append(out, cgroup.Limit{File: "memory.max", Value: strconv.FormatUint(vmMemory+vmmOverhead, 10)})
	}
	if c := r.CPU; c != nil {
		if c.Quota != nil && *c.Quota > 0 {
			period := uint64(100000)
			if c.Period != nil && *c.Period > 0 {
				period = *c.Period
			}
			out = append(out, cgroup.Limit{File: "cpu.max", Value: fmt.Sprintf("%d %d", *c.Quota, period)})
		}
		if c.Shares != nil && *c.Shares > 0 {
			// runc's conversion of cgroup v1 shares [2, 262144] to v2
			// weights [1, 10000].
			s := min(max(*c.Shares, 2), 262144)
			out = append(out, cgroup.Limit{File: "cpu.weight", Value: strconv.FormatUint(1+((s-2)*9999)/262142, 10)})
		}
	}
	return append(out, ioLimits(r.BlockIO)...)
}

// ioLimits are the block I/O limits, written as runc writes them on
// cgroup v2 (io.weight, io.max). They name host devices, which only the
// host has: the VMM does the VM's I/O on them (its disks' files, its
// shares), so they bound the VMM's cgroup, while the guest's runc gets
// the weight alone (guestResources). io.weight exists only where the
// host kernel has the I/O cost model (or BFQ, whose io.bfq.weight runc
// would prefer): a missing one is skipped; a throttle the host cannot
// apply fails the create, as under runc.
func ioLimits(b *specs.LinuxBlockIO) []cgroup.Limit {
	if b == nil {
		return nil
	}
	var out []cgroup.Limit
	if b.Weight != nil && *b.Weight > 0 {
		out = append(out, cgroup.Limit{File: "io.weight", Value: "default " + ioWeight(*b.Weight), Optional: true})
	}
	for _, d := range b.WeightDevice {
		if d.Weight != nil && *d.Weight > 0 {
			out = append(out, cgroup.Limit{File: "io.weight", Value: fmt.Sprintf("%d:%d %s", d.Major, d.Minor, ioWeight(*d.Weight)), Optional: true})
		}
	}
	for _, t := range []struct {
		key  string
		devs []specs.LinuxThrottleDevice
	}{{"rbps", b.ThrottleReadBpsDevice}, {"wbps", b.ThrottleWriteBpsDevice},
		{"riops", b.ThrottleReadIOPSDevice}, {"wiops", b.ThrottleWriteIOPSDevice}} {
		for _, d := range t.devs {
			v := "max"
			if d.Rate > 0 {
				v = strconv.FormatUint(d.Rate, 10)
			}
			out = append(out, cgroup.Limit{File: "io.max", Value: fmt.Sprintf("%d:%d %s=%s", d.Major, d.Minor, t.key, v)})
		}
	}
	return out
}

// ioWeight is runc's conversion of a blkio weight [10, 1000] to an
// io.weight [1, 10000] (libcontainer/cgroups ConvertBlkIOToIOWeightValue).
func ioWeight(w uint16) string {
	v := uint64(min(max(w, 10), 1000))
	return strconv.FormatUint(1+(v-10)*9999/990, 10)
}

// makeHostCgroup makes (or takes, when it exists) the VMM's host cgroup
// for the spec and writes its limits. It returns nil when there is
// nothing to do: no cgroupsPath, or no cgroup v2 hierarchy this process
// may change (a rootless runtime, as runc's rootless mode ignores it).
func makeHostCgroup(s *specs.Spec, systemd bool, vmMemory uint64) (*hostCgroup, error) {
	if s.Linux == nil || s.Linux.CgroupsPath == "" || cgroup.Writable(cgroupRoot) != nil {
		return nil, nil
	}
	dir, err := cgroupDir(s.Linux.CgroupsPath, systemd)
	if err != nil || dir == "" {
		return nil, err
	}
	made, err := cgroup.Make(cgroupRoot, dir, cgroupLimits(s.Linux.Resources, vmMemory))
	if err != nil {
		return nil, fmt.Errorf("host %w", err)
	}
	return &hostCgroup{Dir: dir, Made: made}, nil
}

// open opens the cgroup's directory for clone3's CLONE_INTO_CGROUP.
func (cg *hostCgroup) open() (*os.File, error) {
	f, err := os.OpenFile(cg.Dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("host cgroup: %w", err)
	}
	return f, nil
}

// remove removes the groups create made (its processes are gone by
// then: rmdir fails on a group still in use, and it stays, with those
// above it).
func (cg *hostCgroup) remove() {
	if cg != nil {
		cgroup.Remove(cg.Made)
	}
}
