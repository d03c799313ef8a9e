package virtio

import (
	"encoding/binary"
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/vesselvm/vessel/devices"
	"github.com/vesselvm/vessel/guestmem"
)

// Device types (virtio 1.2 §5).
const (
	TypeNet   = 1
	TypeBlock = 2
	TypeRNG   = 4
	// TypeBalloon is virtio-balloon (virtio 1.2 §5.5).
	TypeBalloon = 5
	TypeVsock   = 19
)

// Feature bits the transport offers for every device (virtio 1.2 §6).
const (
	FeatureIndirectDesc = 1 << 28 // VIRTIO_F_INDIRECT_DESC
	FeatureEventIdx     = 1 << 29 // VIRTIO_F_EVENT_IDX
	FeatureVersion1     = 1 << 32 // VIRTIO_F_VERSION_1
)

// Device status bits (virtio 1.2 §2.1).
const (
	StatusAcknowledge = 1
	StatusDriver      = 2
	StatusDriverOK    = 4
	StatusFeaturesOK  = 8
	StatusNeedsReset  = 64
	StatusFailed      = 128
)

// MMIO register offsets, version 2 layout (virtio 1.2 §4.2.2).
const (
	regMagic          = 0x000
	regVersion        = 0x004
	regDeviceID       = 0x008
	regVendorID       = 0x00c
	regDeviceFeatures = 0x010
	regDeviceFeatSel  = 0x014
	regDriverFeatures = 0x020
	regDriverFeatSel  = 0x024
	regQueueSel       = 0x030
	regQueueNumMax    = 0x034
	regQueueNum       = 0x038
	regQueueReady     = 0x044
	// RegQueueNotify is the offset of QueueNotify: the VMM registers an
	// ioeventfd at base+RegQueueNotify per queue (datamatch: the queue
	// index) so notifications never exit to userspace.
	RegQueueNotify    = 0x050
	regInterruptStat  = 0x060
	regInterruptACK   = 0x064
	regStatus         = 0x070
	regQueueDescLow   = 0x080
	regQueueDescHigh  = 0x084
	regQueueDrvLow    = 0x090
	regQueueDrvHigh   = 0x094
	regQueueDevLow    = 0x0a0
	regQueueDevHigh   = 0x0a4
	regConfigGen      = 0x0fc
	regConfig         = 0x100
	mmioMagic         = 0x74726976 // "virt"
	mmioVersion       = 2
	vendorID          = 0x4c535356 // "VSSL"
	interruptUsed     = 1          // VIRTIO_MMIO_INT_VRING
	interruptConfig   = 2          // VIRTIO_MMIO_INT_CONFIG
	transportFeatures = FeatureIndirectDesc | FeatureEventIdx | FeatureVersion1
)

// MMIOSize is the size of one device's MMIO window.
const MMIOSize = 0x1000

// Device is a virtio device model behind a transport (virtio 1.2 §5).
type Device interface {
	// Type returns the virtio device ID.
	Type() uint32
	// Features returns the device-specific feature bits it offers.
	Features() uint64
	// QueueMaxSizes returns the maximum size of each queue.
	QueueMaxSizes() []uint16
	// ReadConfig and WriteConfig access the device configuration space;
	// offsets and lengths come from the guest and must be checked.
	ReadConfig(offset uint64, data []byte)
	WriteConfig(offset uint64, data []byte)
	// Activate starts the device once the driver set DRIVER_OK. It runs
	// its work on its own goroutines and returns at once.
	Activate(q *Queues) error
	// Reset stops the device's goroutines and waits for them; the queues
	// given to Activate are dropped.
	Reset()
}

// FeatureQueues is a Device whose queues depend on the features the
// driver accepted (virtio-balloon's statsq and reporting_vq exist only
// with theirs, and the driver numbers the queues it has consecutively):
// the driver must enable the first NumQueues(features) queues, and
// Activate gets those.
type FeatureQueues interface {
	NumQueues(features uint64) int
}

// Queues is what an activated device works with.
type Queues struct {
	Mem      *guestmem.Memory
	Features uint64   // negotiated
	Queues   []*Queue // one per QueueMaxSizes entry
	// Notify[i] is signalled when the driver notifies queue i.
	Notify []*Event
	t      *MMIO
}

// UsedBuffers raises the used-buffer interrupt for queue i if the driver
// asked for one (virtio 1.2 §2.7.7.2). Call it after Push.
func (q *Queues) UsedBuffers(i int) {
	need, err := q.Queues[i].NeedsInterrupt()
	if err != nil {
		q.Fail(err)
		return
	}
	if need {
		q.t.interrupt(interruptUsed)
	}
}

// Fail stops the device for a driver error: DEVICE_NEEDS_RESET is set, a
// configuration-change interrupt tells the driver, and the error is logged
// once (virtio 1.2 §2.1.2). Safe to call from any goroutine.
func (q *Queues) Fail(err error) { q.t.fail(err) }

// ConfigChanged tells the driver that the device changed its
// configuration space: the generation changes and the configuration
// change interrupt is raised (virtio 1.2 §2.5.1, §4.2.2).
func (q *Queues) ConfigChanged() {
	q.t.mu.Lock()
	q.t.configGen++
	q.t.intStatus |= interruptConfig
	q.t.mu.Unlock()
	q.t.trigger()
}

// queueState is one queue as programmed through the registers.
type queueState struct {
	cfg   QueueConfig
	ready bool
}

// MMIO is the virtio-mmio transport for one device (virtio 1.2 §4.2). It is
// a devices.Device on the MMIO bus.
type MMIO struct {
	dev    Device
	mem    *guestmem.Memory
	irq    devices.Interrupt
	logf   func(format string, a ...any)
	notify []*Event
	maxes  []uint16
	irqs   atomic.Uint64 // interrupts raised
	// exitNotifies counts notifications that came as an MMIO write
	// (a userspace exit) rather than through a queue's ioeventfd.
	exitNotifies atomic.Uint64

	mu          sync.Mutex
	status      uint32
	devFeatSel  uint32
	drvFeatSel  uint32
	drvFeatures uint64
	queueSel    uint32
	queues      []queueState
	intStatus   uint32
	active      *Queues
	// resetDone is non-nil while a reset waits for the device's Reset
	// (with t.mu released) and is closed when it has returned. Until
	// then the transport ignores the driver's writes and status keeps
	// reading its old, non-zero value (virtio 1.2 §2.4.1: the driver
	// waits for status to read 0), so a driver on another vCPU cannot
	// negotiate and activate the device again while it is still
	// stopping.
	resetDone chan struct{}
	failed    bool // logged a failure since the last reset
	configGen uint32
	raise     bool // an interrupt to trigger once t.mu is released
}

// NewMMIO returns the transport for dev. logf receives one line per device
// failure (a misbehaving driver).
func NewMMIO(dev Device, mem *guestmem.Memory, irq devices.Interrupt, logf func(string, ...any)) (*MMIO, error) {
	maxes := dev.QueueMaxSizes()
	t := &MMIO{dev: dev, mem: mem, irq: irq, logf: logf, maxes: maxes, queues: make([]queueState, len(maxes))}
	for range maxes {
		e, err := NewEvent()
		if err != nil {
			t.Close()
			return nil, err
		}
		t.notify = append(t.notify, e)
	}
	return t, nil
}

// NotifyEvents returns each queue's notification event, for the VMM's
// ioeventfd registration.
func (t *MMIO) NotifyEvents() []*Event { return t.notify }

// Close resets the device (after any reset already under way) and
// releases the events.
func (t *MMIO) Close() error {
	t.mu.Lock()
	for t.resetDone != nil {
		done := t.resetDone
		t.mu.Unlock()
		<-done
		t.mu.Lock()
	}
	t.resetLocked()
	t.mu.Unlock()
	for _, e := range t.notify {
		e.Close()
	}
	return nil
}

// Status returns the device status register (for tests and logs).
func (t *MMIO) Status() uint32 {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.status
}

func (t *MMIO) offered() uint64 { return t.dev.Features() | transportFeatures }

// Read implements devices.Device.
func (t *MMIO) Read(off uint64, data []byte) {
	clear(data)
	if off >= regConfig {
		t.dev.ReadConfig(off-regConfig, data)
		return
	}
	if len(data) != 4 || off%4 != 0 {
		return // §4.2.2.2: registers are read 32 bits wide
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	var v uint32
	switch off {
	case regMagic:
		v = mmioMagic
	case regVersion:
		v = mmioVersion
	case regDeviceID:
		v = t.dev.Type()
	case regVendorID:
		v = vendorID
	case regDeviceFeatures:
		if t.devFeatSel < 2 {
			v = uint32(t.offered() >> (32 * t.devFeatSel))
		}
	case regQueueNumMax:
		if q := t.selected(); q >= 0 {
			v = uint32(t.maxes[q])
		}
	case regQueueReady:
		if q := t.selected(); q >= 0 && t.queues[q].ready {
			v = 1
		}
	case regInterruptStat:
		v = t.intStatus
	case regStatus:
		v = t.status
	case regConfigGen:
		v = t.configGen
	case regQueueNum, regQueueDescLow, regQueueDescHigh, regQueueDrvLow, regQueueDrvHigh, regQueueDevLow, regQueueDevHigh:
		if q := t.selected(); q >= 0 {
			v = t.queues[q].cfg.register(off)
		}
	}
	binary.LittleEndian.PutUint32(data, v)
}

// register returns the 32-bit half of a field a queue register reads.
func (c QueueConfig) register(off uint64) uint32 {
	switch off {
	case regQueueNum:
		return uint32(c.Size)
	case regQueueDescLow, regQueueDescHigh:
		return uint32(c.Desc >> (8 * (off - regQueueDescLow)))
	case regQueueDrvLow, regQueueDrvHigh:
		return uint32(c.Driver >> (8 * (off - regQueueDrvLow)))
	case regQueueDevLow, regQueueDevHigh:
		return uint32(c.Device >> (8 * (off - regQueueDevLow)))
	}
	return 0
}

// selected returns the index of the selected queue, or -1.
func (t *MMIO) selected() int {
	if int(t.queueSel) < len(t.queues) {
		return int(t.queueSel)
	}
	return -1
}

func setLow(x *uint64, v uint32)  { *x = *x&^0xffffffff | uint64(v) }
func setHigh(x *uint64, v uint32) { *x = *x&0xffffffff | uint64(v)<<32 }

// Write implements devices.Device.
func (t *MMIO) Write(off uint64, data []byte) {
	if off >= regConfig {
		t.mu.Lock()
		ok := t.status&StatusFailed == 0 && t.resetDone == nil
		t.mu.Unlock()
		if ok {
			t.dev.WriteConfig(off-regConfig, data)
		}
		return
	}
	if len(data) != 4 || off%4 != 0 {
		return
	}
	v := binary.LittleEndian.Uint32(data)
	if off == RegQueueNotify {
		// Reached only without an ioeventfd for this queue: the notify
		// cost a userspace exit.
		t.exitNotifies.Add(1)
		if int(v) < len(t.notify) {
			t.notify[v].Signal()
		}
		return
	}
	t.mu.Lock()
	t.writeLocked(off, v)
	raise := t.raise
	t.raise = false
	t.mu.Unlock()
	if raise {
		t.trigger()
	}
}

func (t *MMIO) writeLocked(off uint64, v uint32) {
	if t.resetDone != nil {
		// A reset is under way: it clears all this state when the
		// device has stopped, and a second reset would add nothing.
		return
	}
	switch off {
	case regDeviceFeatSel:
		t.devFeatSel = v
	case regDriverFeatSel:
		t.drvFeatSel = v
	case regDriverFeatures:
		if t.status&(StatusFeaturesOK|StatusDriverOK) == 0 && t.drvFeatSel < 2 {
			if t.drvFeatSel == 0 {
				setLow(&t.drvFeatures, v)
			} else {
				setHigh(&t.drvFeatures, v)
			}
		}
	case regQueueSel:
		t.queueSel = v
	case regInterruptACK:
		t.intStatus &^= v
	case regStatus:
		t.setStatus(v)
	case regQueueNum, regQueueReady, regQueueDescLow, regQueueDescHigh, regQueueDrvLow, regQueueDrvHigh, regQueueDevLow, regQueueDevHigh:
		q := t.selected()
		if q < 0 || t.status&StatusDriverOK != 0 {
			return // no such queue, or too late to change it
		}
		s := &t.queues[q]
		if off == regQueueReady {
			s.ready = v&1 == 1
			return
		}
		if s.ready {
			return // §4.2.2.3: not while the queue is enabled
		}
		switch off {
		case regQueueNum:
			s.cfg.Size = uint16(min(v, 0xffff))
		case regQueueDescLow:
			setLow(&s.cfg.Desc, v)
		case regQueueDescHigh:
			setHigh(&s.cfg.Desc, v)
		case regQueueDrvLow:
			setLow(&s.cfg.Driver, v)
		case regQueueDrvHigh:
			setHigh(&s.cfg.Driver, v)
		case regQueueDevLow:
			setLow(&s.cfg.Device, v)
		case regQueueDevHigh:
			setHigh(&s.cfg.Device, v)
		}
	}
}

// setStatus applies a driver write to the status register (virtio 1.2
// §3.1.1 initialisation, §2.4 reset).
func (t *MMIO) setStatus(v uint32) {
	if v == 0 {
		t.resetLocked()
		return
	}
	if v&t.status != t.status {
		return // the driver may only add bits (apart from reset)
	}
	added := v &^ t.status
	if added&StatusFeaturesOK != 0 {
		f := t.drvFeatures
		if f&^t.offered() != 0 || f&FeatureVersion1 == 0 {
			// Features the device never offered, or a legacy driver:
			// FEATURES_OK stays clear and the driver gives up.
			v &^= StatusFeaturesOK
		}
	}
	if added&StatusDriverOK != 0 {
		if v&StatusFeaturesOK == 0 {
			v &^= StatusDriverOK
		} else if err := t.activateLocked(); err != nil {
			t.status = v &^ StatusDriverOK
			t.failLocked(err)
			return
		}
	}
	t.status = v
}

func (t *MMIO) activateLocked() error { return t.activateAt(nil) }

// activateAt builds the queues the driver enabled, each at its saved
// position if pos is not nil (a restore), and activates the device.
func (t *MMIO) activateAt(pos []QueueState) error {
	q := &Queues{Mem: t.mem, Features: t.drvFeatures, Notify: t.notify, t: t}
	queues := t.queues
	if fq, ok := t.dev.(FeatureQueues); ok {
		queues = queues[:min(len(queues), max(0, fq.NumQueues(t.drvFeatures)))]
	}
	for i, s := range queues {
		if !s.ready {
			// Every queue of the devices vessel has is needed.
			return fmt.Errorf("%w: queue %d not enabled at DRIVER_OK", ErrQueue, i)
		}
		vq, err := NewQueue(t.mem, s.cfg, t.maxes[i], t.drvFeatures)
		if err != nil {
			return fmt.Errorf("queue %d: %w", i, err)
		}
		if pos != nil {
			vq.nextAvail, vq.nextUsed = pos[i].NextAvail, pos[i].NextUsed
		}
		q.Queues = append(q.Queues, vq)
	}
	if err := t.dev.Activate(q); err != nil {
		return err
	}
	t.active = q
	return nil
}

// stopDeviceLocked stops an active device and returns the queues it was
// given (nil if none). Device.Reset waits for the device goroutines,
// which may be blocked in Fail or UsedBuffers wanting t.mu: it is
// released meanwhile, with t.resetDone holding off the driver's writes.
func (t *MMIO) stopDeviceLocked() *Queues {
	act := t.active
	if act == nil {
		return nil
	}
	t.active = nil
	done := make(chan struct{})
	t.resetDone = done
	t.mu.Unlock()
	t.dev.Reset()
	t.mu.Lock()
	t.resetDone = nil
	close(done)
	return act
}

// resetLocked returns the device to its initial state (virtio 1.2 §2.4).
// No other reset may be under way (t.resetDone nil).
func (t *MMIO) resetLocked() {
	t.stopDeviceLocked()
	t.status, t.intStatus = 0, 0
	t.drvFeatures, t.devFeatSel, t.drvFeatSel, t.queueSel = 0, 0, 0, 0
	clear(t.queues)
	t.failed = false
}

func (t *MMIO) interrupt(bit uint32) {
	t.mu.Lock()
	t.intStatus |= bit
	t.mu.Unlock()
	t.trigger()
}

func (t *MMIO) fail(err error) {
	t.mu.Lock()
	t.failLocked(err)
	t.raise = false
	t.mu.Unlock()
	t.trigger()
}

// trigger raises the device's interrupt line (t.mu not held).
func (t *MMIO) trigger() {
	t.irqs.Add(1)
	if t.irq != nil {
		_ = t.irq.Trigger()
	}
}

// TransportStats are a device's interrupts and notifications.
type TransportStats struct {
	Interrupts uint64 // raised by the device
	Notifies   uint64 // queue notifications from the driver the device consumed
	// ExitNotifies are the notifications that reached the device as an
	// MMIO write, each a userspace exit; with the VMM's ioeventfds in
	// place there are none.
	ExitNotifies uint64
}

// Stats returns the transport's counters since it was made.
func (t *MMIO) Stats() TransportStats {
	s := TransportStats{Interrupts: t.irqs.Load(), ExitNotifies: t.exitNotifies.Load()}
	for _, e := range t.notify {
		s.Notifies += e.Count()
	}
	return s
}

// Device returns the device behind the transport.
func (t *MMIO) Device() Device { return t.dev }

// failLocked marks the device as needing a reset and logs why, once.
func (t *MMIO) failLocked(err error) {
	t.status |= StatusNeedsReset
	t.intStatus |= interruptConfig
	t.raise = true
	if !t.failed {
		t.failed = true
		if t.logf != nil {
			t.logf("virtio %s: device needs reset: %v", TypeName(t.dev.Type()), err)
		}
	}
}

// TypeName names a virtio device type ("net", "block", ...).
func TypeName(id uint32) string {
	switch id {
	case TypeNet:
		return "net"
	case TypeBlock:
		return "block"
	case TypeRNG:
		return "rng"
	case TypeBalloon:
		return "balloon"
	case TypeVsock:
		return "vsock"
	case TypeP9:
		return "9p"
	}
	return fmt.Sprintf("type %d", id)
}
