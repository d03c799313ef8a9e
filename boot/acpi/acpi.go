// Package acpi writes the ACPI tables vessel gives its guests: a
// hardware-reduced platform (ACPI 6.4, section 4.1) with an RSDP, XSDT,
// FADT, MADT and a DSDT whose only object is \_S5, so that the guest
// kernel finds its CPUs and IOAPIC and can power the machine off by
// writing the FADT's sleep control register, a port vessel traps.
//
// The tables live in the BIOS area below 1 MiB (reserved in the e820 map),
// where Linux scans for the RSDP (ACPI 6.4 section 5.2.5.1).
package acpi

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/vesselvm/vessel/guestmem"
)

// Layout and platform constants.
const (
	// RSDPAddr is where the RSDP goes: the start of the BIOS read-only
	// area Linux scans (0xE0000-0xFFFFF), on a 16-byte boundary.
	RSDPAddr = 0xE0000
	// TablesEnd bounds the area the tables may use.
	TablesEnd = 0x100000

	// SleepControlPort is the I/O port of the FADT sleep control and
	// sleep status registers (one byte each, the same port, as in Cloud
	// Hypervisor). A write of SLP_EN with SLP_TYP = S5SleepType powers
	// the VM off.
	SleepControlPort = 0x3C0
	// S5SleepType is the SLP_TYP value \_S5 declares.
	S5SleepType = 5
	// SleepEnable is SLP_EN in the sleep control register (ACPI 6.4 4.8.3.7).
	SleepEnable = 1 << 5
	// SleepTypeShift and SleepTypeMask locate SLP_TYP in that register.
	SleepTypeShift = 2
	SleepTypeMask  = 0x7 << SleepTypeShift

	lapicAddr  = 0xFEE0_0000
	ioapicAddr = 0xFEC0_0000
)

var (
	oemID      = [6]byte{'V', 'E', 'S', 'S', 'E', 'L'}
	oemTableID = [8]byte{'V', 'E', 'S', 'S', 'E', 'L', 'V', 'M'}
	creatorID  = [4]byte{'V', 'S', 'L', ' '}
)

// ErrCPUs is returned for a vCPU count the MADT cannot describe.
var ErrCPUs = errors.New("acpi: unsupported vCPU count")

// MaxCPUs is the most vCPUs the MADT describes with xAPIC entries (APIC
// IDs 0..254, the IOAPIC takes the next ID).
const MaxCPUs = 254

// VirtioMMIO is a virtio-mmio device to describe in the DSDT.
type VirtioMMIO struct {
	Base uint64 // MMIO window (below 4 GiB)
	Size uint32
	GSI  uint32 // IOAPIC input, edge-triggered, active high
}

// MaxVirtioMMIO is the most virtio-mmio devices the DSDT describes.
const MaxVirtioMMIO = 32

// ErrDevices is returned for virtio devices the tables cannot describe.
var ErrDevices = errors.New("acpi: unsupported virtio-mmio device list")

// GenerationIDAddr is where the VM Generation ID's 16 bytes live: in the
// reserved BIOS area, after the tables. The guest maps it (Linux's
// vmgenid driver memremaps the address the DSDT's ADDR package gives).
const GenerationIDAddr = 0xFF000

// GenerationID describes the VM Generation ID device (Microsoft's
// "Virtual Machine Generation ID" specification, as Linux's
// drivers/virt/vmgenid.c reads it): the VMM writes a new 16-byte ID at
// GenerationIDAddr when the VM is restored from a snapshot and pulses
// GSI, which the DSDT's Generic Event Device (ACPI 6.4 5.6.9) turns into
// Notify (VGEN, 0x80). Linux then reseeds its random number generator
// (add_vmfork_randomness), so clones of one snapshot do not share it.
type GenerationID struct {
	GSI uint32 // IOAPIC input, edge-triggered, active high
}

// Write builds the tables for a VM with cpus vCPUs, the given virtio-mmio
// devices and, if gen is not nil, a VM Generation ID device, and writes
// them to guest memory starting at RSDPAddr.
func Write(mem *guestmem.Memory, cpus int, virtio []VirtioMMIO, gen *GenerationID) error {
	if cpus < 1 || cpus > MaxCPUs {
		return fmt.Errorf("%w: %d", ErrCPUs, cpus)
	}
	if len(virtio) > MaxVirtioMMIO {
		return fmt.Errorf("%w: %d devices, at most %d", ErrDevices, len(virtio), MaxVirtioMMIO)
	}
	for _, d := range virtio {
		if d.Base+uint64(d.Size) > 1<<32 || d.Size == 0 {
			return fmt.Errorf("%w: window %#x+%#x", ErrDevices, d.Base, d.Size)
		}
	}
	// Addresses, in order: RSDP, XSDT, FADT, MADT, DSDT.
	dsdt := table("DSDT", 2, dsdtAML(virtio, gen))
	madt := table("APIC", 5, madtBody(cpus))
	addr := uint64(RSDPAddr + 64)
	xsdtAddr := addr
	xsdtLen := uint64(36 + 8*2)
	fadtAddr := align16(xsdtAddr + xsdtLen)
	madtAddr := align16(fadtAddr + 276)
	dsdtAddr := align16(madtAddr + uint64(len(madt)))
	end := dsdtAddr + uint64(len(dsdt))
	if end > GenerationIDAddr {
		return fmt.Errorf("acpi: tables end at %#x, past %#x", end, uint64(GenerationIDAddr))
	}
	fadt := table("FACP", 6, fadtBody(dsdtAddr))
	xsdt := table("XSDT", 1, le64s(fadtAddr, madtAddr))
	for _, w := range []struct {
		addr uint64
		b    []byte
	}{
		{RSDPAddr, rsdp(xsdtAddr)}, {xsdtAddr, xsdt}, {fadtAddr, fadt}, {madtAddr, madt}, {dsdtAddr, dsdt},
	} {
		if _, err := mem.WriteAt(w.b, w.addr); err != nil {
			return fmt.Errorf("acpi: write table at %#x: %w", w.addr, err)
		}
	}
	return nil
}

func align16(a uint64) uint64 { return (a + 15) &^ 15 }

// checksum returns the byte that makes b sum to zero.
func checksum(b []byte) byte {
	var s byte
	for _, c := range b {
		s += c
	}
	return -s
}

// rsdp builds the revision-2 Root System Description Pointer (ACPI 6.4
// 5.2.5.3).
func rsdp(xsdt uint64) []byte {
	b := make([]byte, 36)
	copy(b[0:8], "RSD PTR ")
	copy(b[9:15], oemID[:])
	b[15] = 2                                 // revision: ACPI 2.0+
	binary.LittleEndian.PutUint32(b[20:], 36) // length
	binary.LittleEndian.PutUint64(b[24:], xsdt)
	b[8] = checksum(b[0:20])
	b[32] = checksum(b)
	return b
}

// table prepends the System Description Table Header (ACPI 6.4 5.2.6) to
// body and sets its checksum.
func table(sig string, rev byte, body []byte) []byte {
	b := make([]byte, 36+len(body))
	copy(b[0:4], sig)
	binary.LittleEndian.PutUint32(b[4:], uint32(len(b)))
	b[8] = rev
	copy(b[10:16], oemID[:])
	copy(b[16:24], oemTableID[:])
	binary.LittleEndian.PutUint32(b[24:], 1) // OEM revision
	copy(b[28:32], creatorID[:])
	binary.LittleEndian.PutUint32(b[32:], 1) // creator revision
	copy(b[36:], body)
	b[9] = checksum(b)
	return b
}

func le64s(v ...uint64) []byte {
	b := make([]byte, 8*len(v))
	for i, x := range v {
		binary.LittleEndian.PutUint64(b[8*i:], x)
	}
	return b
}

// FADT field offsets (ACPI 6.4 table 5.9), relative to the table start.
const (
	fadtDSDT          = 40
	fadtBootArch      = 109
	fadtFlags         = 112
	fadtMinorVersion  = 131
	fadtXDSDT         = 140
	fadtSleepControl  = 244
	fadtSleepStatus   = 256
	fadtHypervisorID  = 268
	fadtLen           = 276
	bootArch8042      = 1 << 1 // IA-PC boot architecture: an 8042 is present
	bootArchNoVGA     = 1 << 2
	bootArchNoCMOS    = 1 << 5
	flagHWReduced     = 1 << 20
	flagPowerButton   = 1 << 4 // no fixed-feature power button
	flagSleepButton   = 1 << 5 // no fixed-feature sleep button
	gasSystemIO       = 1
	gasAccessByte     = 1
	fadtBodyOffset    = 36
	hypervisorVendor  = "VESSEL"
	madtFlagPCATCompa = 1
)

// fadtBody builds the Fixed ACPI Description Table after its header: a
// hardware-reduced platform whose only fixed registers are the sleep
// control and status registers.
func fadtBody(dsdt uint64) []byte {
	b := make([]byte, fadtLen)
	binary.LittleEndian.PutUint32(b[fadtDSDT:], uint32(dsdt))
	binary.LittleEndian.PutUint16(b[fadtBootArch:], bootArch8042|bootArchNoVGA|bootArchNoCMOS)
	binary.LittleEndian.PutUint32(b[fadtFlags:], flagHWReduced|flagPowerButton|flagSleepButton)
	b[fadtMinorVersion] = 4
	binary.LittleEndian.PutUint64(b[fadtXDSDT:], dsdt)
	gas(b[fadtSleepControl:], SleepControlPort)
	gas(b[fadtSleepStatus:], SleepControlPort)
	copy(b[fadtHypervisorID:], hypervisorVendor)
	return b[fadtBodyOffset:]
}

// gas writes a Generic Address Structure (ACPI 6.4 5.2.3.2) for one byte
// of port I/O.
func gas(b []byte, port uint64) {
	b[0] = gasSystemIO
	b[1] = 8 // register bit width
	b[2] = 0 // bit offset
	b[3] = gasAccessByte
	binary.LittleEndian.PutUint64(b[4:], port)
}

// madtBody builds the Multiple APIC Description Table after its header
// (ACPI 6.4 5.2.12): one enabled local APIC per vCPU (APIC ID = index),
// the IOAPIC with ID cpus at GSI base 0, and LINT1 as NMI on every CPU.
// There is no interrupt source override: KVM's in-kernel irqchip routes
// ISA IRQ n to GSI n.
func madtBody(cpus int) []byte {
	b := make([]byte, 8, 8+8*cpus+12+6)
	binary.LittleEndian.PutUint32(b[0:], lapicAddr)
	binary.LittleEndian.PutUint32(b[4:], madtFlagPCATCompa)
	for i := 0; i < cpus; i++ {
		// Processor Local APIC: type 0, length 8, UID, APIC ID, flags (enabled).
		b = append(b, 0, 8, byte(i), byte(i), 1, 0, 0, 0)
	}
	// I/O APIC: type 1, length 12, ID, reserved, address, GSI base.
	io := []byte{1, 12, byte(cpus), 0, 0, 0, 0, 0, 0, 0, 0, 0}
	binary.LittleEndian.PutUint32(io[4:], ioapicAddr)
	b = append(b, io...)
	// Local APIC NMI: type 4, length 6, all processors, flags 0, LINT1.
	b = append(b, 4, 6, 0xFF, 0, 0, 1)
	return b
}

// dsdtAML is the DSDT's definition block (AML, ACPI 6.4 chapter 20):
//
//	Scope (\_SB) {
//	    Device (COM1) {
//	        Name (_HID, EisaId ("PNP0501"))
//	        Name (_UID, Zero)
//	        Name (_CRS, ResourceTemplate () {
//	            IO (Decode16, 0x3F8, 0x3F8, 0x01, 0x08)
//	            IRQNoFlags () {4}
//	        })
//	    }
//	    Device (V000) {   // one per virtio-mmio device: V000, V001, ...
//	        Name (_HID, "LNRO0005")
//	        Name (_UID, 0)
//	        Name (_CRS, ResourceTemplate () {
//	            Memory32Fixed (ReadWrite, BASE, SIZE)
//	            Interrupt (ResourceConsumer, Edge, ActiveHigh, Exclusive) {GSI}
//	        })
//	    }
//	    Device (GED0) {   // with a generation ID only
//	        Name (_HID, "ACPI0013")
//	        Name (_UID, Zero)
//	        Name (_CRS, ResourceTemplate () {
//	            Interrupt (ResourceConsumer, Edge, ActiveHigh, Exclusive) {GSI}
//	        })
//	        Method (_EVT, 1) { Notify (\_SB.VGEN, 0x80) }
//	    }
//	    Device (VGEN) {
//	        Name (_HID, "VMGENCTR")
//	        Name (_CID, "VM_GEN_COUNTER")
//	        Name (_DDN, "VM_GEN_COUNTER")
//	        Name (ADDR, Package () {GenerationIDAddr, 0})
//	    }
//	}
//	Name (_S5, Package () {5, 0, 0, 0})
//
// COM1 must be described: a hardware-reduced ACPI platform has no legacy
// PIC, so Linux registers no ISA IRQs on its own, and the 8250 driver gets
// IRQ 4 only through this PNP device. \_S5 gives the soft-off sleep type
// (ACPI 6.4 7.4.2). Virtio-mmio devices are found the same way: LNRO0005
// is the ACPI ID Linux's virtio_mmio driver matches, and the Interrupt
// descriptor maps the GSI (virtio_mmio.device= on the command line would
// name a Linux IRQ number, and this platform registers no legacy ones).
func dsdtAML(virtio []VirtioMMIO, gen *GenerationID) []byte {
	crs := []byte{
		0x47, 0x01, 0xF8, 0x03, 0xF8, 0x03, 0x01, 0x08, // IO: decode16, min, max, align, length
		0x22, 0x10, 0x00, // IRQNoFlags: mask bit 4
		0x79, 0x00, // End tag
	}
	dev := []byte("COM1")
	dev = append(dev, 0x08, '_', 'H', 'I', 'D', 0x0C, 0x41, 0xD0, 0x05, 0x01) // EisaId("PNP0501")
	dev = append(dev, 0x08, '_', 'U', 'I', 'D', 0x00)
	dev = append(dev, nameBuffer("_CRS", crs)...)
	scopeBody := append([]byte{'_', 'S', 'B', '_'}, device(dev)...)
	for i, d := range virtio {
		scopeBody = append(scopeBody, virtioDevice(i, d)...)
	}
	if gen != nil {
		scopeBody = append(scopeBody, generationIDDevices(*gen)...)
	}
	aml := append([]byte{0x10}, pkgLength(len(scopeBody))...) // ScopeOp
	aml = append(aml, scopeBody...)
	aml = append(aml,
		0x08, '_', 'S', '5', '_', // NameOp, NameString "_S5_"
		0x12, 0x07, 0x04, // PackageOp, PkgLength 7, NumElements 4
		0x0A, S5SleepType, // BytePrefix 5: SLP_TYPa
		0x00, 0x00, 0x00, // ZeroOp: SLP_TYPb, reserved, reserved
	)
	return aml
}

// virtioDevice is the AML Device for virtio-mmio device i.
func virtioDevice(i int, d VirtioMMIO) []byte {
	crs := []byte{0x86, 0x09, 0x00, 0x01} // Memory32Fixed, length 9, read-write
	crs = binary.LittleEndian.AppendUint32(crs, uint32(d.Base))
	crs = binary.LittleEndian.AppendUint32(crs, d.Size)
	crs = append(crs, interruptDescriptor(d.GSI)...)
	dev := []byte(fmt.Sprintf("V%03X", i))
	dev = append(dev, nameString("_HID", "LNRO0005")...)
	dev = append(dev, 0x08, '_', 'U', 'I', 'D', 0x0A, byte(i)) // BytePrefix i
	dev = append(dev, nameBuffer("_CRS", crs)...)
	return device(dev)
}

// generationIDDevices are the AML Devices GED0 and VGEN (see dsdtAML):
// the Generic Event Device whose _EVT Linux's evged driver runs on each
// edge of the GSI, and the generation ID device Linux's vmgenid driver
// binds to by its _HID or _CID.
func generationIDDevices(g GenerationID) []byte {
	crs := interruptDescriptor(g.GSI)
	ged := []byte("GED0")
	ged = append(ged, nameString("_HID", "ACPI0013")...)
	ged = append(ged, 0x08, '_', 'U', 'I', 'D', 0x00) // Name (_UID, Zero)
	ged = append(ged, nameBuffer("_CRS", crs)...)
	// Method (_EVT, 1) { Notify (\_SB.VGEN, 0x80) }
	evt := []byte{'_', 'E', 'V', 'T', 0x01} // NameString, MethodFlags: one argument
	evt = append(evt, 0x86, 0x5C, 0x2E, '_', 'S', 'B', '_', 'V', 'G', 'E', 'N', 0x0A, 0x80)
	ged = append(ged, 0x14) // MethodOp
	ged = append(ged, pkgLength(len(evt))...)
	ged = append(ged, evt...)

	gen := []byte("VGEN")
	gen = append(gen, nameString("_HID", "VMGENCTR")...)
	gen = append(gen, nameString("_CID", "VM_GEN_COUNTER")...)
	gen = append(gen, nameString("_DDN", "VM_GEN_COUNTER")...)
	// Name (ADDR, Package () {low, high}): two DWordConst elements.
	pkg := []byte{0x02, 0x0C}
	pkg = binary.LittleEndian.AppendUint32(pkg, uint32(GenerationIDAddr))
	pkg = append(pkg, 0x0C)
	pkg = binary.LittleEndian.AppendUint32(pkg, uint32(uint64(GenerationIDAddr)>>32))
	gen = append(gen, 0x08, 'A', 'D', 'D', 'R', 0x12) // NameOp ADDR, PackageOp
	gen = append(gen, pkgLength(len(pkg))...)
	gen = append(gen, pkg...)
	return append(device(ged), device(gen)...)
}

// interruptDescriptor is a ResourceTemplate with one Extended Interrupt
// descriptor (ACPI 6.4 6.4.3.6): consumer, edge-triggered, active high,
// exclusive, for gsi.
func interruptDescriptor(gsi uint32) []byte {
	crs := []byte{0x89, 0x06, 0x00, 0x03, 0x01}
	crs = binary.LittleEndian.AppendUint32(crs, gsi)
	return append(crs, 0x79, 0x00) // End tag
}

// nameString is Name (name, "s") in AML.
func nameString(name, s string) []byte {
	b := append([]byte{0x08}, name...)
	b = append(b, 0x0D) // StringPrefix
	b = append(b, s...)
	return append(b, 0x00)
}

// nameBuffer is Name (name, Buffer () {b}) in AML, b at most 255 bytes.
func nameBuffer(name string, b []byte) []byte {
	buf := append([]byte{0x0A, byte(len(b))}, b...) // BufferSize, bytes
	out := append([]byte{0x08}, name...)
	out = append(out, 0x11) // BufferOp
	out = append(out, pkgLength(len(buf))...)
	return append(out, buf...)
}

// device is Device (body's NameSeg) { body's terms } in AML.
func device(body []byte) []byte {
	out := append([]byte{0x5B, 0x82}, pkgLength(len(body))...) // DeviceOp
	return append(out, body...)
}

// pkgLength encodes an AML PkgLength (ACPI 6.4 20.2.4) for a body of n
// bytes; the encoded length counts its own bytes too.
func pkgLength(n int) []byte {
	if n+1 <= 0x3F {
		return []byte{byte(n + 1)}
	}
	t := n + 2 // two-byte form: up to 0xFFF
	return []byte{0x40 | byte(t&0xF), byte(t >> 4)}
}
