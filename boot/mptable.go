package boot

import (
	"encoding/binary"
	"fmt"

	"github.com/vesselvm/vessel/guestmem"
)

// MaxCPUs is the most vCPUs the MP table supports: local APIC ids are
// 0..MaxCPUs-1 and the IOAPIC takes id MaxCPUs at most, all below the
// broadcast id 0xFF (MP spec 1.4, 4.3.1 and 4.3.3).
const MaxCPUs = 254

// MP table structures, Intel MultiProcessor Specification 1.4 chapter 4
// and arch/x86/include/asm/mpspec_def.h.
const (
	mpfSize        = 16 // struct mpf_intel
	mpcHeaderSize  = 44 // struct mpc_table
	mpcCPUSize     = 20 // struct mpc_cpu
	mpcEntrySize   = 8  // struct mpc_bus, mpc_ioapic, mpc_intsrc, mpc_lintsrc
	mpSpecRev      = 4  // MP spec 1.4
	mpIRQs         = 24 // IOAPIC pins
	mpISABusID     = 0
	ioapicVersion  = 0x11
	lapicVersion   = 0x14
	mpMaxTableSize = mpfSize + mpcHeaderSize + MaxCPUs*mpcCPUSize + (2+mpIRQs+2)*mpcEntrySize
)

// Entry types and flags (mpspec_def.h).
const (
	mpProcessor = 0
	mpBus       = 1
	mpIOAPIC    = 2
	mpIntSrc    = 3
	mpLIntSrc   = 4

	cpuEnabled        = 1
	cpuBootProcessor  = 2
	ioapicUsable      = 1
	mpINT             = 0
	mpNMI             = 1
	mpExtINT          = 3
	mpAllAPICs        = 0xFF
	cpuSignatureFam6  = 6 << 8 // family 6, model 0, stepping 0
	cpuFeatureFPU     = 1 << 0 // CPUID.1:EDX.FPU
	cpuFeatureAPIC    = 1 << 9 // CPUID.1:EDX.APIC
	mpOEMID           = "VESSEL  "
	mpProductID       = "MICROVM     "
	mpISABusType      = "ISA   "
	mpFeature1Default = 0 // a configuration table is present
)

// WriteMPTable writes an MP floating pointer structure at MPTableAddr and
// the MP configuration table right after it, describing cpus processors
// (APIC id = index, the first the BSP), one ISA bus, one IOAPIC (id cpus)
// with ISA IRQs 0-23 on pins 0-23, and ExtINT on LINT0 / NMI on LINT1 of
// every local APIC. The table lies in the range MemoryMap reports reserved.
func WriteMPTable(mem *guestmem.Memory, cpus int) error {
	if cpus < 1 || cpus > MaxCPUs {
		return fmt.Errorf("MP table: %d vCPUs (1 to %d supported): %w", cpus, MaxCPUs, ErrCPUCount)
	}
	buf := mpTable(cpus)
	if MPTableAddr+len(buf) > HighMemStart {
		return fmt.Errorf("MP table: %d bytes at %#x overflow the BIOS area", len(buf), MPTableAddr)
	}
	if _, err := mem.WriteAt(buf, MPTableAddr); err != nil {
		return fmt.Errorf("MP table: %w", err)
	}
	return nil
}

// mpTable encodes the floating pointer followed by the configuration table.
func mpTable(cpus int) []byte {
	le := binary.LittleEndian
	ioapicID := uint8(cpus)
	// Configuration table header (MP spec 4.2), filled in at the end.
	tbl := make([]byte, mpcHeaderSize, mpMaxTableSize)
	entries := 0
	put := func(b []byte) { tbl = append(tbl, b...); entries++ }

	for i := range cpus {
		// Processor entry (MP spec 4.3.1).
		e := make([]byte, mpcCPUSize)
		e[0] = mpProcessor
		e[1] = uint8(i)
		e[2] = lapicVersion
		e[3] = cpuEnabled
		if i == 0 {
			e[3] |= cpuBootProcessor
		}
		le.PutUint32(e[4:], cpuSignatureFam6)
		le.PutUint32(e[8:], cpuFeatureFPU|cpuFeatureAPIC)
		put(e)
	}
	// Bus entry (MP spec 4.3.2).
	bus := make([]byte, mpcEntrySize)
	bus[0], bus[1] = mpBus, mpISABusID
	copy(bus[2:], mpISABusType)
	put(bus)
	// IOAPIC entry (MP spec 4.3.3).
	io := make([]byte, mpcEntrySize)
	io[0], io[1], io[2], io[3] = mpIOAPIC, ioapicID, ioapicVersion, ioapicUsable
	le.PutUint32(io[4:], IOAPICAddr)
	put(io)
	// I/O interrupt assignments (MP spec 4.3.4): ISA IRQ n -> pin n,
	// polarity and trigger conforming to the bus (flags 0).
	for irq := range mpIRQs {
		put([]byte{mpIntSrc, mpINT, 0, 0, mpISABusID, uint8(irq), ioapicID, uint8(irq)})
	}
	// Local interrupt assignments (MP spec 4.3.5): LINT0 ExtINT, LINT1 NMI
	// on every local APIC.
	put([]byte{mpLIntSrc, mpExtINT, 0, 0, mpISABusID, 0, mpAllAPICs, 0})
	put([]byte{mpLIntSrc, mpNMI, 0, 0, mpISABusID, 0, mpAllAPICs, 1})

	copy(tbl[0:], "PCMP")
	le.PutUint16(tbl[4:], uint16(len(tbl))) // base table length
	tbl[6] = mpSpecRev
	copy(tbl[8:16], mpOEMID)
	copy(tbl[16:28], mpProductID)
	// OEM table pointer and size (28, 32) stay 0.
	le.PutUint16(tbl[34:], uint16(entries))
	le.PutUint32(tbl[36:], LAPICAddr)
	// Extended table length and checksum (40, 42) stay 0.
	tbl[7] = checksum(tbl)

	// Floating pointer structure (MP spec 4.1).
	mpf := make([]byte, mpfSize, mpfSize+len(tbl))
	copy(mpf[0:], "_MP_")
	le.PutUint32(mpf[4:], MPTableAddr+mpfSize)
	mpf[8] = 1 // length in 16-byte paragraphs
	mpf[9] = mpSpecRev
	mpf[11] = mpFeature1Default
	mpf[10] = checksum(mpf)
	return append(mpf, tbl...)
}

// checksum returns the byte that makes the sum of b, with the checksum
// field zero, equal to 0 modulo 256.
func checksum(b []byte) uint8 {
	var sum uint8
	for _, c := range b {
		sum += c
	}
	return -sum
}
