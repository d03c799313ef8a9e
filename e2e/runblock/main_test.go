package main

import (
	"debug/elf"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"testing"
)

const passLog = `testvm: platform: nested KVM in QEMU TCG (-cpu max), outer kernel k (no /dev/kvm)
=== RUN   TestA
--- PASS: TestA (1.00s)
PASS
`

const failLog = `testvm: platform: nested KVM in QEMU TCG (-cpu max), outer kernel k (no /dev/kvm)
=== RUN   TestA
--- PASS: TestA (1.00s)
=== RUN   TestRuntime
=== RUN   TestRuntime/netns
testvm: outer kernel: [ 8.0] kvm [67]: vcpu0, guest rIP: 0xffffffff8100311e Unhandled WRMSR(0xc0010007) = 0xffff
    runtime_test.go:781: the container did not reach the host (log: vCPU 0 shut down (triple fault))
=== RUN   TestRuntime/pause
--- FAIL: TestRuntime (170.00s)
    --- FAIL: TestRuntime/netns (150.00s)
    --- PASS: TestRuntime/pause (20.00s)
=== RUN   TestB
    b_test.go:10: wrong answer:
        exit 1 after 2s
        --- stdout ---
        got this
    b_test.go:12: next
        its detail
    b_test.go:14: a daemon's log:
        log 1
        log 2
        log 3
        log 4
        log 5
        log 6
        log 7
        log 8
        log 9
        log 10
        log 11
        log 12
        log 13
        log 14
=== NAME  TestB
        not a continuation
--- FAIL: TestB (2.00s)
=== RUN   TestC
--- SKIP: TestC (0.00s)
=== RUN   TestD
    d_test.go:5: booting
`

// TestFailures: the failed top-level tests of a -test.v log, with their
// lines, and the one still running at the end.
func TestFailures(t *testing.T) {
	if fs := failures([]byte(passLog)); len(fs) != 0 {
		t.Errorf("a passing log: %+v", fs)
	}
	fs := failures([]byte(failLog))
	var names []string
	for _, f := range fs {
		names = append(names, f.Name)
	}
	if strings.Join(names, " ") != "TestRuntime TestB TestD" {
		t.Fatalf("failures: %v, want TestRuntime TestB TestD", names)
	}
	if !fs[0].Finished || !fs[1].Finished || fs[2].Finished {
		t.Errorf("finished: %v %v %v, want true true false", fs[0].Finished, fs[1].Finished, fs[2].Finished)
	}
	s := summary(fs, 1, nil)
	for _, want := range []string{"runtime_test.go:781: the container did not reach", "b_test.go:10: wrong answer",
		"== TestD (still running when the block ended)", "d_test.go:5: booting", "--- FAIL: TestRuntime/netns",
		"wrong answer:\n        exit 1 after 2s\n        --- stdout ---\n        got this\n    b_test.go:12: next\n        its detail\n",
		"        log 12\n        ... 2 more lines (the block's log has them)\n"} {
		if !strings.Contains(s, want) {
			t.Errorf("summary lacks %q:\n%s", want, s)
		}
	}
	if strings.Contains(s, "WRMSR") || strings.Contains(s, "TestA") || strings.Contains(s, "not a continuation") || strings.Contains(s, "log 13") {
		t.Errorf("summary has the platform's noise or a passed test:\n%s", s)
	}
}

// leakLog is a failure whose VM hung with its vCPU holding the outer
// kernel's state (vessel's VESSEL_DEBUG diagnosis, flattened to one line
// as vessel run -d reports it), and one whose vCPU halts in the guest.
const leakLog = `testvm: platform: nested KVM in QEMU TCG (-cpu max), outer kernel k (no /dev/kvm)
=== RUN   TestLoad
    load_test.go:76: vessel: the guest agent did not come up: not within 3m0s the VM's state when vessel gave up on it:     vCPU 0: runnable, rip 0xffffffff815078ec IF=1, lapic irr [0xec] isr []
--- FAIL: TestLoad (193.36s)
=== RUN   TestHalt
    halt_test.go:9: vessel: the guest agent did not come up | vCPU 0: halted, rip 0xffffffff8150e923 IF=1, lapic irr [] isr []
--- FAIL: TestHalt (193.36s)
=== RUN   TestForeign
    run_test.go:9: vessel: the guest agent did not come up | vCPU 0: runnable, rip 0xffffffff8150f095 IF=0, cr3 0x11a2b3000 outside guest RAM, lapic irr [] isr []
--- FAIL: TestForeign (193.36s)
`

// TestAllFlaky: only failures that all show one of the platform's known
// faults, on the emulated platform, are retried: a guest triple fault,
// or a guest vCPU at an address of the outer kernel's VMRUN path.
func TestAllFlaky(t *testing.T) {
	fs := failures([]byte(failLog))
	leaks := failures([]byte(leakLog))
	inVMRUN := func(a uint64) bool { return a >= 0xffffffff81507850 && a < 0xffffffff81507950 }
	for _, tc := range []struct {
		name    string
		log     string
		fs      []failure
		hostRIP func(uint64) bool
		want    bool
	}{
		{"triple fault", failLog, fs[:1], nil, true},
		{"another failure too", failLog, fs[:2], nil, false},
		{"unfinished", failLog, fs[2:], nil, false},
		{"not emulated", strings.Replace(failLog, "QEMU TCG", "", 1), fs[:1], nil, false},
		{"vCPU in the outer kernel's VMRUN", leakLog, leaks[:1], inVMRUN, true},
		{"vCPU halted in the guest", leakLog, leaks[1:2], inVMRUN, false},
		{"vCPU with a page-table root outside guest RAM", leakLog, leaks[2:], nil, true},
		{"it and a vCPU halted in the guest", leakLog, leaks[1:], nil, false},
		{"no outer kernel symbols", leakLog, leaks[:1], nil, false},
		{"the outer kernel crashed", failLog + "testvm: outer kernel: [  155.181177] BUG: TASK stack guard page was hit at 0000000071c70ef5\n", fs[1:2], nil, true},
		{"the outer kernel crashed, a test unfinished", failLog + "testvm: outer kernel: [  155.181177] BUG: TASK stack guard page was hit at 0000000071c70ef5\n", fs[1:], nil, true},
		{"a test unfinished, no crash", failLog, fs[1:], nil, false},
		{"the outer kernel only warned", failLog + "testvm: outer kernel: [  247.762729] WARNING: CPU: 0 PID: 0 at kernel/context_tracking.c:128\n", fs[1:2], nil, false},
		{"a guest's BUG line", failLog + "    | [    3.1] BUG: kernel NULL pointer dereference\n", fs[1:2], nil, false},
	} {
		if got := allFlaky([]byte(tc.log), tc.fs, tc.hostRIP, nil); got != tc.want {
			t.Errorf("%s: allFlaky = %v, want %v", tc.name, got, tc.want)
		}
	}
}

// irqOffLog is a docker create whose VM hung with a vCPU that took the
// timer interrupt inside its own handler (the addresses of a real one,
// 2026-12-06), and one whose vCPU waits in a single, ordinary handler.
const irqOffLog = `testvm: platform: nested KVM in QEMU TCG (-cpu max), outer kernel k (no /dev/kvm)
=== RUN   TestNested
    docker_test.go:608: create in the guest: the guest agent did not answer: context deadline exceeded; the VM's state: vCPU 0: runnable, rip 0xffffffff810f5bcd IF=1, cr3 0xc83000, stack [0xffffffff810925c6 0xffffffff8116ceed] | vCPU 1: halted, rip 0xffffffff8108dffc IF=0, cr3 0xc83000, stack [0xffffffff8150f407 0xffffffff810cdbf9 0xffffffff8150ee94 0xffffffff810e6857 0xffffffff81088ee6 0xffffffff81509157 0xffffffff81600c86 0xffffffff810e5ffd 0xffffffff810e5fe1 0xffffffff810e68a4 0xffffffff81088ee6 0xffffffff81509181], lapic irr [0xfb] isr []
--- FAIL: TestNested (190.00s)
=== RUN   TestOnce
    docker_test.go:608: create in the guest: the guest agent did not answer: context deadline exceeded; the VM's state: vCPU 0: halted, rip 0xffffffff8108dffc IF=0, cr3 0xc83000, stack [0xffffffff8150f407 0xffffffff810cdbf9 0xffffffff8150ee94 0xffffffff810e6857 0xffffffff81088ee6 0xffffffff81509157 0xffffffff81600c86 0xffffffff8116ceed 0xffffffff810925c6], lapic irr [] isr []
--- FAIL: TestOnce (190.00s)
=== RUN   TestTimekeeping
    vsock_test.go:46: vessel: no vsock traffic for 1m0s | vCPU 0: runnable, rip 0xffffffff810e8800 IF=0, cr3 0x796000, stack [0xffffffff810e5c2a 0xffffffff810e6862 0xffffffff81088ee6 0xffffffff81509157 0xffffffff81600c86 0xffffffff81e0a520 0xffffffff810f1040 0xffffffff810e6ffc 0xffffffff810e6fd8 0xffffffff810e774c 0xffffffff810f104f], lapic irr [0x23] isr []
--- FAIL: TestTimekeeping (98.06s)
=== RUN   TestSoft
    soft_test.go:1: vessel: hung | vCPU 0: runnable, rip 0xffffffff810e8800 IF=0, cr3 0x796000, stack [0xffffffff810e6862 0xffffffff81600c86 0xffffffff8116ceed 0xffffffff810e5ffd 0xffffffff810e6862], lapic irr [] isr []
--- FAIL: TestSoft (98.06s)
`

// TestTimerIRQWithIRQsOff: a failure is put down to the platform's
// timer interrupt with interrupts off only when one vCPU's stack shows
// the interrupt's entry interrupting code that runs with interrupts off
// (the first code address after the entry), and only with the guest
// kernel's symbols.
func TestTimerIRQWithIRQsOff(t *testing.T) {
	sym := namer([]elf.Symbol{
		{Name: "__pv_queued_spin_lock_slowpath", Info: byte(elf.STT_FUNC), Value: 0xffffffff8150f300, Size: 0x200},
		{Name: "hrtimer_interrupt", Info: byte(elf.STT_FUNC), Value: 0xffffffff810e6780, Size: 0x200},
		{Name: "__hrtimer_run_queues", Info: byte(elf.STT_FUNC), Value: 0xffffffff810e5fb5, Size: 0x1d0},
		{Name: "asm_sysvec_apic_timer_interrupt", Info: byte(elf.STT_NOTYPE), Value: 0xffffffff81600c70, Size: 0x20},
		{Name: "wp_page_copy", Info: byte(elf.STT_FUNC), Value: 0xffffffff8116cc00, Size: 0x400},
		{Name: "timekeeping_update", Info: byte(elf.STT_FUNC), Value: 0xffffffff810e6fb6, Size: 0x100},
		{Name: "timekeeping_advance", Info: byte(elf.STT_FUNC), Value: 0xffffffff810e7453, Size: 0x400},
		{Name: "tick_sched_timer", Info: byte(elf.STT_FUNC), Value: 0xffffffff810f1040, Size: 0x80},
	})
	fs := failures([]byte(irqOffLog))
	if len(fs) != 4 {
		t.Fatalf("failures: %d, want 4", len(fs))
	}
	for _, tc := range []struct {
		name string
		fs   []failure
		sym  func(uint64) string
		want bool
	}{
		{"nested", fs[:1], sym, true},
		{"nested, no symbols", fs[:1], nil, false},
		{"one handler", fs[1:2], sym, false},
		{"both", fs[:2], sym, false},
		// Behind a register holding a function's address (+0x0), the
		// interrupted RIP in the timekeeper's update.
		{"in timekeeping_update", fs[2:3], sym, true},
		// A soft hrtimer's callback runs with interrupts on inside
		// __hrtimer_run_queues: only the interrupted RIP counts.
		{"in a soft hrtimer's callback", fs[3:], sym, false},
	} {
		if got := allFlaky([]byte(irqOffLog), tc.fs, nil, tc.sym); got != tc.want {
			t.Errorf("%s: allFlaky = %v, want %v", tc.name, got, tc.want)
		}
	}
}

// TestHostRIPIn: the outer kernel's VMRUN functions are found in its
// symbols, from the path in testvm's platform line (the project's
// kernel, which make test builds before these tests, is also the test
// platform's outer kernel).
func TestHostRIPIn(t *testing.T) {
	cache, err := os.UserCacheDir()
	if err != nil {
		t.Fatal(err)
	}
	kernel := filepath.Join(cache, "vessel", "guest", "vmlinux")
	ef, err := elf.Open(kernel)
	if err != nil {
		t.Fatalf("the project's kernel (make guest builds it): %v", err)
	}
	syms, _ := ef.Symbols()
	ef.Close()
	var entry uint64
	for _, s := range syms {
		if s.Name == "__svm_vcpu_run" {
			entry = s.Value
		}
	}
	if f := hostRIPIn([]byte("no platform line")); f != nil {
		t.Error("a test from a log without testvm's platform line")
	}
	f := hostRIPIn([]byte("testvm: platform: nested KVM in QEMU TCG (-cpu max), outer kernel " + kernel + " (host has no /dev/kvm)\n"))
	if f == nil || entry == 0 {
		t.Fatalf("no VMRUN functions in %s's symbols", kernel)
	}
	if !f(entry+0x9c) || f(entry-1) {
		t.Errorf("__svm_vcpu_run at %#x: in it %v, just before it %v", entry, f(entry+0x9c), f(entry-1))
	}
}

// TestSymbolize: the addresses of a hung VM's description (RIP, stack)
// are named by the function symbols that hold them, from the vmlinux
// beside the logged bzImage.
func TestSymbolize(t *testing.T) {
	sym := namer([]elf.Symbol{
		{Name: "native_queued_spin_lock_slowpath", Info: byte(elf.STT_FUNC), Value: 0xffffffff8150f016, Size: 0x200},
		{Name: "page_fault_oops", Info: byte(elf.STT_FUNC), Value: 0xffffffff81090596, Size: 0x300},
		{Name: "a_variable", Info: byte(elf.STT_OBJECT), Value: 0xffffffff81c35840, Size: 8},
	})
	text := "vCPU 0: runnable, rip 0xffffffff8150f095 IF=0, cr3 0x1000, stack [0xffffffff8150f095 0xffffffff81090703 0xffffffff81c35840 0xffffffff81000000]"
	want := "0xffffffff8150f095 native_queued_spin_lock_slowpath+0x7f, 0xffffffff81090703 page_fault_oops+0x16d"
	if got := symbolize(text, sym); got != want {
		t.Errorf("symbolize = %q, want %q", got, want)
	}
	if got := symbolize(text, nil); got != "" {
		t.Errorf("symbolize without symbols = %q", got)
	}
	// The vmlinux is found beside the bzImage a logged command boots, or
	// in the default guest directory when no command names one; a
	// directory without one gives no symbolizer.
	t.Setenv("VESSEL_GUEST_DIR", t.TempDir())
	if guestSymbols([]byte("no kernel named")) != nil {
		t.Error("guestSymbols without a logged kernel or a default vmlinux returned a symbolizer")
	}
	cache, err := os.UserCacheDir()
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv("VESSEL_GUEST_DIR", filepath.Join(cache, "vessel", "guest"))
	if guestSymbols([]byte("no kernel named")) == nil {
		t.Error("guestSymbols does not read the default guest directory's vmlinux (make guest installs it)")
	}
	if guestSymbols([]byte("vessel vm run --kernel "+t.TempDir()+"/bzImage -- x")) != nil {
		t.Error("guestSymbols without a vmlinux returned a symbolizer")
	}
	if sum := summary(failures([]byte(leakLog))[2:], 1, sym); !strings.Contains(sum, "    in the guest kernel: 0xffffffff8150f095 native_queued_spin_lock_slowpath+0x7f\n") {
		t.Errorf("summary does not name the guest kernel's functions:\n%s", sum)
	}
}

// TestRetryArgs: finished failures are retried alone; a test the block
// ended inside means the tests after it never ran, so the whole block
// runs again with its own flags.
func TestRetryArgs(t *testing.T) {
	fs := failures([]byte(failLog))
	block := []string{"-test.skip", "^(TestX)$"}
	got, _ := retryArgs(fs[:2], block)
	if want := []string{"-test.run", "^(" + regexp.QuoteMeta(fs[0].Name) + "|" + regexp.QuoteMeta(fs[1].Name) + ")$"}; !reflect.DeepEqual(got, want) {
		t.Errorf("finished failures: retry %q, want %q", got, want)
	}
	if fs[2].Finished {
		t.Fatal("failLog's third failure should be unfinished")
	}
	if got, what := retryArgs(fs, block); !reflect.DeepEqual(got, block) || !strings.Contains(what, "whole block") {
		t.Errorf("an unfinished failure: retry %q (%s), want the block's own flags %q", got, what, block)
	}
}

// TestTimerIRQWithIRQsOffKernel: the rule works on the kernel make guest
// builds, not only on made-up symbols: each function it names is a
// symbol there (an inlined one would never match), the interrupt's entry
// is named although the assembler leaves it untyped, and a stack built
// from the real addresses is told from one whose entry interrupted
// ordinary code.
func TestTimerIRQWithIRQsOffKernel(t *testing.T) {
	cache, err := os.UserCacheDir()
	if err != nil {
		t.Fatal(err)
	}
	syms := elfSymbols(filepath.Join(cache, "vessel", "guest", "vmlinux"))
	if syms == nil {
		t.Fatal("no symbols in the project's vmlinux (make guest builds it)")
	}
	sym := namer(syms)
	addr := map[string]uint64{}
	for _, s := range syms {
		if sym(s.Value) == s.Name+"+0x0" {
			addr[s.Name] = s.Value
		}
	}
	for _, n := range append([]string{"asm_sysvec_apic_timer_interrupt", "wp_page_copy"}, irqsOffFuncs...) {
		if addr[n] == 0 {
			t.Errorf("%s: not a named function of the guest kernel", n)
		}
	}
	stack := func(interrupted string) string {
		return fmt.Sprintf("vCPU 1: halted, rip 0x1 IF=0, stack [%#x %#x %#x %#x]",
			addr["hrtimer_interrupt"]+0x4b, addr["asm_sysvec_apic_timer_interrupt"]+0x16, addr[interrupted]+1, addr["hrtimer_interrupt"]+0x8d)
	}
	for _, n := range irqsOffFuncs {
		if !timerIRQWithIRQsOff(stack(n), sym) {
			t.Errorf("the timer interrupt inside %s: not told", n)
		}
	}
	if timerIRQWithIRQsOff(stack("wp_page_copy"), sym) {
		t.Error("the timer interrupt inside wp_page_copy (interrupts on) was put down to the platform")
	}
}
