package vmm

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vesselvm/vessel/boot"
	"github.com/vesselvm/vessel/boot/acpi"
	"github.com/vesselvm/vessel/devices"
	"github.com/vesselvm/vessel/devices/share/remote"
	"github.com/vesselvm/vessel/devices/usernet"
	"github.com/vesselvm/vessel/devices/virtio"
	"github.com/vesselvm/vessel/guestmem"
	"github.com/vesselvm/vessel/kvm"
)

// Fixed platform layout (x86 PC conventions).
const (
	// tssAddr and identityMapAddr sit just below the BIOS area at the top
	// of the 32-bit space, outside RAM and the MMIO hole's devices, as
	// QEMU and Firecracker place them (VT-x needs them in real mode).
	tssAddr         = 0xFFFB_D000
	identityMapAddr = 0xFFFB_C000

	com1Port = 0x3F8
	com1Size = 8
	com1IRQ  = 4

	i8042Port = 0x60
	i8042Size = 5 // 0x60 (data) .. 0x64 (command/status)

	minMemory = 32 << 20
)

// VM is a configured microVM, ready to Run once.
type VM struct {
	cfg   Config
	start time.Time

	sys   *kvm.System
	vm    *kvm.VM
	mem   *guestmem.Memory
	vcpus []*vcpu
	entry *boot.Entry

	pio  *devices.Bus
	mmio *devices.Bus

	serial  *devices.Serial
	i8042   *devices.I8042
	console *consoleWriter
	control *devices.ControlPort
	irqs    []*eventInterrupt
	// genIRQ raises the VM Generation ID's event (genid.go).
	genIRQ *eventInterrupt
	// balloon is the balloon device, if the VM has one.
	balloon *virtio.Balloon
	// userNets are user networks started ahead (startUserNets), by
	// network index, until addNet attaches them; started are all of
	// them, for netsReady.
	userNets []*usernet.Network
	started  []*usernet.Network
	virtio   []*virtioDev
	// shares is the share server, if the VM has shares (addShares).
	shares *remote.Helper

	stopOnce sync.Once
	stopped  chan struct{}
	// stuck is set when a wait of the stop path gave up on a vCPU or a
	// device blocked in host I/O: Close then frees nothing they may
	// still use.
	stuck    atomic.Bool
	stopWait time.Duration // bound of each such wait; 0 means stopWait
	result   Result
	resMu    sync.Mutex
	running  atomic.Bool
	exits    exitCounters

	pauseMu sync.Mutex
	resume  chan struct{} // non-nil while paused; Resume closes it
}

// New validates cfg, creates the VM, loads the kernel and attaches the
// devices. Nothing runs until Run. On error everything created is released.
func New(cfg Config) (_ *VM, err error) {
	v := &VM{cfg: cfg, start: time.Now(), stopped: make(chan struct{})}
	defer func() {
		if err != nil {
			v.Close()
		}
	}()
	if err := v.validate(); err != nil {
		return nil, err
	}
	if err := v.startUserNets(); err != nil {
		return nil, err
	}
	if err := v.openKVM(); err != nil {
		return nil, err
	}
	if err := v.setupMemory(); err != nil {
		return nil, err
	}
	if err := v.setupDevices(); err != nil {
		return nil, err
	}
	if err := v.setupVirtio(); err != nil {
		return nil, err
	}
	if err := v.loadKernel(); err != nil {
		return nil, err
	}
	if err := v.setupVCPUs(); err != nil {
		return nil, err
	}
	if err := v.netsReady(); err != nil {
		return nil, err
	}
	return v, nil
}

func (v *VM) validate() error {
	c := &v.cfg
	if err := CheckResources(c.CPUs, c.Memory); err != nil {
		return err
	}
	if c.Kernel == "" {
		return fmt.Errorf("%w: no kernel given", ErrInvalidConfig)
	}
	for _, f := range []struct{ what, path string }{{"kernel", c.Kernel}, {"initrd", c.Initrd}} {
		if f.path == "" {
			continue
		}
		st, err := os.Stat(f.path)
		if err != nil {
			return fmt.Errorf("%w: %s %s: %w", ErrInvalidConfig, f.what, f.path, unwrapPathError(err))
		}
		if !st.Mode().IsRegular() {
			return fmt.Errorf("%w: %s %s is not a regular file", ErrInvalidConfig, f.what, f.path)
		}
		fh, err := os.Open(f.path)
		if err != nil {
			return fmt.Errorf("%w: %s %s: %w", ErrInvalidConfig, f.what, f.path, unwrapPathError(err))
		}
		fh.Close()
	}
	if n := c.virtioDevices(); n > MaxVirtioDevices {
		return fmt.Errorf("%w: the VM would need %d virtio devices (%d disks, %d network interfaces, %d shares, the entropy device, vsock and balloon if asked), more than the %d a VM takes",
			ErrInvalidConfig, n, len(c.Disks), len(c.Nets), len(c.Shares), MaxVirtioDevices)
	}
	if c.Console == nil {
		c.Console = io.Discard
	}
	if c.KVMDevice == "" {
		c.KVMDevice = kvm.DefaultDevice
	}
	return nil
}

func unwrapPathError(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

// hostMemory returns MemTotal from /proc/meminfo.
func hostMemory() (uint64, error) {
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return 0, err
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		var kb uint64
		if n, _ := fmt.Sscanf(s.Text(), "MemTotal: %d kB", &kb); n == 1 {
			return kb << 10, nil
		}
	}
	return 0, errors.New("MemTotal not found in /proc/meminfo")
}

func (v *VM) openKVM() error {
	if IsPVM() && !v.cfg.AllowPVM {
		return fmt.Errorf("%w: %s is PVM (the kvm_pvm module), which runs only PVM-enabled guest kernels; "+
			"boot on a VT-x/AMD-V host, or through cmd/testvm (see README)", ErrHostKVM, v.cfg.KVMDevice)
	}
	sys, err := kvm.Open(v.cfg.KVMDevice)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrHostKVM, err)
	}
	v.sys = sys
	if maxv := sys.MaxVCPUs(); v.cfg.CPUs > maxv {
		return fmt.Errorf("%w: --cpus %d is above this host's KVM limit of %d", ErrInvalidConfig, v.cfg.CPUs, maxv)
	}
	vm, err := sys.CreateVM()
	if err != nil {
		return fmt.Errorf("%w: %w", ErrHostKVM, err)
	}
	v.vm = vm
	if err := vm.SetTSSAddr(tssAddr); err != nil {
		return err
	}
	if err := vm.SetIdentityMapAddr(identityMapAddr); err != nil {
		return err
	}
	if err := vm.CreateIRQChip(); err != nil {
		return err
	}
	return vm.CreatePIT2()
}

// IsPVM reports whether the host's KVM is the PVM hypervisor (kvm_pvm),
// which cannot run stock guest kernels.
func IsPVM() bool {
	_, err := os.Stat("/sys/module/kvm_pvm")
	return err == nil
}

func (v *VM) setupMemory() error {
	newMem := guestmem.New
	if v.cfg.HugePages {
		newMem = guestmem.NewHuge
	}
	mem, err := newMem(boot.RAMLayout(v.cfg.Memory))
	if err != nil {
		return fmt.Errorf("%w: guest memory: %w", ErrInvalidConfig, err)
	}
	v.mem = mem
	for i, r := range mem.Regions() {
		if err := v.vm.SetUserMemoryRegion(uint32(i), r.GPA, r.Host()); err != nil {
			return err
		}
	}
	return nil
}

func (v *VM) loadKernel() error {
	k, err := os.Open(v.cfg.Kernel)
	if err != nil {
		return fmt.Errorf("%w: kernel: %w", ErrInvalidConfig, err)
	}
	defer k.Close()
	kst, err := k.Stat()
	if err != nil {
		return fmt.Errorf("%w: kernel: %w", ErrInvalidConfig, err)
	}
	var initrd io.ReaderAt
	var initrdSize int64
	if v.cfg.Initrd != "" {
		f, err := os.Open(v.cfg.Initrd)
		if err != nil {
			return fmt.Errorf("%w: initrd: %w", ErrInvalidConfig, err)
		}
		defer f.Close()
		st, err := f.Stat()
		if err != nil {
			return fmt.Errorf("%w: initrd: %w", ErrInvalidConfig, err)
		}
		initrd, initrdSize = f, st.Size()
	}
	e, err := boot.Load(v.mem, k, kst.Size(), initrd, initrdSize, v.cfg.Cmdline, v.cfg.CPUs)
	if err != nil {
		return fmt.Errorf("%w: %s: %w", ErrInvalidConfig, v.cfg.Kernel, err)
	}
	v.entry = e
	// boot.Load wrote an MP table; ACPI tables come on top: Linux
	// prefers ACPI (which also gives it a way to power off) and falls back
	// to the MP table with acpi=off.
	if err := acpi.Write(v.mem, v.cfg.CPUs, v.virtioACPI(), genIDACPI()); err != nil {
		return fmt.Errorf("vmm: acpi tables: %w", err)
	}
	if err := v.newGenerationID(); err != nil {
		return err
	}
	return nil
}

func (v *VM) setupDevices() error {
	v.pio = devices.NewBus("pio")
	v.mmio = devices.NewBus("mmio")

	irq, err := v.newInterrupt(com1IRQ)
	if err != nil {
		return err
	}
	if v.genIRQ, err = v.newInterrupt(genIDGSI); err != nil {
		return err
	}
	v.console = newConsoleWriter(v.cfg.Console)
	v.serial = devices.NewSerial(irq, v.console)
	if err := v.pio.Insert(v.serial, com1Port, com1Size); err != nil {
		return fmt.Errorf("vmm: serial: %w", err)
	}
	v.i8042 = devices.NewI8042(func() { v.guestReset() })
	if err := v.pio.Insert(v.i8042, i8042Port, i8042Size); err != nil {
		return fmt.Errorf("vmm: i8042: %w", err)
	}
	sleep := devices.NewACPISleep(acpi.S5SleepType, func() { v.finish(Result{Kind: ExitPowerOff}) })
	if err := v.pio.Insert(sleep, acpi.SleepControlPort, 1); err != nil {
		return fmt.Errorf("vmm: acpi sleep register: %w", err)
	}
	v.control = devices.NewControlPort(nil, func(status uint32) { v.guestStatus(status) })
	if err := v.pio.Insert(v.control, devices.ControlPortBase, devices.ControlPortSize); err != nil {
		return fmt.Errorf("vmm: control port: %w", err)
	}
	return nil
}

// Run starts the vCPUs and the console input and blocks until the VM ends.
// It may be called once.
func (v *VM) Run() Result {
	if !v.running.CompareAndSwap(false, true) {
		return Result{Kind: ExitError, Err: errors.New("vmm: Run called twice")}
	}
	v.console.start()
	if v.cfg.Input != nil {
		go v.forwardInput(v.cfg.Input)
	}
	var wg sync.WaitGroup
	for _, c := range v.vcpus {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.loop(v)
		}()
	}
	<-v.stopped
	v.console.release() // a vCPU waiting on a stalled stdout returns
	for _, c := range v.vcpus {
		c.kick()
	}
	v.bounded("the vCPUs", wg.Wait)
	v.console.flush()
	if n := v.console.Dropped(); n > 0 {
		v.logf("console: dropped %d bytes of guest output the host had not taken when the VM ended", n)
	}

	v.resMu.Lock()
	res := v.result
	v.resMu.Unlock()
	res.ConsoleTail = v.serial.Tail(40)
	if res.Kind == ExitReboot || res.Kind == ExitTripleFault {
		if line, ok := panicLine(res.ConsoleTail); ok {
			res.Kind, res.Detail = ExitPanic, line
		}
	}
	if t, ok := v.control.BootTime(); ok {
		res.Metrics.BootToInit = t.Sub(v.start)
	}
	res.Metrics.Total = time.Since(v.start)
	res.Metrics.Exits = v.exits.snapshot()
	res.Metrics.KVMStats = v.kvmStats()
	if st, err := v.vm.Stats(); err == nil {
		res.Metrics.KVMVMStats = nonZero(st)
	}
	res.Metrics.Devices = v.deviceMetrics()
	res.Metrics.ConsoleDropped = v.console.Dropped()
	return res
}

// kvmStats sums the vCPUs' non-zero KVM counters.
func (v *VM) kvmStats() map[string]uint64 {
	sum := make(map[string]uint64)
	for _, c := range v.vcpus {
		st, err := c.kc.Stats()
		if err != nil {
			return nil
		}
		for k, n := range st {
			sum[k] += n
		}
	}
	return nonZero(sum)
}

// nonZero returns st without its zero values, nil if none is left.
func nonZero(st map[string]uint64) map[string]uint64 {
	var out map[string]uint64
	for k, n := range st {
		if n != 0 {
			if out == nil {
				out = make(map[string]uint64)
			}
			out[k] = n
		}
	}
	return out
}

// panicLine finds the kernel's panic message in the console tail.
func panicLine(tail []string) (string, bool) {
	for _, l := range tail {
		if i := strings.Index(l, "Kernel panic - not syncing"); i >= 0 {
			return strings.TrimSpace(l[i:]), true
		}
	}
	return "", false
}

// Stop ends the VM from the host side; Run returns ExitStopped.
func (v *VM) Stop() { v.finish(Result{Kind: ExitStopped}) }

// StopDiagnosed stops the VM as Stop does, after describing its state
// (Diagnose) into the result's Diagnosis: for a caller that gives up on
// a guest that stopped answering.
func (v *VM) StopDiagnosed() {
	d, err := v.Diagnose()
	if err != nil {
		d = fmt.Sprintf("no diagnosis: %v\n", err)
	}
	v.finish(Result{Kind: ExitStopped, Diagnosis: d})
}

// finish records the first way the VM ended and wakes Run.
func (v *VM) finish(r Result) {
	v.stopOnce.Do(func() {
		v.resMu.Lock()
		v.result = r
		v.resMu.Unlock()
		close(v.stopped)
	})
}

func (v *VM) guestReset()               { v.finish(Result{Kind: ExitReboot}) }
func (v *VM) guestStatus(st uint32)     { v.finish(Result{Kind: ExitGuestStatus, Status: int(st & 0xff)}) }
func (v *VM) fail(err error)            { v.finish(Result{Kind: ExitError, Err: err, Detail: err.Error()}) }
func (v *VM) tripleFault(detail string) { v.finish(Result{Kind: ExitTripleFault, Detail: detail}) }

// stopWait bounds each wait of the stop path on something that may be
// blocked in host I/O: a vCPU inside a device reset, a device's reset or
// its backend's Close (a disk on a stalled file system, say).
const stopWait = 10 * time.Second

// bounded runs f and waits at most the stop bound for it. When f does not
// return in time, the VM is marked stuck and f is left running, and the
// log says so.
func (v *VM) bounded(what string, f func()) bool {
	d := v.stopWait
	if d == 0 {
		d = stopWait
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		f()
	}()
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-done:
		return true
	case <-t.C:
		v.stuck.Store(true)
		v.logf("%s did not stop within %v (blocked in host I/O?); the VM's memory and descriptors are left allocated", what, d)
		return false
	}
}

// Close releases everything the VM holds. Safe to call more than once and
// on a partially built VM. Every wait is bounded: when a vCPU or a device
// did not stop in time (see bounded), Close returns without releasing
// guest memory, vCPUs or the VM, which they may still be using; the
// process's exit frees them.
func (v *VM) Close() error {
	// The share server goes whatever else stays: it holds no guest
	// memory, and no other process would end it (unjailed, there is no
	// PID namespace to take it along).
	defer v.closeShares()
	if v.stuck.Load() {
		return nil
	}
	v.closeVirtio()
	v.closeUserNets()
	v.closeShares()
	if v.stuck.Load() {
		return nil
	}
	for _, c := range v.vcpus {
		c.close()
	}
	v.vcpus = nil
	for _, i := range v.irqs {
		i.close()
	}
	v.irqs = nil
	if v.vm != nil {
		v.vm.Close()
		v.vm = nil
	}
	if v.mem != nil {
		v.mem.Close()
		v.mem = nil
	}
	if v.sys != nil {
		v.sys.Close()
		v.sys = nil
	}
	return nil
}

// closeShares ends the share server, if the VM has one.
func (v *VM) closeShares() {
	if v.shares != nil {
		v.shares.Close()
		v.shares = nil
	}
}

// SetInput sets where console input comes from; it must be called before
// Run. It replaces Config.Input, for inputs that need the VM (such as an
// escape-sequence filter that calls Stop).
func (v *VM) SetInput(r io.Reader) { v.cfg.Input = r }
