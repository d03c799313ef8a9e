package vmm

import "testing"

// TestVirtioGSIs checks that every virtio device MaxVirtioDevices counts
// has an interrupt line of its own, apart from the serial port's (4).
func TestVirtioGSIs(t *testing.T) {
	if len(virtioGSIs) != MaxVirtioDevices {
		t.Fatalf("%d interrupt lines for %d devices", len(virtioGSIs), MaxVirtioDevices)
	}
	seen := map[uint32]bool{}
	for _, g := range virtioGSIs {
		if g < 5 || g > 23 || seen[g] {
			t.Errorf("GSI %d: taken or outside the I/O APIC's free pins", g)
		}
		seen[g] = true
	}
}
