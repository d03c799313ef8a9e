package devices

import "testing"

// validIIR reports whether v is an IIR value this UART may return.
func validIIR(v byte) bool {
	switch v &^ iirFIFOEn {
	case iirNoInt, iirMSI, iirTHRI, iirRDI, iirRLSI:
		return v&iirFIFOEn == 0 || v&iirFIFOEn == iirFIFOEn
	}
	return false
}

// FuzzSerial drives the UART with a random sequence of operations, four
// input bytes each: kind, offset, width and value. It checks that nothing
// panics, that IIR only ever reads as a valid value, and basic LSR and FIFO
// invariants.
func FuzzSerial(f *testing.F) {
	f.Add([]byte{1, 1, 0, 0x0f, 1, 3, 0, 0x80, 0, 2, 0, 0})
	f.Add([]byte{1, 4, 0, 0x1a, 1, 0, 0, 'a', 0, 6, 0, 0, 0, 2, 2, 0})
	f.Add([]byte{2, 8, 0, 'x', 1, 2, 0, 0xc7, 1, 1, 0, 0x05, 0, 0, 3, 0})
	f.Fuzz(func(t *testing.T, ops []byte) {
		irq := &CountingInterrupt{}
		s := NewSerial(irq, nil)
		widths := [...]int{1, 1, 1, 1, 2, 3, 4, 8}
		for len(ops) >= 4 {
			kind, off, w, val := ops[0], uint64(ops[1]%10), widths[ops[2]%8], ops[3]
			ops = ops[4:]
			if off == 9 {
				off = ^uint64(0) // far out of range: offset+i wraps
			}
			data := make([]byte, w)
			for i := range data {
				data[i] = val + byte(i)
			}
			switch kind % 4 {
			case 0: // read
				s.Read(off, data)
				for i, v := range data {
					if o := off + uint64(i); o >= off && o == regIIR && !validIIR(v) {
						t.Fatalf("IIR read %#x", v)
					}
				}
			case 1: // write
				s.Write(off, data)
			case 2: // host input
				n, err := s.Enqueue(data)
				if n > len(data) || (err == nil) != (n == len(data)) {
					t.Fatalf("Enqueue(%d bytes) = %d, %v", len(data), n, err)
				}
			case 3: // drain signal never blocks
				select {
				case <-s.RxDrained():
				default:
				}
			}
			s.mu.Lock()
			id, fifoLen, lsrErr := s.iid(), s.rxLen, s.lsrErr
			s.mu.Unlock()
			if !validIIR(id) || fifoLen < 0 || fifoLen > SerialFIFOSize || lsrErr&^lsrOE != 0 {
				t.Fatalf("bad state: iid %#x fifo %d lsr errors %#x", id, fifoLen, lsrErr)
			}
		}
		var b [1]byte
		s.Read(regLSR, b[:])
		if b[0]&(lsrTHRE|lsrTEMT) != lsrTHRE|lsrTEMT {
			t.Fatalf("LSR %#x without THRE|TEMT", b[0])
		}
		_ = s.Tail(TailLines)
	})
}
