package main

import (
	"math"
	"strings"
	"testing"
	"time"
)

func TestParseResults(t *testing.T) {
	out := "[    1.0] boot\nRESULT {\"name\":\"tcp recv\",\"bytes\":1048576,\"seconds\":0.5}\r\nnoise RESULT {\"name\":\"x\",\"bytes\":2,\"ops\":4,\"seconds\":2}\n"
	rs, err := parseResults(out)
	if err != nil || len(rs) != 2 {
		t.Fatalf("parseResults: %v %v", rs, err)
	}
	if rs[0].MiBps() != 2 || rs[1].IOPS() != 2 {
		t.Errorf("rates: %v MiB/s, %v IOPS", rs[0].MiBps(), rs[1].IOPS())
	}
	if _, err := parseResults("RESULT {broken"); err == nil {
		t.Error("a broken RESULT line parsed")
	}
	if (Result{}).MiBps() != 0 || (Result{}).IOPS() != 0 {
		t.Error("zero-time result has a rate")
	}
}

func TestParseFlags(t *testing.T) {
	cfg, err := parseFlags([]string{"-size-mib", "8", "-runs", "1", "-workloads", "block,vsock"})
	if err != nil || cfg.Size != 8<<20 || !cfg.Workloads["block"] || cfg.Workloads["tap"] {
		t.Fatalf("parseFlags: %+v %v", cfg, err)
	}
	if strings.Join(cfg.VMMs, ",") != "vessel,qemu" || cfg.QEMUACPI != "auto" || cfg.QEMUCache != "writeback" {
		t.Errorf("defaults: VMMs %v, acpi %q, cache %q", cfg.VMMs, cfg.QEMUACPI, cfg.QEMUCache)
	}
	for _, tc := range []struct {
		args []string
		vmms string
	}{
		{[]string{"-vmms", "qemu"}, "qemu"},
		{[]string{"-vmms", "qemu,vessel,qemu"}, "qemu,vessel"},
	} {
		cfg, err := parseFlags(tc.args)
		if err != nil || strings.Join(cfg.VMMs, ",") != tc.vmms {
			t.Errorf("parseFlags(%v): VMMs %v, %v; want %s", tc.args, cfg, err, tc.vmms)
		}
	}
	for _, bad := range [][]string{{"-workloads", "disk"}, {"-runs", "0"}, {"-size-mib", "0"}, {"-vmms", "gokvm"}, {"-qemu-acpi", "maybe"}, {"stray"}} {
		if _, err := parseFlags(bad); err == nil {
			t.Errorf("parseFlags(%v) accepted", bad)
		}
	}
}

func TestRenderMarkdown(t *testing.T) {
	r := &report{
		Platform: "test platform",
		VMMs:     []string{vmmVessel, vmmQEMU},
		Setup:    []string{"same kernel"},
		Rows: []row{
			{Area: "block", Name: "seq read", Unit: "MiB/s", Guest: map[string]float64{vmmVessel: 50, vmmQEMU: 40}, Host: 100, HostWhat: "file"},
			{Area: "vsock", Name: "guest -> host", Unit: "MiB/s", Guest: map[string]float64{vmmVessel: 20}, Missing: map[string]string{vmmQEMU: "no /dev/vhost-vsock"}, Host: 80, HostWhat: "unix"},
		},
		Cost: []cost{
			{Run: "block", Device: "block", VMM: map[string]*vmmCost{
				vmmVessel: {MiB: 64, KVM: map[string]float64{"exits": 200, "mmio_exits": 10}, GuestIRQs: 5, UserExits: 2, Notifies: 18, SavedVsExitAll: 10},
				vmmQEMU:   {MiB: 60, KVM: map[string]float64{"exits": 400}, GuestIRQs: -1},
			}},
			{Run: "vsock guest -> host", Device: "vsock", VMM: map[string]*vmmCost{vmmVessel: {MiB: 8, GuestIRQs: 3}}, Missing: map[string]string{vmmQEMU: "no /dev/vhost-vsock"}},
		},
		Notes: []string{"Retried once: x."},
		Took:  90 * time.Second,
	}
	md := renderMarkdown(r)
	for _, want := range []string{
		"test platform",
		"- same kernel",
		"| block | seq read | 50.0 MiB/s | 40.0 MiB/s | 1.25x | 100.0 MiB/s | 0.50x, 0.40x | file |",
		"| vsock | guest -> host | 20.0 MiB/s | n/a | - | 80.0 MiB/s | 0.25x, - | unix |",
		"Not measured: QEMU microvm: no /dev/vhost-vsock.",
		"| block | 64 / 60 | 200.0 | 400.0 | 0.50x | 5.0 | - | - |",
		"| vsock guest -> host | 8 / - | - | n/a | - | 3.0 | n/a | - |",
		"| block | vessel | 200.0 | 10.0 | 0.0 |",
		"| block | 2.0 | 0.0 | 18.0 | 10.0x |",
		"Retried once: x.",
		"Took 1m30s",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("report lacks %q:\n%s", want, md)
		}
	}
	if strings.Count(md, "Not measured") != 1 {
		t.Errorf("the missing reason is not listed once:\n%s", md)
	}
}

func TestRenderMarkdownVesselOnly(t *testing.T) {
	r := &report{VMMs: []string{vmmVessel}, Rows: []row{{Area: "block", Name: "seq", Unit: "MiB/s", Guest: map[string]float64{vmmVessel: 5}, Host: 10}}}
	md := renderMarkdown(r)
	if strings.Contains(md, "vessel/QEMU") || !strings.Contains(md, "| block | seq | 5.0 MiB/s | 10.0 MiB/s | 0.50x |") {
		t.Errorf("vessel-only report:\n%s", md)
	}
}

func TestRunCost(t *testing.T) {
	idle := &guestRun{
		kvm:    map[string]uint64{"exits": 1000, "mmio_exits": 100},
		vessel: &metrics{Exits: map[string]uint64{"io": 300}, Devices: []deviceMetrics{{Type: "net", Interrupts: 10, Notifies: 20}}},
	}
	run := &guestRun{
		kvm:    map[string]uint64{"exits": 3000, "mmio_exits": 300},
		irqs:   irqCounts{"net": 40, "block": 7},
		vessel: &metrics{Exits: map[string]uint64{"io": 300, "mmio": 100}, Devices: []deviceMetrics{{Type: "net", Interrupts: 60, Notifies: 920}}},
	}
	tests := []struct {
		name      string
		run, idle *guestRun
		want      vmmCost
	}{
		{"vessel", run, idle, vmmCost{MiB: 10, KVM: map[string]float64{"exits": 200, "mmio_exits": 20}, GuestIRQs: 4, UserExits: 10, Interrupts: 5, Notifies: 90, SavedVsExitAll: 10}},
		{"qemu", &guestRun{kvm: run.kvm, irqs: run.irqs}, &guestRun{kvm: idle.kvm}, vmmCost{MiB: 10, KVM: map[string]float64{"exits": 200, "mmio_exits": 20}, GuestIRQs: 4}},
		{"no counters", &guestRun{}, &guestRun{}, vmmCost{MiB: 10, GuestIRQs: -1}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := runCost("net", 10, tc.run, tc.idle)
			if c.MiB != tc.want.MiB || c.GuestIRQs != tc.want.GuestIRQs || c.UserExits != tc.want.UserExits ||
				c.Interrupts != tc.want.Interrupts || c.Notifies != tc.want.Notifies || c.SavedVsExitAll != tc.want.SavedVsExitAll {
				t.Errorf("cost %+v, want %+v", c, tc.want)
			}
			if (c.KVM == nil) != (tc.want.KVM == nil) {
				t.Fatalf("KVM %v, want %v", c.KVM, tc.want.KVM)
			}
			for k, v := range tc.want.KVM {
				if c.KVM[k] != v {
					t.Errorf("KVM %s = %v, want %v", k, c.KVM[k], v)
				}
			}
		})
	}
}

func TestMedianCost(t *testing.T) {
	if medianCost(nil) != nil {
		t.Error("median of nothing")
	}
	m := medianCost([]vmmCost{
		{MiB: 1, GuestIRQs: 3, KVM: map[string]float64{"exits": 30}},
		{MiB: 2, GuestIRQs: 1, KVM: map[string]float64{"exits": 10}},
		{MiB: 3, GuestIRQs: 2, KVM: map[string]float64{"exits": 20}},
	})
	if m.MiB != 2 || m.GuestIRQs != 2 || m.KVM["exits"] != 20 || math.IsNaN(m.KVM["io_exits"]) {
		t.Errorf("median %+v", m)
	}
}

func TestAddRowMissing(t *testing.T) {
	b := &bench{cfg: &config{VMMs: []string{vmmVessel, vmmQEMU}}, noQEMU: map[string]string{"vsock": "no vhost"}}
	m := newMeasurement()
	m.values[vmmVessel] = []float64{3, 1, 2}
	b.addRow("vsock", "x", "MiB/s", m, []float64{4}, "h")
	b.addRow("block", "y", "MiB/s", m, []float64{4}, "h")
	r := b.rep.Rows
	if r[0].Guest[vmmVessel] != 2 || r[0].Missing[vmmQEMU] != "no vhost" || r[1].Missing[vmmQEMU] != "not measured" || r[0].Host != 4 {
		t.Errorf("rows %+v", r)
	}
	if got := b.vmmsFor("vsock"); len(got) != 1 || got[0] != vmmVessel {
		t.Errorf("vmmsFor(vsock) = %v", got)
	}
	if got := b.vmmsFor("block"); len(got) != 2 {
		t.Errorf("vmmsFor(block) = %v", got)
	}
}

func TestRunOrder(t *testing.T) {
	vmms := []string{vmmVessel, vmmQEMU}
	for i, want := range []string{"vessel,qemu", "qemu,vessel", "vessel,qemu"} {
		if got := strings.Join(runOrder(vmms, i), ","); got != want {
			t.Errorf("runOrder(%d) = %s, want %s", i, got, want)
		}
	}
	if strings.Join(vmms, ",") != "vessel,qemu" {
		t.Error("runOrder changed its argument")
	}
}
