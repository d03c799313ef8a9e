package kvm

import (
	"encoding/binary"
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
)

// Binary statistics layout (Documentation/virt/kvm/api.rst, 4.133
// KVM_GET_STATS_FD): a header, descriptors, then the values.
const (
	statsHeaderSize   = 24 // struct kvm_stats_header
	statsDescSize     = 16 // struct kvm_stats_desc without its name
	statsTypeMask     = 0xF
	statsTypeCumul    = 0 // KVM_STATS_TYPE_CUMULATIVE
	statsTypeInstant  = 1 // KVM_STATS_TYPE_INSTANT
	statsMaxDescs     = 4096
	statsMaxNameBytes = 256
)

// ErrBadStats is returned when the kernel's statistics do not have the
// documented layout.
var ErrBadStats = errors.New("kvm: malformed binary statistics")

// Stats returns the vCPU's cumulative counters by name (for example
// "exits", "io_exits", "halt_exits", "insn_emulation"): what KVM handled
// in the kernel as well as what it sent to userspace. It needs Linux 5.14
// (KVM_GET_STATS_FD).
func (c *VCPU) Stats() (map[string]uint64, error) {
	r, err := ioctl(c.fd, kvmGetStatsFD, 0)
	if err != nil {
		return nil, fmt.Errorf("kvm: vCPU %d stats fd: %w", c.id, err)
	}
	fd := int(r)
	defer unix.Close(fd)
	return readStats(fd, false)
}

// Stats returns the VM's statistics by name (KVM_GET_STATS_FD on the VM
// descriptor): cumulative counters ("remote_tlb_flush", ...) and, on x86,
// the gauges "pages_4k", "pages_2m" and "pages_1g": how many mappings of
// each size KVM's page tables for the guest hold now. It needs Linux 5.14.
func (v *VM) Stats() (map[string]uint64, error) {
	r, err := ioctl(v.fd, kvmGetStatsFD, 0)
	if err != nil {
		return nil, fmt.Errorf("kvm: VM stats fd: %w", err)
	}
	fd := int(r)
	defer unix.Close(fd)
	return readStats(fd, true)
}

// readStats reads the statistics of the stats descriptor fd: its
// cumulative counters, and with gauges its instantaneous values too.
func readStats(fd int, gauges bool) (map[string]uint64, error) {
	le := binary.LittleEndian
	h := make([]byte, statsHeaderSize)
	if _, err := unix.Pread(fd, h, 0); err != nil {
		return nil, fmt.Errorf("kvm: stats header: %w", err)
	}
	nameSize, num := le.Uint32(h[4:]), le.Uint32(h[8:])
	descOff, dataOff := le.Uint32(h[16:]), le.Uint32(h[20:])
	if num > statsMaxDescs || nameSize == 0 || nameSize > statsMaxNameBytes {
		return nil, fmt.Errorf("%w: %d descriptors, names of %d bytes", ErrBadStats, num, nameSize)
	}
	dsz := statsDescSize + int(nameSize)
	descs := make([]byte, dsz*int(num))
	if _, err := unix.Pread(fd, descs, int64(descOff)); err != nil {
		return nil, fmt.Errorf("kvm: stats descriptors: %w", err)
	}
	// The values follow the descriptors: read to the end of the last one.
	var dataLen uint32
	for i := 0; i < int(num); i++ {
		d := descs[i*dsz:]
		if end := le.Uint32(d[8:]) + 8*uint32(le.Uint16(d[6:])); end > dataLen {
			dataLen = end
		}
	}
	if dataLen > 8*statsMaxDescs*64 {
		return nil, fmt.Errorf("%w: %d bytes of values", ErrBadStats, dataLen)
	}
	data := make([]byte, dataLen)
	if _, err := unix.Pread(fd, data, int64(dataOff)); err != nil {
		return nil, fmt.Errorf("kvm: stats values: %w", err)
	}
	m := make(map[string]uint64)
	for i := 0; i < int(num); i++ {
		d := descs[i*dsz:]
		flags, size, off := le.Uint32(d[0:]), le.Uint16(d[6:]), le.Uint32(d[8:])
		typ := flags & statsTypeMask
		if (typ != statsTypeCumul && (!gauges || typ != statsTypeInstant)) || size != 1 {
			continue
		}
		name := d[statsDescSize : statsDescSize+int(nameSize)]
		for j, b := range name {
			if b == 0 {
				name = name[:j]
				break
			}
		}
		m[string(name)] = le.Uint64(data[off:])
	}
	return m, nil
}
