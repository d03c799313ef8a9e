package main

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"
)

// okRun is a successful run with the given time to init, guest uptime, CPU
// time and memory overhead.
func okRun(vmm string, round int, init, guest, cpu, mem float64) Run {
	r := Run{VMM: vmm, Round: round, OK: true, TimeToInit: ptr(init), GuestUptime: ptr(guest),
		CPUTotal: ptr(cpu), CPUToInit: ptr(cpu / 2), MemOverheadMiB: ptr(mem), Wall: ptr(init + 1),
		Ending: "exit status 0"}
	if vmm == nameVessel {
		r.BootToInitMS = ptr(guest * 900)
		r.Exits = map[string]uint64{"io": 100, "hlt": 3}
		r.ExitsTotal = ptr(103)
	}
	return r
}

func testResults() *Results {
	res := &Results{
		Date: time.Date(2026, 11, 22, 9, 0, 0, 0, time.UTC),
		Platform: Platform{Kind: "nested KVM (kvm_amd) in QEMU TCG software emulation", CPUModel: "QEMU TCG CPU version 2.5+",
			CPUs: 2, KVMModule: "kvm_amd", HostKernel: "6.1.192", GuestKernel: "6.1.192 (root@vm)"},
		Setup: Setup{Kernel: "bzImage", Initrd: "initramfs.cpio", CPUs: 1, MemMiB: 256, Runs: 3, Warmup: 1,
			Timeout: "2m0s", GuestArgv: guestArgv, VMMs: []string{nameVessel, nameGokvm, nameQEMU},
			Commands: map[string]string{}, Cmdlines: map[string]string{}},
	}
	res.Runs = []Run{
		// Warm-up runs never count, even when they are outliers.
		{VMM: nameVessel, Warmup: true, OK: true, TimeToInit: ptr(99)},
		okRun(nameVessel, 1, 4, 1.0, 2, 10),
		okRun(nameVessel, 2, 5, 1.2, 3, 12),
		okRun(nameVessel, 3, 6, 1.1, 4, 11),
		{VMM: nameGokvm, Round: 1, Error: "no uptime line within 2m0s | piped", InitProbe: ptr(15.5)},
		{VMM: nameGokvm, Round: 2, Error: "no uptime line within 2m0s | piped"},
		{VMM: nameGokvm, Round: 3, Error: "the guest stopped without printing the uptime line"},
		okRun(nameQEMU, 1, 8, 2.0, 1, 20),
		okRun(nameQEMU, 2, 10, 2.4, 2, 22),
		{VMM: nameQEMU, Round: 3, Error: "crashed"},
	}
	return res
}

// row returns the table row whose title starts with prefix, split into
// cells.
func row(t *testing.T, table, prefix string) []string {
	t.Helper()
	for _, l := range strings.Split(table, "\n") {
		if strings.HasPrefix(l, "| "+prefix) {
			cells := strings.Split(strings.Trim(l, "|"), " | ")
			for i := range cells {
				cells[i] = strings.TrimSpace(cells[i])
			}
			return cells
		}
	}
	t.Fatalf("no row %q in\n%s", prefix, table)
	return nil
}

func TestRenderTable(t *testing.T) {
	var b bytes.Buffer
	RenderTable(&b, testResults())
	table := b.String()
	lines := strings.Split(strings.TrimSpace(table), "\n")
	if len(lines) != 2+len(metrics) {
		t.Fatalf("table has %d lines, want %d:\n%s", len(lines), 2+len(metrics), table)
	}
	hdr := "| metric | vessel median (min-max) | gokvm median (min-max) | QEMU microvm median (min-max) | vessel/gokvm | vessel/QEMU microvm | goal |"
	if lines[0] != hdr {
		t.Errorf("header\n%s\nwant\n%s", lines[0], hdr)
	}

	init := row(t, table, "time to init")
	// vessel 4,5,6 -> 5.00; gokvm failed everywhere (the most common reason,
	// with '|' escaped); QEMU 8,10 (one failure) -> 9.00 over 2 of 3 runs.
	want := []string{"5.00 (4.00-6.00)",
		`FAILED (3/3 runs): no uptime line within 2m0s \| piped (and 1 other errors)`,
		"9.00 (8.00-10.00) [2/3 runs]", "n/a", "0.56x",
		"≤ 0.5x gokvm: no data; ≤ 0.8x QEMU microvm: met"}
	if got := init[1:]; strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("time-to-init row\n%q\nwant\n%q", got, want)
	}

	guest := row(t, table, "guest boot time")
	if guest[1] != "1.10 (1.00-1.20)" || guest[2] != "failed" || guest[3] != "2.20 (2.00-2.40) [2/3 runs]" || guest[5] != "0.50x" || guest[6] != "≤ 1.0x gokvm: no data; ≤ 1.0x QEMU microvm: met" {
		t.Errorf("guest row %q", guest)
	}
	b2i := row(t, table, "vessel boot_to_init")
	if b2i[1] != "990 (900-1080)" || b2i[2] != "n/a" || b2i[3] != "n/a" || b2i[4] != "" {
		t.Errorf("boot_to_init row %q", b2i)
	}
	exits := row(t, table, "userspace exits")
	if exits[1] != "103 (103-103)" || exits[3] != "n/a" {
		t.Errorf("exits row %q", exits)
	}
	mem := row(t, table, "VMM memory overhead")
	if mem[1] != "11.0 (10.0-12.0)" || mem[3] != "21.0 (20.0-22.0) [2/3 runs]" || mem[5] != "0.52x" {
		t.Errorf("memory row %q", mem)
	}
}

func TestRenderTableGoalMet(t *testing.T) {
	res := testResults()
	res.Runs = []Run{
		okRun(nameVessel, 1, 4, 1, 1, 1), okRun(nameGokvm, 1, 10, 1, 1, 1), okRun(nameQEMU, 1, 3, 1, 1, 1),
	}
	var b bytes.Buffer
	RenderTable(&b, res)
	init := row(t, b.String(), "time to init")
	if init[4] != "0.40x" || init[5] != "1.33x" || init[6] != "≤ 0.5x gokvm: met; ≤ 0.8x QEMU microvm: not met" {
		t.Errorf("row %q", init)
	}
	// An absolute goal: Firecracker's 5 MiB for the VMM's own memory.
	if mem := row(t, b.String(), "VMM memory overhead"); mem[6] != "≤ 5 MiB: met" {
		t.Errorf("memory row %q", mem)
	}
	res.Runs[0].MemOverheadMiB = ptr(6.1)
	b.Reset()
	RenderTable(&b, res)
	if mem := row(t, b.String(), "VMM memory overhead"); mem[6] != "≤ 5 MiB: not met" {
		t.Errorf("memory row over the goal %q", mem)
	}
}

func TestRenderTableWithoutVessel(t *testing.T) {
	res := testResults()
	res.Setup.VMMs = []string{nameQEMU}
	var b bytes.Buffer
	RenderTable(&b, res)
	if strings.Contains(b.String(), "vessel/") || strings.Contains(b.String(), "goal") {
		t.Errorf("ratios without vessel:\n%s", b.String())
	}
}

func TestReportJSONRoundTrip(t *testing.T) {
	res := testResults()
	var b bytes.Buffer
	if err := RenderReport(&b, res); err != nil {
		t.Fatal(err)
	}
	report := b.String()
	for _, s := range []string{"nested KVM (kvm_amd) in QEMU TCG", "## Failed runs", "gokvm (run 3): the guest stopped", "gokvm (run 1, run 2): no uptime line", "io 100, hlt 3", "control-port probe showed up on its console 15.50 (15.50-15.50) s"} {
		if !strings.Contains(report, s) {
			t.Errorf("report lacks %q", s)
		}
	}
	raw, err := ExtractJSON(strings.NewReader("testvm: platform: ...\n" + report + "testvm: done\n"))
	if err != nil {
		t.Fatal(err)
	}
	var back Results
	if err := json.Unmarshal(raw, &back); err != nil {
		t.Fatal(err)
	}
	if len(back.Runs) != len(res.Runs) || *back.Runs[1].TimeToInit != 4 || back.Runs[4].Error != res.Runs[4].Error {
		t.Errorf("round trip lost data: %+v", back.Runs)
	}
	if _, err := ExtractJSON(strings.NewReader("# no json here\n")); err == nil {
		t.Error("ExtractJSON found JSON in a report without any")
	}
	if _, err := ExtractJSON(strings.NewReader("```json\n{\"runs\": [\n")); err == nil {
		t.Error("ExtractJSON accepted an unterminated block")
	}
}
