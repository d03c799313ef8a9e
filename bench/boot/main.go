// Command benchboot is vessel's boot benchmark (`make bench-boot`). It
// boots the same guest kernel and initramfs, with the same kernel command
// line, 1 vCPU and 256 MiB, in vessel and in two peers, the Go VMM gokvm
// and QEMU's microvm machine, N times each, interleaved so that drift
// affects all alike, with the order rotated every round (vessel, gokvm,
// qemu; then gokvm, qemu, vessel; ...) and reversed every other cycle, so
// that no VMM always runs first or always follows the same peer. Every guest runs
// `cat /proc/uptime` through vessel's guest init and powers off.
//
//	benchboot [flags]
//
// Per run it measures the time from the VMM's start to the uptime line on
// its console (host side), the guest's own uptime in that line (guest
// side), the VMM's CPU time, vessel's userspace exits and the VMM's
// memory overhead (resident memory minus the guest RAM), then prints a
// markdown report: per-VMM medians and ranges, vessel's ratios to each
// peer, and the raw results as JSON. It is a benchmark, not a test: no
// thresholds; a run that times out or crashes is reported as failed with
// its reason and the other runs go on.
//
// On a host whose /dev/kvm cannot boot a stock kernel it runs inside
// cmd/testvm (`bin/testvm -- bin/benchboot ...`), where absolute times are
// 10-50x those on hardware: compare the ratios of one run only. Files
// written there do not survive, so the report carries the raw JSON and
// `benchboot --extract-json REPORT --out FILE` copies it out afterwards.
//
// # Flags
//
//	--runs N          measured runs per VMM (default 5)
//	--warmup N        warm-up rounds before them, not counted (default 1)
//	--timeout D       limit for one VMM run (default 120s)
//	--grace D         how long a VMM that exits by itself gets after the
//	                  uptime line before it is killed and failed (default 20s)
//	--out FILE        also write the raw results as JSON to FILE
//	--vmms LIST       which VMMs, in run order (default auto: vessel,gokvm,qemu,
//	                  but no gokvm under QEMU's software emulation, where
//	                  its guest gets no timer interrupt: see RESULTS.md)
//	--vessel PATH     vessel binary (default bin/vessel)
//	--gokvm PATH      gokvm binary (default build/peers/gokvm)
//	--qemu PATH       QEMU binary (default qemu-system-x86_64)
//	--kernel PATH     guest bzImage (default $VESSEL_GUEST_DIR/bzImage)
//	--initrd PATH     guest initramfs (default $VESSEL_GUEST_DIR/initramfs.cpio)
//	--memory MiB      guest RAM (default 256)
//	--cmdline S       base kernel command line for every VMM (default: vessel's
//	                  own default, read from `vessel vm run --help`); the
//	                  vessel.* parameters for the guest command are appended
//	--gokvm-extra S   kernel parameters added for gokvm only (default
//	                  "notsc tsc_early_khz=auto": gokvm gives the guest no
//	                  kvm-clock, and its guest hangs calibrating the TSC
//	                  without them (PLATFORM.md); auto is the host's
//	                  "cpu MHz" in kHz)
//	--qemu-acpi M     auto|on|off: QEMU microvm's ACPI (GED power-off); auto
//	                  is on unless the command line has acpi=off (default auto)
//	--extract-json R  run nothing: copy the raw JSON out of report R to --out
//
// Exit status: 0 when the benchmark completed (failed runs are in the
// report), 1 when it could not run or write its results, 2 for invalid
// flags, 3 when it stopped early because not one boot of any VMM worked
// (a platform problem, not one VMM's), 130 when
// interrupted.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/vesselvm/vessel/bench/internal/benchutil"
	"github.com/vesselvm/vessel/internal/guestdir"
)

// config holds benchboot's flags.
type config struct {
	Runs, Warmup   int
	Timeout, Grace time.Duration
	Out            string
	VMMs           []string
	// AutoVMMs: --vmms was not given; autoVMMs trims VMMs for the
	// platform.
	AutoVMMs       bool
	Vessel, Gokvm  string
	QEMU           string
	Kernel, Initrd string
	MemMiB         int
	Cmdline        string
	GokvmExtra     string
	QEMUACPI       string
	ExtractJSON    string
}

// exitNoBoot is the exit status when no VMM could boot anything.
const exitNoBoot = 3

// usageError is a bad flag or argument: one line, exit status 2.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error {
	return &usageError{msg: fmt.Sprintf(format, args...)}
}

// errHelp is returned by parseFlags for -h.
var errHelp = errors.New("help requested")

// parseFlags parses benchboot's arguments (without the program name).
func parseFlags(args []string, usageOut io.Writer) (*config, error) {
	c := &config{}
	fs := flag.NewFlagSet("benchboot", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	gd := guestdir.Dir()
	vmms := "auto"
	fs.IntVar(&c.Runs, "runs", 5, "measured runs per VMM")
	fs.IntVar(&c.Warmup, "warmup", 1, "warm-up rounds before the measured runs, not counted")
	fs.DurationVar(&c.Timeout, "timeout", 120*time.Second, "limit for one VMM run")
	fs.DurationVar(&c.Grace, "grace", 20*time.Second, "how long a VMM that exits by itself gets after the uptime line")
	fs.StringVar(&c.Out, "out", "", "also write the raw results as JSON to this file")
	fs.StringVar(&vmms, "vmms", vmms, "comma-separated VMMs to run, in run order")
	fs.StringVar(&c.Vessel, "vessel", "bin/vessel", "vessel binary")
	fs.StringVar(&c.Gokvm, "gokvm", "build/peers/gokvm", "gokvm binary")
	fs.StringVar(&c.QEMU, "qemu", "qemu-system-x86_64", "QEMU binary")
	fs.StringVar(&c.Kernel, "kernel", filepath.Join(gd, "bzImage"), "guest kernel (bzImage)")
	fs.StringVar(&c.Initrd, "initrd", filepath.Join(gd, "initramfs.cpio"), "guest initramfs")
	fs.IntVar(&c.MemMiB, "memory", 256, "guest RAM in MiB")
	fs.StringVar(&c.Cmdline, "cmdline", "", "base kernel command line for every VMM (default: vessel's default)")
	fs.StringVar(&c.GokvmExtra, "gokvm-extra", "notsc tsc_early_khz=auto", "kernel parameters added for gokvm only (auto: the host's TSC kHz)")
	fs.StringVar(&c.QEMUACPI, "qemu-acpi", "auto", "QEMU microvm ACPI: auto (on unless the command line has acpi=off), on or off")
	fs.StringVar(&c.ExtractJSON, "extract-json", "", "run nothing: copy the raw JSON of this report to --out")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(usageOut, "usage: benchboot [flags]  (boot benchmark: vessel vs gokvm vs QEMU microvm)")
			fs.SetOutput(usageOut)
			fs.PrintDefaults()
			return nil, errHelp
		}
		return nil, usagef("%v", err)
	}
	if fs.NArg() > 0 {
		return nil, usagef("unexpected argument %q", fs.Arg(0))
	}
	if c.ExtractJSON != "" {
		if c.Out == "" {
			return nil, usagef("--extract-json needs --out")
		}
		return c, nil
	}
	switch {
	case c.Runs < 1:
		return nil, usagef("--runs must be at least 1, not %d", c.Runs)
	case c.Warmup < 0:
		return nil, usagef("--warmup must not be negative")
	case c.Timeout <= 0:
		return nil, usagef("--timeout must be positive")
	case c.Grace <= 0:
		return nil, usagef("--grace must be positive")
	case c.MemMiB < 64:
		return nil, usagef("--memory must be at least 64 (MiB), not %d", c.MemMiB)
	case c.QEMUACPI != "auto" && c.QEMUACPI != "on" && c.QEMUACPI != "off":
		return nil, usagef("--qemu-acpi must be auto, on or off, not %q", c.QEMUACPI)
	}
	if vmms == "auto" {
		c.AutoVMMs = true
		vmms = strings.Join(allVMMs, ",")
	}
	seen := map[string]bool{}
	for _, v := range strings.Split(vmms, ",") {
		v = strings.TrimSpace(v)
		if v == "" {
			continue
		}
		if _, ok := vmmTitle[v]; !ok {
			return nil, usagef("--vmms: unknown VMM %q (known: %s)", v, strings.Join(allVMMs, ", "))
		}
		if seen[v] {
			return nil, usagef("--vmms: %q given twice", v)
		}
		seen[v] = true
		c.VMMs = append(c.VMMs, v)
	}
	if len(c.VMMs) == 0 {
		return nil, usagef("--vmms is empty")
	}
	for _, p := range []struct{ flag, path string }{{"--kernel", c.Kernel}, {"--initrd", c.Initrd}} {
		if st, err := os.Stat(p.path); err != nil || !st.Mode().IsRegular() {
			return nil, usagef("%s: no guest artifact at %s (build it with `make guest`)", p.flag, p.path)
		}
	}
	return c, nil
}

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// run is main without os.Exit, returning the exit status.
func run(args []string, stdout, stderr io.Writer) int {
	cfg, err := parseFlags(args, stdout)
	switch {
	case errors.Is(err, errHelp):
		return 0
	case err != nil:
		fmt.Fprintf(stderr, "benchboot: %v (benchboot -h for usage)\n", err)
		return 2
	}
	if cfg.ExtractJSON != "" {
		if err := extract(cfg); err != nil {
			fmt.Fprintf(stderr, "benchboot: %v\n", err)
			return 1
		}
		return 0
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	defer stop()
	res, err := bench(ctx, cfg, stderr)
	if err != nil {
		fmt.Fprintf(stderr, "benchboot: %v\n", err)
		return 1
	}
	if err := RenderReport(stdout, res); err != nil {
		fmt.Fprintf(stderr, "benchboot: %v\n", err)
		return 1
	}
	if cfg.Out != "" {
		if err := writeJSON(cfg.Out, res); err != nil {
			fmt.Fprintf(stderr, "benchboot: --out: %v\n", err)
			return 1
		}
	}
	if ctx.Err() != nil {
		fmt.Fprintln(stderr, "benchboot: interrupted; the report covers the runs done so far")
		return 130
	}
	if res.Aborted != "" {
		return exitNoBoot
	}
	return 0
}

// bench runs every round and returns the results.
func bench(ctx context.Context, cfg *config, progress io.Writer) (*Results, error) {
	var notes []string
	def := cfg.Cmdline
	if def == "" {
		var err error
		if def, err = vesselCmdline(cfg.Vessel); err != nil {
			def = DefaultCmdline
			notes = append(notes, fmt.Sprintf("could not read vessel's default kernel command line (%v); used benchboot's copy", err))
		}
	} else {
		notes = append(notes, "kernel command line set with --cmdline (not vessel's default)")
	}
	if cfg.AutoVMMs {
		var note string
		cfg.VMMs, note = autoVMMs(cfg.VMMs, benchutil.Kind(benchutil.ReadCPU("/proc/cpuinfo"), benchutil.KVMModule()))
		if note != "" {
			notes = append(notes, note)
		}
	}
	specs, specNotes, err := buildSpecs(cfg, def, hostKHz())
	if err != nil {
		return nil, err
	}
	notes = append(notes, specNotes...)
	tmp, err := os.MkdirTemp("", "benchboot-")
	if err != nil {
		return nil, fmt.Errorf("temporary directory: %w", err)
	}
	defer os.RemoveAll(tmp)

	res := &Results{
		Date:     time.Now(),
		Platform: detectPlatform(cfg),
		Setup: Setup{
			Kernel: cfg.Kernel, Initrd: cfg.Initrd, CPUs: 1, MemMiB: cfg.MemMiB,
			Runs: cfg.Runs, Warmup: cfg.Warmup, Timeout: cfg.Timeout.String(),
			GuestArgv: guestArgv, VMMs: cfg.VMMs,
			Commands: map[string]string{}, Cmdlines: map[string]string{}, ExitsItself: map[string]bool{},
			Notes: notes,
		},
	}
	for _, s := range specs {
		res.Setup.Commands[s.Name] = shellQuote(append([]string{s.Path}, s.Args("METRICS.json")...))
		res.Setup.Cmdlines[s.Name] = s.Cmdline
		res.Setup.ExitsItself[s.Name] = s.ExitsOnItsOwn
	}
	fmt.Fprintf(progress, "benchboot: %s; %d warm-up + %d runs of %s\n",
		res.Platform.Kind, cfg.Warmup, cfg.Runs, strings.Join(cfg.VMMs, ", "))

	r := &runner{cfg: cfg, tmpDir: tmp}
	total := cfg.Warmup + cfg.Runs
	anyOK := false
	for i := 0; i < total && ctx.Err() == nil; i++ {
		warm := i < cfg.Warmup
		round := i - cfg.Warmup + 1
		if warm {
			round = 0
		}
		for _, s := range rotate(specs, i) {
			if ctx.Err() != nil {
				break
			}
			run := r.runOne(ctx, s, round, warm)
			res.Runs = append(res.Runs, run)
			anyOK = anyOK || run.OK
			fmt.Fprintf(progress, "benchboot: %-8s %-8s %s\n", roundName(run), s.Name, progressLine(run))
		}
		if !anyOK && ctx.Err() == nil {
			// Not one boot of any VMM worked: the platform, not a VMM,
			// is the likely culprit (the nested one sometimes runs no
			// inner guest at all). Say so instead of timing out N times.
			res.Aborted = fmt.Sprintf("stopped after round %d: no VMM booted a guest so far, "+
				"which points at the platform (e.g. a nested KVM that runs no guest) rather than at one VMM", i+1)
			fmt.Fprintf(progress, "benchboot: %s\n", res.Aborted)
			break
		}
	}
	return res, nil
}

// rotate returns round i's run order: specs started at its i-th element
// (modulo its length), and reversed in every other cycle of len(specs)
// rounds, so that over two cycles each VMM runs first equally often and
// follows each other VMM equally often. What a run leaves the platform
// doing (the outer kernel freeing the last VMM's memory, caches it
// filled) falls on the next run; this spreads it over every VMM instead
// of charging one.
func rotate[T any](specs []T, i int) []T {
	n := len(specs)
	if n == 0 {
		return nil
	}
	out := append(append([]T(nil), specs[i%n:]...), specs[:i%n]...)
	if (i/n)%2 == 1 {
		slices.Reverse(out)
	}
	return out
}

// autoVMMs returns the VMMs to run by default on a platform of the given
// kind (benchutil.Kind), and why one was left out.
func autoVMMs(vmms []string, kind string) ([]string, string) {
	if !strings.Contains(kind, "TCG") {
		return vmms, ""
	}
	var out []string
	for _, v := range vmms {
		if v != nameGokvm {
			out = append(out, v)
		}
	}
	return out, "gokvm left out: under QEMU's software emulation its guest gets no timer interrupt (the local APIC timer fails its verification, the PIT's never arrive, the ACPI PM timer stands still), so /init starts and nothing that waits ever wakes; bench/boot/RESULTS.md has the record. --vmms vessel,gokvm,qemu runs it anyway"
}

// progressLine summarizes one run on one line.
func progressLine(r Run) string {
	if !r.OK {
		return "FAILED: " + r.Error
	}
	var parts []string
	add := func(label string, v *float64, format string) {
		if v != nil {
			parts = append(parts, fmt.Sprintf("%s "+format, label, *v))
		}
	}
	add("init", r.TimeToInit, "%.2fs")
	add("guest", r.GuestUptime, "%.2fs")
	add("boot_to_init", r.BootToInitMS, "%.0fms")
	add("cpu", r.CPUTotal, "%.2fs")
	add("cpu@init", r.CPUToInit, "%.2fs")
	add("exits", r.ExitsTotal, "%.0f")
	add("overhead", r.MemOverheadMiB, "%.1fMiB")
	add("tree_pss", r.TreeOverheadPSSMiB, "%.1fMiB")
	add("procs", r.Processes, "%.0f")
	add("wall", r.Wall, "%.2fs")
	s := strings.Join(parts, " ") + " (" + r.Ending + ")"
	if len(r.Notes) > 0 {
		s += "; " + strings.Join(r.Notes, "; ")
	}
	return s
}

func writeJSON(path string, res *Results) error {
	b, err := json.MarshalIndent(res, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}

// extract copies the raw JSON out of a report.
func extract(cfg *config) error {
	f, err := os.Open(cfg.ExtractJSON)
	if err != nil {
		return fmt.Errorf("--extract-json: %w", err)
	}
	defer f.Close()
	b, err := ExtractJSON(f)
	if err != nil {
		return fmt.Errorf("--extract-json %s: %w", cfg.ExtractJSON, err)
	}
	if err := os.WriteFile(cfg.Out, b, 0o644); err != nil {
		return fmt.Errorf("--out: %w", err)
	}
	return nil
}

// shellQuote joins argv into a command a shell would split back.
func shellQuote(argv []string) string {
	q := make([]string, len(argv))
	for i, a := range argv {
		if a != "" && strings.IndexFunc(a, func(r rune) bool {
			return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("-_./=,:+@", r))
		}) < 0 {
			q[i] = a
			continue
		}
		q[i] = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
	}
	return strings.Join(q, " ")
}
