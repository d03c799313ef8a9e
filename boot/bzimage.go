package boot

import (
	"encoding/binary"
	"fmt"
	"math/bits"

	"github.com/vesselvm/vessel/guestmem"
)

// Setup header and zero page offsets (boot.rst "The Real-Mode Kernel
// Header", bootparam.h struct setup_header and struct boot_params). The
// setup header sits at the same offset in the image and in the zero page.
const (
	hdrSetupSects      = 0x1F1
	hdrBootFlag        = 0x1FE
	hdrJump            = 0x200
	hdrHeader          = 0x202
	hdrVersion         = 0x206
	hdrTypeOfLoader    = 0x210
	hdrLoadFlags       = 0x211
	hdrCode32Start     = 0x214
	hdrRamdiskImage    = 0x218
	hdrRamdiskSize     = 0x21C
	hdrCmdLinePtr      = 0x228
	hdrInitrdAddrMax   = 0x22C
	hdrKernelAlignment = 0x230
	hdrRelocatable     = 0x234
	hdrXLoadFlags      = 0x236
	hdrCmdlineSize     = 0x238
	hdrPrefAddress     = 0x258
	hdrInitSize        = 0x260
	// hdrMinEnd is the end of the last field Load reads (init_size,
	// protocol 2.10+); every 2.12+ header reaches it.
	hdrMinEnd = 0x264
	// hdrMaxEnd is where the setup header area of boot_params ends
	// (_pad7 runs up to edd_mbr_sig_buffer at 0x290).
	hdrMaxEnd = 0x290

	zpExtRamdiskImage = 0x0C0
	zpExtRamdiskSize  = 0x0C4
	zpExtCmdLinePtr   = 0x0C8
	zpE820Entries     = 0x1E8
	zpE820Table       = 0x2D0
)

// Header values.
const (
	bootFlagMagic   = 0xAA55
	headerMagic     = 0x53726448 // "HdrS"
	jumpOpcode      = 0xEB
	minProtocol     = 0x020C // 2.12: xloadflags
	loaderUndefined = 0xFF   // type_of_loader: no assigned id
	loadedHigh      = 1 << 0 // loadflags LOADED_HIGH
	xlfKernel64     = 1 << 0 // xloadflags XLF_KERNEL_64
	// defaultInitrdAddrMax is initrd_addr_max for headers that leave it
	// zero (boot.rst: "the maximum address is 0x37FFFFFF").
	defaultInitrdAddrMax = 0x37FF_FFFF
	// startup64Offset is the 64-bit entry point relative to the loaded
	// protected-mode kernel (boot.rst "64-bit Boot Protocol").
	startup64Offset = 0x200
)

// loadBzImage loads a bzImage through the 64-bit boot protocol.
//
// The protected-mode kernel is always loaded at KernelLoadAddr (1 MiB), not
// at pref_address: the 64-bit entry point of a relocatable kernel moves
// itself to max(align_up(load, kernel_alignment), LOAD_PHYSICAL_ADDR) and a
// non-relocatable one to pref_address (arch/x86/boot/compressed/head_64.S),
// so Load only checks that the init_size bytes from there fit in low RAM
// and keeps the initrd above them.
func loadBzImage(mem *guestmem.Memory, img image, rd ramdisk, cmdline string) (*Entry, error) {
	if img.size < hdrHeader+4 {
		return nil, fmt.Errorf("boot: %d-byte image is too short for a bzImage setup header: %w", img.size, ErrNotKernel)
	}
	hdr := make([]byte, min(img.size, hdrMaxEnd))
	if err := img.read(hdr, 0, "setup header"); err != nil {
		return nil, fmt.Errorf("boot: bzImage: %w", err)
	}
	le := binary.LittleEndian
	if le.Uint16(hdr[hdrBootFlag:]) != bootFlagMagic || le.Uint32(hdr[hdrHeader:]) != headerMagic {
		return nil, fmt.Errorf("boot: no boot flag 0xAA55 and \"HdrS\" signature: %w", ErrNotKernel)
	}
	if len(hdr) < hdrVersion+2 {
		return nil, fmt.Errorf("boot: bzImage setup header: truncated at %#x: %w", len(hdr), ErrMalformed)
	}
	if v := le.Uint16(hdr[hdrVersion:]); v < minProtocol {
		return nil, fmt.Errorf("boot: bzImage boot protocol %d.%02d, need 2.12 or later: %w", v>>8, v&0xFF, ErrUnsupported)
	}
	// boot.rst "64-bit Boot Protocol": the end of the setup header is
	// 0x0202 + the byte at 0x0201 (the jump instruction's offset).
	if hdr[hdrJump] != jumpOpcode {
		return nil, fmt.Errorf("boot: bzImage setup header: no jump instruction at 0x200: %w", ErrMalformed)
	}
	hdrEnd := hdrHeader + int(hdr[hdrJump+1])
	if hdrEnd < hdrMinEnd || hdrEnd > len(hdr) {
		return nil, fmt.Errorf("boot: bzImage setup header: ends at %#x, want %#x to %#x within the %d-byte file: %w",
			hdrEnd, hdrMinEnd, hdrMaxEnd, img.size, ErrMalformed)
	}
	if le.Uint16(hdr[hdrXLoadFlags:])&xlfKernel64 == 0 {
		return nil, fmt.Errorf("boot: bzImage has no 64-bit entry point (XLF_KERNEL_64): %w", ErrUnsupported)
	}
	if hdr[hdrLoadFlags]&loadedHigh == 0 {
		return nil, fmt.Errorf("boot: zImage (LOADED_HIGH clear) must be loaded low: %w", ErrUnsupported)
	}

	// boot.rst "Loading The Rest of The Kernel": the protected-mode kernel
	// starts after (setup_sects+1) sectors; setup_sects 0 means 4.
	setupSects := uint64(hdr[hdrSetupSects])
	if setupSects == 0 {
		setupSects = 4
	}
	setupSize := (setupSects + 1) * 512
	if setupSize >= img.size {
		return nil, fmt.Errorf("boot: bzImage: %d setup sectors leave no protected-mode kernel in the %d-byte file: %w", setupSects, img.size, ErrMalformed)
	}
	pmSize := img.size - setupSize
	if pmSize <= startup64Offset {
		return nil, fmt.Errorf("boot: bzImage: %d-byte protected-mode kernel has no 64-bit entry point at %#x: %w", pmSize, startup64Offset, ErrMalformed)
	}

	low, ok := regionAt(mem, KernelLoadAddr)
	if !ok || low.GPA != 0 {
		return nil, fmt.Errorf("boot: guest RAM must cover [0, %#x]: %w", KernelLoadAddr, ErrTooLarge)
	}
	ceiling := min(low.End(), IdentityMapSize)
	kernelEnd, err := bzImageFootprint(hdr, pmSize)
	if err != nil {
		return nil, fmt.Errorf("boot: bzImage setup header: %w", err)
	}
	if kernelEnd > ceiling {
		return nil, fmt.Errorf("boot: bzImage needs RAM up to %#x (init_size), low RAM ends at %#x: %w", kernelEnd, ceiling, ErrTooLarge)
	}
	dst, err := mem.Slice(KernelLoadAddr, pmSize)
	if err != nil {
		return nil, fmt.Errorf("boot: bzImage kernel of %d bytes: %w: %w", pmSize, ErrTooLarge, err)
	}
	if err := img.read(dst, setupSize, "protected-mode kernel"); err != nil {
		return nil, fmt.Errorf("boot: bzImage: %w", err)
	}

	// boot.rst "cmdline_size": the maximum length without the NUL.
	if err := writeCmdline(mem, cmdline, uint64(le.Uint32(hdr[hdrCmdlineSize:]))); err != nil {
		return nil, fmt.Errorf("boot: bzImage command line: %w", err)
	}

	e := &Entry{
		Protocol:  BzImage64,
		RIP:       KernelLoadAddr + startup64Offset,
		RSI:       ZeroPageAddr,
		CR0:       cr0PE | cr0ET | cr0PG,
		CR3:       PML4Addr,
		CR4:       cr4PAE,
		EFER:      eferLME | eferLMA,
		KernelEnd: kernelEnd,
	}
	if rd.size > 0 {
		// boot.rst "initrd_addr_max": the highest byte the initrd may
		// occupy.
		maxAddr := uint64(le.Uint32(hdr[hdrInitrdAddrMax:]))
		if maxAddr == 0 {
			maxAddr = defaultInitrdAddrMax
		}
		floor, _ := alignUp(kernelEnd, pageSize) // kernelEnd <= 4 GiB: no overflow
		addr, err := loadInitrd(mem, rd, floor, min(maxAddr+1, ceiling))
		if err != nil {
			return nil, fmt.Errorf("boot: bzImage %w", err)
		}
		e.InitrdAddr, e.InitrdSize = addr, rd.size
	}

	zp, err := zeroPage(mem, hdr[:hdrEnd], e)
	if err != nil {
		return nil, fmt.Errorf("boot: bzImage zero page: %w", err)
	}
	if _, err := mem.WriteAt(zp, ZeroPageAddr); err != nil {
		return nil, fmt.Errorf("boot: bzImage zero page: %w", err)
	}
	if err := writePageTables(mem); err != nil {
		return nil, fmt.Errorf("boot: %w", err)
	}
	return e, nil
}

// bzImageFootprint returns the end of the memory the kernel uses before it
// reads the memory map: the larger of the loaded image and init_size bytes
// from its runtime start address (boot.rst "init_size"; head_64.S).
func bzImageFootprint(hdr []byte, pmSize uint64) (uint64, error) {
	le := binary.LittleEndian
	align := uint64(le.Uint32(hdr[hdrKernelAlignment:]))
	pref := le.Uint64(hdr[hdrPrefAddress:])
	start := uint64(KernelLoadAddr)
	if hdr[hdrRelocatable] != 0 {
		if align != 0 {
			if align&(align-1) != 0 {
				return 0, fmt.Errorf("kernel_alignment %#x is not a power of two: %w", align, ErrMalformed)
			}
			start, _ = alignUp(start, align) // align < 4 GiB: no overflow
		}
		start = max(start, pref)
	} else if pref != 0 {
		start = pref
	}
	if start < HighMemStart {
		return 0, fmt.Errorf("kernel runs at %#x, inside the first MiB: %w", start, ErrUnsupported)
	}
	runEnd, carry := bits.Add64(start, uint64(le.Uint32(hdr[hdrInitSize:])), 0)
	if carry != 0 {
		return 0, fmt.Errorf("pref_address %#x + init_size overflows: %w", pref, ErrMalformed)
	}
	return max(runEnd, KernelLoadAddr+pmSize), nil
}

// zeroPage builds struct boot_params: zeroed, the image's setup header
// copied in (boot.rst "64-bit Boot Protocol"), the loader-written fields
// set, and the e820 map.
func zeroPage(mem *guestmem.Memory, hdr []byte, e *Entry) ([]byte, error) {
	le := binary.LittleEndian
	zp := make([]byte, ZeroPageSize)
	copy(zp[hdrSetupSects:], hdr[hdrSetupSects:])

	zp[hdrTypeOfLoader] = loaderUndefined
	// LOADED_HIGH: the kernel is at 1 MiB. CAN_USE_HEAP is left clear:
	// heap_end_ptr is for the real-mode setup code, which never runs on
	// the 64-bit entry path.
	zp[hdrLoadFlags] |= loadedHigh
	le.PutUint32(zp[hdrCode32Start:], KernelLoadAddr)
	le.PutUint32(zp[hdrCmdLinePtr:], CmdlineAddr)
	le.PutUint32(zp[zpExtCmdLinePtr:], 0)
	le.PutUint32(zp[hdrRamdiskImage:], uint32(e.InitrdAddr))
	le.PutUint32(zp[hdrRamdiskSize:], uint32(e.InitrdSize))
	le.PutUint32(zp[zpExtRamdiskImage:], uint32(e.InitrdAddr>>32))
	le.PutUint32(zp[zpExtRamdiskSize:], uint32(e.InitrdSize>>32))

	m, err := boundedMemoryMap(mem)
	if err != nil {
		return nil, err
	}
	zp[zpE820Entries] = uint8(len(m))
	for i, ent := range m {
		putBootE820(zp[zpE820Table+i*bootE820EntrySize:], ent)
	}
	return zp, nil
}
