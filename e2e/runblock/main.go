// Command runblock runs one block of the end-to-end tests in the test
// platform and makes its failures readable at the end of a long log, as
// CI shows only a log's tail. It runs
//
//	TESTVM --timeout T -- E2E -test.v -test.timeout T' FLAGS...
//
// passing the output through as it comes. When the block fails, it
// prints a summary after it: each failed test and the messages its
// failures printed (the *_test.go:N: lines), so that the cause is in the
// tail, not only the names.
//
// A failed test whose output shows one of the emulated nested
// platform's known faults (a guest "triple fault" under QEMU's TCG, see
// e2e's platformFlake; a guest vCPU left holding the outer kernel's
// state, see vmrunFuncs and foreignCR3; a timer interrupt delivered to a
// guest vCPU whose interrupts were off, see timerIRQWithIRQsOff; a guest
// kernel's fault loop that ran into a stack's guard page, see
// guestFaultLoop; or the outer
// kernel's own crash during the block) is run once more on its own,
// loudly (a line starting RETRY); the block passes only if that second
// run passes. A test that failed only in subtests whose own output shows
// such a fault has just those subtests run again. When the
// outer kernel's crash ended the block inside a test, the whole block
// runs once more, since the tests after it never ran. A failure for any
// other reason is never retried.
//
// With -plan, runblock runs every block a plan file lists, several at
// once (-lanes; by default as many as the host's CPUs and memory allow),
// each in its own outer VM with its output in its own log: it prints a
// line as each block starts and ends, and the failed blocks' summaries
// at the end.
//
// Usage:
//
//	runblock -testvm bin/testvm -e2e build/e2e.test -timeout 25m [-log FILE] [-summary FILE] -- [go test flags]
//	runblock -testvm bin/testvm -e2e build/e2e.test -plan e2e/blocks [-lanes N] [-logdir build]
//
// Exit status: the block's (testvm's: the test binary's, 124 on
// timeout, 125 on a platform failure), or the retry's; with -plan, 1 if
// a block failed; 2 on bad usage.
package main

import (
	"bufio"
	"bytes"
	"debug/elf"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/vesselvm/vessel/internal/guestdir"
)

func main() {
	fs := flag.NewFlagSet("runblock", flag.ContinueOnError)
	testvm := fs.String("testvm", "bin/testvm", "the test platform's runner")
	e2e := fs.String("e2e", "build/e2e.test", "the compiled end-to-end test binary")
	timeout := fs.Duration("timeout", 20*time.Minute, "testvm's timeout for the block (the tests get a minute less)")
	logPath := fs.String("log", "", "also write the block's output to this file")
	summaryPath := fs.String("summary", "", "also write the summary of a failed block to this file")
	plan := fs.String("plan", "", "run every block this file lists (NAME TIMEOUT FLAG... a line), each as a block of its own")
	lanes := fs.Int("lanes", 0, "with -plan: how many blocks run at once (0: by the host's CPUs and memory)")
	logDir := fs.String("logdir", "build", "with -plan: where each block's log (e2e-NAME.log) and summary (e2e-NAME.summary) go")
	if err := fs.Parse(os.Args[1:]); err != nil {
		os.Exit(2)
	}
	if *plan != "" {
		if fs.NArg() > 0 || *logPath != "" || *summaryPath != "" || *lanes < 0 {
			fmt.Fprintln(os.Stderr, "runblock: -plan takes its blocks' flags from the plan: no -log, -summary or test flags, and -lanes not negative")
			os.Exit(2)
		}
		os.Exit(planMain(*plan, *lanes, *logDir, *testvm, *e2e))
	}
	if *timeout <= time.Minute {
		fmt.Fprintln(os.Stderr, "runblock: -timeout must be more than a minute")
		os.Exit(2)
	}
	var log io.Writer = io.Discard
	if *logPath != "" {
		f, err := os.Create(*logPath)
		if err != nil {
			fmt.Fprintf(os.Stderr, "runblock: %v\n", err)
			os.Exit(2)
		}
		defer f.Close()
		log = f
	}
	run := func(flags []string) (int, []byte) {
		args := append([]string{"--timeout", timeout.String(), "--", *e2e, "-test.v",
			"-test.timeout", (*timeout - time.Minute).String()}, flags...)
		var out bytes.Buffer
		cmd := exec.Command(*testvm, args...)
		w := io.MultiWriter(os.Stdout, &out, log)
		cmd.Stdout, cmd.Stderr = w, w
		start := time.Now()
		err := cmd.Run()
		// The block's time, for keeping make test's total in view.
		fmt.Fprintf(w, "runblock: the block ran for %v\n", time.Since(start).Round(time.Second))
		if err != nil && cmd.ProcessState == nil {
			fmt.Fprintf(os.Stderr, "runblock: %v\n", err)
			return 125, out.Bytes()
		}
		return cmd.ProcessState.ExitCode(), out.Bytes()
	}
	code, out := run(fs.Args())
	if code == 0 {
		return
	}
	report := func(s string) {
		fmt.Print(s)
		fmt.Fprint(log, s)
		if *summaryPath != "" {
			os.WriteFile(*summaryPath, []byte(s), 0o644)
		}
	}
	failed := failures(out)
	sym := guestSymbols(out)
	report(summary(failed, code, sym))
	hostRIP := hostRIPIn(out)
	if len(failed) == 0 || !allFlaky(out, failed, hostRIP, sym) {
		os.Exit(code)
	}
	retry, what := retryArgs(failed, fs.Args(), func(f *failure, sub string) bool {
		return platformFault(f.text(sub), hostRIP, sym)
	})
	fmt.Fprintf(io.MultiWriter(os.Stdout, log), "RETRY: %s failed on the emulated nested platform's known faults (a guest triple fault or fault loop, a guest vCPU holding another machine's state, an interrupt taken with interrupts off, or the outer kernel's own crash); %s\n",
		names(failed), what)
	code, out = run(retry)
	if code != 0 {
		report(summary(failures(out), code, guestSymbols(out)))
	} else if *summaryPath != "" {
		os.Remove(*summaryPath)
	}
	os.Exit(code)
}

// names lists the failed tests' names.
func names(fs []failure) string {
	var n []string
	for _, f := range fs {
		n = append(n, f.Name)
	}
	return strings.Join(n, ", ")
}

// retryArgs returns the test flags of the retry of a block run with
// block's flags whose failures were fs, and what the retry does: when a
// test was left unfinished (the tests after it never ran), the whole
// block; when every failed test failed in subtests, each of whose own
// output shows the platform's fault (subFault), those subtests alone (a
// long test's other subtests, which passed, are not run, and exposed to
// the platform's faults, again); else the failed tests.
func retryArgs(fs []failure, block []string, subFault func(f *failure, sub string) bool) ([]string, string) {
	var tests, subs []string
	bySub := true
	for i := range fs {
		f := &fs[i]
		if !f.Finished {
			return block, "the block ended inside it, so the whole block runs once more"
		}
		tests = append(tests, regexp.QuoteMeta(f.Name))
		if len(f.FailedSubs) == 0 {
			bySub = false // it failed in its own body
		}
		for _, s := range f.FailedSubs {
			if !subFault(f, s) {
				bySub = false
			}
			subs = append(subs, regexp.QuoteMeta(s))
		}
	}
	run := "^(" + strings.Join(tests, "|") + ")$"
	if bySub {
		// A subtest of that name in another failed test runs too,
		// which does no harm: go test's -run has one pattern a level.
		slices.Sort(subs)
		return []string{"-test.run", run + "/^(" + strings.Join(slices.Compact(subs), "|") + ")$"},
			"running its failed subtests once more"
	}
	return []string{"-test.run", run}, "running it once more"
}

// A failure is a top-level test that failed (or was running when the
// block ended) and the lines it printed.
type failure struct {
	Name     string
	Finished bool     // a "--- FAIL" line ended it
	Lines    []string // its output, from its RUN line on
	// Sub names, for each of Lines, the subtest of the first level
	// (TestX/sub and those under it) whose output it is; "" for the
	// test's own lines and its verdicts.
	Sub []string
	// FailedSubs are its subtests of the first level that failed, in
	// the order of their verdicts.
	FailedSubs []string
}

var (
	runLine  = regexp.MustCompile(`^=== RUN   (Test[^/\s]*)$`)
	failLine = regexp.MustCompile(`^--- FAIL: (Test[^/\s]*) `)
	endLine  = regexp.MustCompile(`^--- (PASS|SKIP): (Test[^/\s]*) `)
	msgLine  = regexp.MustCompile(`^\s+\S+_test\.go:\d+: |^\s*--- FAIL: |^panic: |^testvm: `)
	// subLine is go test's line saying whose output follows: a
	// subtest's start, or a switch back to it (NAME, CONT).
	subLine = regexp.MustCompile(`^=== (?:RUN|NAME|CONT) +(Test[^/\s]*)/([^/\s]+)`)
	// subFailLine is a failed first-level subtest's verdict, printed
	// after its test's.
	subFailLine = regexp.MustCompile(`^    --- FAIL: (Test[^/\s]*)/([^/\s]+) `)
)

// text is the failure's output, or that of its first-level subtest sub.
func (f *failure) text(sub string) string {
	if sub == "" {
		return strings.Join(f.Lines, "\n")
	}
	var l []string
	for i, s := range f.Sub {
		if s == sub {
			l = append(l, f.Lines[i])
		}
	}
	return strings.Join(l, "\n")
}

// failures finds the failed top-level tests in a -test.v log. Top-level
// tests run one after another (none calls t.Parallel), so a test's
// output is what lies between its RUN line and its verdict. A test
// still running at the end (a timeout, a panic, a crashed platform)
// counts as failed.
func failures(out []byte) []failure {
	var list []failure
	var cur *failure
	verdicts := false // the lines after a failed test's are its subtests'
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	sub := "" // whose output the lines are (failure.Sub)
	for sc.Scan() {
		line := sc.Text()
		if verdicts && strings.HasPrefix(strings.TrimLeft(line, " "), "--- ") && strings.HasPrefix(line, " ") {
			f := &list[len(list)-1]
			f.Lines, f.Sub = append(f.Lines, line), append(f.Sub, "")
			if m := subFailLine.FindStringSubmatch(line); m != nil && m[1] == f.Name {
				f.FailedSubs = append(f.FailedSubs, m[2])
			}
			continue
		}
		verdicts = false
		if m := runLine.FindStringSubmatch(line); m != nil {
			cur, sub = &failure{Name: m[1]}, ""
		}
		if cur == nil {
			continue
		}
		if m := subLine.FindStringSubmatch(line); m != nil && m[1] == cur.Name {
			sub = m[2]
		} else if line == "=== NAME  "+cur.Name || strings.HasPrefix(line, "--- ") {
			sub = "" // back to the test's own output, or its verdict
		}
		cur.Lines, cur.Sub = append(cur.Lines, line), append(cur.Sub, sub)
		if m := failLine.FindStringSubmatch(line); m != nil && m[1] == cur.Name {
			cur.Finished = true
			list = append(list, *cur)
			cur, verdicts = nil, true
		} else if m := endLine.FindStringSubmatch(line); m != nil && m[2] == cur.Name {
			cur = nil
		}
	}
	if cur != nil {
		list = append(list, *cur)
	}
	return list
}

// emulated is the line testvm prints when it runs the tests in a nested
// KVM under QEMU's emulation: the only platform whose guest triple
// faults are not vessel's.
const emulated = "testvm: platform: nested KVM in QEMU TCG"

// allFlaky reports whether every failure ran to its verdict and shows
// one of the platform's known faults, and the block ran on the emulated
// platform: a guest triple fault, a guest vCPU whose state holds the
// outer kernel's own (hostRIP, or a page-table root outside the guest's
// RAM: foreignCR3), a timer interrupt taken with interrupts off
// (timerIRQWithIRQsOff), a guest kernel's fault loop (guestFaultLoop),
// or a crash of the outer kernel itself during the block.
func allFlaky(out []byte, fs []failure, hostRIP func(uint64) bool, sym func(uint64) string) bool {
	if !bytes.Contains(out, []byte(emulated)) {
		return false
	}
	crashed := outerCrash.Match(out)
	for _, f := range fs {
		if crashed {
			continue // even a test the crash left unfinished
		}
		if !f.Finished || !platformFault(f.text(""), hostRIP, sym) {
			return false
		}
	}
	return true
}

// platformFault reports whether a test's output shows one of the
// emulated platform's known guest faults (see allFlaky).
func platformFault(text string, hostRIP func(uint64) bool, sym func(uint64) string) bool {
	return strings.Contains(text, "triple fault") || leakedRIP(text, hostRIP) ||
		strings.Contains(text, foreignCR3) || timerIRQWithIRQsOff(text, sym) || guestFaultLoop(text)
}

// foreignCR3 is how vessel's description of a hung VM marks a vCPU whose
// page-table root lies outside the guest's RAM (vmm's describeStack): a
// guest's own CR3 never does, so the vCPU holds another machine's state,
// on this platform the outer kernel's ("L1 addresses in L2 registers").
const foreignCR3 = "outside guest RAM"

// timerIRQWithIRQsOff reports whether a hung VM's description in text
// shows a vCPU that took the local APIC timer interrupt where its
// interrupts were off. Only a platform that delivers an interrupt to a
// vCPU whose interrupts are disabled gets there, and QEMU TCG's nested
// SVM did, three times on 2026-12-06. It shows in two ways:
//
//   - On one vCPU's stack (read innermost first) the interrupt's entry
//     (asm_sysvec_apic_timer_interrupt) is followed, further out, by an
//     address in a function of irqsOffFuncs: the entry's saved RIP, the
//     code it interrupted. (Further out, a soft hrtimer's callback runs
//     __hrtimer_run_queues with interrupts on, so only the interrupted
//     RIP tells.) Seen inside __hrtimer_run_queues (the inner
//     hrtimer_interrupt then waits in kvm_wait, IF=0, for the hrtimer
//     lock the outer one holds) and inside timekeeping_update (the inner
//     one spins on the timekeeper's sequence count its own CPU is
//     writing).
//   - In a VM of one vCPU, that vCPU waits for a spin lock (its RIP and
//     the innermost stack entries in lockFuncs) taken by
//     hrtimer_interrupt: the hrtimer base's lock, which every holder
//     takes with interrupts off, and which no other CPU is there to
//     hold, so the interrupted code on this CPU holds it. The entry and
//     the interrupted RIP are out of sight here: the handler runs on
//     the interrupt stack, whose top ends the description's stack scan.
//     Seen in a load test's VM, whose create then hung.
//
// The likely cause, from reading QEMU's source (not confirmed by a
// patched QEMU): helper_vmrun injects an EVENTINJ interrupt but leaves
// cs->exception_index at its vector, so a later kick of that vCPU thread
// with nothing pending delivers the vector through the guest's IDT once
// more, without checking IF. No kvm_amd parameter avoids that path. sym
// names the guest kernel's functions (guestSymbols); without it nothing
// matches.
func timerIRQWithIRQsOff(text string, sym func(uint64) string) bool {
	if sym == nil {
		return false
	}
	name := func(a uint64) (string, string) {
		n, off, _ := strings.Cut(sym(a), "+")
		return n, off
	}
	for _, vm := range describedVMs(text) {
		for _, c := range vm {
			if interruptedIRQsOff(c.stack, name) {
				return true
			}
		}
		if len(vm) == 1 && selfDeadlockedTimer(vm[0], name) {
			return true
		}
	}
	return false
}

// interruptedIRQsOff reports whether the first code address after the
// timer interrupt's entry on stack lies in a function of irqsOffFuncs.
func interruptedIRQsOff(stack []uint64, name func(uint64) (string, string)) bool {
	entry := false
	for _, a := range stack {
		n, off := name(a)
		if !entry {
			entry = n == "asm_sysvec_apic_timer_interrupt"
			continue
		}
		// The first code address after the entry is the interrupted RIP,
		// saved in its pt_regs; a function's own address (+0x0) or one in
		// no function is a register's value, not code that ran.
		if n == "" || off == "0x0" {
			continue
		}
		return slices.Contains(irqsOffFuncs, n)
	}
	return false
}

// selfDeadlockedTimer reports whether c waits in a spin lock's slow path
// (its RIP in lockFuncs) that hrtimer_interrupt called: the first stack
// entry outside lockFuncs is in hrtimer_interrupt.
func selfDeadlockedTimer(c describedVCPU, name func(uint64) (string, string)) bool {
	if n, _ := name(c.rip); !slices.Contains(lockFuncs, n) {
		return false
	}
	for _, a := range c.stack {
		n, off := name(a)
		if n == "" || off == "0x0" || slices.Contains(lockFuncs, n) {
			continue
		}
		return n == "hrtimer_interrupt"
	}
	return false
}

// lockFuncs are the guest kernel's (Linux 6.1) spin lock functions a
// vCPU waiting for a lock runs in: the lock calls, their queued slow
// paths, and kvm_wait, where a paravirtual spinlock's waiter halts.
var lockFuncs = []string{"_raw_spin_lock", "_raw_spin_lock_irq", "_raw_spin_lock_irqsave", "do_raw_spin_lock",
	"native_queued_spin_lock_slowpath", "__pv_queued_spin_lock_slowpath", "kvm_wait"}

// describedVCPU is one vCPU of vessel's description of a hung VM
// (vmm.VM.Diagnose): its index, RIP and the kernel addresses on its
// stack, innermost first.
type describedVCPU struct {
	n     int
	rip   uint64
	stack []uint64
}

// descVCPU matches a vCPU's entry in a hung VM's description, up to its
// stack when the entry has one before the next vCPU's.
var descVCPU = regexp.MustCompile(`vCPU (\d+): [a-z ]+, rip 0x([0-9a-f]+)(?:(?:[^v]|v[^C])*?stack \[([0-9a-fx ]*)\])?`)

// describedVMs returns the VMs described in text, each the list of its
// vCPUs; a description starts at its vCPU 0.
func describedVMs(text string) [][]describedVCPU {
	var vms [][]describedVCPU
	for _, m := range descVCPU.FindAllStringSubmatch(text, -1) {
		n, _ := strconv.Atoi(m[1])
		rip, _ := strconv.ParseUint(m[2], 16, 64)
		c := describedVCPU{n: n, rip: rip}
		for _, a := range strings.Fields(m[3]) {
			if v, err := strconv.ParseUint(strings.TrimPrefix(a, "0x"), 16, 64); err == nil {
				c.stack = append(c.stack, v)
			}
		}
		if n == 0 || len(vms) == 0 {
			vms = append(vms, nil)
		}
		vms[len(vms)-1] = append(vms[len(vms)-1], c)
	}
	return vms
}

// irqsOffFuncs are guest kernel functions (Linux 6.1) that only ever run
// with the CPU's interrupts disabled: the timer interrupt's handler and
// what it runs (kernel/time/hrtimer.c, tick-sched.c), and the
// timekeeper's updates, made under timekeeper_lock taken with
// raw_spin_lock_irqsave (kernel/time/timekeeping.c).
var irqsOffFuncs = []string{"hrtimer_interrupt", "__hrtimer_run_queues", "tick_sched_timer",
	"tick_do_update_jiffies64", "update_wall_time", "timekeeping_advance", "timekeeping_update"}

// guestFaultLoop reports whether a guest kernel's console in text says
// one of its stacks ran into its guard page ("BUG: ENTRY_TRAMPOLINE
// stack guard page was hit"): its double-fault handler caught a fault
// taken again and again while the CPU entered the fault's handler, what
// a triple fault is one step further. Seen on 2026-12-06 in a disk
// stress guest of 2 vCPUs: a page fault on the IRET to user mode
// (native_irq_return_iret), then page faults in exc_page_fault reading
// the per-CPU current task with a GS base equal to the kernel GS base,
// each taken on the entry stack until it overflowed. The translation
// and segment state that loop needs is the CPU's, which KVM and, on this
// platform, QEMU's emulated SVM keep, never vessel; the outer kernel
// crashes the same way under QEMU's nested SVM (PLATFORM.md: "BUG: TASK
// stack guard page was hit" in error_entry). Lines the outer kernel
// printed are outerCrash's.
func guestFaultLoop(text string) bool {
	for _, l := range strings.Split(text, "\n") {
		if guardPageHit.MatchString(l) && !strings.HasPrefix(strings.TrimSpace(l), "testvm: outer kernel:") {
			return true
		}
	}
	return false
}

// guardPageHit is a kernel's report of a stack overflow into its guard
// page (arch/x86/kernel/traps.c, handle_stack_overflow).
var guardPageHit = regexp.MustCompile(`\] BUG: [A-Z_]+ stack guard page was hit at `)

// outerCrash matches the emulated platform's outer kernel reporting a
// crash of its own, as testvm relays its console ("BUG: TASK stack guard
// page was hit" under QEMU's nested SVM, PLATFORM.md): the test VM's
// kernel, not vessel's guest, broke, and what ran on it then is retried.
var outerCrash = regexp.MustCompile(`(?m)^testvm: outer kernel: \[[ 0-9.]+\] (BUG: |Oops: |general protection fault|kernel BUG at )`)

// ripField is a vCPU's RIP in the description of a VM whose guest
// stopped answering (vmm.VM.Diagnose, which the e2e tests turn on with
// VESSEL_DEBUG).
var ripField = regexp.MustCompile(`vCPU \d+: [a-z ]+, rip (0x[0-9a-f]+)`)

// leakedRIP reports whether a failure's text describes a guest vCPU
// whose RIP hostRIP places in the outer kernel's VMRUN path.
func leakedRIP(text string, hostRIP func(uint64) bool) bool {
	if hostRIP == nil {
		return false
	}
	for _, m := range ripField.FindAllStringSubmatch(text, -1) {
		if rip, err := strconv.ParseUint(m[1][2:], 16, 64); err == nil && hostRIP(rip) {
			return true
		}
	}
	return false
}

// outerKernel is the outer kernel's path in testvm's platform line.
var outerKernel = regexp.MustCompile(`testvm: platform: nested KVM in QEMU TCG [^\n]*outer kernel (\S+) `)

// vmrunFuncs are the outer kernel's functions that enter a nested guest
// (arch/x86/kvm/svm/vmenter.S, vmx/vmenter.S). On the emulated
// platform QEMU's TCG now and then leaves a nested guest's vCPU with
// the outer kernel's state: its RIP is the return from VMRUN in
// __svm_vcpu_run, and the guest, which runs no VMs, hangs with a page
// fault pending (seen on 2026-12-05, two VMs of one load test at the
// same RIP). A guest never runs these functions itself.
var vmrunFuncs = []string{"__svm_vcpu_run", "__svm_sev_es_vcpu_run", "__vmx_vcpu_run"}

// hostRIPIn returns a test of whether an address lies in one of the
// outer kernel's vmrunFuncs, from the symbols of the kernel testvm's
// platform line names in out; nil when there is none or it has no
// symbols.
func hostRIPIn(out []byte) func(uint64) bool {
	m := outerKernel.FindSubmatch(out)
	if m == nil {
		return nil
	}
	syms := elfSymbols(string(m[1]))
	type span struct{ lo, hi uint64 }
	var spans []span
	for _, s := range syms {
		for _, name := range vmrunFuncs {
			if s.Name == name && s.Size > 0 {
				spans = append(spans, span{s.Value, s.Value + s.Size})
			}
		}
	}
	if len(spans) == 0 {
		return nil
	}
	return func(a uint64) bool {
		for _, sp := range spans {
			if a >= sp.lo && a < sp.hi {
				return true
			}
		}
		return false
	}
}

// summary is the end-of-block report: the failed tests and their
// messages (a failed test's own and its failed subtests', not those of
// its subtests that passed), at most maxLines of them each, and, when sym is not nil,
// the guest kernel's functions at the addresses vessel's description of
// a hung VM names (its vCPUs' RIPs and stacks).
func summary(fs []failure, code int, sym func(uint64) string) string {
	const maxLines = 60
	const maxMsgLines = 12
	var b strings.Builder
	fmt.Fprintf(&b, "\n==== e2e block failed (exit status %d)", code)
	if len(fs) == 0 {
		b.WriteString(": no test failed (the platform or the test binary did)\n")
		return b.String()
	}
	b.WriteString("; what its failed tests said:\n")
	for _, f := range fs {
		var msgs []string
		cont := "" // the indentation a message's continuation lines have
		more := 0  // continuation lines of the message left out
		flush := func() {
			if more > 0 {
				msgs = append(msgs, fmt.Sprintf("%s... %d more lines (the block's log has them)", cont, more))
			}
			more = 0
		}
		kept := 0
		for i, l := range f.Lines {
			if f.Sub[i] != "" && !slices.Contains(f.FailedSubs, f.Sub[i]) {
				continue // a subtest that passed: its logs would crowd out the failure's
			}
			switch {
			case msgLine.MatchString(l) && !strings.Contains(l, "Unhandled WRMSR"):
				flush()
				msgs = append(msgs, l)
				// go test indents a message's further lines 4
				// spaces deeper than its first.
				cont, kept = l[:len(l)-len(strings.TrimLeft(l, " \t"))]+"    ", 0
				if t := strings.TrimSpace(l); strings.HasPrefix(t, "testvm: ") || strings.HasPrefix(t, "--- FAIL: ") {
					cont = "" // a result's subtests are results, not its text
				}
			case cont != "" && strings.HasPrefix(l, cont):
				// A long message (a daemon's log) must not push the
				// other messages out of the summary.
				if kept < maxMsgLines {
					msgs = append(msgs, l)
					kept++
				} else {
					more++
				}
			default:
				flush()
				cont = ""
			}
		}
		flush()
		state := ""
		if !f.Finished {
			state = " (still running when the block ended)"
			// Its last lines say where it was.
			msgs = f.Lines
		}
		if len(msgs) > maxLines {
			msgs = append([]string{fmt.Sprintf("    ... %d earlier lines", len(msgs)-maxLines)}, msgs[len(msgs)-maxLines:]...)
		}
		fmt.Fprintf(&b, "== %s%s\n", f.Name, state)
		for _, m := range msgs {
			if len(m) > 2000 {
				m = m[:2000] + " ..."
			}
			b.WriteString(m + "\n")
		}
		if s := symbolize(strings.Join(f.Lines, "\n"), sym); s != "" {
			b.WriteString("    in the guest kernel: " + s + "\n")
		}
	}
	return b.String()
}

// guestKernel is the guest kernel's path in a logged vessel command line.
var guestKernel = regexp.MustCompile(`--kernel (\S+)/bzImage `)

// descAddrs are the addresses in vessel's description of a hung VM: a
// vCPU's RIP and its stack's kernel addresses.
var (
	descRIP   = regexp.MustCompile(`rip (0x[0-9a-f]+)`)
	descStack = regexp.MustCompile(`stack \[([0-9a-fx ]*)\]`)
)

// symbolize names the functions at the description addresses in text,
// in order and without repeats ("0x... name+0xoff"); "" when sym is nil
// or nothing is named.
func symbolize(text string, sym func(uint64) string) string {
	if sym == nil {
		return ""
	}
	var addrs []string
	for _, m := range descRIP.FindAllStringSubmatch(text, -1) {
		addrs = append(addrs, m[1])
	}
	for _, m := range descStack.FindAllStringSubmatch(text, -1) {
		addrs = append(addrs, strings.Fields(m[1])...)
	}
	seen := map[string]bool{}
	var out []string
	for _, a := range addrs {
		v, err := strconv.ParseUint(strings.TrimPrefix(a, "0x"), 16, 64)
		if err != nil || seen[a] {
			continue
		}
		seen[a] = true
		if name := sym(v); name != "" {
			out = append(out, a+" "+name)
		}
	}
	return strings.Join(out, ", ")
}

// guestSymbols returns a function naming the guest kernel's function at
// an address ("name+0xoff"), from the symbols of the vmlinux beside the
// bzImage the block's vessel commands boot, or, when no command names
// one (vessel-runtime started by docker, containerd or podman), in the
// guest directory vessel boots from by default; nil when there is none.
func guestSymbols(out []byte) func(uint64) string {
	dir := guestdir.Dir()
	if m := guestKernel.FindSubmatch(out); m != nil {
		dir = string(m[1])
	}
	syms := elfSymbols(dir + "/vmlinux")
	if syms == nil {
		return nil
	}
	return namer(syms)
}

// elfSymbols returns the symbol table of the ELF file at path; nil when
// it cannot be read or has none.
func elfSymbols(path string) []elf.Symbol {
	f, err := elf.Open(path)
	if err != nil {
		return nil
	}
	defer f.Close()
	syms, err := f.Symbols()
	if err != nil {
		return nil
	}
	return syms
}

// namer returns a function naming the function (or sized untyped code)
// symbol of syms that holds an address ("name+0xoff"; "" for none).
func namer(syms []elf.Symbol) func(uint64) string {
	var funcs []elf.Symbol
	for _, s := range syms {
		// Assembly entry points (asm_sysvec_*) are sized but untyped.
		if t := elf.ST_TYPE(s.Info); (t == elf.STT_FUNC || t == elf.STT_NOTYPE) && s.Size > 0 {
			funcs = append(funcs, s)
		}
	}
	sort.Slice(funcs, func(i, j int) bool { return funcs[i].Value < funcs[j].Value })
	return func(a uint64) string {
		i := sort.Search(len(funcs), func(i int) bool { return funcs[i].Value > a }) - 1
		if i < 0 || a >= funcs[i].Value+funcs[i].Size {
			return ""
		}
		return fmt.Sprintf("%s+%#x", funcs[i].Name, a-funcs[i].Value)
	}
}
