package main

import (
	"os"
	"path/filepath"
	"reflect"
	"testing"
)

func TestParseInterrupts(t *testing.T) {
	tests := []struct {
		name string
		text string
		devs map[string]string
		want irqCounts
	}{
		{
			name: "one CPU, IO-APIC lines",
			text: "           CPU0       \n  0:         45   IO-APIC   2-edge      timer\n  4:        123   IO-APIC   4-edge      ttyS0\n" +
				"  5:      10000   IO-APIC   5-edge      virtio0\n  6:        77   IO-APIC   6-edge      virtio1\nNMI:          0   Non-maskable interrupts\n" +
				"LOC:       1234   Local timer interrupts\nERR:          0\nMIS:          0\n",
			devs: map[string]string{"virtio0": "block", "virtio1": "net"},
			want: irqCounts{"block": 10000, "net": 77},
		},
		{
			name: "two CPUs, a shared line and MSI vectors",
			text: "           CPU0       CPU1       \n 24:          1          2   PCI-MSI 49152-edge      virtio0-config\n" +
				" 25:         10         20   PCI-MSI 49153-edge      virtio0-input.0\n 26:        100        200   IO-APIC  11-fasteoi   virtio1, virtio2\n" +
				" 27:       1000       2000   IO-APIC  12-fasteoi   virtio10\n",
			devs: map[string]string{"virtio0": "net", "virtio1": "block", "virtio2": "vsock", "virtio10": "rng"},
			want: irqCounts{"net": 33, "block": 300, "vsock": 300, "rng": 3000},
		},
		{
			name: "no virtio line",
			text: "  CPU0\n  0:  45  IO-APIC  2-edge  timer\n",
			devs: map[string]string{"virtio0": "block"},
			want: irqCounts{},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			lines, err := parseInterrupts(tc.text)
			if err != nil {
				t.Fatal(err)
			}
			if got := countByType(lines, tc.devs); !reflect.DeepEqual(got, tc.want) {
				t.Errorf("countByType = %v, want %v", got, tc.want)
			}
		})
	}
	for _, bad := range []string{"", "\n"} {
		if _, err := parseInterrupts(bad); err == nil {
			t.Errorf("parseInterrupts(%q) accepted", bad)
		}
	}
}

func TestIRQCountsSub(t *testing.T) {
	got := irqCounts{"block": 10, "net": 5}.sub(irqCounts{"block": 4})
	if want := (irqCounts{"block": 6, "net": 5}); !reflect.DeepEqual(got, want) {
		t.Errorf("sub = %v, want %v", got, want)
	}
}

func TestParseIRQs(t *testing.T) {
	tests := []struct {
		name, out string
		want      irqCounts
		bad       bool
	}{
		{"none", "RESULT {}\n", nil, false},
		{"last wins", "IRQS {\"block\":1}\r\n[ 1.0] x IRQS {\"block\":5,\"net\":2}\n", irqCounts{"block": 5, "net": 2}, false},
		{"empty object", "IRQS {}\n", irqCounts{}, false},
		{"broken", "IRQS {block\n", nil, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseIRQs(tc.out)
			if (err != nil) != tc.bad {
				t.Fatalf("err %v", err)
			}
			if !tc.bad && !reflect.DeepEqual(got, tc.want) {
				t.Errorf("parseIRQs = %#v, want %#v", got, tc.want)
			}
		})
	}
}

func TestVirtioDevices(t *testing.T) {
	root := t.TempDir()
	for name, id := range map[string]string{"virtio0": "0x0002\n", "virtio1": "0x0001\n", "virtio2": "0x0013\n", "virtio3": "0x002a\n"} {
		os.MkdirAll(filepath.Join(root, name), 0o755)
		os.WriteFile(filepath.Join(root, name, "device"), []byte(id), 0o644)
	}
	got, err := virtioDevices(root)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"virtio0": "block", "virtio1": "net", "virtio2": "vsock", "virtio3": "virtio-42"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("virtioDevices = %v, want %v", got, want)
	}
	os.WriteFile(filepath.Join(root, "virtio0", "device"), []byte("zz"), 0o644)
	if _, err := virtioDevices(root); err == nil {
		t.Error("a bad device id was accepted")
	}
	if _, err := virtioDevices(filepath.Join(root, "none")); err == nil {
		t.Error("a missing directory was accepted")
	}
}
