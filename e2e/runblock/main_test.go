package main

import (
	"debug/elf"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/vesselvm/vessel/internal/guestdir"
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
    runtime_test.go:900: create pause: 2.1s
=== NAME  TestRuntime
    runtime_test.go:950: the test's own line
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
	if strings.Contains(s, "WRMSR") || strings.Contains(s, "TestA") || strings.Contains(s, "not a continuation") || strings.Contains(s, "log 13") ||
		strings.Contains(s, "create pause") {
		t.Errorf("summary has the platform's noise, a passed test or a passed subtest's logs:\n%s", s)
	}
	if !strings.Contains(s, "the test's own line") {
		t.Errorf("summary lacks the failed test's own line:\n%s", s)
	}
	// Whose output each line is.
	if got := fs[0].FailedSubs; !slices.Equal(got, []string{"netns"}) {
		t.Errorf("TestRuntime's failed subtests: %q, want netns", got)
	}
	for sub, want := range map[string]string{
		"netns": "=== RUN   TestRuntime/netns\ntestvm: outer kernel: [ 8.0] kvm [67]: vcpu0, guest rIP: 0xffffffff8100311e Unhandled WRMSR(0xc0010007) = 0xffff\n" +
			"    runtime_test.go:781: the container did not reach the host (log: vCPU 0 shut down (triple fault))",
		"pause": "=== RUN   TestRuntime/pause\n    runtime_test.go:900: create pause: 2.1s",
	} {
		if got := fs[0].text(sub); got != want {
			t.Errorf("TestRuntime/%s's output:\n%s\nwant:\n%s", sub, got, want)
		}
	}
	if got := fs[1].FailedSubs; len(got) != 0 {
		t.Errorf("TestB's failed subtests: %q, want none", got)
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
	} {
		if got := allFlaky([]byte(tc.log), tc.fs, tc.hostRIP, nil); got != tc.want {
			t.Errorf("%s: allFlaky = %v, want %v", tc.name, got, tc.want)
		}
	}
}

// guestLog has guests' kernels reporting crashes on their consoles, as
// TestDiskStress prints them (the first a real one, 2026-12-06).
const guestLog = `testvm: platform: nested KVM in QEMU TCG (-cpu max), outer kernel k (no /dev/kvm)
=== RUN   TestLoop
    diskstress_test.go:112: the guest's disk I/O failed or hung:
        exit 3 after 10.304s
        --- stdout ---
        === RUN   TestGuestDiskStress
        [    6.735759] BUG: ENTRY_TRAMPOLINE stack guard page was hit at 00000000a03fcbf3 (stack is 00000000dd1e0886..000000001411d10b)
        [    6.736894] stack guard page: 0000 [#1] SMP
--- FAIL: TestLoop (10.40s)
=== RUN   TestNull
    diskstress_test.go:112: the guest's disk I/O failed or hung:
        [    3.100000] BUG: kernel NULL pointer dereference, address: 0000000000000008
--- FAIL: TestNull (10.40s)
=== RUN   TestOuter
    outer_test.go:1: this test's own failure
        testvm: outer kernel: [  155.181177] BUG: TASK stack guard page was hit at 0000000071c70ef5 (stack is 1..2)
--- FAIL: TestOuter (10.40s)
`

// TestGuestFaultLoop: a guest kernel's report of a fault loop that ran
// into a guard page is the platform's; its other crashes are not, and
// an outer kernel's line in a test's own text is outerCrash's to judge
// (matched at the start of a line of the block's output only).
func TestGuestFaultLoop(t *testing.T) {
	fs := failures([]byte(guestLog))
	if len(fs) != 3 {
		t.Fatalf("failures: %d, want 3", len(fs))
	}
	for i, want := range []bool{true, false, false} {
		if got := allFlaky([]byte(guestLog), fs[i:i+1], nil, nil); got != want {
			t.Errorf("%s: allFlaky = %v, want %v", fs[i].Name, got, want)
		}
	}
	if allFlaky([]byte(strings.Replace(guestLog, "QEMU TCG", "", 1)), fs[:1], nil, nil) {
		t.Error("a guest's fault loop off the emulated platform was put down to it")
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
    docker_test.go:608: create in the guest: the guest agent did not answer: context deadline exceeded; the VM's state: vCPU 0: runnable, rip 0xffffffff810f5bcd IF=1, cr3 0xc83000, stack [0xffffffff810925c6] | vCPU 1: halted, rip 0xffffffff8108dffc IF=0, cr3 0xc83000, stack [0xffffffff8150f407 0xffffffff810cdbf9 0xffffffff8150ee94 0xffffffff810e6857 0xffffffff81088ee6 0xffffffff81509157 0xffffffff81600c86 0xffffffff8116ceed 0xffffffff810925c6], lapic irr [] isr []
--- FAIL: TestOnce (190.00s)
=== RUN   TestTimekeeping
    vsock_test.go:46: vessel: no vsock traffic for 1m0s | vCPU 0: runnable, rip 0xffffffff810e8800 IF=0, cr3 0x796000, stack [0xffffffff810e5c2a 0xffffffff810e6862 0xffffffff81088ee6 0xffffffff81509157 0xffffffff81600c86 0xffffffff81e0a520 0xffffffff810f1040 0xffffffff810e6ffc 0xffffffff810e6fd8 0xffffffff810e774c 0xffffffff810f104f], lapic irr [0x23] isr []
--- FAIL: TestTimekeeping (98.06s)
=== RUN   TestSoft
    soft_test.go:1: vessel: hung | vCPU 0: runnable, rip 0xffffffff810e8800 IF=0, cr3 0x796000, stack [0xffffffff810e6862 0xffffffff81600c86 0xffffffff8116ceed 0xffffffff810e5ffd 0xffffffff810e6862], lapic irr [] isr []
--- FAIL: TestSoft (98.06s)
=== RUN   TestOneVCPU
    load_test.go:87: vessel: the container failed: create: the guest did not answer within 2m0s the VM's state when vessel gave up on it:     vCPU 0: runnable, rip 0xffffffff8150f095 IF=0, cr3 0x7d43000, stack [0xffffffff810cdbf9 0xffffffff8150ee94 0xffffffff810e6857 0xffffffff81088ee6 0xffffffff81509181], lapic irr [] isr [] tpr 0x10 timer tsc-deadline vector 0xec, tsc-deadline unarmed     IOAPIC: irr 0x0 | pin 3 vector 0x21 edge     virtio@0xd0000000 gsi 5: rng status 0xf int_status 0x0 irqs 6 notifies 6 | q0 avail 6 used 6 used_event 6 avail_event 6
--- FAIL: TestOneVCPU (152.41s)
=== RUN   TestOneVCPUFault
    load_test.go:87: vessel: hung:     vCPU 0: runnable, rip 0xffffffff8150f095 IF=0, cr3 0x7d43000, stack [0xffffffff810cdbf9 0xffffffff8150ee94 0xffffffff81170b25 0xffffffff810e6857], lapic irr [] isr []
--- FAIL: TestOneVCPUFault (152.41s)
=== RUN   TestTwoVMs
    load_test.go:87: vessel: hung:     vCPU 0: halted, rip 0xffffffff8108dffc IF=1, cr3 0x7d43000, stack [0xffffffff810925c6], lapic irr [] isr [] | vCPU 1: runnable, rip 0xffffffff8150f095 IF=0, cr3 0x7d43000, stack [0xffffffff810cdbf9 0xffffffff8150ee94 0xffffffff810e6857 0xffffffff81088ee6 0xffffffff81509181], lapic irr [] isr []
    load_test.go:87: vessel: hung:     vCPU 0: runnable, rip 0xffffffff8150f095 IF=0, cr3 0x7d43000, stack [0xffffffff810cdbf9 0xffffffff8150ee94 0xffffffff810e6857 0xffffffff81088ee6 0xffffffff81509181], lapic irr [] isr [] | vCPU 1: halted, rip 0xffffffff8108dffc IF=1, cr3 0x7d43000
--- FAIL: TestTwoVMs (152.41s)
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
		{Name: "native_queued_spin_lock_slowpath", Info: byte(elf.STT_FUNC), Value: 0xffffffff8150f016, Size: 403},
		{Name: "do_raw_spin_lock", Info: byte(elf.STT_FUNC), Value: 0xffffffff810cdbe5, Size: 22},
		{Name: "_raw_spin_lock_irqsave", Info: byte(elf.STT_FUNC), Value: 0xffffffff8150ee8b, Size: 14},
		{Name: "kvm_wait", Info: byte(elf.STT_FUNC), Value: 0xffffffff8108dfcd, Size: 78},
		{Name: "handle_mm_fault", Info: byte(elf.STT_FUNC), Value: 0xffffffff81170ad5, Size: 440},
	})
	fs := failures([]byte(irqOffLog))
	if len(fs) != 7 {
		t.Fatalf("failures: %d, want 7", len(fs))
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
		{"in a soft hrtimer's callback", fs[3:4], sym, false},
		// The only vCPU waits for the hrtimer base's lock: its own
		// interrupted code holds it.
		{"one vCPU, hrtimer lock", fs[4:5], sym, true},
		// A lock taken by a page fault could be a lock anyone holds.
		{"one vCPU, another lock", fs[5:6], sym, false},
		// Two VMs of two vCPUs each: another CPU may hold the lock.
		{"two vCPUs, hrtimer lock", fs[6:], sym, false},
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
	fault := func(f *failure, sub string) bool { return platformFault(f.text(sub), nil, nil) }
	got, _ := retryArgs(fs[:2], block, fault)
	if want := []string{"-test.run", "^(" + regexp.QuoteMeta(fs[0].Name) + "|" + regexp.QuoteMeta(fs[1].Name) + ")$"}; !reflect.DeepEqual(got, want) {
		t.Errorf("finished failures, one in its own body: retry %q, want %q", got, want)
	}
	if fs[2].Finished {
		t.Fatal("failLog's third failure should be unfinished")
	}
	if got, what := retryArgs(fs, block, fault); !reflect.DeepEqual(got, block) || !strings.Contains(what, "whole block") {
		t.Errorf("an unfinished failure: retry %q (%s), want the block's own flags %q", got, what, block)
	}
	// A test that failed in a subtest showing the platform's fault:
	// that subtest alone.
	if got, what := retryArgs(fs[:1], block, fault); !slices.Equal(got, []string{"-test.run", "^(TestRuntime)$/^(netns)$"}) || !strings.Contains(what, "subtests") {
		t.Errorf("a subtest's fault: retry %q (%s), want TestRuntime/netns alone", got, what)
	}
	// The same subtest failing for another reason: the whole test.
	other := failures([]byte(strings.Replace(failLog, "(triple fault)", "(exit 1)", 1)))
	if got, _ := retryArgs(other[:1], block, fault); !slices.Equal(got, []string{"-test.run", "^(TestRuntime)$"}) {
		t.Errorf("a subtest's own failure: retry %q, want all of TestRuntime", got)
	}
	// The fault in one subtest's output, another subtest failed too,
	// for no known reason: the whole test.
	two := failures([]byte(strings.Replace(failLog, "    --- PASS: TestRuntime/pause (20.00s)", "    --- FAIL: TestRuntime/pause (20.00s)", 1)))
	if got, _ := retryArgs(two[:1], block, fault); !slices.Equal(got, []string{"-test.run", "^(TestRuntime)$"}) {
		t.Errorf("two failed subtests, one unexplained: retry %q, want all of TestRuntime", got)
	}
}

// TestTimerIRQWithIRQsOffKernel: the rule works on the kernel make guest
// builds, not only on made-up symbols: each function it names is a
// symbol there (an inlined one would never match), the interrupt's entry
// is named although the assembler leaves it untyped, and a stack built
// from the real addresses is told from one whose entry interrupted
// ordinary code.
func TestTimerIRQWithIRQsOffKernel(t *testing.T) {
	syms := elfSymbols(filepath.Join(guestdir.Dir(), "vmlinux"))
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
	for _, n := range slices.Concat([]string{"asm_sysvec_apic_timer_interrupt", "wp_page_copy", "handle_mm_fault"}, irqsOffFuncs, lockFuncs) {
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
	// The only vCPU spinning for a lock hrtimer_interrupt takes, and for
	// one a page fault takes.
	waiting := func(taker string) string {
		return fmt.Sprintf("vCPU 0: runnable, rip %#x IF=0, stack [%#x %#x %#x], lapic irr []",
			addr["native_queued_spin_lock_slowpath"]+0x7f, addr["do_raw_spin_lock"]+0x14, addr["_raw_spin_lock_irqsave"]+0x9, addr[taker]+0x40)
	}
	if !timerIRQWithIRQsOff(waiting("hrtimer_interrupt"), sym) {
		t.Error("the only vCPU waiting in hrtimer_interrupt for its lock: not told")
	}
	if timerIRQWithIRQsOff(waiting("handle_mm_fault"), sym) {
		t.Error("the only vCPU waiting in handle_mm_fault for a lock was put down to the platform")
	}
}
