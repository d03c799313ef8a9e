package virtio

import (
	"fmt"
)

// QueueState is one queue of a transport's state: what the driver
// programmed and the device's positions in the rings.
type QueueState struct {
	Size   uint16
	Desc   uint64
	Driver uint64
	Device uint64
	Ready  bool
	// NextUsed is the device's used index: how many chains it has
	// returned. NextAvail is where it goes on taking chains: the same,
	// since Quiesce stops the device between requests, and a chain it
	// had taken but not returned (an RX buffer waiting for data, a
	// request an abandoned reset left in host I/O) is taken again.
	// Every device vessel has returns a queue's chains in the order it
	// took them, so that the first NextUsed chains are exactly those
	// returned.
	NextAvail uint16
	NextUsed  uint16
}

// TransportState is a virtio-mmio transport's state, for a snapshot:
// the registers the driver wrote, the interrupt status and each queue.
// The device's own state is the device's business (configuration comes
// from the VM's configuration; vsock connections are reset).
type TransportState struct {
	DeviceType  uint32
	Status      uint32
	DevFeatSel  uint32
	DrvFeatSel  uint32
	DrvFeatures uint64
	QueueSel    uint32
	IntStatus   uint32
	ConfigGen   uint32
	Queues      []QueueState
}

// Restorer is a device that has something to tell the driver when it is
// activated again by Restore, after the queues are running (vsock sends
// VIRTIO_VSOCK_EVENT_TRANSPORT_RESET). It runs without the transport's
// lock.
type Restorer interface {
	Restored(q *Queues)
}

// Quiesce stops the device's work for a snapshot: its goroutines stop as
// for a reset (Device.Reset waits for them), but the transport keeps its
// registers and the driver's queues, and the guest is not told. The
// guest's vCPUs must be paused. It returns the transport's state, with
// which Restore starts the device again, on this transport (the VM goes
// on) or on a new one (a restored VM).
func (t *MMIO) Quiesce() TransportState {
	t.mu.Lock()
	for t.resetDone != nil {
		done := t.resetDone
		t.mu.Unlock()
		<-done
		t.mu.Lock()
	}
	act := t.stopDeviceLocked() // the vCPUs are paused: no driver writes meanwhile
	defer t.mu.Unlock()
	st := TransportState{
		DeviceType: t.dev.Type(), Status: t.status, DevFeatSel: t.devFeatSel, DrvFeatSel: t.drvFeatSel,
		DrvFeatures: t.drvFeatures, QueueSel: t.queueSel, IntStatus: t.intStatus, ConfigGen: t.configGen,
	}
	for i, q := range t.queues {
		qs := QueueState{Size: q.cfg.Size, Desc: q.cfg.Desc, Driver: q.cfg.Driver, Device: q.cfg.Device, Ready: q.ready}
		switch {
		case act != nil && i < len(act.Queues):
			qs.NextUsed = act.Queues[i].nextUsed
		case act != nil:
			// A queue the driver's features left out (FeatureQueues).
		case t.status&StatusDriverOK != 0 && q.ready:
			// Quiesced already: the used index the device last
			// published (the guest has not run since).
			qs.NextUsed, _ = t.mem.LoadUint16(q.cfg.Device + 2)
		}
		qs.NextAvail = qs.NextUsed
		st.Queues = append(st.Queues, qs)
	}
	return st
}

// knownStatus are the status bits a driver can have set.
const knownStatus = StatusAcknowledge | StatusDriver | StatusDriverOK | StatusFeaturesOK | StatusNeedsReset | StatusFailed

// Restore loads a state Quiesce returned into the transport, which must
// be new or quiesced, and, when the driver had the device running,
// activates the device with each queue at its saved position. The state
// comes from a file: every value is checked as the registers would have
// checked it, and the queues as DRIVER_OK checks them.
func (t *MMIO) Restore(st TransportState) error {
	if err := t.checkState(st); err != nil {
		return fmt.Errorf("virtio %s: restore: %w", TypeName(t.dev.Type()), err)
	}
	t.mu.Lock()
	if t.active != nil || t.resetDone != nil {
		t.mu.Unlock()
		return fmt.Errorf("virtio %s: restore: the device is running", TypeName(t.dev.Type()))
	}
	t.status, t.devFeatSel, t.drvFeatSel, t.drvFeatures = st.Status, st.DevFeatSel, st.DrvFeatSel, st.DrvFeatures
	t.queueSel, t.intStatus, t.configGen = st.QueueSel, st.IntStatus, st.ConfigGen
	for i, q := range st.Queues {
		t.queues[i] = queueState{cfg: QueueConfig{Size: q.Size, Desc: q.Desc, Driver: q.Driver, Device: q.Device}, ready: q.Ready}
	}
	running := st.Status&StatusDriverOK != 0 && st.Status&(StatusNeedsReset|StatusFailed) == 0
	if !running {
		t.mu.Unlock()
		return nil
	}
	if err := t.activateAt(st.Queues); err != nil {
		// Leave the device as a reset one: the guest sees a device
		// that needs a reset, never one half started.
		t.status |= StatusNeedsReset
		t.mu.Unlock()
		return fmt.Errorf("virtio %s: restore: %w", TypeName(t.dev.Type()), err)
	}
	q := t.active
	t.mu.Unlock()
	if r, ok := t.dev.(Restorer); ok {
		r.Restored(q)
	}
	return nil
}

func (t *MMIO) checkState(st TransportState) error {
	switch {
	case st.DeviceType != t.dev.Type():
		return fmt.Errorf("state is for device type %d", st.DeviceType)
	case len(st.Queues) != len(t.maxes):
		return fmt.Errorf("state has %d queues, the device %d", len(st.Queues), len(t.maxes))
	case st.Status&^knownStatus != 0:
		return fmt.Errorf("status %#x has unknown bits", st.Status)
	case st.Status&StatusFeaturesOK != 0 && (st.DrvFeatures&^t.offered() != 0 || st.DrvFeatures&FeatureVersion1 == 0):
		return fmt.Errorf("negotiated features %#x are not what the device offers", st.DrvFeatures)
	case st.Status&StatusDriverOK != 0 && st.Status&StatusFeaturesOK == 0:
		return fmt.Errorf("status %#x: DRIVER_OK without FEATURES_OK", st.Status)
	case st.IntStatus&^(interruptUsed|interruptConfig) != 0:
		return fmt.Errorf("interrupt status %#x has unknown bits", st.IntStatus)
	}
	for i, q := range st.Queues {
		if q.Size > t.maxes[i] {
			return fmt.Errorf("queue %d: size %d above the maximum %d", i, q.Size, t.maxes[i])
		}
		if n := q.NextAvail - q.NextUsed; n > q.Size {
			return fmt.Errorf("queue %d: %d chains in flight in a queue of %d", i, n, q.Size)
		}
	}
	return nil
}

// vsockEventTransportReset is VIRTIO_VSOCK_EVENT_TRANSPORT_RESET (virtio
// 1.2 §5.10.6.5): the driver drops every connection and reads the guest
// CID again.
const vsockEventTransportReset = 0

// Restored implements Restorer: the connections of the snapshotted VM
// are gone (Quiesce reset them), and the driver learns it from a
// transport-reset event on the event queue, as Firecracker sends after a
// restore. Without an event buffer from the driver the event is lost,
// as on any virtio-vsock device.
func (v *Vsock) Restored(q *Queues) {
	ev := q.Queues[2]
	c, err := ev.Pop()
	if err != nil {
		q.Fail(err)
		return
	}
	if c == nil {
		v.log("no event buffer for the transport reset after a restore")
		return
	}
	var b [4]byte // struct virtio_vsock_event { le32 id; }
	b[0] = vsockEventTransportReset
	w := c.Writer()
	if _, err := w.Write(b[:]); err != nil {
		q.Fail(err)
		return
	}
	if err := ev.Push(c.Head, w.Written()); err != nil {
		q.Fail(err)
		return
	}
	q.UsedBuffers(2)
}
