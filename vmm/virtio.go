package vmm

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"

	"github.com/vesselvm/vessel/boot/acpi"
	"github.com/vesselvm/vessel/devices/share/remote"
	"github.com/vesselvm/vessel/devices/tap"
	"github.com/vesselvm/vessel/devices/usernet"
	"github.com/vesselvm/vessel/devices/virtio"
	"github.com/vesselvm/vessel/internal/jail"
	"github.com/vesselvm/vessel/kvm"
)

// Virtio-mmio placement: 4 KiB windows from virtioBase, in the hole below
// 4 GiB that RAM never uses (boot.RAMLayout splits RAM at 3 GiB), each with
// its own IOAPIC input (COM1 has 4; 8 stays free as the RTC's by custom).
// The DSDT describes them (boot/acpi), so the guest needs no
// virtio_mmio.device= parameters.
const virtioBase = 0xD000_0000

var virtioGSIs = []uint32{5, 6, 7, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23}

// MaxVirtioDevices is how many virtio devices a VM takes, all kinds
// together (disks, networks, shares, vsock, the entropy device, the
// balloon): one interrupt line each (virtioGSIs).
const MaxVirtioDevices = 18

// Disk is a virtio block device backed by a raw image file.
type Disk struct {
	Path     string
	ReadOnly bool
	// Serial is the ID the guest sees (/sys/block/vdX/serial), at most 20
	// bytes; empty means the image's file name.
	Serial string
}

// virtioDev is one attached virtio-mmio device.
type virtioDev struct {
	t      *virtio.MMIO
	base   uint64
	gsi    uint32
	closer func()
}

// virtioDevices counts the virtio devices setupVirtio attaches for c.
func (c *Config) virtioDevices() int {
	n := 1 + len(c.Disks) + len(c.Nets) + len(c.Shares) // the entropy device first
	if c.Vsock != nil {
		n++
	}
	if c.Balloon != nil {
		n++
	}
	return n
}

// setupVirtio attaches the entropy device, the disks, the network
// devices, the vsock device, the balloon and the shares, in that order.
func (v *VM) setupVirtio() error {
	if err := v.addVirtio(virtio.NewRNG(), nil); err != nil {
		return err
	}
	for _, d := range v.cfg.Disks {
		blk, f, err := openDisk(d)
		if err != nil {
			return err
		}
		blk.SetLog(v.logf) // a full host file system, say: once
		// Requests a reset abandoned (blocked in host I/O) still use
		// f's descriptor: wait for them before closing it.
		if err := v.addVirtio(blk, func() { blk.Close(); f.Close() }); err != nil {
			blk.Close()
			f.Close()
			return err
		}
	}
	for i, n := range v.cfg.Nets {
		if err := v.addNet(i, n); err != nil {
			return err
		}
	}
	if vs := v.cfg.Vsock; vs != nil {
		if vs.CID < 3 || vs.CID > 0xFFFF_FFFE {
			return fmt.Errorf("%w: vsock guest CID %d: must be 3 to 4294967294", ErrInvalidConfig, vs.CID)
		}
		dev, err := virtio.NewVsock(vs.CID, vs.Path, v.logf)
		if err != nil {
			return fmt.Errorf("%w: vsock %s: %w", ErrInvalidConfig, vs.Path, err)
		}
		if vs.Dial != nil {
			dev.SetDialer(vs.Dial)
		}
		if err := v.addVirtio(dev, func() { dev.Close() }); err != nil {
			dev.Close()
			return err
		}
	}
	if b := v.cfg.Balloon; b != nil {
		if err := v.addBalloon(b); err != nil {
			return err
		}
	}
	return v.addShares()
}

// addShares starts the share server (vessel-share) for the VM's shares
// and attaches a virtio 9P device for each.
func (v *VM) addShares() error {
	if len(v.cfg.Shares) == 0 {
		return nil
	}
	tags := map[string]bool{}
	rc := remote.Config{Credential: v.cfg.ShareCredential, Caps: jail.ShareCaps}
	for _, s := range v.cfg.Shares {
		if tags[s.Tag] {
			return fmt.Errorf("%w: share %s: tag %q used twice", ErrInvalidConfig, s.Dir, s.Tag)
		}
		tags[s.Tag] = true
		rc.Shares = append(rc.Shares, remote.Share{Dir: s.Dir, ReadOnly: s.ReadOnly})
	}
	h, err := remote.Start(rc)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidConfig, err)
	}
	v.shares = h
	for i, s := range v.cfg.Shares {
		dev, err := virtio.NewP9(s.Tag, h.Server(i), v.logf)
		if err == nil {
			err = v.addVirtio(dev, nil)
		}
		if err != nil {
			return fmt.Errorf("%w: share %s: %w", ErrInvalidConfig, s.Dir, err)
		}
	}
	return nil
}

// netBackend is a virtio-net backend the VM closes at the end.
type netBackend interface {
	virtio.NetBackend
	Close() error
}

// addNet attaches network device i with its backend.
func (v *VM) addNet(i int, n Net) error {
	var be netBackend
	var err error
	switch {
	case (n.Tap != "") == (n.User != nil):
		return fmt.Errorf("%w: network %d: give a TAP device or a user network, exactly one", ErrInvalidConfig, i)
	case n.Tap != "":
		be, err = tap.Open(n.Tap)
	case i < len(v.userNets) && v.userNets[i] != nil:
		// Started by startUserNets; the device owns it from here.
		be, v.userNets[i] = v.userNets[i], nil
	default:
		be, err = usernet.Start(userNetConfig(n))
	}
	if err != nil {
		return fmt.Errorf("%w: network %d: %w", ErrInvalidConfig, i, err)
	}
	dev, err := virtio.NewNet(be, n.MAC, v.logf)
	if err != nil {
		be.Close()
		return fmt.Errorf("%w: network %d: %w", ErrInvalidConfig, i, err)
	}
	if err := v.addVirtio(dev, func() { be.Close() }); err != nil {
		be.Close()
		return err
	}
	return nil
}

// userNetConfig is the usernet configuration of network n.
func userNetConfig(n Net) usernet.Config {
	return usernet.Config{MAC: n.MAC, FormerMAC: n.formerMAC, Publish: n.User.Publish, HostLoopback: n.User.HostLoopback, Credential: n.User.Credential}
}

// startUserNets starts the helpers of the user networks without waiting
// for them: a helper's start-up (a process and gVisor's network stack)
// overlaps laying out guest memory, loading the kernel or restoring a
// snapshot. addNet attaches them; netsReady waits for them before the
// guest runs.
func (v *VM) startUserNets() error {
	v.userNets = make([]*usernet.Network, len(v.cfg.Nets))
	for i, n := range v.cfg.Nets {
		if n.User == nil || n.Tap != "" {
			continue // a TAP, or a configuration addNet refuses
		}
		un, err := usernet.Start(userNetConfig(n))
		if err != nil {
			return fmt.Errorf("%w: network %d: %w", ErrInvalidConfig, i, err)
		}
		v.userNets[i] = un
		v.started = append(v.started, un)
	}
	return nil
}

// netsReady waits until every user network's helper is ready.
func (v *VM) netsReady() error {
	for i, un := range v.started {
		if err := un.Ready(); err != nil {
			return fmt.Errorf("%w: user network %d: %w", ErrInvalidConfig, i, err)
		}
	}
	return nil
}

// closeUserNets closes the user networks started but never attached to
// a device (the VM failed before addNet).
func (v *VM) closeUserNets() {
	for i, un := range v.userNets {
		if un != nil {
			un.Close()
			v.userNets[i] = nil
		}
	}
}

// openDisk opens and locks an image: shared for a read-only disk,
// exclusive otherwise, so two VMs never write one image.
func openDisk(d Disk) (*virtio.Block, *os.File, error) {
	flag, lock := os.O_RDWR, unix.LOCK_EX
	if d.ReadOnly {
		flag, lock = os.O_RDONLY, unix.LOCK_SH
	}
	f, err := os.OpenFile(d.Path, flag|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: disk %s: %w", ErrInvalidConfig, d.Path, unwrapPathError(err))
	}
	st, err := f.Stat()
	if err == nil && st.IsDir() {
		err = errors.New("is a directory")
	}
	if err == nil {
		if lerr := unix.Flock(int(f.Fd()), lock|unix.LOCK_NB); lerr != nil {
			err = fmt.Errorf("in use by another process (flock: %w)", lerr)
		}
	}
	if err != nil {
		f.Close()
		return nil, nil, fmt.Errorf("%w: disk %s: %w", ErrInvalidConfig, d.Path, err)
	}
	serial := d.Serial
	if serial == "" {
		serial = filepath.Base(d.Path)
	}
	blk, err := virtio.NewBlock(f, d.ReadOnly, serial)
	if err != nil {
		f.Close()
		return nil, nil, fmt.Errorf("%w: disk %s: %w", ErrInvalidConfig, d.Path, err)
	}
	return blk, f, nil
}

// addVirtio puts dev on the MMIO bus with an irqfd interrupt and an
// ioeventfd per queue, so neither a notification nor an interrupt needs a
// userspace exit.
func (v *VM) addVirtio(dev virtio.Device, closer func()) error {
	i := len(v.virtio)
	if i >= len(virtioGSIs) {
		return fmt.Errorf("%w: at most %d virtio devices", ErrInvalidConfig, len(virtioGSIs))
	}
	base, gsi := uint64(virtioBase+i*virtio.MMIOSize), virtioGSIs[i]
	irq, err := v.newInterrupt(gsi)
	if err != nil {
		return err
	}
	t, err := virtio.NewMMIO(dev, v.mem, irq, v.logf)
	if err != nil {
		return err
	}
	vd := &virtioDev{t: t, base: base, gsi: gsi, closer: closer}
	v.virtio = append(v.virtio, vd)
	if err := v.mmio.Insert(t, base, virtio.MMIOSize); err != nil {
		return fmt.Errorf("vmm: virtio device %d: %w", i, err)
	}
	for q, ev := range t.NotifyEvents() {
		dm := uint64(q)
		if err := v.vm.RegisterIOEventFD(kvm.IOEventFD{Addr: base + virtio.RegQueueNotify, Len: 4, FD: ev.Fd(), Datamatch: &dm}); err != nil {
			return err
		}
	}
	return nil
}

// virtioACPI lists the devices for the DSDT.
func (v *VM) virtioACPI() []acpi.VirtioMMIO {
	var l []acpi.VirtioMMIO
	for _, d := range v.virtio {
		l = append(l, acpi.VirtioMMIO{Base: d.base, Size: virtio.MMIOSize, GSI: d.gsi})
	}
	return l
}

// deviceMetrics reads every virtio device's counters.
func (v *VM) deviceMetrics() []DeviceMetrics {
	var l []DeviceMetrics
	for _, d := range v.virtio {
		st := d.t.Stats()
		m := DeviceMetrics{Type: virtio.TypeName(d.t.Device().Type()), Interrupts: st.Interrupts, Notifies: st.Notifies, ExitNotifies: st.ExitNotifies}
		if n, ok := d.t.Device().(*virtio.Net); ok {
			ns := n.Stats()
			m.Net = &ns
		}
		l = append(l, m)
	}
	return l
}

// closeVirtio resets every device (stopping its goroutines) and releases
// its events and files, waiting a bounded time for each: a device that
// does not stop marks the VM stuck and is left as it is.
func (v *VM) closeVirtio() {
	for i, d := range v.virtio {
		v.bounded(fmt.Sprintf("virtio %s device %d", virtio.TypeName(d.t.Device().Type()), i), func() {
			d.t.Close()
			if d.closer != nil {
				d.closer()
			}
		})
	}
	v.virtio = nil
}

// logf reports a device problem (a misbehaving guest driver) on the VMM's
// log, once per occurrence the device decides to report.
func (v *VM) logf(format string, a ...any) {
	if v.cfg.Log != nil {
		fmt.Fprintf(v.cfg.Log, "vessel: "+format+"\n", a...)
	}
}
