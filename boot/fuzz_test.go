package boot

import (
	"bytes"
	"sync"
	"testing"

	"github.com/vesselvm/vessel/guestmem"
)

// FuzzLoad feeds arbitrary bytes to Load as the kernel image. Load must
// never panic, and whatever it accepts must yield a sane entry.
func FuzzLoad(f *testing.F) {
	f.Add(defaultBz().build()[:0x400])
	small := defaultBz()
	small.payload = 512
	f.Add(small.build())
	f.Add(defaultELF().build())
	f.Add(defaultELF().build()[:0x200])
	noNote := defaultELF()
	noNote.notes = noNote.notes[:1]
	f.Add(noNote.build())
	f.Add([]byte(elfMagic))
	f.Add([]byte{})

	var (
		once sync.Once
		mem  *guestmem.Memory
		err  error
	)
	initrd := initrdBytes(3 * 4096)
	f.Fuzz(func(t *testing.T, data []byte) {
		once.Do(func() { mem, err = guestmem.New(RAMLayout(64 * mib)) })
		if err != nil {
			t.Fatal(err)
		}
		e, lerr := Load(mem, bytes.NewReader(data), int64(len(data)), bytes.NewReader(initrd), int64(len(initrd)), "console=ttyS0", 2)
		if lerr != nil {
			return
		}
		if e.Protocol != BzImage64 && e.Protocol != PVH {
			t.Fatalf("protocol %v", e.Protocol)
		}
		if e.KernelEnd > 64*mib || e.RIP >= e.KernelEnd || e.RIP < HighMemStart {
			t.Fatalf("entry %#x, kernel end %#x", e.RIP, e.KernelEnd)
		}
		if e.InitrdAddr < e.KernelEnd || e.InitrdAddr+e.InitrdSize > 64*mib {
			t.Fatalf("initrd at %#x+%#x, kernel end %#x", e.InitrdAddr, e.InitrdSize, e.KernelEnd)
		}
	})
}
