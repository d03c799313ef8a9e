package vmm

import (
	"encoding/binary"
	"testing"
)

func TestDescribeLAPIC(t *testing.T) {
	regs := make([]byte, 1024)
	put := func(off int, v uint32) { binary.LittleEndian.PutUint32(regs[off:], v) }
	put(lapicIRR+0x10, 1<<(0x25-32))  // vector 0x25 requested
	put(lapicIRR+0x70, 1<<(0xec-224)) // and 0xec (the timer)
	put(lapicISR+0x10, 1<<(0x30-32))
	put(lapicTPR, 0x10)
	put(lapicLVTT, 2<<17|0xec)
	tests := []struct {
		name string
		lvtt uint32
		want string
	}{
		{"deadline", 2<<17 | 0xec, "lapic irr [0x25 0xec] isr [0x30] tpr 0x10 timer tsc-deadline vector 0xec"},
		{"one-shot masked", 1<<16 | 0xef, "lapic irr [0x25 0xec] isr [0x30] tpr 0x10 timer one-shot vector 0xef masked initial 100 current 40"},
	}
	put(lapicTMICT, 100)
	put(lapicTMCCT, 40)
	for _, tt := range tests {
		put(lapicLVTT, tt.lvtt)
		if got := describeLAPIC(regs); got != tt.want {
			t.Errorf("%s:\n got %q\nwant %q", tt.name, got, tt.want)
		}
	}
}

func TestDescribeIOAPIC(t *testing.T) {
	d := make([]byte, 512)
	binary.LittleEndian.PutUint32(d[16:], 1<<5)
	for pin := 0; pin < 24; pin++ {
		binary.LittleEndian.PutUint64(d[24+8*pin:], 1<<16) // masked
	}
	binary.LittleEndian.PutUint64(d[24+8*4:], 0x24)                   // edge
	binary.LittleEndian.PutUint64(d[24+8*5:], 1<<15|1<<14|1<<12|0x25) // level, waiting for EOI
	want := "irr 0x20 | pin 4 vector 0x24 edge | pin 5 vector 0x25 level remote-irr delivery-pending"
	if got := describeIOAPIC(d); got != want {
		t.Errorf("\n got %q\nwant %q", got, want)
	}
}
