package vmm

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vesselvm/vessel/boot"
	"github.com/vesselvm/vessel/guestmem"
	"github.com/vesselvm/vessel/kvm"
)

// RestoreOptions says how to restore a snapshot.
type RestoreOptions struct {
	// Version is vessel's version: a snapshot another version took is
	// refused.
	Version string
	// Console, Input and Log are as in Config.
	Console io.Writer
	Input   io.Reader
	Log     io.Writer
	// Disks, if set, replaces the disks the snapshot names, one for
	// one: each must hold what the guest expects of its device (a
	// template's empty image slot may get an image; the guest hears of
	// a new size through a configuration change).
	Disks []Disk
	// Nets, if set, replaces the network backends the snapshot names,
	// one for one (a TAP device or a user network each). A Net without
	// a MAC keeps the one the guest knows its device by; one with a MAC
	// gives the device (its configuration space) and its backend that
	// address, which the guest's driver read at boot and keeps until
	// the guest is told to take the new one (vessel run's agent does,
	// agentproto.Create.MAC): clones of one snapshot each get their own.
	Nets []Net
	// Vsock, if set, changes the vsock device the snapshot names: a
	// Path replaces its socket path, a CID other than 0 the guest's CID
	// (clones of one snapshot each need their own; the guest reads it
	// again when the device tells it of the transport's reset, virtio
	// 1.2 5.10.6.7, Linux's virtio_vsock_update_guest_cid), and Dial
	// how guest connections reach the host (see Vsock.Dial).
	Vsock *Vsock
	// Shares are the directories the snapshot's 9P shares serve, one for
	// one, in the snapshot's order (SnapshotInfo.Shares) and with its
	// tags: the guest knows each device by the tag it read at boot. The
	// snapshot records no directory, so a snapshot with shares needs
	// them; each Share's Dir and ReadOnly are this restore's own (a
	// template's share, never mounted before the snapshot, may serve
	// any directory).
	Shares []Share
	// KVMDevice and AllowPVM are as in Config.
	KVMDevice string
	AllowPVM  bool
}

// SnapshotInfo is what ReadSnapshot tells of a snapshot's VM: its size
// and the backends it names, which a restore attaches unless told others.
type SnapshotInfo struct {
	CPUs   int
	Memory uint64
	Nets   []Net
	Vsock  *Vsock
	// Shares are the snapshot's 9P shares in device order, with only
	// their Tag set: RestoreOptions.Shares must give the same tags in
	// the same order, with directories.
	Shares []Share
}

// ReadSnapshot reads and checks the state file of the snapshot in dir
// (envelope, checksum, strict decoding, sizes, the vessel version),
// without KVM: the checks a restore makes before it creates anything.
// It returns the VM's size and backends.
func ReadSnapshot(dir, version string) (SnapshotInfo, error) {
	st, err := loadState(dir, version)
	if err != nil {
		return SnapshotInfo{}, err
	}
	info := SnapshotInfo{CPUs: st.CPUs, Memory: st.Memory, Nets: st.Nets}
	if st.Vsock != nil {
		info.Vsock = &Vsock{CID: st.Vsock.CID, Path: st.Vsock.Path}
	}
	for _, s := range st.Shares {
		info.Shares = append(info.Shares, Share{Tag: s.Tag})
	}
	return info, nil
}

func loadState(dir, version string) (*snapState, error) {
	f, err := os.Open(filepath.Join(dir, snapStateFile))
	if err != nil {
		return nil, snapErr("%s: %v", dir, unwrapPathError(err))
	}
	defer f.Close()
	b, err := readState(f)
	if err != nil {
		return nil, err
	}
	st, err := parseState(b)
	if err != nil {
		return nil, err
	}
	if err := st.checkCompat(version); err != nil {
		return nil, err
	}
	return st, nil
}

// Restore creates a VM from the snapshot in dir, ready to Run: it
// resumes where the snapshotted VM was paused. Guest memory is the
// snapshot's memory file mapped MAP_PRIVATE (see guestmem.NewFromFile),
// so the directory must stay as it is while the VM runs. Disks are
// opened again from their paths and must hold what they held when the
// snapshot was taken; the vsock device listens on its socket again and
// the guest sees its old connections reset; each share serves the
// directory o.Shares gives it. A snapshot from another
// vessel version or format, a corrupt one, or one from a host whose CPU
// or KVM offers other CPUID is refused with an error wrapping
// ErrSnapshot; nothing is left behind.
func Restore(dir string, o RestoreOptions) (_ *VM, err error) {
	st, err := loadState(dir, o.Version)
	if err != nil {
		return nil, err
	}
	cfg, err := restoreConfig(st, o)
	if err != nil {
		return nil, err
	}
	if !reflect.DeepEqual(st.Regions, boot.RAMLayout(st.Memory)) {
		return nil, snapErr("memory regions %v do not match a %d-byte VM's", st.Regions, st.Memory)
	}
	v := &VM{cfg: cfg, start: time.Now(), stopped: make(chan struct{})}
	defer func() {
		if err != nil {
			v.Close()
		}
	}()
	if err := v.startUserNets(); err != nil {
		return nil, err
	}
	if err := v.openKVM(); err != nil {
		return nil, err
	}
	if err := v.checkSnapshotCaps(); err != nil {
		return nil, err
	}
	supported, err := v.guestCPUID()
	if err != nil {
		return nil, err
	}
	for id, c := range st.VCPUs {
		if want := shapeCPUID(supported, id, st.CPUs); !sameCPUID(c.CPUID, want) {
			here := cpuModel(supported)
			if here != st.Host {
				return nil, snapErr("taken on a %v, this host is a %v", st.Host, here)
			}
			return nil, snapErr("this host's KVM offers other CPU features than the one the snapshot was taken on (both %v)", here)
		}
	}
	if size, _ := v.xsaveSize(); size != st.XSaveSize {
		return nil, snapErr("XSAVE area of %d bytes, this host's is %d", st.XSaveSize, size)
	}
	if err := v.restoreMemory(dir, st); err != nil {
		return nil, err
	}
	if err := v.setupDevices(); err != nil {
		return nil, err
	}
	if err := v.setupVirtio(); err != nil {
		return nil, err
	}
	if len(v.virtio) != len(st.Virtio) {
		return nil, snapErr("%d virtio device states for %d devices", len(st.Virtio), len(v.virtio))
	}
	for id := 0; id < st.CPUs; id++ {
		kc, err := v.vm.CreateVCPU(id)
		if err != nil {
			return nil, err
		}
		v.vcpus = append(v.vcpus, newVCPU(kc))
	}
	if err := v.restoreVMState(st); err != nil {
		return nil, snapErr("%v", err)
	}
	amd := cpuModel(supported).Vendor == "AuthenticAMD"
	for id, c := range v.vcpus {
		s := st.VCPUs[id]
		s.Sregs.TR = restoredTR(s.Sregs.TR, amd)
		if err := restoreVCPU(c.kc, s, st.TSCKHz, v.sys); err != nil {
			return nil, snapErr("%v", err)
		}
	}
	if err := v.serial.SetState(st.Serial); err != nil {
		return nil, snapErr("%v", err)
	}
	v.i8042.SetState(st.I8042)
	// Devices last: once started they may raise interrupts, which must
	// reach the restored interrupt controllers.
	for i, d := range v.virtio {
		if err := d.t.Restore(st.Virtio[i]); err != nil {
			return nil, snapErr("%v", err)
		}
	}
	if v.balloon != nil {
		v.balloon.SetActual(st.BalloonActual)
	}
	if err := v.newClone(); err != nil {
		return nil, err
	}
	if err := v.netsReady(); err != nil {
		return nil, err
	}
	return v, nil
}

// restoreConfig is the configuration of the VM restored from st: the
// snapshot's devices, with the backends, disks and share directories o
// replaces (one for one, else ErrInvalidConfig) and o's console, log
// and KVM settings.
func restoreConfig(st *snapState, o RestoreOptions) (Config, error) {
	cfg := Config{
		CPUs: st.CPUs, Memory: st.Memory, Disks: st.Disks, Nets: st.Nets, Balloon: st.Balloon,
		Console: o.Console, Input: o.Input, Log: o.Log,
		KVMDevice: o.KVMDevice, AllowPVM: o.AllowPVM,
	}
	if o.Disks != nil {
		if len(o.Disks) != len(st.Disks) {
			return Config{}, fmt.Errorf("%w: the snapshot has %d disks, %d given", ErrInvalidConfig, len(st.Disks), len(o.Disks))
		}
		cfg.Disks = o.Disks
	}
	if o.Nets != nil {
		if len(o.Nets) != len(st.Nets) {
			return Config{}, fmt.Errorf("%w: the snapshot has %d network devices, %d given", ErrInvalidConfig, len(st.Nets), len(o.Nets))
		}
		cfg.Nets = make([]Net, len(o.Nets))
		for i, n := range o.Nets {
			if n.MAC == nil {
				n.MAC = st.Nets[i].MAC
			} else if !bytes.Equal(n.MAC, st.Nets[i].MAC) {
				n.formerMAC = st.Nets[i].MAC
			}
			cfg.Nets[i] = n
		}
	}
	shares, err := restoreShares(st.Shares, o.Shares)
	if err != nil {
		return Config{}, err
	}
	cfg.Shares = shares
	if cfg.Console == nil {
		cfg.Console = io.Discard
	}
	if cfg.KVMDevice == "" {
		cfg.KVMDevice = kvm.DefaultDevice
	}
	if st.Vsock != nil {
		cfg.Vsock = &Vsock{CID: st.Vsock.CID, Path: st.Vsock.Path}
		if o.Vsock != nil {
			if o.Vsock.Path != "" {
				cfg.Vsock.Path = o.Vsock.Path
			}
			if o.Vsock.CID != 0 {
				cfg.Vsock.CID = o.Vsock.CID
			}
			cfg.Vsock.Dial = o.Vsock.Dial
		}
	}
	return cfg, nil
}

// restoreShares checks the shares a restore gives against the
// snapshot's: as many, with the same tags in the same order.
func restoreShares(snap []snapShare, given []Share) ([]Share, error) {
	tags := make([]string, len(snap))
	for i, s := range snap {
		tags[i] = s.Tag
	}
	if len(given) != len(snap) {
		return nil, fmt.Errorf("%w: the snapshot has %d shares %q, %d given", ErrInvalidConfig, len(snap), tags, len(given))
	}
	for i, s := range given {
		if s.Tag != tags[i] {
			return nil, fmt.Errorf("%w: share %d (%s) has tag %q, the snapshot's has %q (the guest knows its shares by the tags it read at boot)", ErrInvalidConfig, i, s.Dir, s.Tag, tags[i])
		}
	}
	if len(given) == 0 {
		return nil, nil
	}
	return append([]Share(nil), given...), nil
}

// sameCPUID compares two CPUID tables, ignoring the padding.
func sameCPUID(a, b []kvm.CPUIDEntry) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		x, y := a[i], b[i]
		if x.Function != y.Function || x.Index != y.Index || x.Flags != y.Flags ||
			x.EAX != y.EAX || x.EBX != y.EBX || x.ECX != y.ECX || x.EDX != y.EDX {
			return false
		}
	}
	return true
}

// restoreMemory maps the snapshot's memory file as guest RAM.
func (v *VM) restoreMemory(dir string, st *snapState) error {
	f, err := os.OpenFile(filepath.Join(dir, snapMemFile), os.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return snapErr("memory file: %v", unwrapPathError(err))
	}
	// The mapping keeps the file's pages; the descriptor is not needed.
	defer f.Close()
	mem, err := guestmem.NewFromFile(st.Regions, f)
	if err != nil {
		return snapErr("%v", err)
	}
	v.mem = mem
	for i, r := range mem.Regions() {
		if err := v.vm.SetUserMemoryRegion(uint32(i), r.GPA, r.Host()); err != nil {
			return err
		}
	}
	return nil
}

// restoreVMState sets the PIT, the kvm-clock and the interrupt
// controllers, before the vCPUs' state (Firecracker's order: the VM's
// state, then each vCPU's).
func (v *VM) restoreVMState(st *snapState) error {
	if err := v.vm.SetPIT2(st.PIT); err != nil {
		return err
	}
	// The guest's clock goes on from the saved value; where both KVMs
	// know CLOCK_REALTIME, KVM adds the real time that passed since the
	// snapshot (never a negative amount), so the guest's clock neither
	// jumps back nor lags behind the wall clock.
	c := kvm.ClockData{Clock: st.Clock.Clock}
	if n, _ := v.sys.CheckExtension(kvm.CapAdjustClock); n&kvm.ClockRealtime != 0 && st.Clock.Flags&kvm.ClockRealtime != 0 {
		c.Flags, c.Realtime = kvm.ClockRealtime, st.Clock.Realtime
	}
	if err := v.vm.SetClock(c); err != nil {
		return err
	}
	for _, chip := range []kvm.IRQChip{
		blobIRQChip(kvm.IRQChipPICMaster, st.PICMaster),
		blobIRQChip(kvm.IRQChipPICSlave, st.PICSlave),
		blobIRQChip(kvm.IRQChipIOAPIC, st.IOAPIC),
	} {
		if err := v.vm.SetIRQChip(chip); err != nil {
			return err
		}
	}
	return nil
}

// TSS descriptor types (Intel SDM vol. 3A, 3.5: system descriptor types).
const (
	tssAvailable = 9
	tssBusy      = 11
)

// restoredTR is the task register to restore. KVM on AMD reports TR busy
// whatever the VMCB holds (svm_get_segment sets the busy bit: SVM does
// not track it), and restoring it so puts type 11 in the VMCB where the
// guest's own LTR left 9. AMD hardware ignores the busy bit of the hidden
// TR, but QEMU's emulation of SVM, our nested test platform, does not:
// its I/O permission check (check_io) wants type 9 and raises #GP for
// every port access of a user process that has iopl or ioperm
// otherwise. On AMD the type goes back to available; Intel's VM entry
// requires busy, and gets it.
func restoredTR(tr kvm.Segment, amd bool) kvm.Segment {
	if amd && tr.Type == tssBusy {
		tr.Type = tssAvailable
	}
	return tr
}

// restoreVCPU sets one vCPU's state in the order Firecracker's
// restore_state keeps (src/vmm/src/arch/x86_64/vcpu.rs), for the reasons
// its comment gives: CPUID and the MP state first (they depend on which
// vCPU is the BSP); regs before the vCPU events, because KVM_SET_REGS
// clears pending exceptions that KVM_SET_VCPU_EVENTS restores; sregs
// before the local APIC, because sregs carry the APIC base MSR; the
// local APIC before the MSRs, because the TSC-deadline MSR only takes
// its value once the APIC is in TSC-deadline mode; the events last.
func restoreVCPU(kc *kvm.VCPU, s vcpuState, tscKHz uint32, sys *kvm.System) error {
	if err := kc.SetCPUID(s.CPUID); err != nil {
		return err
	}
	if khz, err := kc.TSCKHz(); err == nil && khz != tscKHz {
		if n, _ := sys.CheckExtension(kvm.CapTSCControl); n <= 0 {
			return fmt.Errorf("the guest's TSC runs at %d kHz, this host's at %d kHz, and KVM_CAP_TSC_CONTROL is missing", tscKHz, khz)
		}
		if err := kc.SetTSCKHz(tscKHz); err != nil {
			return err
		}
	}
	if err := kc.SetMPState(s.MPState); err != nil {
		return err
	}
	if err := kc.SetRegs(s.Regs); err != nil {
		return err
	}
	if err := kc.SetSregs(s.Sregs); err != nil {
		return err
	}
	if err := kc.SetXSave(s.XSave); err != nil {
		return err
	}
	if err := kc.SetXCRs(s.XCRs); err != nil {
		return err
	}
	if err := kc.SetDebugRegs(s.DebugRegs); err != nil {
		return err
	}
	var l kvm.LAPICState
	copy(l.Regs[:], s.LAPIC)
	if err := kc.SetLAPIC(&l); err != nil {
		return err
	}
	if err := kc.WriteMSRs(s.MSRs); err != nil {
		return err
	}
	if err := kc.SetVCPUEvents(s.Events); err != nil {
		return err
	}
	// Tell the guest it was paused, so its soft-lockup watchdog does not
	// take the time it spent saved for a hung CPU. A guest that has not
	// set up kvm-clock on this vCPU makes KVM refuse (EINVAL): nothing to
	// tell it then.
	if err := kc.KVMClockCtrl(); err != nil && !errors.Is(err, unix.EINVAL) {
		return err
	}
	return nil
}
