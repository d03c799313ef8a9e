package vmm

import (
	"errors"
	"fmt"
	"runtime"
	"sync/atomic"

	"golang.org/x/sys/unix"

	"github.com/vesselvm/vessel/boot"
	"github.com/vesselvm/vessel/kvm"
)

// MSR numbers (Intel SDM vol. 4) set to their reset values on every vCPU,
// as Firecracker does, so the guest starts from a known state.
const (
	msrIA32TSC          = 0x10
	msrIA32SysenterCS   = 0x174
	msrIA32SysenterESP  = 0x175
	msrIA32SysenterEIP  = 0x176
	msrIA32MiscEnable   = 0x1A0
	msrMTRRDefType      = 0x2FF
	msrSTAR             = 0xC0000081
	msrLSTAR            = 0xC0000082
	msrCSTAR            = 0xC0000083
	msrSyscallMask      = 0xC0000084
	msrKernelGSBase     = 0xC0000102
	miscEnableFastStrng = 1 << 0
	mtrrEnable          = 1 << 11
	mtrrTypeWB          = 6
)

// Local APIC LVT registers and delivery modes (Intel SDM vol. 3A 10.5.1).
const (
	apicLVT0        = 0x350
	apicLVT1        = 0x360
	apicModeNMI     = 0x4
	apicModeExtINT  = 0x7
	apicModeMask    = 0x700
	apicModeShift   = 8
	fpuControlWord  = 0x37F
	sseMXCSRDefault = 0x1F80
)

// vcpu is one guest CPU and the state of its run loop.
type vcpu struct {
	kc *kvm.VCPU
	// run is kc's KVM_RUN and immediate_exit, or a test's stand-in.
	run    guestRunner
	tid    atomic.Int32 // OS thread running the loop, 0 until it starts
	parked atomic.Bool  // held outside KVM_RUN by a pause
}

// guestRunner enters the guest: *kvm.VCPU.
type guestRunner interface {
	Run() (kvm.ExitReason, error)
	SetImmediateExit(on bool)
}

func newVCPU(kc *kvm.VCPU) *vcpu { return &vcpu{kc: kc, run: kc} }

func (v *VM) setupVCPUs() error {
	supported, err := v.sys.SupportedCPUID()
	if err != nil {
		return err
	}
	// KVM emulates the TSC-deadline timer with the in-kernel LAPIC but
	// leaves the CPUID bit to userspace (api.rst, KVM_CAP_TSC_DEADLINE_TIMER).
	if n, _ := v.sys.CheckExtension(kvm.CapTSCDeadline); n > 0 {
		supported = withTSCDeadline(supported)
	}
	for id := 0; id < v.cfg.CPUs; id++ {
		kc, err := v.vm.CreateVCPU(id)
		if err != nil {
			return err
		}
		c := newVCPU(kc)
		v.vcpus = append(v.vcpus, c)
		if err := kc.SetCPUID(shapeCPUID(supported, id, v.cfg.CPUs)); err != nil {
			return err
		}
		if err := kc.SetMSRs(bootMSRs()); err != nil {
			return err
		}
		if err := kc.SetFPU(kvm.FPU{FCW: fpuControlWord, MXCSR: sseMXCSRDefault}); err != nil {
			return err
		}
		if err := setupLINTs(kc); err != nil {
			return err
		}
		if id == 0 {
			// Application processors wait for INIT/SIPI from the BSP in
			// the in-kernel local APIC; only the BSP gets an entry state.
			if err := setEntryState(kc, v.entry); err != nil {
				return err
			}
		}
	}
	return nil
}

func bootMSRs() []kvm.MSR {
	return []kvm.MSR{
		{Index: msrIA32SysenterCS}, {Index: msrIA32SysenterESP}, {Index: msrIA32SysenterEIP},
		{Index: msrSTAR}, {Index: msrCSTAR}, {Index: msrKernelGSBase}, {Index: msrSyscallMask},
		{Index: msrLSTAR}, {Index: msrIA32TSC},
		{Index: msrIA32MiscEnable, Data: miscEnableFastStrng},
		{Index: msrMTRRDefType, Data: mtrrEnable | mtrrTypeWB},
	}
}

// setupLINTs programs LINT0 as ExtINT (the PIC's virtual wire) and LINT1 as
// NMI, matching the MP table's local interrupt entries.
func setupLINTs(kc *kvm.VCPU) error {
	l, err := kc.LAPIC()
	if err != nil {
		return err
	}
	set := func(off int, mode uint32) {
		r := l.Regs[off : off+4]
		val := uint32(r[0]) | uint32(r[1])<<8 | uint32(r[2])<<16 | uint32(r[3])<<24
		val = val&^apicModeMask | mode<<apicModeShift
		r[0], r[1], r[2], r[3] = byte(val), byte(val>>8), byte(val>>16), byte(val>>24)
	}
	set(apicLVT0, apicModeExtINT)
	set(apicLVT1, apicModeNMI)
	return kc.SetLAPIC(l)
}

func segment(s boot.Segment) kvm.Segment {
	return kvm.Segment{
		Base: s.Base, Limit: s.Limit, Selector: s.Selector, Type: s.Type,
		Present: s.Present, DPL: s.DPL, DB: s.DB, S: s.S, L: s.L, G: s.G, AVL: s.AVL,
	}
}

// setEntryState loads the registers the boot protocol prescribes.
func setEntryState(kc *kvm.VCPU, e *boot.Entry) error {
	s, err := kc.Sregs()
	if err != nil {
		return err
	}
	s.CS = segment(e.CS)
	ds := segment(e.DS)
	s.DS, s.ES, s.FS, s.GS, s.SS = ds, ds, ds, ds, ds
	s.GDT = kvm.DTable{Base: e.GDTBase, Limit: e.GDTLimit}
	s.IDT = kvm.DTable{}
	if e.TR.Present != 0 {
		s.TR = segment(e.TR)
	}
	s.CR0, s.CR3, s.CR4, s.EFER = e.CR0, e.CR3, e.CR4, e.EFER
	if err := kc.SetSregs(s); err != nil {
		return err
	}
	return kc.SetRegs(kvm.Regs{RIP: e.RIP, RSP: e.RSP, RBP: e.RSP, RSI: e.RSI, RBX: e.RBX, RFLAGS: e.RFLAGS})
}

// loop runs the vCPU until the VM stops. It runs on its own OS thread: KVM
// requires every vCPU ioctl to come from the thread that runs it, and the
// thread id is what kick signals.
func (c *vcpu) loop(v *VM) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	c.tid.Store(int32(unix.Gettid()))
	defer c.tid.Store(0)
	for {
		select {
		case <-v.stopped:
			return
		default:
		}
		if v.park(c) {
			c.run.SetImmediateExit(false)
			continue
		}
		reason, err := c.run.Run()
		if err != nil {
			if errors.Is(err, kvm.ErrInterrupted) {
				// A signal or a kick: check for stop and pause,
				// and re-enter. A kick's immediate_exit is
				// cleared first, whether or not anything holds
				// the vCPU now: a pause that gave up (Pause's
				// timeout resumes the VM) before this vCPU came
				// out of the guest leaves it set, and every
				// KVM_RUN would return EINTR at once, for ever.
				// Stop and Pause say so before they kick, so a
				// kick after this clear makes the next KVM_RUN
				// return at once, and one before it is seen by
				// the checks above.
				c.run.SetImmediateExit(false)
				continue
			}
			v.fail(err)
			return
		}
		v.exits.add(reason)
		if !c.handle(v, reason) {
			return
		}
	}
}

// handle services one exit and reports whether to keep running.
func (c *vcpu) handle(v *VM, reason kvm.ExitReason) bool {
	switch reason {
	case kvm.ExitIO:
		io, err := c.kc.IO()
		if err != nil {
			v.fail(err)
			return false
		}
		for i := 0; i < io.Count; i++ {
			d := io.Data[i*io.Size : (i+1)*io.Size]
			if io.Out {
				v.pio.Write(uint64(io.Port), d)
			} else if !v.pio.Read(uint64(io.Port), d) {
				for j := range d {
					d[j] = 0xFF // no device: the ISA bus floats high
				}
			}
		}
	case kvm.ExitMMIO:
		m := c.kc.MMIO()
		if m.Write {
			v.mmio.Write(m.Addr, m.Data)
		} else if !v.mmio.Read(m.Addr, m.Data) {
			for j := range m.Data {
				m.Data[j] = 0xFF
			}
		}
	case kvm.ExitIntr:
		// Interrupted by a signal: the loop checks for stop.
	case kvm.ExitHLT:
		// With the in-kernel local APIC, HLT only reaches userspace when
		// the vCPU can never wake again.
		v.finish(Result{Kind: ExitPowerOff, Detail: fmt.Sprintf("vCPU %d halted", c.kc.ID())})
		return false
	case kvm.ExitShutdown:
		v.tripleFault(fmt.Sprintf("vCPU %d shut down (triple fault)%s", c.kc.ID(), c.cpuState()))
		return false
	case kvm.ExitSystemEvent:
		switch c.kc.SystemEvent() {
		case kvm.SystemEventShutdown:
			v.finish(Result{Kind: ExitPowerOff})
		case kvm.SystemEventReset:
			v.finish(Result{Kind: ExitReboot})
		default:
			v.finish(Result{Kind: ExitPanic, Detail: fmt.Sprintf("guest crash event on vCPU %d", c.kc.ID())})
		}
		return false
	case kvm.ExitFailEntry:
		v.fail(fmt.Errorf("vmm: vCPU %d: KVM entry failed, hardware reason %#x", c.kc.ID(), c.kc.FailEntryReason()))
		return false
	case kvm.ExitInternalError:
		v.fail(fmt.Errorf("vmm: vCPU %d: KVM internal error, suberror %d", c.kc.ID(), c.kc.InternalError()))
		return false
	default:
		v.fail(fmt.Errorf("vmm: vCPU %d: unhandled exit %v", c.kc.ID(), reason))
		return false
	}
	return true
}

// kick makes the vCPU leave KVM_RUN: immediate_exit covers a vCPU about to
// enter, the signal one already inside. SIGURG is the signal the Go runtime
// itself uses to preempt threads, so its handler is installed and ignores
// it; KVM_RUN returns EINTR.
func (c *vcpu) kick() {
	c.run.SetImmediateExit(true)
	if tid := c.tid.Load(); tid != 0 {
		unix.Tgkill(unix.Getpid(), int(tid), unix.SIGURG)
	}
}

func (c *vcpu) close() { c.kc.Close() }

// cpuState describes where a vCPU stopped, for crash reports: the
// instruction and stack pointers and the paging registers tell a guest
// bug (a kernel address) from a corrupted vCPU state. On AMD hosts KVM
// resets the vCPU when it intercepts the shutdown (the VMCB is undefined
// after it), so the state is the reset vector's and says nothing: then
// it is left out.
func (c *vcpu) cpuState() string {
	r, err := c.kc.Regs()
	if err != nil {
		return ""
	}
	s, err := c.kc.Sregs()
	if err != nil {
		return fmt.Sprintf(" at rip=%#x rsp=%#x", r.RIP, r.RSP)
	}
	if r.RIP == 0xfff0 && s.CS.Selector == 0xf000 {
		return " (CPU state lost: the host reset the vCPU)"
	}
	return fmt.Sprintf(" at rip=%#x rsp=%#x rflags=%#x cr0=%#x cr2=%#x cr3=%#x cr4=%#x efer=%#x cs=%#x",
		r.RIP, r.RSP, r.RFLAGS, s.CR0, s.CR2, s.CR3, s.CR4, s.EFER, s.CS.Selector)
}

// exitCounters counts userspace exits by reason.
type exitCounters struct {
	n [32]atomic.Uint64
}

func (e *exitCounters) add(r kvm.ExitReason) {
	if int(r) < len(e.n) {
		e.n[r].Add(1)
	}
}

func (e *exitCounters) snapshot() map[string]uint64 {
	m := map[string]uint64{}
	for i := range e.n {
		if n := e.n[i].Load(); n > 0 {
			m[kvm.ExitReason(i).String()] = n
		}
	}
	return m
}
