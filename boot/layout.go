// Package boot loads a Linux kernel into guest RAM and prepares the state a
// vCPU needs to start it directly, without firmware. It supports two entry
// paths:
//
//   - bzImage through the 64-bit boot protocol (Documentation/x86/boot.rst,
//     "64-bit Boot Protocol"): the protected-mode kernel is loaded at 1 MiB,
//     a zero page (struct boot_params) describes the command line, initrd
//     and e820 memory map, and the vCPU starts in long mode with identity-
//     mapped page tables.
//   - an uncompressed ELF vmlinux through the Xen PVH boot ABI
//     (include/xen/interface/hvm/start_info.h, arch/x86/platform/pvh/head.S):
//     PT_LOAD segments are loaded at their physical addresses, an
//     hvm_start_info structure describes the command line, initrd and memory
//     map, and the vCPU starts in flat 32-bit protected mode with paging off.
//
// In both cases an Intel MultiProcessor Specification 1.4 table tells the
// kernel about every vCPU and the IOAPIC, so no ACPI tables are needed.
//
// Guest RAM is only touched through guestmem, and every value read from a
// kernel image is treated as untrusted: malformed images produce errors,
// never panics.
package boot

import "github.com/vesselvm/vessel/guestmem"

// Guest-physical layout of the boot structures. Everything below 1 MiB is
// written by Load; the kernel is loaded at or above HighMemStart.
//
//	0x0000_0000  real-mode IVT / BIOS data area (left zero)
//	0x0000_1000  GDT (GDTAddr)
//	0x0000_6000  PVH hvm_start_info, module list and memory map
//	0x0000_7000  zero page, struct boot_params (ZeroPageAddr)
//	0x0000_8000  boot stack, growing down from BootStackPointer
//	0x0000_9000  PML4, PDPT and four page directories (to 0xEFFF)
//	0x0002_0000  kernel command line (CmdlineAddr, CmdlineMaxSize bytes)
//	0x0009_FC00  MP table (reserved in e820 up to 1 MiB)
//	0x0010_0000  bzImage protected-mode kernel (KernelLoadAddr)
//	...          initrd, as high as it fits in low RAM
//	0xC000_0000  MMIO hole (devices, IOAPIC, LAPIC) up to 4 GiB
//	0x1_0000_0000  the rest of RAM (HighRAMStart)
const (
	// GDTAddr is where the boot GDT is written.
	GDTAddr = 0x1000

	// StartInfoAddr is where the PVH struct hvm_start_info is written.
	StartInfoAddr = 0x6000
	// ModlistAddr is where the PVH hvm_modlist_entry for the initrd is
	// written.
	ModlistAddr = 0x6040
	// MemmapAddr is where the PVH hvm_memmap_table_entry array is written
	// (room for MaxE820Entries entries).
	MemmapAddr = 0x6080

	// ZeroPageAddr is where struct boot_params (the "zero page") is
	// written for a bzImage; RSI points here at entry.
	ZeroPageAddr = 0x7000
	// ZeroPageSize is the size of struct boot_params.
	ZeroPageSize = 0x1000

	// BootStackPointer is the initial RSP: the top of the page at 0x8000,
	// 16-byte aligned.
	BootStackPointer = 0x8FF0

	// PML4Addr is the page-map level 4 table of the identity map (CR3).
	PML4Addr = 0x9000
	// PDPTAddr is the page-directory-pointer table of the identity map.
	PDPTAddr = 0xA000
	// PDAddr is the first of IdentityMapSize/1 GiB page directories, one
	// page each, mapping 2 MiB pages.
	PDAddr = 0xB000
	// IdentityMapSize is how much of the guest-physical address space the
	// boot page tables identity-map.
	IdentityMapSize = 4 << 30

	// CmdlineAddr is where the NUL-terminated kernel command line is
	// written.
	CmdlineAddr = 0x20000
	// CmdlineMaxSize is the room at CmdlineAddr, terminating NUL included.
	CmdlineMaxSize = 0x10000

	// EBDAStart is the start of the area below 1 MiB reported reserved in
	// the e820 map (extended BIOS data area, VGA hole and BIOS ROM).
	EBDAStart = 0x9FC00
	// MPTableAddr is where the MP floating pointer structure is written,
	// followed by the MP configuration table. Linux scans the last KiB of
	// 640 KiB of base memory for it (arch/x86/kernel/mpparse.c).
	MPTableAddr = EBDAStart
	// HighMemStart is the first address above the legacy BIOS area.
	HighMemStart = 0x100000
	// KernelLoadAddr is where the protected-mode part of a bzImage is
	// loaded: the traditional 1 MiB of boot.rst ("Memory Layout").
	KernelLoadAddr = HighMemStart

	// MMIOHoleStart is the start of the guest-physical hole left for
	// memory-mapped devices, the IOAPIC and the local APICs.
	MMIOHoleStart = 0xC000_0000
	// MMIOHoleEnd is the end of the MMIO hole (4 GiB).
	MMIOHoleEnd = 0x1_0000_0000
	// HighRAMStart is where RAM beyond MMIOHoleStart bytes continues.
	HighRAMStart = MMIOHoleEnd

	// LAPICAddr is the default local APIC base address.
	LAPICAddr = 0xFEE0_0000
	// IOAPICAddr is the default IOAPIC base address.
	IOAPICAddr = 0xFEC0_0000
)

// RAMLayout returns the RAM regions for a guest of size bytes: low RAM from
// 0 up to min(size, MMIOHoleStart) and, if size is larger, the remainder
// from HighRAMStart. size should be a multiple of the page size (guestmem.New
// rejects unaligned regions); a zero size gives no regions.
func RAMLayout(size uint64) []guestmem.RegionSpec {
	if size == 0 {
		return nil
	}
	low := min(size, MMIOHoleStart)
	specs := []guestmem.RegionSpec{{GPA: 0, Size: low}}
	if size > low {
		specs = append(specs, guestmem.RegionSpec{GPA: HighRAMStart, Size: size - low})
	}
	return specs
}
