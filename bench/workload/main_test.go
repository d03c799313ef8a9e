package main

import (
	"testing"
	"time"
)

func TestPrimes(t *testing.T) {
	// The odd primes up to 100 (sysbench counts from 3).
	if n := primes(100); n != 24 {
		t.Errorf("primes(100) = %d, want 24", n)
	}
}

func TestParseSize(t *testing.T) {
	for in, want := range map[string]int64{"1": 1, "4K": 4096, "64M": 64 << 20, "2G": 2 << 30} {
		if got, err := parseSize(in); err != nil || got != want {
			t.Errorf("parseSize(%q) = %d, %v", in, got, err)
		}
	}
	for _, in := range []string{"", "M", "-1M", "1T", "0"} {
		if _, err := parseSize(in); err == nil {
			t.Errorf("parseSize(%q) accepted", in)
		}
	}
}

// Every workload runs with tiny sizes and reports its metrics.
func TestWorkloads(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		args []string
		want []string
	}{
		{[]string{"cpu", "-time", "50ms", "-threads", "2"}, []string{"events_per_s"}},
		{[]string{"stream", "-n", "10000"}, []string{"copy_mb_per_s", "scale_mb_per_s", "add_mb_per_s", "triad_mb_per_s"}},
		{[]string{"compress", "-size", "1M", "-dir", dir}, []string{"mb_per_s"}},
		{[]string{"disk", "-size", "2M", "-dir", dir, "-time", "50ms"}, []string{"seq_write_mb_per_s", "seq_read_mb_per_s", "rand_read_iops", "rand_write_iops"}},
		{[]string{"probe", "-marker", dir}, []string{"processes", "cpus", "mem_mib"}},
		{[]string{"memhog", "-max-mb", "32"}, []string{"allocated_mib"}},
		{[]string{"cpulimit", "-time", "50ms"}, []string{"cores_used"}},
	} {
		start := time.Now()
		r, err := run(tc.args[0], tc.args[1:])
		if err != nil {
			t.Errorf("%v: %v", tc.args, err)
			continue
		}
		for _, m := range tc.want {
			if v, ok := r.Metrics[m]; !ok || v <= 0 {
				t.Errorf("%v: metric %s = %v (in %v)", tc.args, m, v, time.Since(start))
			}
		}
	}
	if r, _ := run("probe", []string{"-marker", dir}); r.Info["host_file_visible"] != "true" || r.Info["kernel"] == "" {
		t.Errorf("probe: %v", r.Info)
	}
	if _, err := run("nonsense", nil); err == nil {
		t.Error("an unknown workload ran")
	}
}
