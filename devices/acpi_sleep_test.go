package devices

import "testing"

func TestACPISleep(t *testing.T) {
	for _, tc := range []struct {
		name  string
		off   uint64
		data  []byte
		power bool
	}{
		{"S5 with SLP_EN", 0, []byte{5<<2 | 1<<5}, true},
		{"S5 without SLP_EN", 0, []byte{5 << 2}, false},
		{"S3 with SLP_EN", 0, []byte{3<<2 | 1<<5}, false},
		{"clear WAK_STS", 0, []byte{0x80}, false},
		{"wide write", 0, []byte{5<<2 | 1<<5, 0xff, 0xff, 0xff}, true},
		{"other offset", 1, []byte{5<<2 | 1<<5}, false},
		{"empty", 0, nil, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var n int
			a := NewACPISleep(5, func() { n++ })
			a.Write(tc.off, tc.data)
			if (n == 1) != tc.power {
				t.Fatalf("power-off calls %d, want %v", n, tc.power)
			}
			b := []byte{0xff, 0xff}
			a.Read(0, b)
			if b[0] != 0 || b[1] != 0 {
				t.Fatalf("status read % x, want zeros", b)
			}
		})
	}
}
