package main

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/vesselvm/vessel/guest/cmdline"
)

func TestParseCmdlineHelp(t *testing.T) {
	help := `Flags:
      --cmdline string   kernel command line (vessel appends its vessel.* parameters) (default "console=ttyS0 quiet x=\"y\"")
      --cpus int         number of vCPUs (default 1)
`
	got, err := ParseCmdlineHelp(help)
	if err != nil || got != `console=ttyS0 quiet x="y"` {
		t.Errorf("ParseCmdlineHelp = %q, %v", got, err)
	}
	if _, err := ParseCmdlineHelp("--cpus int (default 1)"); err == nil {
		t.Error("ParseCmdlineHelp found a default in help without --cmdline")
	}
}

func TestSpecs(t *testing.T) {
	cfg := &config{VMMs: []string{nameQEMU, nameVessel, nameGokvm}, Vessel: "v", Gokvm: "g", QEMU: "q",
		Kernel: "K", Initrd: "I", MemMiB: 256, GokvmExtra: "notsc tsc_early_khz=auto", QEMUACPI: "auto"}
	specs, notes, err := buildSpecs(cfg, DefaultCmdline, 2445448)
	if err != nil || len(notes) != 0 {
		t.Fatal(err, notes)
	}
	if len(specs) != 3 || specs[0].Name != nameQEMU || specs[1].Name != nameVessel {
		t.Fatalf("specs out of order: %+v", specs)
	}
	// Every guest gets vessel's command line with the same vessel.cmd.
	for _, s := range specs {
		if !strings.HasPrefix(s.Cmdline, DefaultCmdline+" ") {
			t.Errorf("%s cmdline %q", s.Name, s.Cmdline)
		}
		spec, err := cmdline.Decode(s.Cmdline)
		if err != nil || !slices.Equal(spec.Argv, guestArgv) || spec.TTY {
			t.Errorf("%s: decoded %+v, %v", s.Name, spec, err)
		}
	}
	if !strings.HasSuffix(specs[2].Cmdline, " notsc tsc_early_khz=2445448") || strings.Contains(specs[0].Cmdline, "notsc") {
		t.Error("--gokvm-extra must reach gokvm only")
	}
	qa := strings.Join(specs[0].Args(""), " ")
	for _, s := range []string{"microvm,x-option-roms=off,rtc=off,isa-serial=on,acpi=on", "-m 256", "-smp 1", "-kernel K", "-initrd I"} {
		if !strings.Contains(qa, s) {
			t.Errorf("qemu args %q lack %q", qa, s)
		}
	}
	va := specs[1].Args("M.json")
	if want := []string{"vm", "run", "--metrics", "M.json", "--kernel", "K", "--initrd", "I", "--cpus", "1", "--memory", "256M", "--", "cat", "/proc/uptime"}; !slices.Equal(va, want) {
		t.Errorf("vessel args %q", va)
	}
	ga := specs[2].Args("")
	if !slices.Contains(ga, "-p") || ga[len(ga)-3] != "256M" || specs[2].ExitsOnItsOwn {
		t.Errorf("gokvm args %q", ga)
	}
}

// gokvm copies the initrd to a fixed 240 MiB: an initrd that would not
// fit below the guest's RAM end gets gokvm more RAM, said in a note (and
// the guest-RAM mapping is looked for at that size).
func TestGokvmMemoryForInitrd(t *testing.T) {
	for _, tc := range []struct {
		size int64
		want int
	}{
		{1 << 20, 256},
		{16 << 20, 256},
		{16<<20 + 1, 320},
		{17 << 20, 320},
		{80 << 20, 320},
		{81 << 20, 384},
	} {
		if got := gokvmMemFor(tc.size); got != tc.want {
			t.Errorf("gokvmMemFor(%d MiB) = %d, want %d", tc.size>>20, got, tc.want)
		}
	}
	initrd := filepath.Join(t.TempDir(), "initrd")
	if err := os.WriteFile(initrd, make([]byte, 17<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg := &config{VMMs: []string{nameVessel, nameGokvm}, Kernel: "K", Initrd: initrd, MemMiB: 256}
	specs, notes, err := buildSpecs(cfg, DefaultCmdline, 0)
	if err != nil {
		t.Fatal(err)
	}
	if specs[0].MemMiB != 256 || specs[1].MemMiB != 320 || len(notes) != 1 || !strings.Contains(notes[0], "320 MiB") {
		t.Errorf("vessel %d MiB, gokvm %d MiB, notes %q", specs[0].MemMiB, specs[1].MemMiB, notes)
	}
	if ga := strings.Join(specs[1].Args(""), " "); !strings.Contains(ga, "-m 320M") {
		t.Errorf("gokvm args %q", ga)
	}
}

func TestQEMUACPIFollowsCmdline(t *testing.T) {
	cfg := &config{VMMs: []string{nameQEMU, nameVessel}, Kernel: "K", Initrd: "I", MemMiB: 256, QEMUACPI: "auto",
		Cmdline: "console=ttyS0 acpi=off"}
	specs, _, err := buildSpecs(cfg, cfg.Cmdline, 0)
	if err != nil {
		t.Fatal(err)
	}
	if qa := strings.Join(specs[0].Args(""), " "); !strings.Contains(qa, "acpi=off") || specs[0].ExitsOnItsOwn {
		t.Errorf("qemu with acpi=off guest: %q", qa)
	}
	if va := strings.Join(specs[1].Args("m"), " "); !strings.Contains(va, "--cmdline 'console=ttyS0 acpi=off'") && !strings.Contains(va, "--cmdline console=ttyS0 acpi=off --") {
		t.Errorf("vessel does not get --cmdline: %q", va)
	}
}

func TestHasParam(t *testing.T) {
	for _, c := range []struct {
		cl, p string
		want  bool
	}{
		{"quiet acpi=off", "acpi=off", true},
		{"quiet acpi=off acpi=on", "acpi=off", false},
		{"quiet noacpi=off", "acpi=off", false},
		{"", "acpi=off", false},
	} {
		if got := hasParam(c.cl, c.p); got != c.want {
			t.Errorf("hasParam(%q, %q) = %v", c.cl, c.p, got)
		}
	}
}

func TestExpandGokvmExtra(t *testing.T) {
	if got, notes := expandGokvmExtra("notsc tsc_early_khz=auto", 2000); got != "notsc tsc_early_khz=2000" || len(notes) != 0 {
		t.Errorf("got %q %q", got, notes)
	}
	if got, notes := expandGokvmExtra("tsc_early_khz=auto", 0); got != "" || len(notes) != 1 {
		t.Errorf("unknown kHz: got %q %q", got, notes)
	}
}
