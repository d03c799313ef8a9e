package main

import (
	"reflect"
	"strings"
	"testing"

	"github.com/vesselvm/vessel/guest/cmdline"
	"github.com/vesselvm/vessel/vmm"
)

func TestDeviceArgs(t *testing.T) {
	opts := qemuOpts{Kernel: "/k", Initrd: "/i", ACPI: "on", AIO: "io_uring", Cache: "writeback"}
	tests := []struct {
		name   string
		d      vmDevices
		vessel []string
		qemu   []string // after the common arguments
		nets   []cmdline.Net
	}{
		{name: "none"},
		{
			name:   "disk",
			d:      vmDevices{Disk: "/tmp/a,b.img"},
			vessel: []string{"--disk", "/tmp/a,b.img"},
			qemu:   []string{"-drive", "file=/tmp/a,,b.img,format=raw,if=none,id=d0,cache=writeback,aio=io_uring", "-device", "virtio-blk-device,drive=d0"},
		},
		{
			name:   "tap",
			d:      vmDevices{Tap: "tap0", TapAddr: "172.31.0.2/24", TapGW: "172.31.0.1"},
			vessel: []string{"--net", "tap=tap0,ip=172.31.0.2/24,gw=172.31.0.1,mac=" + guestMAC},
			qemu:   []string{"-netdev", "tap,id=n0,ifname=tap0,script=no,downscript=no", "-device", "virtio-net-device,netdev=n0,mac=" + guestMAC},
			nets:   []cmdline.Net{{MAC: guestMAC, Addr: "172.31.0.2/24", Gateway: "172.31.0.1"}},
		},
		{
			name:   "user",
			d:      vmDevices{UserPort: 4000},
			vessel: []string{"--net", "user,publish=127.0.0.1:4000:5201,mac=" + guestMAC + ",host-loopback"},
			qemu:   []string{"-netdev", "user,id=n1,hostfwd=tcp:127.0.0.1:4000-:5201", "-device", "virtio-net-device,netdev=n1,mac=" + guestMAC},
			nets:   []cmdline.Net{{MAC: guestMAC, Addr: "10.0.2.15/24", Gateway: "10.0.2.2", DNS: []string{"10.0.2.3"}}},
		},
		{
			name:   "vsock",
			d:      vmDevices{VsockUDS: "/tmp/v.sock", VsockCID: 42},
			vessel: []string{"--vsock", "/tmp/v.sock"},
			qemu:   []string{"-device", "vhost-vsock-device,guest-cid=42"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := vesselArgs(tc.d); !reflect.DeepEqual(got, tc.vessel) {
				t.Errorf("vesselArgs = %q, want %q", got, tc.vessel)
			}
			all := qemuArgs(opts, tc.d, "CMDLINE", "/tmp/q.sock")
			i := indexOf(all, "CMDLINE")
			if i < 0 || all[i-1] != "-append" {
				t.Fatalf("no -append CMDLINE in %q", all)
			}
			if got := all[i+1:]; !(len(got) == 0 && len(tc.qemu) == 0) && !reflect.DeepEqual(got, tc.qemu) {
				t.Errorf("QEMU device args = %q, want %q", got, tc.qemu)
			}
			if got := qemuGuestNets(tc.d); !reflect.DeepEqual(got, tc.nets) {
				t.Errorf("qemuGuestNets = %+v, want %+v", got, tc.nets)
			}
		})
	}
}

func indexOf(l []string, s string) int {
	for i, x := range l {
		if x == s {
			return i
		}
	}
	return -1
}

func TestQEMUCommonArgs(t *testing.T) {
	a := strings.Join(qemuArgs(qemuOpts{Kernel: "/k", Initrd: "/i", ACPI: "off"}, vmDevices{}, "x", "/tmp/q,s"), " ")
	for _, want := range []string{
		"-M microvm,x-option-roms=off,rtc=off,isa-serial=on,acpi=off",
		"-accel kvm -cpu host -m 512 -smp 1",
		"-no-reboot -no-shutdown",
		"-qmp unix:/tmp/q,,s,server=on,wait=on",
		"-kernel /k -initrd /i -append x",
	} {
		if !strings.Contains(a, want) {
			t.Errorf("QEMU args lack %q: %s", want, a)
		}
	}
}

func TestQEMUCmdline(t *testing.T) {
	nets := []cmdline.Net{{MAC: guestMAC, Addr: "172.31.0.2/24"}}
	cl, err := qemuCmdline([]string{"/benchio", "guest", "idle"}, nets)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(cl, vmm.DefaultCmdline+" ") || strings.Contains(cl, cmdline.ParamControl+"=1") {
		t.Errorf("command line %q", cl)
	}
	spec, err := cmdline.Decode(cl)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(spec.Argv, " ") != "/benchio guest idle" || spec.TTY || spec.Control || !reflect.DeepEqual(spec.Net, nets) {
		t.Errorf("decoded %+v", spec)
	}
	if _, err := qemuCmdline([]string{"x"}, []cmdline.Net{{MAC: "bad"}}); err == nil {
		t.Error("a bad network was encoded")
	}
}

func TestQEMUACPI(t *testing.T) {
	for flag, want := range map[string]string{"on": "on", "off": "off", "auto": "on"} {
		if got := qemuACPI(flag); got != want {
			t.Errorf("qemuACPI(%q) = %q, want %q", flag, got, want)
		}
	}
}
