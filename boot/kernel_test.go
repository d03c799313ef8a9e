package boot

import (
	"bytes"
	"os"
	"testing"
)

// TestLoadRealKernel loads the kernel named by $VESSEL_KERNEL (a bzImage or
// a PVH vmlinux, e.g. from images/build-kernel.sh). It is skipped only when
// the variable is unset.
func TestLoadRealKernel(t *testing.T) {
	path, ok := os.LookupEnv("VESSEL_KERNEL")
	if !ok {
		t.Skip("VESSEL_KERNEL not set")
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatalf("VESSEL_KERNEL: %v", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	mem := newMem(t, 512*mib)
	initrd := initrdBytes(1 * mib)
	e, err := Load(mem, f, st.Size(), bytes.NewReader(initrd), int64(len(initrd)), "console=ttyS0 reboot=k panic=1", 4)
	if err != nil {
		t.Fatalf("Load(%s): %v", path, err)
	}
	t.Logf("%s: %v entry %#x, kernel end %#x, initrd %#x+%#x", path, e.Protocol, e.RIP, e.KernelEnd, e.InitrdAddr, e.InitrdSize)
	switch e.Protocol {
	case BzImage64:
		if e.RIP != KernelLoadAddr+0x200 || e.RSI != ZeroPageAddr {
			t.Errorf("entry %+v", e)
		}
		if v, _ := mem.Uint16(ZeroPageAddr + 0x206); v < 0x020C {
			t.Errorf("protocol %#x in the zero page", v)
		}
	case PVH:
		if e.RIP < HighMemStart || e.RIP >= e.KernelEnd || e.RBX != StartInfoAddr {
			t.Errorf("entry %+v", e)
		}
	default:
		t.Errorf("protocol %v", e.Protocol)
	}
	if e.InitrdAddr < e.KernelEnd {
		t.Errorf("initrd at %#x overlaps the kernel (end %#x)", e.InitrdAddr, e.KernelEnd)
	}
}
