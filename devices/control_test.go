package devices

import (
	"encoding/binary"
	"testing"
	"time"
)

func TestControlPortMagic(t *testing.T) {
	if string(binary.LittleEndian.AppendUint32(nil, ControlMagic)) != "VSL1" {
		t.Fatalf("ControlMagic %#x is not \"VSL1\"", ControlMagic)
	}
	c := NewControlPort(nil, nil)
	tests := []struct {
		off  uint64
		n    int
		want []byte
	}{
		{ControlMagicOffset, 4, []byte("VSL1")},
		{ControlMagicOffset, 1, []byte("V")},
		{ControlMagicOffset + 2, 2, []byte("L1")},
		{ControlMagicOffset - 2, 4, []byte{0, 0, 'V', 'S'}},
		{ControlMagicOffset + 2, 4, []byte{'L', '1', 0, 0}},
		{0, 4, []byte{0, 0, 0, 0}},
		{ControlExitOffset, 4, []byte{0, 0, 0, 0}},
		{ControlPortSize - 1, 1, []byte{0}},
		{^uint64(0) - 1, 4, []byte{0, 0, 0, 0}}, // wraps: must not alias the magic
	}
	for _, tt := range tests {
		got := make([]byte, tt.n)
		for i := range got {
			got[i] = 0xcc
		}
		c.Read(tt.off, got)
		if string(got) != string(tt.want) {
			t.Errorf("Read(%#x, %d) = %q, want %q", tt.off, tt.n, got, tt.want)
		}
	}
}

func TestControlPortMarker(t *testing.T) {
	var marks []uint8
	c := NewControlPort(func(v uint8) { marks = append(marks, v) }, nil)
	if _, ok := c.BootTime(); ok {
		t.Fatal("BootTime set before any marker")
	}
	c.Write(ControlBootOffset, []byte{1, 0}) // wrong width: ignored
	c.Write(ControlBootOffset+1, []byte{1})  // wrong offset: ignored
	if _, ok := c.BootTime(); ok || len(marks) != 0 {
		t.Fatal("marker recorded from a bad access")
	}
	before := time.Now()
	c.Write(ControlBootOffset, []byte{BootMarkerInit})
	after := time.Now()
	first, ok := c.BootTime()
	if !ok || first.Before(before) || first.After(after) {
		t.Fatalf("BootTime = %v, %v; want within [%v, %v]", first, ok, before, after)
	}
	c.Write(ControlBootOffset, []byte{7})
	if bt, _ := c.BootTime(); !bt.Equal(first) {
		t.Error("a later marker moved BootTime")
	}
	if len(marks) != 2 || marks[0] != BootMarkerInit || marks[1] != 7 {
		t.Errorf("marker callback got %v", marks)
	}
	NewControlPort(nil, nil).Write(ControlBootOffset, []byte{1}) // nil callback
}

func TestControlPortExit(t *testing.T) {
	tests := []struct {
		name string
		off  uint64
		data []byte
		want int64 // -1: ignored
	}{
		{"outl", ControlExitOffset, []byte{3, 0, 0, 0}, 3},
		{"outl 255", ControlExitOffset, []byte{255, 0, 0, 0}, 255},
		{"outl high bytes", ControlExitOffset, []byte{1, 2, 3, 4}, 0x04030201},
		{"outb", ControlExitOffset, []byte{42}, 42},
		{"outw", ControlExitOffset, []byte{1, 1}, 0x101},
		{"3 bytes", ControlExitOffset, []byte{1, 1, 1}, -1},
		{"8 bytes", ControlExitOffset, make([]byte, 8), -1},
		{"wrong offset", ControlExitOffset + 1, []byte{1, 0, 0, 0}, -1},
		{"marker offset", ControlBootOffset, []byte{1, 0, 0, 0}, -1},
		{"magic offset", ControlMagicOffset, []byte{1, 0, 0, 0}, -1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := int64(-1)
			calls := 0
			c := NewControlPort(nil, func(s uint32) { got = int64(s); calls++ })
			c.Write(tt.off, tt.data)
			if got != tt.want {
				t.Errorf("exit status %d, want %d", got, tt.want)
			}
			st, ok := c.ExitStatus()
			if ok != (tt.want >= 0) || (ok && int64(st) != tt.want) || calls > 1 {
				t.Errorf("ExitStatus = %d, %v after %d calls", st, ok, calls)
			}
		})
	}
	NewControlPort(nil, nil).Write(ControlExitOffset, []byte{0, 0, 0, 0}) // nil callback
}
