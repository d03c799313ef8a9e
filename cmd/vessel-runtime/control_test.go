package main

import (
	"strings"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"github.com/spf13/cobra"
)

func TestParseBytes(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int64
		ok   bool
	}{
		{"256m", 256 << 20, true}, {"256MB", 256 << 20, true}, {"1g", 1 << 30, true},
		{"4096", 4096, true}, {"10k", 10 << 10, true}, {"-1", -1, true},
		{"", 0, false}, {"m", 0, false}, {"-5m", 0, false}, {"1.5g", 0, false},
		{"99999999999t", 0, false},
	} {
		got, err := parseBytes(tc.in)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("parseBytes(%q) = %d, %v; want %d, ok %v", tc.in, got, err, tc.want, tc.ok)
		}
	}
}

func TestCheckUpdate(t *testing.T) {
	i64 := func(n int64) *int64 { return &n }
	u64 := func(n uint64) *uint64 { return &n }
	const vm = 256<<20 + guestOverhead // a VM sized for a 256 MiB limit
	for _, tc := range []struct {
		name string
		r    *specs.LinuxResources
		want string // "" for success, else part of the error
	}{
		{"nothing", nil, "no resources"},
		{"pids only", &specs.LinuxResources{Pids: &specs.LinuxPids{Limit: i64(10)}}, ""},
		{"memory within", &specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: i64(128 << 20)}}, ""},
		{"memory at the room", &specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: i64(256 << 20)}}, ""},
		{"memory beyond", &specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: i64(257 << 20)}}, "can go to the container"},
		{"memory unlimited", &specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: i64(-1)}}, ""},
		{"quota of 2 CPUs", &specs.LinuxResources{CPU: &specs.LinuxCPU{Quota: i64(200000), Period: u64(100000)}}, ""},
		{"quota of 3 CPUs", &specs.LinuxResources{CPU: &specs.LinuxCPU{Quota: i64(250000)}}, "has 2 vCPUs"},
		{"cpuset within", &specs.LinuxResources{CPU: &specs.LinuxCPU{Cpus: "0-1"}}, ""},
		{"cpuset beyond", &specs.LinuxResources{CPU: &specs.LinuxCPU{Cpus: "0,2"}}, "vCPUs 0-1"},
		{"cpuset bad", &specs.LinuxResources{CPU: &specs.LinuxCPU{Cpus: "x"}}, "bad CPU"},
		{"mems beyond", &specs.LinuxResources{CPU: &specs.LinuxCPU{Mems: "1"}}, "node 0 only"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := checkUpdate(tc.r, 2, vm)
			if tc.want == "" && err != nil || tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
				t.Fatalf("checkUpdate: %v, want %q", err, tc.want)
			}
		})
	}
}

// TestUpdateFlags reads update's resources as runc does: the JSON of
// --resources, then the individual flags on top.
func TestUpdateFlags(t *testing.T) {
	for _, tc := range []struct {
		name  string
		args  []string
		stdin string
		check func(r *specs.LinuxResources) bool
		err   string
	}{
		{"json from stdin", []string{"--resources", "-"}, `{"pids":{"limit":20}}`,
			func(r *specs.LinuxResources) bool { return r.Pids != nil && *r.Pids.Limit == 20 }, ""},
		{"flags over json", []string{"-r", "-", "--pids-limit", "7", "--memory", "64m", "--cpu-quota", "50000"}, `{"pids":{"limit":20}}`,
			func(r *specs.LinuxResources) bool {
				return *r.Pids.Limit == 7 && *r.Memory.Limit == 64<<20 && *r.CPU.Quota == 50000 && r.CPU.Period == nil
			}, ""},
		{"bad json", []string{"-r", "-"}, `{"pids":`, nil, "not linux.resources JSON"},
		{"bad memory", []string{"--memory", "lots"}, "", nil, "--memory"},
		{"missing file", []string{"-r", "/nonexistent/r.json"}, "", nil, "--resources"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var f updateFlags
			c := &cobra.Command{}
			addUpdateFlags(c, &f)
			if err := c.Flags().Parse(tc.args); err != nil {
				t.Fatal(err)
			}
			r, err := f.read(c, strings.NewReader(tc.stdin))
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("read: %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil || !tc.check(r) {
				t.Fatalf("read: %+v, %v", r, err)
			}
		})
	}
}
