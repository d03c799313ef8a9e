// Package benchutil holds what vessel's benchmarks share: sample
// statistics and a description of the platform they ran on, which every
// report names because absolute numbers compare only within one platform.
package benchutil

import (
	"bufio"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// Summary describes a sample: its size, median and range.
type Summary struct {
	N      int     `json:"n"`
	Median float64 `json:"median"`
	Min    float64 `json:"min"`
	Max    float64 `json:"max"`
}

// Summarize returns the median, minimum and maximum of xs, ignoring NaNs.
// The median of an even count is the mean of the two middle values. An
// empty sample gives N == 0 and NaNs.
func Summarize(xs []float64) Summary {
	v := make([]float64, 0, len(xs))
	for _, x := range xs {
		if !math.IsNaN(x) {
			v = append(v, x)
		}
	}
	if len(v) == 0 {
		return Summary{Median: math.NaN(), Min: math.NaN(), Max: math.NaN()}
	}
	slices.Sort(v)
	n := len(v)
	med := v[n/2]
	if n%2 == 0 {
		med = (v[n/2-1] + v[n/2]) / 2
	}
	return Summary{N: n, Median: med, Min: v[0], Max: v[n-1]}
}

// CPU describes the machine's processors, from /proc/cpuinfo.
type CPU struct {
	Model string          // the first CPU's model name
	Flags map[string]bool // the first CPU's flags
	Count int
}

// ReadCPU reads a cpuinfo file (normally /proc/cpuinfo). A file that
// cannot be read gives the model "unknown" and no CPUs.
func ReadCPU(path string) CPU {
	c := CPU{Flags: map[string]bool{}}
	f, err := os.Open(path)
	if err != nil {
		c.Model = "unknown"
		return c
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		k, v = strings.TrimSpace(k), strings.TrimSpace(v)
		switch {
		case k == "processor":
			c.Count++
		case k == "model name" && c.Model == "":
			c.Model = v
		case k == "flags" && len(c.Flags) == 0:
			for _, fl := range strings.Fields(v) {
				c.Flags[fl] = true
			}
		}
	}
	if c.Model == "" {
		c.Model = "unknown"
	}
	return c
}

// KVMModule returns the loaded KVM module (kvm_pvm, kvm_amd or kvm_intel),
// or "".
func KVMModule() string {
	for _, m := range []string{"kvm_pvm", "kvm_amd", "kvm_intel"} {
		if _, err := os.Stat(filepath.Join("/sys/module", m)); err == nil {
			return m
		}
	}
	return ""
}

// Kind names the platform in a few words from the CPU and the KVM module
// in use: direct hardware KVM, KVM nested in a VM, or the nested KVM
// inside QEMU's software emulation that cmd/testvm provides.
func Kind(cpu CPU, kvmModule string) string {
	mod := kvmModule
	if mod == "" {
		mod = "no KVM module found"
	}
	hv := cpu.Flags["hypervisor"]
	switch {
	case strings.Contains(cpu.Model, "QEMU TCG") || strings.Contains(cpu.Model, "QEMU Virtual CPU") && hv:
		return fmt.Sprintf("nested KVM (%s) in QEMU TCG software emulation", mod)
	case hv:
		return fmt.Sprintf("KVM (%s) inside a virtual machine (nested virtualization)", mod)
	default:
		return fmt.Sprintf("direct hardware KVM (%s)", mod)
	}
}

// Describe names the platform this process runs on in one line: its
// kind, CPU model and count.
func Describe() string {
	cpu := ReadCPU("/proc/cpuinfo")
	return fmt.Sprintf("%s; CPU %q x %d", Kind(cpu, KVMModule()), cpu.Model, cpu.Count)
}
