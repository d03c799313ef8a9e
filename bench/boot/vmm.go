package main

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"

	"github.com/vesselvm/vessel/guest/cmdline"
	"github.com/vesselvm/vessel/vmm"
)

// DefaultCmdline is vessel's default kernel command line
// (vmm.DefaultCmdline), used only when the vessel binary under test does
// not tell its own (see vesselCmdline). The peers
// boot with vessel's default too, plus the vessel.* parameters vessel
// appends, so that every VMM boots the same kernel with the same command
// line.
const DefaultCmdline = vmm.DefaultCmdline

// cmdlineHelpRE finds the --cmdline default in `vessel vm run --help`
// (pflag prints a string default Go-quoted).
var cmdlineHelpRE = regexp.MustCompile(`--cmdline string\b.*\(default ("(?:[^"\\]|\\.)*")\)`)

// ParseCmdlineHelp returns the --cmdline default from the text of
// `vessel vm run --help`.
func ParseCmdlineHelp(help string) (string, error) {
	m := cmdlineHelpRE.FindStringSubmatch(help)
	if m == nil {
		return "", errors.New("no --cmdline default in `vessel vm run --help`")
	}
	s, err := strconv.Unquote(m[1])
	if err != nil {
		return "", fmt.Errorf("--cmdline default %s: %w", m[1], err)
	}
	return s, nil
}

// vesselCmdline asks the vessel binary for its default kernel command
// line, so the peers get exactly what this build of vessel boots with.
func vesselCmdline(vessel string) (string, error) {
	out, err := exec.Command(vessel, "vm", "run", "--help").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("%s vm run --help: %w", vessel, err)
	}
	return ParseCmdlineHelp(string(out))
}

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
	// MemMiB is the guest RAM the VMM gives the guest.
	MemMiB int
	// Terminal gives the VMM a pseudo-terminal as its stdin (raw mode is
	// the VMM's business) instead of /dev/null; its stdout stays the
	// console pipe benchboot reads.
	Terminal bool
}

// guestCmdline returns vessel's default command line def with the
// vessel.* parameters vessel appends for guestArgv on a non-terminal
// console.
func guestCmdline(def string) (string, error) {
	extra, err := cmdline.Encode(cmdline.Spec{Argv: guestArgv, TTY: false})
	if err != nil {
		return "", fmt.Errorf("encode the guest command: %w", err)
	}
	return strings.TrimSpace(def + " " + extra), nil
}

// hasParam reports whether the kernel command line cl has parameter p
// (e.g. "acpi=off"); the last occurrence of a key wins, as in the kernel.
func hasParam(cl, p string) bool {
	key, _, _ := strings.Cut(p, "=")
	found := false
	for _, f := range strings.Fields(cl) {
		if k, _, _ := strings.Cut(f, "="); k == key {
			found = f == p
		}
	}
	return found
}

// expandGokvmExtra replaces tsc_early_khz=auto in extra with the host's
// TSC frequency khz (dropping it when unknown).
func expandGokvmExtra(extra string, khz int) (string, []string) {
	var out, notes []string
	for _, f := range strings.Fields(extra) {
		if f == "tsc_early_khz=auto" {
			if khz <= 0 {
				notes = append(notes, "gokvm: host TSC frequency unknown, tsc_early_khz=auto dropped")
				continue
			}
			f = fmt.Sprintf("tsc_early_khz=%d", khz)
		}
		out = append(out, f)
	}
	return strings.Join(out, " "), notes
}

// hostKHz returns the first "cpu MHz" of /proc/cpuinfo in kHz (on x86 the
// TSC frequency the kernel settled on), or 0.
func hostKHz() int {
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(l, ":")
		if ok && strings.TrimSpace(k) == "cpu MHz" {
			mhz, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err != nil {
				return 0
			}
			return int(mhz * 1000)
		}
	}
	return 0
}

// gokvmInitrdAddr is where gokvm (the version make bench-boot installs)
// copies the initrd in guest RAM, whatever the RAM's size: the rest of
// an initrd that does not fit below the RAM's end is silently dropped.
const gokvmInitrdAddr = 0xf000000

// gokvmMemFor returns the guest RAM in MiB gokvm needs to hold an initrd
// of size bytes at gokvmInitrdAddr, rounded up to 64 MiB.
func gokvmMemFor(size int64) int {
	need := (gokvmInitrdAddr + size + (1 << 20) - 1) >> 20
	return int((need + 63) / 64 * 64)
}

// buildSpecs returns the specs of the VMMs named in cfg.VMMs, in order,
// and notes on choices made for them; def is the base kernel command
// line (vessel's default unless --cmdline), khz the host's TSC kHz.
func buildSpecs(cfg *config, def string, khz int) ([]vmmSpec, []string, error) {
	base, err := guestCmdline(def)
	if err != nil {
		return nil, nil, err
	}
	mem := fmt.Sprintf("%dM", cfg.MemMiB)
	var specs []vmmSpec
	var notes []string
	for _, name := range cfg.VMMs {
		switch name {
		case nameVessel:
			specs = append(specs, vmmSpec{
				Name: name, Path: cfg.Vessel, Cmdline: base, ExitsOnItsOwn: true, MemMiB: cfg.MemMiB,
				Args: func(metrics string) []string {
					a := []string{"vm", "run", "--metrics", metrics,
						"--kernel", cfg.Kernel, "--initrd", cfg.Initrd,
						"--cpus", "1", "--memory", mem}
					if cfg.Cmdline != "" {
						a = append(a, "--cmdline", def)
					}
					a = append(a, "--")
					return append(a, guestArgv...)
				},
			})
		case nameGokvm:
			extra, n := expandGokvmExtra(cfg.GokvmExtra, khz)
			notes = append(notes, n...)
			cl := strings.TrimSpace(base + " " + extra)
			gmem := cfg.MemMiB
			if st, err := os.Stat(cfg.Initrd); err == nil {
				if need := gokvmMemFor(st.Size()); need > gmem {
					notes = append(notes, fmt.Sprintf("gokvm: %d MiB of guest RAM instead of %d: it loads the initrd at a fixed %d MiB, and this one (%.1f MiB) would not fit below %d MiB", need, gmem, gokvmInitrdAddr>>20, float64(st.Size())/(1<<20), gmem))
					gmem = need
				}
			}
			gmemArg := fmt.Sprintf("%dM", gmem)
			specs = append(specs, vmmSpec{
				Name: name, Path: cfg.Gokvm, Cmdline: cl, MemMiB: gmem,
				// gokvm blocks forever (select{}) when stdin is not a
				// terminal, even after every vCPU stopped: it gets one,
				// but whether it exits after a power-off is its own
				// business (it does not on a reset), so benchboot ends it.
				ExitsOnItsOwn: false, Terminal: true,
				Args: func(string) []string {
					return []string{"boot", "-k", cfg.Kernel, "-i", cfg.Initrd,
						"-p", cl, "-m", gmemArg, "-c", "1"}
				},
			})
		case nameQEMU:
			acpi := cfg.QEMUACPI
			if acpi == "auto" {
				// ACPI the guest ignores only costs time: match the guest.
				acpi = "on"
				if hasParam(def, "acpi=off") {
					acpi = "off"
				}
			}
			specs = append(specs, vmmSpec{
				Name: name, Path: cfg.QEMU, Cmdline: base, MemMiB: cfg.MemMiB,
				// With ACPI, microvm's GED powers off and -no-reboot
				// turns a reboot into an exit; without, the guest halts.
				ExitsOnItsOwn: acpi == "on",
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
			return nil, nil, fmt.Errorf("unknown VMM %q (known: %s)", name, strings.Join(allVMMs, ", "))
		}
	}
	return specs, notes, nil
}
