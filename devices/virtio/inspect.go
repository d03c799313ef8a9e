package virtio

import "fmt"

// QueueView is what one queue's rings in guest memory say at one moment,
// for diagnosing a guest that stopped answering (virtio 1.2 §2.7.6 and
// §2.7.8: the available and used rings, and with VIRTIO_F_EVENT_IDX
// their used_event and avail_event fields).
type QueueView struct {
	Ready bool
	Size  uint16
	// AvailIdx and AvailFlags are the driver's; UsedIdx and UsedFlags
	// the device's.
	AvailIdx, AvailFlags uint16
	UsedIdx, UsedFlags   uint16
	// UsedEvent is the used index at which the driver wants its next
	// interrupt, AvailEvent the available index at which the device
	// wants its next notification (only with EventIdx).
	UsedEvent, AvailEvent uint16
	// Err says why the rings could not be read (a queue the driver
	// placed outside RAM is refused before this, so only a queue the
	// driver never set up has none).
	Err string
}

// TransportView is a transport's registers, counters and queues at one
// moment (Inspect).
type TransportView struct {
	DeviceType uint32
	Status     uint32
	// IntStatus is InterruptStatus: bits the device raised that the
	// driver has not acknowledged yet.
	IntStatus uint32
	EventIdx  bool
	Stats     TransportStats
	Queues    []QueueView
}

// Inspect reads the transport's registers and each queue's rings from
// guest memory, without changing anything: a diagnosis of a hung guest
// compares what the device published (UsedIdx, IntStatus) with what the
// driver has taken (UsedEvent) and offered (AvailIdx). The guest's
// vCPUs should be paused, so that the picture is consistent; the
// device may go on.
func (t *MMIO) Inspect() TransportView {
	t.mu.Lock()
	defer t.mu.Unlock()
	v := TransportView{DeviceType: t.dev.Type(), Status: t.status, IntStatus: t.intStatus,
		EventIdx: t.drvFeatures&FeatureEventIdx != 0, Stats: t.Stats()}
	for _, q := range t.queues {
		qv := QueueView{Ready: q.ready, Size: q.cfg.Size}
		if q.ready {
			qv.Err = t.readRings(q.cfg, &qv)
		}
		v.Queues = append(v.Queues, qv)
	}
	return v
}

// readRings fills qv from the rings of cfg, or says why it cannot.
func (t *MMIO) readRings(cfg QueueConfig, qv *QueueView) string {
	n := uint64(cfg.Size)
	// A driver may enable a queue at any address before DRIVER_OK (the
	// transport checks it at activation): the rings must not wrap.
	if cfg.Driver > ^uint64(0)-(6+2*n) || cfg.Device > ^uint64(0)-(6+8*n) {
		return "the rings' addresses overflow"
	}
	for _, f := range []struct {
		gpa uint64
		dst *uint16
	}{
		{cfg.Driver, &qv.AvailFlags}, {cfg.Driver + 2, &qv.AvailIdx}, {cfg.Driver + 4 + 2*n, &qv.UsedEvent},
		{cfg.Device, &qv.UsedFlags}, {cfg.Device + 2, &qv.UsedIdx}, {cfg.Device + 4 + 8*n, &qv.AvailEvent},
	} {
		v, err := t.mem.LoadUint16(f.gpa)
		if err != nil {
			return err.Error()
		}
		*f.dst = v
	}
	return ""
}

// String formats the view on one line: the device, its status and
// pending interrupt bits, its counters and, per ready queue,
// "avail/used" indexes, with the event indexes after a slash and flags
// when set.
func (v TransportView) String() string {
	s := fmt.Sprintf("%s status %#x int_status %#x irqs %d notifies %d", TypeName(v.DeviceType), v.Status, v.IntStatus,
		v.Stats.Interrupts, v.Stats.Notifies+v.Stats.ExitNotifies)
	for i, q := range v.Queues {
		switch {
		case !q.Ready:
			continue
		case q.Err != "":
			s += fmt.Sprintf(" | q%d: %s", i, q.Err)
			continue
		}
		s += fmt.Sprintf(" | q%d avail %d used %d", i, q.AvailIdx, q.UsedIdx)
		if v.EventIdx {
			s += fmt.Sprintf(" used_event %d avail_event %d", q.UsedEvent, q.AvailEvent)
		}
		if q.AvailFlags != 0 {
			s += fmt.Sprintf(" avail_flags %#x", q.AvailFlags)
		}
		if q.UsedFlags != 0 {
			s += fmt.Sprintf(" used_flags %#x", q.UsedFlags)
		}
	}
	return s
}
