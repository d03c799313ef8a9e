package main

import (
	"fmt"
	"strings"

	"github.com/vesselvm/vessel/guest/cmdline"
)

// DefaultCmdline is vessel's default kernel command line (DefaultCmdline
// in cmd/vessel/vmrun.go; a test keeps the two equal). The peers boot with
// it too, plus the same vessel.* parameters vessel appends, so that every
// VMM boots the same kernel with the same command line.
const DefaultCmdline = "console=ttyS0 reboot=k panic=-1 quiet i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd 8250.nr_uarts=1 pci=off io_delay=none"

// guestArgv is the command every guest runs: it prints the guest's
// uptime, which is both the marker the host waits for and the guest-side
// boot time.
var guestArgv = []string{"cat", "/proc/uptime"}

// VMM names, in the order the runs interleave.
const (
	nameVessel = "vessel"
	nameGokvm  = "gokvm"
	nameQEMU   = "qemu"
)

// allVMMs lists every VMM benchboot knows, in run order.
var allVMMs = []string{nameVessel, nameGokvm, nameQEMU}

// vmmTitle is a VMM's name in the report.
var vmmTitle = map[string]string{
	nameVessel: "vessel",
	nameGokvm:  "gokvm",
	nameQEMU:   "QEMU microvm",
}

// vmmSpec says how to start one VMM.
type vmmSpec struct {
	Name string
	Path string // the executable
	// Args returns the arguments (without argv[0]) of one run; metrics is
	// a file vessel may write its --metrics JSON to.
	Args func(metrics string) []string
	// Cmdline is the guest kernel command line the VMM passes.
	Cmdline string
	// ExitsOnItsOwn is true when the VMM is expected to exit once the
	// guest is done; benchboot kills the others after the guest stopped.
	ExitsOnItsOwn bool
}

// guestCmdline returns vessel's default command line with the vessel.*
// parameters vessel would append for guestArgv on a non-terminal console.
func guestCmdline() (string, error) {
	extra, err := cmdline.Encode(cmdline.Spec{Argv: guestArgv, TTY: false})
	if err != nil {
		return "", fmt.Errorf("encode the guest command: %w", err)
	}
	return DefaultCmdline + " " + extra, nil
}

// buildSpecs returns the specs of the VMMs named in cfg.VMMs, in order.
func buildSpecs(cfg *config) ([]vmmSpec, error) {
	base, err := guestCmdline()
	if err != nil {
		return nil, err
	}
	mem := fmt.Sprintf("%dM", cfg.MemMiB)
	var specs []vmmSpec
	for _, name := range cfg.VMMs {
		switch name {
		case nameVessel:
			specs = append(specs, vmmSpec{
				Name: name, Path: cfg.Vessel, Cmdline: base, ExitsOnItsOwn: true,
				Args: func(metrics string) []string {
					a := []string{"vm", "run", "--metrics", metrics,
						"--kernel", cfg.Kernel, "--initrd", cfg.Initrd,
						"--cpus", "1", "--memory", mem, "--"}
					return append(a, guestArgv...)
				},
			})
		case nameGokvm:
			cl := strings.TrimSpace(base + " " + cfg.GokvmExtra)
			specs = append(specs, vmmSpec{
				Name: name, Path: cfg.Gokvm, Cmdline: cl,
				// gokvm blocks forever (select{}) when stdin is not a
				// terminal, even after every vCPU stopped.
				ExitsOnItsOwn: false,
				Args: func(string) []string {
					return []string{"boot", "-k", cfg.Kernel, "-i", cfg.Initrd,
						"-p", cl, "-m", mem, "-c", "1"}
				},
			})
		case nameQEMU:
			acpi := "off"
			if cfg.QEMUACPI {
				acpi = "on"
			}
			specs = append(specs, vmmSpec{
				Name: name, Path: cfg.QEMU, Cmdline: base,
				// With ACPI, microvm's GED powers off and -no-reboot
				// turns a reboot into an exit; without, the guest halts.
				ExitsOnItsOwn: cfg.QEMUACPI,
				Args: func(string) []string {
					return []string{
						"-M", "microvm,x-option-roms=off,rtc=off,isa-serial=on,acpi=" + acpi,
						"-accel", "kvm", "-cpu", "host", "-m", fmt.Sprint(cfg.MemMiB), "-smp", "1",
						"-nodefaults", "-no-user-config", "-nographic", "-no-reboot",
						"-serial", "stdio",
						"-kernel", cfg.Kernel, "-initrd", cfg.Initrd, "-append", base,
					}
				},
			})
		default:
			return nil, fmt.Errorf("unknown VMM %q (known: %s)", name, strings.Join(allVMMs, ", "))
		}
	}
	return specs, nil
}
