package devices

import (
	"encoding/binary"
	"sync"
	"time"
)

// The control port: vessel's paravirtual port I/O device for the guest
// init. These constants are the guest ABI; the guest side uses them too.
const (
	// ControlPortBase is the port I/O base of the control port.
	ControlPortBase = 0xF00
	// ControlPortSize is the size of its port range.
	ControlPortSize = 16

	// ControlBootOffset is the boot-timer marker register: a 1-byte write
	// (outb) records the host time of the first marker (BootTime) and
	// passes the value to the marker callback.
	ControlBootOffset = 0
	// ControlExitOffset is the exit-status register: a 4-byte write (outl)
	// of the status of the command the init ran (0-255), little-endian,
	// just before the guest powers off. 1- and 2-byte writes are accepted
	// too and zero-extended.
	ControlExitOffset = 4
	// ControlMagicOffset is the identification register: a 4-byte read
	// (inl) returns ControlMagic. Narrower reads return the corresponding
	// bytes of it; all other offsets read as zero.
	ControlMagicOffset = 8

	// ControlMagic is "VSL1" as little-endian bytes ('V' at
	// ControlMagicOffset): a guest reading it knows it runs under vessel.
	ControlMagic uint32 = 'V' | 'S'<<8 | 'L'<<16 | '1'<<24

	// BootMarkerInit is the marker value the guest init writes as soon
	// as it starts: the end of the measured boot.
	BootMarkerInit = 1
)

// ControlPort is vessel's control port device (see ControlPortBase). Its
// callbacks run on the goroutine of the vCPU that wrote the register, with
// no device lock held; they must not block waiting for that vCPU to stop.
// Safe for concurrent use.
type ControlPort struct {
	onMarker func(value uint8)
	onExit   func(status uint32)

	mu       sync.Mutex
	bootTime time.Time
	booted   bool
	status   uint32
	exited   bool
}

// NewControlPort returns a control port. onMarker (may be nil) is called
// with the value of every marker write; onExit (may be nil) with the status
// of every exit-status write — the VMM stops the VM in it, so it should be
// idempotent.
func NewControlPort(onMarker func(value uint8), onExit func(status uint32)) *ControlPort {
	return &ControlPort{onMarker: onMarker, onExit: onExit}
}

// Read implements Device: the bytes of ControlMagic at ControlMagicOffset
// to ControlMagicOffset+3, zero everywhere else.
func (c *ControlPort) Read(offset uint64, data []byte) {
	var magic [4]byte
	binary.LittleEndian.PutUint32(magic[:], ControlMagic)
	for i := range data {
		data[i] = 0
		o := offset + uint64(i)
		if o >= offset && o >= ControlMagicOffset && o < ControlMagicOffset+4 {
			data[i] = magic[o-ControlMagicOffset]
		}
	}
}

// Write implements Device: a 1-byte write at ControlBootOffset is a boot
// marker, a 1-, 2- or 4-byte write at ControlExitOffset the exit status.
// Anything else is ignored.
func (c *ControlPort) Write(offset uint64, data []byte) {
	switch {
	case offset == ControlBootOffset && len(data) == 1:
		now := time.Now()
		c.mu.Lock()
		if !c.booted {
			c.bootTime, c.booted = now, true
		}
		c.mu.Unlock()
		if c.onMarker != nil {
			c.onMarker(data[0])
		}
	case offset == ControlExitOffset && (len(data) == 1 || len(data) == 2 || len(data) == 4):
		var b [4]byte
		copy(b[:], data)
		status := binary.LittleEndian.Uint32(b[:])
		c.mu.Lock()
		c.status, c.exited = status, true
		c.mu.Unlock()
		if c.onExit != nil {
			c.onExit(status)
		}
	}
}

// BootTime returns the host time of the first marker write, and false if
// the guest has written none yet.
func (c *ControlPort) BootTime() (time.Time, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.bootTime, c.booted
}

// ExitStatus returns the last exit status the guest wrote, and false if it
// has written none.
func (c *ControlPort) ExitStatus() (uint32, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.status, c.exited
}
