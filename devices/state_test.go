package devices

import (
	"bytes"
	"reflect"
	"testing"
)

// A UART's state survives State and SetState into a fresh UART: the
// guest reads the same registers and receive FIFO from it.
func TestSerialStateRoundTrip(t *testing.T) {
	a := NewSerial(nil, nil)
	a.Write(regLCR, []byte{0x83}) // DLAB, 8 bits
	a.Write(regData, []byte{1})   // DLL
	a.Write(regLCR, []byte{0x03})
	a.Write(regIER, []byte{ierRDI | ierTHRI})
	a.Write(regMCR, []byte{mcrDTR | mcrOut2})
	a.Write(regSCR, []byte{0x5a})
	if _, err := a.Enqueue([]byte("hi")); err != nil {
		t.Fatal(err)
	}
	st := a.State()
	b := NewSerial(nil, nil)
	if err := b.SetState(st); err != nil {
		t.Fatal(err)
	}
	if got := b.State(); !reflect.DeepEqual(got, st) {
		t.Fatalf("state after SetState = %+v, want %+v", got, st)
	}
	for _, reg := range []uint64{regIER, regLCR, regMCR, regSCR, regLSR, regIIR} {
		x, y := make([]byte, 1), make([]byte, 1)
		a.Read(reg, x)
		b.Read(reg, y)
		if !bytes.Equal(x, y) {
			t.Errorf("register %d reads %#x after restore, %#x before", reg, y[0], x[0])
		}
	}
	var got []byte
	for i := 0; i < 2; i++ {
		d := make([]byte, 1)
		b.Read(regData, d)
		got = append(got, d[0])
	}
	if string(got) != "hi" {
		t.Errorf("restored FIFO reads %q, want %q", got, "hi")
	}
}

func TestSerialSetStateRefuses(t *testing.T) {
	for _, tc := range []struct {
		name string
		st   SerialState
	}{
		{"reserved IER bits", SerialState{IER: 0xf0}},
		{"reserved MCR bits", SerialState{MCR: 0x20}},
		{"deltas in the input half", SerialState{MSRInputs: 0x01}},
		{"inputs in the delta half", SerialState{MSRDelta: 0x10}},
		{"line status other than overrun", SerialState{LSRErrors: 0x20}},
		{"oversized FIFO", SerialState{RxFIFO: make([]byte, SerialFIFOSize+1)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := NewSerial(nil, nil).SetState(tc.st); err == nil {
				t.Errorf("SetState(%+v) accepted", tc.st)
			}
		})
	}
}
