package benchutil

import (
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func TestSummarize(t *testing.T) {
	nan := math.NaN()
	for _, c := range []struct {
		in            []float64
		n             int
		med, min, max float64
	}{
		{[]float64{3}, 1, 3, 3, 3},
		{[]float64{5, 1, 3}, 3, 3, 1, 5},
		{[]float64{4, 1, 3, 2}, 4, 2.5, 1, 4},
		{[]float64{2, nan, 9, 1, nan}, 3, 2, 1, 9},
		{[]float64{7, 7, 7, 7}, 4, 7, 7, 7},
	} {
		s := Summarize(c.in)
		if s.N != c.n || s.Median != c.med || s.Min != c.min || s.Max != c.max {
			t.Errorf("Summarize(%v) = %+v, want n=%d median=%v min=%v max=%v", c.in, s, c.n, c.med, c.min, c.max)
		}
	}
	in := []float64{3, 1, 2}
	Summarize(in)
	if in[0] != 3 || in[1] != 1 {
		t.Error("Summarize reordered its input")
	}
	for _, empty := range [][]float64{nil, {nan}} {
		s := Summarize(empty)
		if s.N != 0 || !math.IsNaN(s.Median) || !math.IsNaN(s.Min) || !math.IsNaN(s.Max) {
			t.Errorf("Summarize(%v) = %+v, want N=0 and NaNs", empty, s)
		}
	}
}

func TestReadCPU(t *testing.T) {
	p := filepath.Join(t.TempDir(), "cpuinfo")
	text := "processor\t: 0\nmodel name\t: QEMU TCG CPU version 2.5+\nflags\t\t: fpu svm hypervisor\n\n" +
		"processor\t: 1\nmodel name\t: other\nflags\t\t: fpu\n"
	if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	c := ReadCPU(p)
	if c.Model != "QEMU TCG CPU version 2.5+" || c.Count != 2 || !c.Flags["svm"] || !c.Flags["hypervisor"] {
		t.Errorf("ReadCPU = %+v", c)
	}
	if c := ReadCPU(filepath.Join(t.TempDir(), "missing")); c.Model != "unknown" || c.Count != 0 {
		t.Errorf("ReadCPU(missing) = %+v", c)
	}
}

func TestKind(t *testing.T) {
	for _, c := range []struct {
		model string
		hv    bool
		mod   string
		want  string
	}{
		{"QEMU TCG CPU version 2.5+", true, "kvm_amd", "nested KVM (kvm_amd) in QEMU TCG"},
		{"AMD EPYC 7B13", true, "kvm_amd", "inside a virtual machine"},
		{"Intel(R) Xeon(R) Platinum 8375C", false, "kvm_intel", "direct hardware KVM (kvm_intel)"},
		{"Intel(R) Xeon(R)", false, "", "no KVM module found"},
	} {
		cpu := CPU{Model: c.model, Flags: map[string]bool{"hypervisor": c.hv}}
		if got := Kind(cpu, c.mod); !strings.Contains(got, c.want) {
			t.Errorf("Kind(%q, %v, %q) = %q, want it to contain %q", c.model, c.hv, c.mod, got, c.want)
		}
	}
}

func TestProcMemory(t *testing.T) {
	rss, pss, err := ProcMemory(os.Getpid())
	if err != nil || rss <= 0 || pss <= 0 || pss > rss {
		t.Errorf("ProcMemory(self) = %v, %v, %v: want 0 < PSS <= RSS", rss, pss, err)
	}
	if _, _, err := ProcMemory(-1); err == nil {
		t.Error("ProcMemory of no process succeeded")
	}
}

// TreeMemory of a process with a child counts both.
func TestTreeMemory(t *testing.T) {
	c := exec.Command("sleep", "30")
	if err := c.Start(); err != nil {
		t.Skip(err)
	}
	defer func() { c.Process.Kill(); c.Wait() }()
	self, _, err := ProcMemory(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	child, _, err := ProcMemory(c.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	rss, _, err := TreeMemory(os.Getpid())
	if err != nil || rss < self+child*0.5 {
		t.Errorf("TreeMemory(self) RSS %.2f MiB, %v; want about self %.2f + child %.2f", rss, err, self, child)
	}
}
