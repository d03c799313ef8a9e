// Package vmm wires vessel's pieces into a running microVM: it opens KVM,
// lays out guest RAM, loads the kernel through the boot package, attaches
// the device models to the buses, runs one goroutine per vCPU (each locked
// to its OS thread), and stops cleanly when the guest powers off, reboots,
// reports its exit status, crashes, or when the host asks it to.
package vmm

import (
	"errors"
	"fmt"
	"io"
	"net"
	"syscall"
	"time"

	"github.com/vesselvm/vessel/devices/usernet"
	"github.com/vesselvm/vessel/devices/virtio"
)

// Sentinel errors the CLI maps to exit statuses and messages.
var (
	// ErrInvalidConfig wraps every problem with the configuration itself
	// (bad sizes, counts, unreadable or malformed files).
	ErrInvalidConfig = errors.New("invalid configuration")
	// ErrHostKVM wraps problems with the host's KVM (missing, no permission,
	// unusable such as PVM).
	ErrHostKVM = errors.New("host KVM unusable")
)

// Config describes a microVM.
type Config struct {
	Kernel  string // path to a bzImage or an ELF vmlinux with a PVH note
	Initrd  string // optional initramfs path
	Cmdline string // kernel command line (vessel appends nothing to it)
	CPUs    int
	Memory  uint64 // bytes of guest RAM

	// Console is where the guest's serial console output goes; Input, if
	// set, is forwarded to the serial port as typed input.
	Console io.Writer
	Input   io.Reader

	// Disks are attached as virtio block devices, /dev/vda onwards, after
	// the entropy device that every VM has.
	Disks []Disk
	// Nets are attached as virtio network devices (eth0 onwards) after
	// the disks.
	Nets []Net
	// Vsock, if set, attaches a virtio-vsock device whose host side is
	// Firecracker's hybrid vsock on Unix sockets.
	Vsock *Vsock
	// Balloon, if set, attaches a virtio-balloon device after the vsock
	// device: the host can ask the guest for memory back (see
	// VM.SetBalloon) and, with free page reporting, gets back what the
	// guest frees.
	Balloon *Balloon
	// Shares are host directories the guest mounts with 9P over virtio,
	// attached after the balloon.
	Shares []Share
	// ShareCredential, if set, is the user the shares' server
	// (vessel-share) runs as, keeping only the capabilities of a file
	// server: a jailed VMM's. Nil runs it as this process's user.
	ShareCredential *syscall.Credential `json:"-"`
	// Log receives one line per device problem (a guest driver breaking
	// the virtio rules); nil discards them.
	Log io.Writer

	// KVMDevice is the KVM device node (default /dev/kvm).
	KVMDevice string
	// AllowPVM lets vessel try to boot on a PVM host (kvm_pvm), which only
	// runs PVM-enabled guest kernels.
	AllowPVM bool
	// HugePages asks the host for transparent huge pages for guest RAM
	// (guestmem.NewHuge).
	HugePages bool
}

// DefaultCmdline is the guest kernel's command line unless the user
// replaces it (vessel vm run --cmdline); vessel appends its own vessel.*
// parameters.
//   - console=ttyS0: the 8250 UART on COM1 is the console.
//   - reboot=k: reboot through the i8042 reset line, which ends the VM.
//   - panic=-1: reboot at once on a panic (vessel reports it).
//   - quiet loglevel=3: the kernel's messages below KERN_ERR's importance
//     stay off the console, so that the user's terminal shows the
//     command's output only (a kernel built for both roles says "PCI:
//     Fatal" and "kvm: no hardware support" at boot). An oops or a panic
//     still prints everything: oops_begin and panic make the console
//     verbose first (arch/x86/kernel/dumpstack.c, kernel/panic.c).
//   - i8042.*: skip probes for an AUX port, multiplexing and PnP.
//   - 8250.nr_uarts=1, pci=off, io_delay=none: probe nothing vessel lacks.
const DefaultCmdline = "console=ttyS0 reboot=k panic=-1 quiet loglevel=3 i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd 8250.nr_uarts=1 pci=off io_delay=none"

// Net is a virtio network device and its backend: a host TAP device or a
// userspace network (exactly one).
type Net struct {
	// MAC is the guest interface's hardware address.
	MAC net.HardwareAddr
	// Tap names a host TAP device, opened with the virtio-net header so
	// offloads reach the host kernel (created if absent, which needs
	// CAP_NET_ADMIN, and then gone when the VM ends).
	Tap string
	// User, if set, gives the guest a userspace NAT network (package
	// devices/usernet): DHCP, DNS, published ports, and the host's
	// loopback at usernet.HostIP if asked. No privileges needed.
	User *UserNet
	// formerMAC is the snapshot's MAC of a restored device given a new
	// one (RestoreOptions.Nets): the guest sends from it until it is
	// moved, and the user network drops those frames quietly.
	formerMAC net.HardwareAddr
}

// UserNet configures a userspace network.
type UserNet struct {
	// Publish forwards host TCP ports to guest ports.
	Publish []usernet.Publish
	// HostLoopback makes the host's 127.0.0.1 reachable at
	// usernet.HostIP (see usernet.Config).
	HostLoopback bool
	// Credential, if set, is the user the helper runs as (see
	// usernet.Config). Not part of a VM's configuration on the wire.
	Credential *syscall.Credential `json:"-"`
}

// Vsock configures the vsock device: the guest's context ID, and the Unix
// socket Path where host programs connect (`CONNECT <port>\n`); a guest
// connection to CID 2 port P reaches the socket Path_P.
type Vsock struct {
	CID  uint64 // 3 or more
	Path string
	// Dial, if set, connects guest connections to host port P instead
	// of a connect to Path_P (see virtio.Vsock.SetDialer).
	Dial virtio.VsockDialer `json:"-"`
}

// Share is a host directory served to the guest (package devices/share:
// confined to the directory, whatever the guest does), which mounts it
// with `mount -t 9p -o trans=virtio,version=9p2000.L TAG DIR`.
type Share struct {
	Tag      string // the mount tag: 1 to 256 bytes, unique in the VM
	Dir      string
	ReadOnly bool
}

// ExitKind says how a microVM ended.
type ExitKind int

// Ways a microVM ends.
const (
	// ExitGuestStatus: the guest init reported its command's exit status.
	ExitGuestStatus ExitKind = iota
	// ExitReboot: the guest rebooted (i8042 reset) without reporting a status.
	ExitReboot
	// ExitPowerOff: the guest powered off (KVM system event).
	ExitPowerOff
	// ExitStopped: the host stopped the VM (Stop, SIGINT/SIGTERM).
	ExitStopped
	// ExitPanic: the guest kernel panicked.
	ExitPanic
	// ExitTripleFault: a vCPU shut down (triple fault).
	ExitTripleFault
	// ExitError: the VMM failed (a KVM error or an unhandled exit).
	ExitError
)

var exitKindNames = [...]string{"guest-status", "reboot", "poweroff", "stopped", "panic", "triple-fault", "error"}

// String names the exit kind.
func (k ExitKind) String() string {
	if int(k) < len(exitKindNames) {
		return exitKindNames[k]
	}
	return "unknown"
}

// Result is how a microVM ended and what it measured.
type Result struct {
	Kind   ExitKind
	Status int    // the guest command's exit status, for ExitGuestStatus
	Detail string // a one-line explanation for ExitPanic, ExitTripleFault, ExitError
	Err    error  // for ExitError
	// ConsoleTail holds the last lines of console output, for reporting
	// guest failures.
	ConsoleTail []string
	Metrics     Metrics
	// Diagnosis is the VM's state as Diagnose described it when
	// StopDiagnosed stopped it (several lines), else empty.
	Diagnosis string
}

// String says how the VM ended in a few words: the kind, the guest's
// status, and the one-line detail (which can hold guest text: a caller
// printing it to a terminal cleans it).
func (r Result) String() string {
	s := r.Kind.String()
	if r.Kind == ExitGuestStatus {
		s += fmt.Sprintf(" %d", r.Status)
	}
	if r.Detail != "" {
		s += ": " + r.Detail
	}
	return s
}

// Metrics are measurements of one run, for `make bench-boot`.
type Metrics struct {
	// BootToInit is the time from the start of New to the guest init's
	// first write to the boot-timer port (0 if it never wrote).
	BootToInit time.Duration
	// Total is the time from the start of New to the end of Run.
	Total time.Duration
	// Exits counts userspace exits per reason, over all vCPUs.
	Exits map[string]uint64
	// KVMStats sums KVM's own cumulative vCPU counters over all vCPUs
	// (KVM_GET_STATS_FD): every exit, including those the kernel handled
	// without userspace ("exits", "io_exits", "insn_emulation", ...).
	// Non-zero counters only; nil where the kernel lacks the interface.
	KVMStats map[string]uint64
	// KVMVMStats is KVM's VM-wide statistics at the end of the run
	// (kvm.VM.Stats): its counters, and gauges such as "pages_2m", the
	// guest memory KVM maps with 2 MiB pages. Non-zero values only.
	KVMVMStats map[string]uint64
	// Devices has one entry per virtio device, in attach order.
	Devices []DeviceMetrics
	// ConsoleDropped counts bytes of guest console output dropped because
	// the host's console writer fell a full buffer behind.
	ConsoleDropped uint64
}

// DeviceMetrics are one virtio device's counters over the run.
type DeviceMetrics struct {
	Type       string // "rng", "block", "net", "vsock"
	Interrupts uint64 // interrupts the device raised (each an irqfd signal)
	Notifies   uint64 // the driver's queue notifications the device consumed
	// ExitNotifies are notifications that took a userspace exit (an
	// MMIO write to QueueNotify) instead of the queue's ioeventfd.
	ExitNotifies uint64
	// Net counts packets and bytes for a network device.
	Net *virtio.NetStats `json:",omitempty"`
}
