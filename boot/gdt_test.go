package boot

import (
	"testing"
)

func TestDescriptorRoundTrip(t *testing.T) {
	tests := []struct {
		name string
		seg  Segment
		want uint64
	}{
		{"64-bit code", codeSegment(BzImage64), 0x00AF9B000000FFFF},
		{"32-bit code", codeSegment(PVH), 0x00CF9B000000FFFF},
		{"data", dataSegment(), 0x00CF93000000FFFF},
		{"TSS", tssSegment(), 0x00008B0000000067},
		{"odd", Segment{Base: 0x12345678, Limit: 0xABCDE, Type: 5, Present: 1, DPL: 3, S: 1, AVL: 1}, 0x121AF5345678BCDE},
	}
	for _, tt := range tests {
		d := descriptor(tt.seg)
		if d != tt.want {
			t.Errorf("%s: descriptor = %#016x, want %#016x", tt.name, d, tt.want)
		}
		if got := decodeDescriptor(d, tt.seg.Selector); got != tt.seg {
			t.Errorf("%s: decode = %+v, want %+v", tt.name, got, tt.seg)
		}
	}
}

func TestProtocolString(t *testing.T) {
	for p, want := range map[Protocol]string{BzImage64: "bzImage-64", PVH: "PVH", 0: "Protocol(0)", 7: "Protocol(7)"} {
		if got := p.String(); got != want {
			t.Errorf("Protocol(%d).String() = %q, want %q", int(p), got, want)
		}
	}
}

func TestGDTInMemory(t *testing.T) {
	for _, tt := range []struct {
		proto  Protocol
		image  []byte
		wantCS uint64
		cs     Segment
	}{
		{BzImage64, defaultBz().build(), 0x00AF9B000000FFFF,
			Segment{Limit: 0xFFFFFFFF, Selector: 0x10, Type: 0xB, Present: 1, S: 1, L: 1, G: 1}},
		{PVH, defaultELF().build(), 0x00CF9B000000FFFF,
			Segment{Limit: 0xFFFFFFFF, Selector: 0x10, Type: 0xB, Present: 1, S: 1, DB: 1, G: 1}},
	} {
		t.Run(tt.proto.String(), func(t *testing.T) {
			mem := newMem(t, 64*mib)
			e, err := load(mem, tt.image, nil, "", 1)
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			if e.Protocol != tt.proto {
				t.Fatalf("protocol %v", e.Protocol)
			}
			if e.GDTBase != GDTAddr || e.GDTLimit != 6*8-1 {
				t.Errorf("GDT %#x/%d", e.GDTBase, e.GDTLimit)
			}
			desc := func(sel uint16) uint64 {
				d, err := mem.Uint64(e.GDTBase + uint64(sel))
				if err != nil {
					t.Fatal(err)
				}
				return d
			}
			if desc(0) != 0 || desc(8) != 0 || desc(0x28) != 0 {
				t.Errorf("null/unused/TSS-high entries not zero")
			}
			if d := desc(e.CS.Selector); d != tt.wantCS {
				t.Errorf("CS descriptor %#016x, want %#016x", d, tt.wantCS)
			}
			if d := desc(e.DS.Selector); d != 0x00CF93000000FFFF {
				t.Errorf("DS descriptor %#016x", d)
			}
			if e.CS != tt.cs {
				t.Errorf("CS = %+v, want %+v", e.CS, tt.cs)
			}
			wantDS := Segment{Limit: 0xFFFFFFFF, Selector: 0x18, Type: 3, Present: 1, DB: 1, S: 1, G: 1}
			if e.DS != wantDS {
				t.Errorf("DS = %+v, want %+v", e.DS, wantDS)
			}
			for _, s := range []Segment{e.CS, e.DS, e.TR} {
				if got := decodeDescriptor(desc(s.Selector), s.Selector); got != s {
					t.Errorf("GDT entry %#x decodes to %+v, entry has %+v", s.Selector, got, s)
				}
			}
			if e.TR.Selector != 0x20 || e.TR.Type != 0xB || e.TR.S != 0 || e.TR.Limit != 0x67 {
				t.Errorf("TR = %+v", e.TR)
			}
		})
	}
}
