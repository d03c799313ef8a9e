package main

import (
	"reflect"
	"strings"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/vesselvm/vessel/internal/cgroup"
)

// TestCgroupDir: runc's two forms of linux.cgroupsPath map to the
// directories runc (or systemd for it) would use, and none climbs out of
// the hierarchy.
func TestCgroupDir(t *testing.T) {
	own, err := cgroup.Own()
	for _, tc := range []struct {
		path    string
		systemd bool
		want    string // "" with wantErr "" means no cgroup
		wantErr string
	}{
		{"", false, "", ""},
		{"/docker/abc", false, "/sys/fs/cgroup/docker/abc", ""},
		{"/kubepods/besteffort/pod1/c1", false, "/sys/fs/cgroup/kubepods/besteffort/pod1/c1", ""},
		{"/../../etc", false, "/sys/fs/cgroup/etc", ""},
		{"/", false, "", "the hierarchy's root"},
		{"/a\x00b", false, "", "NUL"},
		{"system.slice:docker:abc", true, "/sys/fs/cgroup/system.slice/docker-abc.scope", ""},
		{":docker:abc", true, "/sys/fs/cgroup/system.slice/docker-abc.scope", ""},
		{"kubepods-besteffort-pod1.slice:cri-containerd:c1", true, "/sys/fs/cgroup/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1.slice/cri-containerd-c1.scope", ""},
		{"-.slice::c1", true, "/sys/fs/cgroup/c1.scope", ""},
		{"machine.slice::x.slice", true, "/sys/fs/cgroup/machine.slice/x.slice", ""},
		{"/docker/abc", true, "", "slice:prefix:name"},
		{"system.slice:docker:", true, "", "slice:prefix:name"},
		{"a--b.slice:p:n", true, "", "bad slice name"},
		{"../x.slice:p:n", true, "", "bad slice name"},
		{"system.slice:p:..", true, "", ""}, // p-...scope: a name, no climb
		{"system.slice::..", true, "/sys/fs/cgroup/system.slice/...scope", ""},
		{"system.slice::a/b", true, "", "bad unit name"},
	} {
		got, err := cgroupDir(tc.path, tc.systemd)
		switch {
		case tc.wantErr != "":
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("cgroupDir(%q, %v) = %q, %v; want an error with %q", tc.path, tc.systemd, got, err, tc.wantErr)
			}
		case err != nil:
			t.Errorf("cgroupDir(%q, %v): %v", tc.path, tc.systemd, err)
		case tc.want != "" && got != tc.want:
			t.Errorf("cgroupDir(%q, %v) = %q, want %q", tc.path, tc.systemd, got, tc.want)
		case tc.path != "" && !strings.HasPrefix(got, cgroupRoot+"/"):
			t.Errorf("cgroupDir(%q, %v) = %q: not below %s", tc.path, tc.systemd, got, cgroupRoot)
		}
	}
	if err == nil && own != "" {
		// A relative path is below the runtime's own cgroup's parent.
		got, err := cgroupDir("c1", false)
		if err != nil || !strings.HasPrefix(got, cgroupRoot) || !strings.HasSuffix(got, "/c1") {
			t.Errorf("cgroupDir(c1) = %q, %v", got, err)
		}
	}
}

// TestCgroupLimits: the host cgroup bounds the whole VM: memory.max is
// the VM's size plus the VMM's overhead when the spec limits memory, the
// CPU quota and cpuset are the spec's, shares become a weight as runc
// converts them, and pids stays in the guest.
func TestCgroupLimits(t *testing.T) {
	i64 := func(v int64) *int64 { return &v }
	u64 := func(v uint64) *uint64 { return &v }
	for _, tc := range []struct {
		name string
		r    *specs.LinuxResources
		want map[string]string
	}{
		{"none", nil, map[string]string{}},
		{"docker --memory 256m --cpus 0.1", &specs.LinuxResources{
			Memory: &specs.LinuxMemory{Limit: i64(256 << 20)},
			CPU:    &specs.LinuxCPU{Quota: i64(10000), Period: u64(100000)},
			Pids:   &specs.LinuxPids{Limit: i64(10)}},
			map[string]string{"memory.max": "503316480", "cpu.max": "10000 100000"}},
		{"quota without period", &specs.LinuxResources{CPU: &specs.LinuxCPU{Quota: i64(50000)}},
			map[string]string{"cpu.max": "50000 100000"}},
		{"shares and cpuset", &specs.LinuxResources{CPU: &specs.LinuxCPU{Shares: u64(1024), Cpus: "0-1", Mems: "0"}},
			map[string]string{"cpu.weight": "39", "cpuset.cpus": "0-1", "cpuset.mems": "0"}},
		{"unlimited memory", &specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: i64(-1)}}, map[string]string{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			const vm = (256 << 20) + guestOverhead
			got := map[string]string{}
			for _, l := range cgroupLimits(tc.r, vm) {
				got[l.File] = l.Value
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("got %v, want %v", got, tc.want)
			}
		})
	}
}

// TestIOLimits: docker's --blkio-weight, --blkio-weight-device and
// --device-{read,write}-{bps,iops} become the VMM's host cgroup's
// io.weight and io.max lines, as runc writes them on cgroup v2, in order;
// only io.weight may be missing on the host.
func TestIOLimits(t *testing.T) {
	w, dw := uint16(300), uint16(1000)
	dev := func(maj, min int64) specs.LinuxBlockIODevice { return specs.LinuxBlockIODevice{Major: maj, Minor: min} }
	got := cgroupLimits(&specs.LinuxResources{BlockIO: &specs.LinuxBlockIO{
		Weight:                  &w,
		WeightDevice:            []specs.LinuxWeightDevice{{LinuxBlockIODevice: dev(8, 0), Weight: &dw}},
		ThrottleReadBpsDevice:   []specs.LinuxThrottleDevice{{LinuxBlockIODevice: dev(8, 0), Rate: 1 << 20}},
		ThrottleWriteBpsDevice:  []specs.LinuxThrottleDevice{{LinuxBlockIODevice: dev(8, 16), Rate: 0}},
		ThrottleReadIOPSDevice:  []specs.LinuxThrottleDevice{{LinuxBlockIODevice: dev(253, 1), Rate: 100}},
		ThrottleWriteIOPSDevice: []specs.LinuxThrottleDevice{{LinuxBlockIODevice: dev(253, 1), Rate: 50}},
	}}, 1<<30)
	want := []cgroup.Limit{
		{File: "io.weight", Value: "default 2930", Optional: true},
		{File: "io.weight", Value: "8:0 10000", Optional: true},
		{File: "io.max", Value: "8:0 rbps=1048576"},
		{File: "io.max", Value: "8:16 wbps=max"},
		{File: "io.max", Value: "253:1 riops=100"},
		{File: "io.max", Value: "253:1 wiops=50"},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got %+v\nwant %+v", got, want)
	}
	for w, want := range map[uint16]string{1: "1", 10: "1", 500: "4950", 1000: "10000", 5000: "10000"} {
		if got := ioWeight(w); got != want {
			t.Errorf("ioWeight(%d) = %s, want %s", w, got, want)
		}
	}
}
