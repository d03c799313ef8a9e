package devices

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"strings"
	"testing"
)

func rd(s *Serial, off uint64) byte {
	var b [1]byte
	s.Read(off, b[:])
	return b[0]
}

func wr(s *Serial, off uint64, v byte) { s.Write(off, []byte{v}) }

func newTestSerial() (*Serial, *CountingInterrupt, *bytes.Buffer) {
	irq := &CountingInterrupt{}
	out := &bytes.Buffer{}
	return NewSerial(irq, out), irq, out
}

func TestSerialResetState(t *testing.T) {
	s, irq, _ := newTestSerial()
	for _, tt := range []struct {
		name string
		off  uint64
		want byte
	}{
		{"IER", regIER, 0},
		{"IIR", regIIR, iirNoInt},
		{"LCR", regLCR, 0},
		{"MCR", regMCR, 0},
		{"LSR", regLSR, lsrTHRE | lsrTEMT},
		{"MSR", regMSR, msrDCD | msrDSR | msrCTS},
		{"SCR", regSCR, 0},
		{"RBR empty", regData, 0},
	} {
		if got := rd(s, tt.off); got != tt.want {
			t.Errorf("%s = %#x, want %#x", tt.name, got, tt.want)
		}
	}
	if irq.Count() != 0 {
		t.Errorf("%d interrupts at reset", irq.Count())
	}
}

func TestSerialDLAB(t *testing.T) {
	s, _, out := newTestSerial()
	wr(s, regIER, ierRDI|ierMSI)
	wr(s, regLCR, lcrDLAB|0x03)
	steps := []struct {
		op        string // "r" or "w"
		off       uint64
		val, want byte
	}{
		{"r", regData, 0, 12}, // DLL reset value: 9600 baud
		{"r", regIER, 0, 0},   // DLM
		{"w", regData, 0x01, 0},
		{"w", regIER, 0xc2, 0},
		{"r", regData, 0, 0x01},
		{"r", regIER, 0, 0xc2}, // DLM keeps all 8 bits
		{"r", regLCR, 0, lcrDLAB | 0x03},
		{"w", regLCR, 0x03, 0},
		{"r", regIER, 0, ierRDI | ierMSI}, // IER unchanged by DLM writes
		{"w", regLCR, 0xbf, 0},            // Linux's UART_LCR_CONF_MODE_B sets DLAB too
		{"r", regData, 0, 0x01},
		{"r", regIIR, 0, iirNoInt}, // IIR stays at offset 2 with DLAB set
		{"w", regLCR, 0x03, 0},
	}
	for i, st := range steps {
		if st.op == "w" {
			wr(s, st.off, st.val)
			continue
		}
		if got := rd(s, st.off); got != st.want {
			t.Errorf("step %d: read %d = %#x, want %#x", i, st.off, got, st.want)
		}
	}
	if out.Len() != 0 {
		t.Errorf("DLL writes reached the output: %q", out.String())
	}
	wr(s, regData, 'x')
	if out.String() != "x" {
		t.Errorf("THR write with DLAB clear: output %q", out.String())
	}
}

func TestSerialRegisterMasks(t *testing.T) {
	s, _, _ := newTestSerial()
	for _, tt := range []struct {
		name      string
		off       uint64
		val, want byte
	}{
		{"IER bits 7:4 read zero", regIER, 0xff, 0x0f},
		{"MCR bits 7:5 read zero", regMCR, 0xef, 0x0f},
		{"LCR all bits", regLCR, 0x7f, 0x7f},
		{"SCR all bits", regSCR, 0xa5, 0xa5},
		{"LSR read only", regLSR, 0x00, lsrTHRE | lsrTEMT},
		{"MSR read only", regMSR, 0x00, msrIdle},
	} {
		wr(s, tt.off, tt.val)
		if got := rd(s, tt.off); got != tt.want {
			t.Errorf("%s: wrote %#x, read %#x, want %#x", tt.name, tt.val, got, tt.want)
		}
		wr(s, regIER, 0)
		wr(s, regMCR, 0)
	}
}

// TestSerialIIRPriority sets up several sources at once and checks that IIR
// reports them in 16550A priority order as they are cleared.
func TestSerialIIRPriority(t *testing.T) {
	tests := []struct {
		name string
		ier  byte
		rx   int // bytes looped back into the receive FIFO
		want []byte
	}{
		{"nothing enabled", 0, 0, []byte{iirNoInt}},
		{"thre only", ierTHRI, 0, []byte{iirTHRI, iirNoInt}},
		{"rx over thre", ierTHRI | ierRDI, 1, []byte{iirRDI, iirRDI}},
		{"rx disabled", ierTHRI, 1, []byte{iirTHRI, iirNoInt}},
		{"overrun over rx", ierRLSI | ierRDI, SerialFIFOSize + 1, []byte{iirRLSI, iirRLSI}},
		{"overrun masked", ierRDI, SerialFIFOSize + 1, []byte{iirRDI}},
		{"modem status lowest", ierMSI | ierTHRI, 0, []byte{iirTHRI, iirMSI, iirMSI}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, _, _ := newTestSerial()
			wr(s, regMCR, mcrLoop) // loopback changes the modem inputs: MSR deltas
			for i := 0; i < tt.rx; i++ {
				wr(s, regData, byte(i))
			}
			if tt.ier&ierMSI == 0 {
				rd(s, regMSR)
			}
			wr(s, regIER, tt.ier)
			for i, want := range tt.want {
				if got := rd(s, regIIR); got != want {
					t.Errorf("IIR read %d = %#x, want %#x", i, got, want)
				}
			}
		})
	}
}

func TestSerialIIRClearing(t *testing.T) {
	s, _, _ := newTestSerial()
	wr(s, regMCR, mcrLoop)
	for i := 0; i < SerialFIFOSize+1; i++ {
		wr(s, regData, 'a')
	}
	wr(s, regIER, ierRLSI|ierRDI|ierTHRI|ierMSI)
	steps := []struct {
		clear string
		off   uint64
		want  byte // IIR afterwards
	}{
		{"", 0, iirRLSI},
		{"LSR read clears overrun", regLSR, iirRDI},
	}
	for _, st := range steps {
		if st.clear != "" {
			rd(s, st.off)
		}
		if got := rd(s, regIIR); got != st.want {
			t.Fatalf("%q: IIR %#x, want %#x", st.clear, got, st.want)
		}
	}
	for i := 0; i < SerialFIFOSize; i++ {
		rd(s, regData)
	}
	if got := rd(s, regIIR); got != iirTHRI {
		t.Fatalf("after draining RBR: IIR %#x, want THRI", got)
	}
	if got := rd(s, regIIR); got != iirMSI {
		t.Fatalf("IIR read clears THRI: IIR %#x, want MSI", got)
	}
	rd(s, regMSR)
	if got := rd(s, regIIR); got != iirNoInt {
		t.Fatalf("MSR read clears deltas: IIR %#x, want none", got)
	}
}

func TestSerialTHREInterrupt(t *testing.T) {
	s, irq, out := newTestSerial()
	// Enabling THRI with THR empty raises THR-empty at once.
	wr(s, regIER, ierTHRI)
	if irq.Count() != 1 || rd(s, regIIR) != iirTHRI {
		t.Fatalf("enable THRI: %d triggers", irq.Count())
	}
	if rd(s, regIIR) != iirNoInt {
		t.Fatal("IIR read did not clear THRE")
	}
	// Rewriting the same IER is not an edge.
	wr(s, regIER, ierTHRI)
	if irq.Count() != 1 || rd(s, regIIR) != iirNoInt {
		t.Fatalf("rewriting IER re-raised THRE (%d triggers)", irq.Count())
	}
	// Each THR write re-raises it, even if never acknowledged.
	for i, c := range []byte("ok") {
		wr(s, regData, c)
		if irq.Count() != uint64(2+i) {
			t.Fatalf("THR write %d: %d triggers", i, irq.Count())
		}
	}
	if rd(s, regIIR) != iirTHRI || out.String() != "ok" {
		t.Fatalf("after THR writes: output %q", out.String())
	}
	// With THRI disabled, THR writes raise nothing.
	wr(s, regIER, 0)
	irq.Reset()
	wr(s, regData, '!')
	if irq.Count() != 0 || rd(s, regIIR) != iirNoInt {
		t.Fatal("THR write with THRI disabled raised an interrupt")
	}
	// Linux serial8250_do_startup's THRE re-assertion test.
	wr(s, regIER, ierTHRI)
	iir1 := rd(s, regIIR)
	wr(s, regIER, 0)
	wr(s, regIER, ierTHRI)
	iir := rd(s, regIIR)
	wr(s, regIER, 0)
	if iir1&iirNoInt != 0 || iir&iirNoInt != 0 {
		t.Errorf("THRE not reasserted: iir1 %#x iir %#x (Linux would set UART_BUG_THRE)", iir1, iir)
	}
}

func TestSerialReceive(t *testing.T) {
	s, irq, _ := newTestSerial()
	// No driver listens (IER.RDI clear): input is held back, not lost
	// to the FIFO clear a starting driver does.
	if n, err := s.Enqueue([]byte("ab")); n != 0 || !errors.Is(err, ErrRxFull) {
		t.Fatalf("Enqueue before the driver listens = %d, %v; want 0, ErrRxFull", n, err)
	}
	if irq.Count() != 0 || rd(s, regLSR)&lsrDR != 0 {
		t.Fatal("input taken while no driver listens")
	}
	wr(s, regIER, ierRDI)
	if n, err := s.Enqueue([]byte("ab")); n != 2 || err != nil {
		t.Fatalf("Enqueue = %d, %v", n, err)
	}
	if irq.Count() != 1 || rd(s, regIIR) != iirRDI {
		t.Fatalf("Enqueue with RDI: %d triggers", irq.Count())
	}
	if a, b := rd(s, regData), rd(s, regData); a != 'a' || b != 'b' {
		t.Fatalf("RBR read %q %q", a, b)
	}
	if rd(s, regLSR)&lsrDR != 0 || rd(s, regIIR) != iirNoInt {
		t.Fatal("DR or RX interrupt still set after draining")
	}
	select {
	case <-s.RxDrained():
	default:
		t.Fatal("no RxDrained signal")
	}
	// New data after draining is a new edge.
	s.Enqueue([]byte("c"))
	if irq.Count() != 2 {
		t.Fatalf("Enqueue with RDI: %d triggers", irq.Count())
	}
	// More data while the interrupt is still pending is not.
	s.Enqueue([]byte("d"))
	if irq.Count() != 2 {
		t.Fatalf("Enqueue while pending: %d triggers", irq.Count())
	}

	// Fill the FIFO: the excess is refused, not dropped, and no overrun.
	big := bytes.Repeat([]byte{'z'}, SerialFIFOSize)
	n, err := s.Enqueue(big)
	if n != SerialFIFOSize-2 || !errors.Is(err, ErrRxFull) {
		t.Fatalf("Enqueue into 2-byte-full FIFO = %d, %v", n, err)
	}
	if n, err := s.Enqueue([]byte("y")); n != 0 || !errors.Is(err, ErrRxFull) {
		t.Fatalf("Enqueue into full FIFO = %d, %v", n, err)
	}
	if lsr := rd(s, regLSR); lsr&lsrOE != 0 {
		t.Fatalf("host input caused an overrun: LSR %#x", lsr)
	}
	var got []byte
	for rd(s, regLSR)&lsrDR != 0 {
		got = append(got, rd(s, regData))
	}
	if want := "cd" + strings.Repeat("z", SerialFIFOSize-2); string(got) != want {
		t.Fatalf("drained %q, want %q", got, want)
	}
	if n, err := s.Enqueue(nil); n != 0 || err != nil {
		t.Fatalf("Enqueue(nil) = %d, %v", n, err)
	}
}

func TestSerialFCR(t *testing.T) {
	s, _, _ := newTestSerial()
	steps := []struct {
		fcr      byte
		rx       string // enqueued before the write
		wantIIR  byte
		wantData bool
	}{
		{0x01, "", iirFIFOEn | iirNoInt, false},
		{0xc1, "ab", iirFIFOEn | iirNoInt, true}, // trigger level bits: FIFO kept
		{0xc3, "", iirFIFOEn | iirNoInt, false},  // clear RX
		{0x01, "ab", iirFIFOEn | iirNoInt, true}, // no change
		{0x00, "", iirNoInt, false},              // disabling FIFOs resets them
		{0x00, "ab", iirNoInt, true},             // 16450 mode still receives
		{0x01, "", iirFIFOEn | iirNoInt, false},  // enabling resets them too
		{0x21, "", iirFIFOEn | iirNoInt, false},  // 64-byte FIFO bit: no IIR bit 5 (not a 16750)
	}
	for i, st := range steps {
		wr(s, regIER, ierRDI) // a listening driver takes input
		s.Enqueue([]byte(st.rx))
		wr(s, regIER, 0)
		wr(s, regIIR, st.fcr)
		if got := rd(s, regIIR); got != st.wantIIR {
			t.Errorf("step %d FCR %#x: IIR %#x, want %#x", i, st.fcr, got, st.wantIIR)
		}
		if got := rd(s, regLSR)&lsrDR != 0; got != st.wantData {
			t.Errorf("step %d FCR %#x: DR %v, want %v", i, st.fcr, got, st.wantData)
		}
	}
}

func TestSerialLoopback(t *testing.T) {
	s, irq, out := newTestSerial()
	tests := []struct {
		mcr  byte
		want byte // MSR bits 7:4
	}{
		{mcrLoop, 0},
		{mcrLoop | mcrRTS, msrCTS},
		{mcrLoop | mcrDTR, msrDSR},
		{mcrLoop | mcrOut1, msrRI},
		{mcrLoop | mcrOut2, msrDCD},
		{mcrLoop | mcrOut2 | mcrRTS, 0x90}, // Linux autoconfig's check
		{mcrLoop | 0x0f, 0xf0},
		{mcrOut2 | mcrRTS | mcrDTR, msrIdle}, // loopback off: fixed lines
		{0, msrIdle},
	}
	for _, tt := range tests {
		wr(s, regMCR, tt.mcr)
		if got := rd(s, regMSR) & 0xf0; got != tt.want {
			t.Errorf("MCR %#x: MSR %#x, want %#x", tt.mcr, got, tt.want)
		}
	}
	// Delta bits: RI trailing edge, CTS change.
	wr(s, regMCR, mcrLoop|mcrOut1)
	rd(s, regMSR)
	wr(s, regMCR, mcrLoop|mcrRTS)
	if got := rd(s, regMSR); got != msrCTS|msrDCTS|msrTERI {
		t.Errorf("MSR deltas %#x, want %#x", got, msrCTS|msrDCTS|msrTERI)
	}
	if got := rd(s, regMSR); got != msrCTS {
		t.Errorf("MSR read did not clear deltas: %#x", got)
	}

	// Transmitted bytes come back on the receiver, not the output.
	wr(s, regIER, ierRDI)
	irq.Reset()
	wr(s, regData, 'L')
	if irq.Count() != 1 || rd(s, regIIR) != iirRDI || rd(s, regData) != 'L' {
		t.Fatalf("loopback byte: %d triggers", irq.Count())
	}
	if n, err := s.Enqueue([]byte("host")); n != 4 || err != nil || rd(s, regLSR)&lsrDR != 0 {
		t.Fatalf("host input in loopback = %d, %v, want discarded", n, err)
	}
	if out.Len() != 0 {
		t.Fatalf("loopback reached the output: %q", out.String())
	}
}

func TestSerialOverrun(t *testing.T) {
	s, irq, _ := newTestSerial()
	wr(s, regMCR, mcrLoop)
	wr(s, regIER, ierRLSI)
	for i := 0; i < SerialFIFOSize; i++ {
		wr(s, regData, byte(i))
	}
	if rd(s, regLSR) != lsrTHRE|lsrTEMT|lsrDR || irq.Count() != 0 {
		t.Fatal("overrun before the FIFO was full")
	}
	wr(s, regData, 0xee) // lost
	if irq.Count() != 1 || rd(s, regIIR) != iirRLSI {
		t.Fatalf("overrun: %d triggers", irq.Count())
	}
	if lsr := rd(s, regLSR); lsr != lsrTHRE|lsrTEMT|lsrDR|lsrOE {
		t.Fatalf("LSR %#x, want OE", lsr)
	}
	if lsr := rd(s, regLSR); lsr&lsrOE != 0 || rd(s, regIIR) != iirNoInt {
		t.Fatal("LSR read did not clear OE")
	}
	for i := 0; i < SerialFIFOSize; i++ {
		if v := rd(s, regData); v != byte(i) {
			t.Fatalf("FIFO byte %d = %#x: overrun clobbered it", i, v)
		}
	}
}

// TestSerialLinuxAutoconfig replays the register accesses of Linux's
// autoconfig() and autoconfig_16550a() (drivers/tty/serial/8250/8250_port.c)
// and checks that the port would be detected as a plain 16550A.
func TestSerialLinuxAutoconfig(t *testing.T) {
	s, _, out := newTestSerial()
	// IER test: "scratch2 != 0 || scratch3 != 0x0F" means no UART.
	wr(s, regIER, 0)
	scratch2 := rd(s, regIER) & 0x0f
	wr(s, regIER, 0x0f)
	scratch3 := rd(s, regIER) & 0x0f
	wr(s, regIER, 0)
	if scratch2 != 0 || scratch3 != 0x0f {
		t.Fatalf("IER test: %#x %#x", scratch2, scratch3)
	}
	// Loopback test: MCR = LOOP|0x0A must give MSR&0xF0 == 0x90.
	saveMCR := rd(s, regMCR)
	wr(s, regMCR, mcrLoop|0x0a)
	status1 := rd(s, regMSR) & 0xf0
	wr(s, regMCR, saveMCR)
	if status1 != 0x90 {
		t.Fatalf("loopback test: MSR %#x", status1)
	}
	// FIFO test: IIR>>6 == 3 means 16550A.
	wr(s, regLCR, 0xbf)
	wr(s, regIIR, 0) // EFR
	wr(s, regLCR, 0)
	wr(s, regIIR, fcrEnable)
	if scratch := rd(s, regIIR) >> 6; scratch != 3 {
		t.Fatalf("IIR>>6 = %d, want 3 (16550A)", scratch)
	}
	// autoconfig_16550a: EFR probes must read non-zero (no EFR).
	wr(s, regLCR, 0x80)
	if rd(s, regIIR) == 0 {
		t.Fatal("EFR probe (LCR=0x80) read 0: ST16C650V1")
	}
	wr(s, regLCR, 0xbf)
	if rd(s, regIIR) == 0 {
		t.Fatal("EFR probe (LCR=0xBF) read 0: EFR UART")
	}
	// NS SuperIO probe: EXCR1 (offset 2 at LCR=0xE0) must not track MCR.LOOP.
	wr(s, regLCR, 0)
	st1 := rd(s, regMCR)
	wr(s, regLCR, 0xe0)
	st2 := rd(s, regIIR)
	if (st2^st1)&mcrLoop == 0 {
		wr(s, regLCR, 0)
		wr(s, regMCR, st1^mcrLoop)
		wr(s, regLCR, 0xe0)
		st2 = rd(s, regIIR)
		wr(s, regLCR, 0)
		wr(s, regMCR, st1)
		if (st2^st1)&mcrLoop != 0 {
			t.Fatal("detected as NS SuperIO")
		}
	}
	// TI16750 probe: IIR bit 5 must never be set.
	wr(s, regLCR, 0)
	wr(s, regIIR, fcrEnable|0x20)
	st1 = rd(s, regIIR) & 0xe0
	wr(s, regIIR, fcrEnable)
	wr(s, regLCR, 0x80)
	wr(s, regIIR, fcrEnable|0x20)
	st2 = rd(s, regIIR) & 0xe0
	wr(s, regIIR, fcrEnable)
	wr(s, regLCR, 0)
	if st1 == 0xc0 && st2 == 0xe0 {
		t.Fatal("detected as TI16750")
	}
	// XScale probe: IER bit 6 (UUE) must not stick.
	wr(s, regIER, 0x40)
	if rd(s, regIER)&0x40 != 0 {
		t.Fatal("detected as XScale")
	}
	wr(s, regIER, 0)
	if rd(s, regLSR) == 0xff {
		t.Fatal("LSR reads 0xff: serial8250_do_startup bails out")
	}
	if out.Len() != 0 {
		t.Fatalf("probe produced output %q", out.String())
	}
}

// TestSerialWideAccess checks that accesses wider than a byte act as byte
// accesses to consecutive registers and that no offset or length panics.
func TestSerialWideAccess(t *testing.T) {
	s, _, out := newTestSerial()
	s.Write(regLCR, []byte{0x03, mcrRTS, 0xaa}) // LCR, MCR, LSR (ignored)
	if rd(s, regLCR) != 0x03 || rd(s, regMCR) != mcrRTS {
		t.Fatal("3-byte write did not reach LCR and MCR")
	}
	s.Write(regSCR, []byte{0x5a, 1, 2, 3, 4, 5, 6, 7}) // SCR, then past the end
	data := make([]byte, 8)
	s.Read(regSCR-1, data)
	if want := []byte{msrIdle, 0x5a, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}; !bytes.Equal(data, want) {
		t.Fatalf("read across the end = %x, want %x", data, want)
	}
	s.Write(0, []byte("hi")) // THR 'h', IER 'i'&0x0f
	if out.String() != "h" || rd(s, regIER) != 'i'&0x0f {
		t.Fatalf("2-byte write at THR: output %q IER %#x", out.String(), rd(s, regIER))
	}
	for _, off := range []uint64{8, 100, math.MaxUint64, math.MaxUint64 - 1} {
		for _, n := range []int{0, 1, 2, 3, 4, 8, 17} {
			buf := make([]byte, n)
			s.Read(off, buf)
			s.Write(off, buf)
			if off >= SerialSize && bytes.Count(buf, []byte{0xff}) != n {
				t.Errorf("Read(%#x, %d) = %x, want all 0xff", off, n, buf)
			}
		}
	}
}

// reentrantWriter reads the UART from inside Write: it would deadlock if the
// UART held its register lock while writing output.
type reentrantWriter struct {
	s   *Serial
	buf bytes.Buffer
}

func (w *reentrantWriter) Write(p []byte) (int, error) {
	rd(w.s, regLSR)
	return w.buf.Write(p)
}

func TestSerialOutputOutsideLock(t *testing.T) {
	w := &reentrantWriter{}
	s := NewSerial(nil, w)
	w.s = s
	for _, c := range []byte("no deadlock") {
		wr(s, regData, c)
	}
	if w.buf.String() != "no deadlock" {
		t.Fatalf("output %q", w.buf.String())
	}
}

func TestSerialTail(t *testing.T) {
	type check struct {
		n    int
		want []string
	}
	long := strings.Repeat("x", TailMaxLineLen)
	var many strings.Builder
	for i := 0; i < TailLines+5; i++ {
		fmt.Fprintf(&many, "line %d\r\n", i)
	}
	tests := []struct {
		name   string
		output string
		checks []check
	}{
		{"empty", "", []check{{5, []string{}}, {0, nil}}},
		{"crlf", "one\r\ntwo\r\n", []check{{5, []string{"one", "two"}}, {1, []string{"two"}}}},
		{"partial", "one\ntwo\nthr", []check{{2, []string{"two", "thr"}}, {-1, nil}}},
		{"blank lines", "a\n\n\nb\n", []check{{10, []string{"a", "", "", "b"}}}},
		{"long line split", long + "yz\n", []check{{5, []string{long, "yz"}}}},
		{"ring wraps", many.String(), []check{
			{2, []string{fmt.Sprintf("line %d", TailLines+3), fmt.Sprintf("line %d", TailLines+4)}},
			{1000, nil}, // checked by length below
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, _, out := newTestSerial()
			for _, c := range []byte(tt.output) {
				wr(s, regData, c)
			}
			if out.String() != tt.output {
				t.Fatalf("output %q, want %q", out.String(), tt.output)
			}
			for _, c := range tt.checks {
				got := s.Tail(c.n)
				if c.n == 1000 {
					if len(got) != TailLines || got[0] != "line 5" {
						t.Errorf("Tail(1000) kept %d lines from %q", len(got), got[0])
					}
					continue
				}
				if c.want == nil {
					if got != nil {
						t.Errorf("Tail(%d) = %q, want nil", c.n, got)
					}
					continue
				}
				if strings.Join(got, "|") != strings.Join(c.want, "|") || len(got) != len(c.want) {
					t.Errorf("Tail(%d) = %q, want %q", c.n, got, c.want)
				}
			}
		})
	}
}
