package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/vesselvm/vessel/container"
	"github.com/vesselvm/vessel/devices/virtio"
	"github.com/vesselvm/vessel/guest/cmdline"
	"github.com/vesselvm/vessel/internal/guestdir"
	"github.com/vesselvm/vessel/internal/vmmproc"
	"github.com/vesselvm/vessel/vmm"
)

// DefaultCmdline is the kernel command line vessel boots with unless
// --cmdline replaces it (vmm.DefaultCmdline, where each parameter is
// explained).
const DefaultCmdline = vmm.DefaultCmdline

// builtGuest returns the kernel and initramfs `make` installed, or the
// path of one that is missing.
func builtGuest() (kernel, initrd, missing string) {
	dir := guestdir.Dir()
	kernel, initrd = filepath.Join(dir, "bzImage"), filepath.Join(dir, "initramfs.cpio")
	for _, p := range []string{kernel, initrd} {
		if _, err := os.Stat(p); errors.Is(err, fs.ErrNotExist) {
			return kernel, initrd, p
		}
	}
	return kernel, initrd, ""
}

type vmRunFlags struct {
	kernel, initrd, cmdline, memory, metrics string
	cpus                                     int
	disks, nets                              []string
	vsock, balloon                           string
	hugePages                                bool
	jail                                     jailFlags
	api, restore                             string // see api.go, vmrestore.go
}

func newVMRun() *cobra.Command {
	var f vmRunFlags
	cmd := &cobra.Command{
		Use:   "run [flags] [-- COMMAND [ARG...]]",
		Short: "Boot a microVM and run COMMAND in it (or a shell)",
		Long: `Boot a microVM with the given kernel and initramfs (by default the ones
` + "`make`" + ` builds) and run COMMAND in it through vessel's guest init, or an
interactive shell without COMMAND. vessel exits with COMMAND's exit status.

On a terminal the console is raw: press Ctrl-A X to quit.

With --restore DIR the VM of a snapshot (vessel vm snapshot) resumes where
it was paused instead; the snapshot names its size, disks and vsock device.
A corrupt snapshot, or one another vessel version or host CPU model took,
is refused with exit status 2 and nothing left behind.

Exit statuses: the command's (0-255); 2 invalid usage or input;
3 guest crash (panic, triple fault); 125 vessel failure; 130/143 host signal;
0 when stopped through the API (--api). SIGUSR2 stops the VM after describing
its state (vCPUs, interrupt controllers, virtio rings) on stderr, exit 125.`,
		Args: cobra.ArbitraryArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) > 0 && cmd.ArgsLenAtDash() != 0 {
				return usageErr("unexpected argument %q: put the guest command after --", args[0])
			}
			if f.api != "" && !cmd.Flags().Changed("jail") {
				f.jail.jail = false // the API drives a VM built in this process (README "The VM API")
			}
			if f.restore != "" {
				return vmRestore(cmd, f, args)
			}
			return vmRun(f, args)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&f.kernel, "kernel", "", "guest kernel: bzImage, or ELF vmlinux with a PVH entry (default: the built one)")
	fl.StringVar(&f.initrd, "initrd", "", "initramfs (default: the built one, when --kernel is not given)")
	fl.IntVar(&f.cpus, "cpus", 1, "number of vCPUs")
	fl.StringVar(&f.memory, "memory", "256M", "guest RAM, e.g. 512M or 2G (a bare number is MiB)")
	fl.BoolVar(&f.hugePages, "hugepages", false, "back guest RAM with transparent huge pages where the host gives them (its transparent_hugepage setting is always or madvise): fewer faults and TLB misses, whole 2 MiB pages resident")
	fl.StringVar(&f.cmdline, "cmdline", DefaultCmdline, "kernel command line (vessel appends its vessel.* parameters)")
	fl.StringVar(&f.metrics, "metrics", "", "write run metrics (boot time, exits) as JSON to this file")
	fl.StringArrayVar(&f.disks, "disk", nil, "attach a raw disk image as /dev/vdX: PATH[,ro][,serial=ID] (repeatable)")
	fl.StringArrayVar(&f.nets, "net", nil, netHelp)
	addJailFlags(fl, &f.jail)
	fl.StringVar(&f.api, "api", "", "serve the VM API (pause, resume, snapshot, stop; README \"The VM API\") on this Unix socket")
	fl.StringVar(&f.restore, "restore", "", "start the VM of the snapshot in this directory (vessel vm snapshot) instead of booting")
	fl.StringVar(&f.balloon, "balloon", "", "attach a virtio-balloon device: on, or options among reporting (return memory the guest frees), deflate-on-oom, stats=DURATION (refresh the guest's memory statistics), mib=N (start inflated); \"on\" is reporting,deflate-on-oom,stats=1s")
	fl.StringVar(&f.vsock, "vsock", "", "attach a vsock device: UDS[,cid=N] (Firecracker's hybrid vsock: host programs connect to UDS and send \"CONNECT <port>\\n\"; guest connections to CID 2 port P reach UDS_P; guest CID 3 by default; with --restore the snapshot's, and cid=N gives a clone its own)")
	return cmd
}

func vmRun(f vmRunFlags, argv []string) error {
	mem, err := parseSize(f.memory)
	if err != nil {
		return usageErr("--memory: %v", err)
	}
	if mem == 0 {
		return usageErr("--memory must be more than 0")
	}
	if f.cpus < 1 {
		return usageErr("--cpus must be at least 1 (got %d)", f.cpus)
	}
	if err := f.jail.check(); err != nil {
		return usageErr("%v", err)
	}
	if f.api != "" && f.jail.jail {
		return usageErr("--api does not work with --jail yet (--api alone runs the VMM unjailed, under its seccomp filter)")
	}
	kernel, initrd := f.kernel, f.initrd
	if kernel == "" {
		k, rd, missing := builtGuest()
		if missing != "" {
			return usageErr("no guest artifact at %s: build it with `make` or pass --kernel/--initrd", missing)
		}
		kernel = k
		if initrd == "" {
			initrd = rd
		}
	}
	var disks []vmm.Disk
	for _, d := range f.disks {
		disk, err := parseDisk(d)
		if err != nil {
			return usageErr("--disk %s: %v", d, err)
		}
		disks = append(disks, disk)
	}
	var vsock *vmm.Vsock
	if f.vsock != "" {
		if vsock, err = parseVsock(f.vsock, 3); err != nil {
			return usageErr("--vsock %s: %v", f.vsock, err)
		}
	}
	var balloon *vmm.Balloon
	if f.balloon != "" {
		if balloon, err = parseBalloon(f.balloon); err != nil {
			return usageErr("--balloon %s: %v", f.balloon, err)
		}
	}
	nets, guestNets, err := parseNets(f.nets)
	if err != nil {
		return err
	}
	interactive := term.IsTerminal(int(os.Stdin.Fd())) && term.IsTerminal(int(os.Stdout.Fd()))
	extra, err := cmdline.Encode(cmdline.Spec{Argv: argv, TTY: interactive, Control: true, Net: guestNets})
	if err != nil {
		return usageErr("%v", err)
	}
	cfg := vmm.Config{
		Kernel:    kernel,
		Initrd:    initrd,
		Cmdline:   strings.TrimSpace(f.cmdline + " " + extra),
		CPUs:      f.cpus,
		Memory:    mem,
		Console:   os.Stdout,
		Disks:     disks,
		Nets:      nets,
		Vsock:     vsock,
		Balloon:   balloon,
		Log:       os.Stderr,
		AllowPVM:  f.kernel != "" && os.Getenv("VESSEL_ALLOW_PVM") == "1",
		HugePages: f.hugePages,
	}
	if f.kernel != "" && vmm.IsPVM() && !cfg.AllowPVM {
		// Say plainly what a PVM host needs even when a kernel was given.
		return usageErr("/dev/kvm is PVM (kvm_pvm): it runs only PVM-enabled guest kernels; " +
			"set VESSEL_ALLOW_PVM=1 if --kernel is one, or boot on a VT-x/AMD-V host or through cmd/testvm")
	}
	return runConsoleVM(cfg, f, "", interactive)
}

// runConsoleVM runs cfg's VM, or restores the snapshot in restoreDir
// with cfg's backends, with the guest console on this terminal (raw when
// interactive), the VM API if asked for, and host signals stopping it;
// it returns how the VM ended as vessel's exit.
func runConsoleVM(cfg vmm.Config, f vmRunFlags, restoreDir string, interactive bool) error {
	if f.metrics != "" {
		// Fail on an unwritable metrics path before booting, not after.
		mf, err := os.OpenFile(f.metrics, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
		if err != nil {
			return usageErr("--metrics: %v", err)
		}
		mf.Close()
	}

	var restore func()
	if interactive {
		old, err := term.MakeRaw(int(os.Stdin.Fd()))
		if err == nil {
			restore = func() { term.Restore(int(os.Stdin.Fd()), old) }
			defer restore()
		}
	}

	input := "stdin"
	if interactive {
		input = "escape"
	}
	vm, err := startVM(cfg, vmOptions{jail: f.jail, console: true, input: input, restore: restoreDir})
	if err != nil {
		return classify(err)
	}
	defer vm.Close()
	if f.api != "" {
		srv, err := serveAPI(f.api, vm.(*vmm.VM))
		if err != nil {
			return err
		}
		defer srv.Close()
	}

	// SIGUSR2 asks for the VM's state: vessel describes
	// it (vCPUs, interrupt controllers, virtio rings), stops the VM and
	// exits 125 with the description, for a caller (a test) that gives up
	// on a guest that stopped answering.
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGUSR2)
	defer signal.Stop(sigs)
	var hostSig os.Signal
	go func() {
		if s, ok := <-sigs; ok {
			if s == syscall.SIGUSR2 {
				vm.StopDiagnosed()
			} else {
				hostSig = s
			}
			vm.Stop()
		}
	}()

	// A jailed VMM process filters itself (internal/vmmproc).
	if !f.jail.jail {
		if err := sandboxVMM(); err != nil {
			return err
		}
	}
	res := vm.Run()
	if restore != nil {
		restore()
	}
	if f.metrics != "" {
		if err := writeMetrics(f.metrics, res); err != nil {
			fmt.Fprintf(os.Stderr, "vessel: --metrics: %v\n", err)
		}
	}
	return resultErr(res, hostSig)
}

// classify turns a setup error into an exit status and one line.
func classify(err error) error {
	var ee *exitError
	if errors.As(err, &ee) {
		return ee
	}
	if usage, msg := vmmproc.Describe(err); usage {
		return &exitError{code: exitUsage, msg: msg}
	}
	return &exitError{code: exitInternal, msg: err.Error()}
}

// resultErr maps how the VM ended to vessel's exit status.
func resultErr(res vmm.Result, hostSig os.Signal) error {
	if hostSig != nil {
		n := 0
		if s, ok := hostSig.(syscall.Signal); ok {
			n = int(s)
		}
		return &exitError{code: 128 + n}
	}
	if res.Diagnosis != "" {
		var b strings.Builder
		// The console went to stdout already: only the description.
		b.WriteString("the VM was stopped for a diagnosis (SIGUSR2)")
		container.WriteDiagnosis(&b, res.Diagnosis)
		return &exitError{code: exitInternal, msg: strings.TrimRight(b.String(), "\n")}
	}
	switch res.Kind {
	case vmm.ExitGuestStatus:
		if res.Status == 0 {
			return nil
		}
		return &exitError{code: res.Status}
	case vmm.ExitReboot, vmm.ExitPowerOff, vmm.ExitStopped:
		return nil
	case vmm.ExitPanic, vmm.ExitTripleFault:
		var b strings.Builder
		fmt.Fprintf(&b, "guest crashed: %s", container.CleanText(res.Detail))
		writeConsoleTail(&b, res.ConsoleTail)
		return &exitError{code: exitGuestCrash, msg: strings.TrimRight(b.String(), "\n")}
	default:
		return &exitError{code: exitInternal, msg: container.CleanText(res.Detail)}
	}
}

// writeConsoleTail appends the guest console's last lines to a failure
// report, each cleaned of control characters: the guest wrote them.
func writeConsoleTail(b *strings.Builder, tail []string) {
	if len(tail) == 0 {
		return
	}
	b.WriteString("; last console lines:\n")
	for _, l := range lastN(tail, 15) {
		b.WriteString("  | " + container.CleanText(l) + "\n")
	}
}

func lastN(s []string, n int) []string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// metricsFile is the JSON written by --metrics.
type metricsFile struct {
	Exit         string            `json:"exit"`
	Status       int               `json:"status"`
	BootToInitMS float64           `json:"boot_to_init_ms"`
	TotalMS      float64           `json:"total_ms"`
	Exits        map[string]uint64 `json:"exits"`
	KVMStats     map[string]uint64 `json:"kvm_vcpu_stats,omitempty"`
	// KVMVMStats is KVM's VM-wide statistics (pages_4k, pages_2m: the
	// guest memory KVM maps with pages of each size at the end).
	KVMVMStats map[string]uint64 `json:"kvm_vm_stats,omitempty"`
	Devices    []deviceMetrics   `json:"devices"`
	// ConsoleDropped counts guest console bytes the host had not taken
	// when the VM ended.
	ConsoleDropped uint64 `json:"console_dropped,omitempty"`
}

// deviceMetrics is one virtio device's counters in --metrics.
type deviceMetrics struct {
	Type         string           `json:"type"`
	Interrupts   uint64           `json:"interrupts"`
	Notifies     uint64           `json:"notifies"`
	ExitNotifies uint64           `json:"notify_exits"`
	Net          *virtio.NetStats `json:"net,omitempty"`
}

func writeMetrics(path string, res vmm.Result) error {
	m := metricsFile{
		Exit:         res.Kind.String(),
		Status:       res.Status,
		BootToInitMS: float64(res.Metrics.BootToInit.Microseconds()) / 1000,
		TotalMS:      float64(res.Metrics.Total.Microseconds()) / 1000,
		Exits:        res.Metrics.Exits,
		KVMStats:     res.Metrics.KVMStats,
		KVMVMStats:   res.Metrics.KVMVMStats,

		ConsoleDropped: res.Metrics.ConsoleDropped,
	}
	for _, d := range res.Metrics.Devices {
		m.Devices = append(m.Devices, deviceMetrics{Type: d.Type, Interrupts: d.Interrupts, Notifies: d.Notifies, ExitNotifies: d.ExitNotifies, Net: d.Net})
	}
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}

// parseDisk parses --disk PATH[,ro][,serial=ID].
func parseDisk(s string) (vmm.Disk, error) {
	parts := strings.Split(s, ",")
	d := vmm.Disk{Path: parts[0]}
	if d.Path == "" {
		return d, errors.New("no image path")
	}
	for _, opt := range parts[1:] {
		k, v, hasValue := strings.Cut(opt, "=")
		switch {
		case k == "ro" && !hasValue:
			d.ReadOnly = true
		case k == "serial" && hasValue:
			if len(v) > 20 {
				return d, fmt.Errorf("serial %q is longer than 20 bytes", v)
			}
			d.Serial = v
		default:
			return d, fmt.Errorf("unknown option %q (want ro or serial=ID)", opt)
		}
	}
	return d, nil
}

// parseNets parses the --net flags: the VM's network devices and what
// the guest init configures on them.
func parseNets(flags []string) ([]vmm.Net, []cmdline.Net, error) {
	var nets []vmm.Net
	var guestNets []cmdline.Net
	users := 0
	for _, s := range flags {
		n, g, err := parseNet(s)
		if err != nil {
			return nil, nil, usageErr("--net %s: %v", s, err)
		}
		if n.User != nil {
			if users++; users > 1 {
				return nil, nil, usageErr("--net %s: only one user network per VM", s)
			}
		}
		nets = append(nets, n)
		guestNets = append(guestNets, g)
	}
	return nets, guestNets, nil
}

// parseBalloon parses --balloon: "on", or a comma-separated list of
// reporting, deflate-on-oom, stats=DURATION and mib=N.
func parseBalloon(s string) (*vmm.Balloon, error) {
	if s == "on" {
		return &vmm.Balloon{Reporting: true, DeflateOnOOM: true, StatsInterval: time.Second}, nil
	}
	b := &vmm.Balloon{}
	for _, opt := range strings.Split(s, ",") {
		k, val, hasVal := strings.Cut(opt, "=")
		switch {
		case k == "reporting" && !hasVal:
			b.Reporting = true
		case k == "deflate-on-oom" && !hasVal:
			b.DeflateOnOOM = true
		case k == "stats" && hasVal:
			d, err := time.ParseDuration(val)
			if err != nil || d < 0 {
				return nil, fmt.Errorf("stats=%s: want a duration such as 1s", val)
			}
			b.StatsInterval = d
		case k == "mib" && hasVal:
			n, err := strconv.ParseUint(val, 10, 32)
			if err != nil {
				return nil, fmt.Errorf("mib=%s: want a number of MiB", val)
			}
			b.TargetMiB = n
		default:
			return nil, fmt.Errorf("unknown option %q (want on, or reporting, deflate-on-oom, stats=DURATION, mib=N)", opt)
		}
	}
	return b, nil
}

// parseVsock parses --vsock UDS[,cid=N]; without cid=, the CID is cid.
func parseVsock(s string, cid uint64) (*vmm.Vsock, error) {
	parts := strings.Split(s, ",")
	v := &vmm.Vsock{Path: parts[0], CID: cid}
	if v.Path == "" {
		return nil, errors.New("no socket path")
	}
	for _, opt := range parts[1:] {
		k, val, ok := strings.Cut(opt, "=")
		if !ok || k != "cid" {
			return nil, fmt.Errorf("unknown option %q (want cid=N)", opt)
		}
		n, err := strconv.ParseUint(val, 10, 32)
		if err != nil || n < 3 || n == 0xFFFFFFFF {
			return nil, fmt.Errorf("cid %q: want a number from 3 to 4294967294", val)
		}
		v.CID = n
	}
	return v, nil
}

// sandboxVMM confines this process, whose VM is built and about to run,
// to the system calls a running VMM makes (internal/seccomp), with a
// relay that reports a call outside them in one line.
func sandboxVMM() error {
	if err := vmmproc.Sandbox(); err != nil {
		return runErr("%v", err)
	}
	return nil
}
