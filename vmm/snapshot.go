package vmm

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"

	"github.com/vesselvm/vessel/boot"
	"github.com/vesselvm/vessel/devices/virtio"
	"github.com/vesselvm/vessel/kvm"
)

// SnapshotOptions says how to write a snapshot.
type SnapshotOptions struct {
	// Version is vessel's version, recorded in the snapshot: a restore
	// refuses a snapshot another version took.
	Version string
}

// MSRs a snapshot saves besides those KVM_GET_MSR_INDEX_LIST names
// (which lists them too on every KVM vessel knows): the TSC and
// kvm-clock's, without which the guest's clock would not survive.
const (
	msrKVMWallClock     = 0x11
	msrKVMSystemTime    = 0x12
	msrKVMWallClockNew  = 0x4b564d00
	msrKVMSystemTimeNew = 0x4b564d01
)

// snapshotCaps are the capabilities a snapshot and a restore need, with
// their names for the error when one is missing.
var snapshotCaps = []struct {
	cap  kvm.Cap
	name string
}{
	{kvm.CapMPState, "MP_STATE"}, {kvm.CapVCPUEvents, "VCPU_EVENTS"}, {kvm.CapDebugRegs, "DEBUGREGS"},
	{kvm.CapXSave, "XSAVE"}, {kvm.CapXCRs, "XCRS"}, {kvm.CapAdjustClock, "ADJUST_CLOCK"},
	{kvm.CapPITState2, "PIT_STATE2"}, {kvm.CapGetTSCKHz, "GET_TSC_KHZ"},
}

// checkSnapshotCaps fails naming the first capability KVM lacks.
func (v *VM) checkSnapshotCaps() error {
	for _, c := range snapshotCaps {
		if n, _ := v.sys.CheckExtension(c.cap); n <= 0 {
			return fmt.Errorf("%w: %w: KVM_CAP_%s (snapshots need it)", ErrHostKVM, kvm.ErrMissingCap, c.name)
		}
	}
	return nil
}

// xsaveSize returns the size of a vCPU's XSAVE area and whether
// KVM_GET_XSAVE2 reads it.
func (v *VM) xsaveSize() (int, bool) {
	if n, _ := v.vm.CheckExtension(kvm.CapXSave2); n >= kvm.XSaveSize {
		return n, true
	}
	return kvm.XSaveSize, false
}

// guestCPUID returns the CPUID table vCPUs are shaped from (as
// setupVCPUs does).
func (v *VM) guestCPUID() ([]kvm.CPUIDEntry, error) {
	supported, err := v.sys.SupportedCPUID()
	if err != nil {
		return nil, err
	}
	if n, _ := v.sys.CheckExtension(kvm.CapTSCDeadline); n > 0 {
		supported = withTSCDeadline(supported)
	}
	return supported, nil
}

// cpuModel reads the vendor, family, model and stepping from CPUID
// leaves 0 and 1 (Intel SDM vol. 2A, CPUID: the display family and
// model add the extended fields).
func cpuModel(t []kvm.CPUIDEntry) hostCPU {
	var h hostCPU
	for _, e := range t {
		switch e.Function {
		case 0:
			var b [12]byte
			for i, r := range []uint32{e.EBX, e.EDX, e.ECX} {
				b[4*i], b[4*i+1], b[4*i+2], b[4*i+3] = byte(r), byte(r>>8), byte(r>>16), byte(r>>24)
			}
			h.Vendor = string(b[:])
		case 1:
			a := e.EAX
			h.Stepping = a & 0xf
			h.Model = a >> 4 & 0xf
			h.Family = a >> 8 & 0xf
			if h.Family == 0xf {
				h.Family += a >> 20 & 0xff
			}
			if h.Family == 0x6 || h.Family >= 0xf {
				h.Model += (a >> 16 & 0xf) << 4
			}
		}
	}
	return h
}

// Snapshot writes the paused VM to dir, which must not exist or be an
// empty directory: guest memory to dir/memory, everything else to
// dir/vm.state (see snapshot_format.go). The devices are stopped between
// requests for the copy and started again before Snapshot returns; the
// VM stays paused, and the caller resumes or stops it. Network devices
// are attached anew on restore, and so are 9P shares, from the
// directories the restore gives (RestoreOptions.Shares): the snapshot
// records only their tags. A share the guest has mounted cannot be
// snapshotted, since its state is the host's open files for the guest's
// fids: Snapshot refuses a VM with a share whose device has served a
// request (ErrInvalidConfig, naming its tag). On error nothing is left
// in dir (nor dir, if Snapshot made it).
func (v *VM) Snapshot(dir string, o SnapshotOptions) error {
	if !v.Paused() {
		return ErrNotPaused
	}
	if err := v.checkSharesUnused(); err != nil {
		return err
	}
	if err := v.checkSnapshotCaps(); err != nil {
		return err
	}
	st := &snapState{Vessel: o.Version, CPUs: v.cfg.CPUs, Memory: v.cfg.Memory, Regions: boot.RAMLayout(v.cfg.Memory), Disks: v.cfg.Disks, Nets: v.cfg.Nets}
	for _, s := range v.cfg.Shares {
		st.Shares = append(st.Shares, snapShare{Tag: s.Tag})
	}
	if vs := v.cfg.Vsock; vs != nil {
		st.Vsock = &snapVsock{CID: vs.CID, Path: vs.Path}
	}
	if c, err := v.BalloonConfig(); err == nil {
		st.Balloon, st.BalloonActual = &c, v.balloon.State().ActualPages
	}
	// Devices first: a device stopped between requests writes no more
	// guest memory and raises no more interrupts.
	for _, d := range v.virtio {
		st.Virtio = append(st.Virtio, d.t.Quiesce())
	}
	// Again, now that no device takes requests: one the guest queued
	// before it was paused may have been taken since the first check.
	err := v.checkSharesUnused()
	if err == nil {
		err = v.captureState(st)
	}
	if err == nil {
		err = writeSnapshot(dir, st, v)
	}
	if rerr := v.restartDevices(st.Virtio); rerr != nil && err == nil {
		err = rerr
	}
	return err
}

// checkSharesUnused refuses a VM whose guest has sent a request to a 9P
// device (virtio.P9.Served): it may hold fids, whose host side no
// snapshot can keep. Once the devices are quiesced no request can come
// after the check; one still in a queue then is a first request, which
// the restored VM's new connection serves (a mount starts with Tversion).
func (v *VM) checkSharesUnused() error {
	for _, d := range v.virtio {
		if p, ok := d.t.Device().(*virtio.P9); ok && p.Served() {
			return fmt.Errorf("%w: share %q was mounted by the guest: a snapshot cannot keep a mounted share's open files (snapshot the VM before it mounts its shares)", ErrInvalidConfig, p.Tag())
		}
	}
	return nil
}

// restartDevices starts quiesced devices again.
func (v *VM) restartDevices(states []virtio.TransportState) error {
	var first error
	for i, d := range v.virtio {
		if err := d.t.Restore(states[i]); err != nil && first == nil {
			first = fmt.Errorf("vmm: restarting virtio device %d after the snapshot: %w", i, err)
		}
	}
	return first
}

// captureState reads the VM's and every vCPU's state and the legacy
// devices' registers into st.
func (v *VM) captureState(st *snapState) error {
	var err error
	if st.Clock, err = v.vm.Clock(); err != nil {
		return err
	}
	if st.PIT, err = v.vm.PIT2(); err != nil {
		return err
	}
	for _, c := range []struct {
		id  uint32
		dst *[]byte
	}{{kvm.IRQChipPICMaster, &st.PICMaster}, {kvm.IRQChipPICSlave, &st.PICSlave}, {kvm.IRQChipIOAPIC, &st.IOAPIC}} {
		chip, err := v.vm.IRQChip(c.id)
		if err != nil {
			return err
		}
		*c.dst = irqchipBlob(chip)
	}
	supported, err := v.guestCPUID()
	if err != nil {
		return err
	}
	st.Host = cpuModel(supported)
	idx, err := v.sys.MSRIndexList()
	if err != nil {
		return err
	}
	idx = withMSRs(idx, msrIA32TSC, msrKVMWallClock, msrKVMSystemTime, msrKVMWallClockNew, msrKVMSystemTimeNew)
	var xsave2 bool
	st.XSaveSize, xsave2 = v.xsaveSize()
	for id, c := range v.vcpus {
		cs, err := captureVCPU(c.kc, st.XSaveSize, xsave2, idx)
		if err != nil {
			return err
		}
		cs.ID = id
		cs.CPUID = shapeCPUID(supported, id, v.cfg.CPUs)
		st.VCPUs = append(st.VCPUs, cs)
	}
	if st.TSCKHz, err = v.vcpus[0].kc.TSCKHz(); err != nil {
		return err
	}
	st.Serial = v.serial.State()
	if v.i8042 != nil {
		st.I8042 = v.i8042.State()
	}
	return nil
}

// withMSRs adds the MSRs idx lacks.
func withMSRs(idx []uint32, more ...uint32) []uint32 {
	out := append([]uint32(nil), idx...)
	for _, m := range more {
		found := false
		for _, i := range idx {
			found = found || i == m
		}
		if !found {
			out = append(out, m)
		}
	}
	return out
}

// captureVCPU reads one paused vCPU's state in Firecracker's order
// (src/vmm/src/arch/x86_64/vcpu.rs, save_state): the MP state first,
// the MSRs after the local APIC, and the pending events last, since the
// other GET ioctls may change what is pending (a comment QEMU's and
// Firecracker's code both carry: "GET_VCPU_EVENTS should probably be
// last to save").
func captureVCPU(kc *kvm.VCPU, xsaveSize int, xsave2 bool, msrIdx []uint32) (vcpuState, error) {
	var s vcpuState
	var err error
	if s.MPState, err = kc.MPState(); err != nil {
		return s, err
	}
	if s.Regs, err = kc.Regs(); err != nil {
		return s, err
	}
	if s.Sregs, err = kc.Sregs(); err != nil {
		return s, err
	}
	if s.XSave, err = kc.XSave(xsaveSize, xsave2); err != nil {
		return s, err
	}
	if s.XCRs, err = kc.XCRs(); err != nil {
		return s, err
	}
	if s.DebugRegs, err = kc.DebugRegs(); err != nil {
		return s, err
	}
	l, err := kc.LAPIC()
	if err != nil {
		return s, err
	}
	s.LAPIC = append([]byte(nil), l.Regs[:]...)
	// MSRs KVM lists but will not read for this guest (features its
	// CPUID lacks) are left out: a restore cannot need them either.
	if s.MSRs, _, err = kc.ReadMSRs(msrIdx); err != nil {
		return s, err
	}
	if s.Events, err = kc.VCPUEvents(); err != nil {
		return s, err
	}
	return s, nil
}

// writeSnapshot writes the memory file, then the state file, each under
// a temporary name renamed into place once synced: a directory with a
// vm.state is a complete snapshot. On error it removes what it wrote.
func writeSnapshot(dir string, st *snapState, v *VM) (err error) {
	made, err := snapshotDir(dir)
	if err != nil {
		return err
	}
	var written []string
	defer func() {
		if err == nil {
			return
		}
		for _, p := range written {
			os.Remove(p)
		}
		if made {
			os.Remove(dir)
		}
	}()
	write := func(name string, fill func(*os.File) error) error {
		tmp := filepath.Join(dir, name+".partial")
		f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL|unix.O_CLOEXEC, 0o600)
		if err != nil {
			return fmt.Errorf("vmm: snapshot: %w", err)
		}
		written = append(written, tmp)
		err = fill(f)
		if err == nil {
			err = f.Sync()
		}
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return fmt.Errorf("vmm: snapshot: %s: %w", name, err)
		}
		final := filepath.Join(dir, name)
		if err := os.Rename(tmp, final); err != nil {
			return fmt.Errorf("vmm: snapshot: %w", err)
		}
		written[len(written)-1] = final
		return nil
	}
	if err := write(snapMemFile, func(f *os.File) error { _, err := v.mem.WriteTo(f); return err }); err != nil {
		return err
	}
	b, err := encodeState(st)
	if err != nil {
		return err
	}
	if err := write(snapStateFile, func(f *os.File) error { _, err := f.Write(b); return err }); err != nil {
		return err
	}
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("vmm: snapshot: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("vmm: snapshot: sync %s: %w", dir, err)
	}
	return nil
}

// snapshotDir makes dir (mode 0700), or accepts it if it is an empty
// directory already, and reports whether it made it.
func snapshotDir(dir string) (bool, error) {
	err := os.Mkdir(dir, 0o700)
	if err == nil {
		return true, nil
	}
	if !errors.Is(err, fs.ErrExist) {
		return false, fmt.Errorf("%w: snapshot directory: %w", ErrInvalidConfig, err)
	}
	st, err := os.Lstat(dir)
	if err != nil || !st.IsDir() {
		return false, fmt.Errorf("%w: snapshot directory %s exists and is not a directory", ErrInvalidConfig, dir)
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return false, fmt.Errorf("%w: snapshot directory: %w", ErrInvalidConfig, err)
	}
	if len(ents) > 0 {
		return false, fmt.Errorf("%w: snapshot directory %s is not empty", ErrInvalidConfig, dir)
	}
	return false, nil
}
