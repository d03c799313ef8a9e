package compare

import (
	"fmt"
	"strconv"
	"time"
)

// kind says how a workload is measured.
type kind int

const (
	// kindRun runs the workload binary once per sample and reads its
	// metrics.
	kindRun kind = iota
	// kindStartup times the environment running `true`, end to end.
	kindStartup
	// kindIdle measures the memory of one idle instance.
	kindIdle
	// kindDensity starts idle instances until a memory budget is spent.
	kindDensity
	// kindNet streams TCP to a socket on the host.
	kindNet
	// kindHTTP loads an HTTP server in the environment from the host.
	kindHTTP
)

// metric is one number a workload reports.
type metric struct {
	Key          string `json:"key"`   // in the workload's Result, or the orchestrator's
	Label        string `json:"label"` // in tables and charts
	Unit         string `json:"unit"`
	HigherBetter bool   `json:"higher_better"`
}

// workload is one row group of the report.
type workload struct {
	Name    string
	Title   string
	Kind    kind
	Metrics []metric
	// args are the workload binary's arguments, for kindRun, given the
	// sizes and the directory it may write in.
	args func(s sizes, dir string) []string
	// disk is the scratch space it needs (bytes), for environments
	// whose writable layer would otherwise live in memory.
	disk func(s sizes) int64
}

// sizes are the workloads' sizes and limits, in profiles (--sizes).
type sizes struct {
	Time       string // a timed workload's duration
	MaxPrime   int
	Compress   int64 // bytes
	StreamN    int
	DiskFile   int64         // bytes
	Threads    int           // of the N-thread CPU test
	MemoryMiB  int           // each confined environment's memory for the workloads
	DensityMiB int           // the density test's memory budget
	DensityMax int           // and its most instances
	InstanceMB int           // one density instance's memory limit
	ProbeMiB   int           // the isolation probes' memory limit
	ProbePids  int64         // and process limit
	Clients    int           // concurrent HTTP clients
	StepLimit  time.Duration // the longest one step may take
}

func defaultSizes(cpus int) sizes {
	return sizes{Time: "5s", MaxPrime: 10000, Compress: 256 << 20, StreamN: 8_000_000, DiskFile: 1 << 30,
		Threads: cpus, MemoryMiB: 1024, DensityMiB: 2048, DensityMax: 16, InstanceMB: 128, ProbeMiB: 512, ProbePids: 128, Clients: 16, StepLimit: 15 * time.Minute}
}

// smallSizes suit an emulated platform such as cmd/testvm's, 10-50x
// slower than hardware.
func smallSizes(cpus int) sizes {
	return sizes{Time: "2s", MaxPrime: 10000, Compress: 32 << 20, StreamN: 2_000_000, DiskFile: 128 << 20,
		Threads: cpus, MemoryMiB: 512, DensityMiB: 1024, DensityMax: 6, InstanceMB: 128, ProbeMiB: 256, ProbePids: 64, Clients: 4, StepLimit: 4 * time.Minute}
}

// tinySizes are for tests: every workload runs, briefly.
func tinySizes(cpus int) sizes {
	return sizes{Time: "200ms", MaxPrime: 2000, Compress: 4 << 20, StreamN: 200_000, DiskFile: 8 << 20,
		Threads: cpus, MemoryMiB: 256, DensityMiB: 512, DensityMax: 2, InstanceMB: 128, ProbeMiB: 256, ProbePids: 32, Clients: 2, StepLimit: 4 * time.Minute}
}

func mib(b int64) string { return strconv.FormatInt(b>>20, 10) + "M" }

// workloads lists what `vessel bench compare` can run, in report order.
func workloads() []workload {
	rate := func(key, label, unit string) metric {
		return metric{Key: key, Label: label, Unit: unit, HigherBetter: true}
	}
	return []workload{
		{Name: "cpu", Title: "CPU: primes by trial division, 1 thread (sysbench cpu)", Metrics: []metric{rate("events_per_s", "events", "events/s")},
			args: func(s sizes, _ string) []string {
				return []string{"cpu", "-threads", "1", "-max-prime", strconv.Itoa(s.MaxPrime), "-time", s.Time}
			}},
		{Name: "cpu-n", Title: "CPU: primes by trial division, one thread per CPU", Metrics: []metric{rate("events_per_s", "events", "events/s")},
			args: func(s sizes, _ string) []string {
				return []string{"cpu", "-threads", strconv.Itoa(s.Threads), "-max-prime", strconv.Itoa(s.MaxPrime), "-time", s.Time}
			}},
		{Name: "compress", Title: "Compression: gzip -6 of a generated text file", Metrics: []metric{rate("mb_per_s", "gzip input", "MB/s")},
			args: func(s sizes, dir string) []string { return []string{"compress", "-size", mib(s.Compress), "-dir", dir} },
			disk: func(s sizes) int64 { return 2*s.Compress + 64<<20 }},
		{Name: "memory", Title: "Memory bandwidth (STREAM)", Metrics: []metric{
			rate("copy_mb_per_s", "copy", "MB/s"), rate("scale_mb_per_s", "scale", "MB/s"),
			rate("add_mb_per_s", "add", "MB/s"), rate("triad_mb_per_s", "triad", "MB/s")},
			args: func(s sizes, _ string) []string { return []string{"stream", "-n", strconv.Itoa(s.StreamN)} }},
		{Name: "disk", Title: "Disk: 1 MiB sequential, 4 KiB random (O_DIRECT)", Metrics: []metric{
			rate("seq_write_mb_per_s", "seq write", "MB/s"), rate("seq_read_mb_per_s", "seq read", "MB/s"),
			rate("rand_read_iops", "rand read", "IOPS"), rate("rand_write_iops", "rand write", "IOPS")},
			args: func(s sizes, dir string) []string {
				return []string{"disk", "-size", mib(s.DiskFile), "-dir", dir, "-time", s.Time}
			},
			disk: func(s sizes) int64 { return s.DiskFile + 64<<20 }},
		{Name: "network", Title: "Network: a TCP stream to a socket on the host", Kind: kindNet,
			Metrics: []metric{rate("mb_per_s", "TCP send", "MB/s")}},
		{Name: "http", Title: "HTTP: keep-alive GETs from the host to a server inside", Kind: kindHTTP, Metrics: []metric{
			rate("requests_per_s", "request rate", "requests/s"),
			{Key: "p50_ms", Label: "median latency", Unit: "ms"}, {Key: "p99_ms", Label: "99th percentile latency", Unit: "ms"}}},
		{Name: "startup", Title: "Start-up latency: run `true`, end to end", Kind: kindStartup,
			Metrics: []metric{{Key: "ms", Label: "start to exit", Unit: "ms"}}},
		{Name: "idle-memory", Title: "Memory of one idle instance", Kind: kindIdle,
			Metrics: []metric{{Key: "mib", Label: "RSS", Unit: "MiB"}}},
		{Name: "density", Title: "Density: idle instances started within a memory budget", Kind: kindDensity,
			Metrics: []metric{rate("instances", "instances", "instances"), {Key: "seconds", Label: "time to start them", Unit: "s"}}},
	}
}

// sizesFor returns a profile's sizes.
func sizesFor(profile string, cpus int) (sizes, error) {
	switch profile {
	case "full", "":
		return defaultSizes(cpus), nil
	case "small":
		return smallSizes(cpus), nil
	case "tiny":
		return tinySizes(cpus), nil
	}
	return sizes{}, fmt.Errorf("--sizes %q: want full, small or tiny", profile)
}

// findWorkload returns the named workload.
func findWorkload(name string) (workload, error) {
	for _, w := range workloads() {
		if w.Name == name {
			return w, nil
		}
	}
	return workload{}, fmt.Errorf("unknown workload %q", name)
}

// WorkloadNames lists the workloads, plus "isolation" for the probes.
func WorkloadNames() []string {
	var n []string
	for _, w := range workloads() {
		n = append(n, w.Name)
	}
	return append(n, "isolation")
}
