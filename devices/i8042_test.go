package devices

import (
	"math"
	"testing"
)

func TestI8042Reset(t *testing.T) {
	for cmd := 0; cmd < 256; cmd++ {
		resets := 0
		k := NewI8042(func() { resets++ })
		k.Write(I8042CommandOffset, []byte{byte(cmd)})
		want := 0
		if cmd == I8042CmdResetCPU {
			want = 1
		}
		if resets != want {
			t.Errorf("command %#x: %d resets, want %d", cmd, resets, want)
		}
	}
	resets := 0
	k := NewI8042(func() { resets++ })
	for _, acc := range []struct {
		off  uint64
		data []byte
	}{
		{I8042DataOffset, []byte{0xfe}},          // data port
		{1, []byte{0xfe}},                        // port 0x61
		{I8042CommandOffset, []byte{0xfe, 0xfe}}, // wide
		{I8042CommandOffset, []byte{0xfe, 0, 0, 0}},
		{I8042CommandOffset, nil},
	} {
		k.Write(acc.off, acc.data)
	}
	if resets != 0 {
		t.Errorf("%d resets from non-command writes", resets)
	}
	NewI8042(nil).Write(I8042CommandOffset, []byte{I8042CmdResetCPU}) // nil callback: no panic
}

func TestI8042Protocol(t *testing.T) {
	kbd := &CountingInterrupt{}
	k := NewI8042(nil)
	k.SetKeyboardInterrupt(kbd)
	status := func() byte { var b [1]byte; k.Read(I8042CommandOffset, b[:]); return b[0] }
	data := func() byte { var b [1]byte; k.Read(I8042DataOffset, b[:]); return b[0] }
	cmd := func(v byte) { k.Write(I8042CommandOffset, []byte{v}) }
	put := func(v byte) { k.Write(I8042DataOffset, []byte{v}) }

	steps := []struct {
		name       string
		do         func()
		wantStatus byte
		wantData   int // -1: don't read
	}{
		{"idle", func() {}, i8042StatKeylock, 0},
		{"read CTR", func() { cmd(i8042CmdReadCTR) }, i8042StatKeylock | i8042StatOBF, int(i8042CtrSys | i8042CtrKbdInt)},
		{"write CTR cmd", func() { cmd(i8042CmdWriteCTR) }, i8042StatKeylock | i8042StatCmdData, -1},
		{"write CTR data", func() { put(0x45) }, i8042StatKeylock, -1},
		{"read CTR back", func() { cmd(i8042CmdReadCTR) }, i8042StatKeylock | i8042StatOBF, 0x45},
		{"output port", func() { cmd(i8042CmdWriteOutp); put(0x03); cmd(i8042CmdReadOutp) }, i8042StatKeylock | i8042StatOBF, 0x03},
		{"self test", func() { cmd(i8042CmdSelfTest) }, i8042StatKeylock | i8042StatOBF, 0x55},
		{"kbd test", func() { cmd(i8042CmdKbdTest) }, i8042StatKeylock | i8042StatOBF, 0x00},
		{"keyboard command acked", func() { put(0xf2) }, i8042StatKeylock | i8042StatOBF, i8042KbdAck},
		{"reply replaces unread", func() { cmd(i8042CmdSelfTest); cmd(i8042CmdReadCTR) }, i8042StatKeylock | i8042StatOBF, 0x45},
		{"empty after read", func() {}, i8042StatKeylock, 0},
	}
	for _, st := range steps {
		st.do()
		if got := status(); got != st.wantStatus {
			t.Errorf("%s: status %#x, want %#x", st.name, got, st.wantStatus)
		}
		if st.wantData >= 0 {
			if got := data(); int(got) != st.wantData {
				t.Errorf("%s: data %#x, want %#x", st.name, got, st.wantData)
			}
		}
	}
	// CTR 0x45 has KbdInt set: exactly the one keyboard ack raised IRQ 1.
	if kbd.Count() != 1 {
		t.Errorf("%d keyboard interrupts, want 1", kbd.Count())
	}
	cmd(i8042CmdWriteCTR)
	put(0x44) // keyboard interrupt off
	put(0xf4)
	if kbd.Count() != 1 || data() != i8042KbdAck {
		t.Errorf("keyboard interrupt with CTR.KbdInt clear")
	}
}

func TestI8042OddAccesses(t *testing.T) {
	k := NewI8042(func() {})
	for _, off := range []uint64{0, 1, 2, 3, 4, 5, 0x60, math.MaxUint64} {
		for _, n := range []int{0, 1, 2, 3, 4, 8} {
			buf := make([]byte, n)
			for i := range buf {
				buf[i] = 0xcc
			}
			k.Read(off, buf)
			for _, v := range buf {
				if v != 0 && !(n == 1 && off == I8042CommandOffset) {
					t.Errorf("Read(%#x, %d) = %x, want zero", off, n, buf)
					break
				}
			}
			k.Write(off, buf)
		}
	}
}
