// Package vmmproc is vessel's jailed VMM process (cmd/vessel-vmm) and the
// protocol between it and the vessel process that starts it.
//
// vessel builds the jail (internal/jail: namespaces, a root holding only
// what the VM uses, a cgroup, an unprivileged user) and starts vessel-vmm
// in it with three descriptors:
//
//	fd 3  the VM's Config, one JSON document, from vessel
//	fd 4  Msgs to vessel: an Error before the guest ran, then Ready, then
//	      the Result
//	fd 5  vsock dials (see DialPair), when the VM has a vsock device
//
// and the guest's console on its stdout when vessel shows it. SIGTERM,
// SIGINT and SIGHUP stop the VM; DiagnoseSignal stops it after describing
// its state (vmm.VM.StopDiagnosed).
//
// The VMM runs its own small binary, not vessel's: a process that maps
// and starts only the VMM's code touches a fraction of the pages a
// process of the whole vessel binary (image store, OCI, registry client,
// CLI) does. Everything the VMM sends is the guest's to choose once the
// guest runs: vessel bounds and cleans it.
package vmmproc

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime/debug"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/vesselvm/vessel/internal/jail"
	"github.com/vesselvm/vessel/internal/limitio"
	"github.com/vesselvm/vessel/internal/seccomp"
	"github.com/vesselvm/vessel/vmm"
)

// Name is the jailed VMM's executable, installed beside vessel.
const Name = "vessel-vmm"

// Executable returns the path of the vessel-vmm binary: beside the
// running executable, else on $PATH.
func Executable() (string, error) {
	if self, err := os.Executable(); err == nil {
		p := filepath.Join(filepath.Dir(self), Name)
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	p, err := exec.LookPath(Name)
	if err != nil {
		return "", fmt.Errorf("the jailed VMM's binary %s is neither beside this executable nor on $PATH (make build puts it in bin/)", Name)
	}
	return p, nil
}

// Config is the part of a vmm.Config the jailed VMM process gets (on its
// fd 3, as JSON), with how to run it.
type Config struct {
	Kernel, Initrd, Cmdline string
	CPUs                    int
	Memory                  uint64
	Disks                   []vmm.Disk
	Nets                    []vmm.Net
	Vsock                   *vmm.Vsock
	Balloon                 *vmm.Balloon
	// Shares are the VM's shares; with Restore, the directories of the
	// snapshot's shares (vmm.RestoreOptions.Shares).
	Shares   []vmm.Share
	AllowPVM bool
	// HugePages: vmm.Config.HugePages.
	HugePages bool
	// Console: the guest's console goes to the process's stdout (else
	// nowhere).
	Console bool
	// Input is how the process's stdin reaches the guest (SetInput).
	Input    string
	UID, GID int
	// Root is the jail's root (internal/jail.Host.Root).
	Root string
	// Restore is the snapshot directory to restore instead of booting.
	Restore string
	// Version is vessel's version, which a restored snapshot must have
	// been written by (vmm.RestoreOptions.Version).
	Version string
}

// Msg is one message from the jailed VMM process (on its fd 4): an error
// before the guest ran, ready, or the result.
type Msg struct {
	Error  *Error  `json:",omitempty"`
	Ready  bool    `json:",omitempty"`
	Result *Result `json:",omitempty"`
}

// Error is why the VM could not be built or started.
type Error struct {
	// Usage: the configuration or the host cannot work (vmm.ErrInvalidConfig,
	// vmm.ErrHostKVM): the user's to fix, not vessel's failure.
	Usage bool `json:",omitempty"`
	Msg   string
	// Snapshot: the snapshot to restore was refused (vmm.ErrSnapshot).
	Snapshot bool `json:",omitempty"`
}

// Result is a vmm.Result without its Err.
type Result struct {
	Kind        vmm.ExitKind
	Status      int
	Detail      string
	ConsoleTail []string
	Metrics     vmm.Metrics
	Diagnosis   string
}

// DiagnoseSignal asks a jailed VMM process to stop its VM after describing
// its state.
const DiagnoseSignal = syscall.SIGUSR2

// Describe says whether err is the user's to fix (a configuration or a
// host that cannot work) and gives its one line, with a hint where the
// host lacks KVM.
func Describe(err error) (usage bool, msg string) {
	if !errors.Is(err, vmm.ErrInvalidConfig) && !errors.Is(err, vmm.ErrHostKVM) {
		return false, err.Error()
	}
	msg = err.Error()
	for _, p := range []string{vmm.ErrInvalidConfig.Error() + ": ", vmm.ErrHostKVM.Error() + ": "} {
		msg = strings.TrimPrefix(msg, p)
	}
	if errors.Is(err, fs.ErrNotExist) && errors.Is(err, vmm.ErrHostKVM) {
		msg += " (is the kvm module loaded? is this a VM without nested virtualization?)"
	}
	if errors.Is(err, fs.ErrPermission) && errors.Is(err, vmm.ErrHostKVM) {
		msg += " (add yourself to the kvm group, or run as root)"
	}
	return true, msg
}

// NewVM builds cfg's VM, or restores the snapshot in dir with cfg's
// backends and share directories (it must have been written by vessel
// version).
func NewVM(cfg vmm.Config, dir, version string) (*vmm.VM, error) {
	if dir == "" {
		return vmm.New(cfg)
	}
	o := vmm.RestoreOptions{Version: version, Console: cfg.Console, Input: cfg.Input, Log: cfg.Log,
		Disks: cfg.Disks, Nets: cfg.Nets, Shares: cfg.Shares, KVMDevice: cfg.KVMDevice, AllowPVM: cfg.AllowPVM}
	if cfg.Vsock != nil {
		vs := *cfg.Vsock
		o.Vsock = &vs
	}
	return vmm.Restore(dir, o)
}

// SetInput connects this process's stdin to the guest's console: "stdin"
// as it comes, "escape" watching for Ctrl-A X, which stops the VM; ""
// not at all.
func SetInput(vm *vmm.VM, input string) {
	switch input {
	case "escape":
		vm.SetInput(&escapeReader{r: os.Stdin, quit: vm.Stop})
	case "stdin":
		vm.SetInput(os.Stdin)
	}
}

// Sandbox confines this process, whose VM is built and about to run, to
// the system calls a running VMM makes (internal/seccomp), with a relay
// that reports a call outside them in one line.
func Sandbox() error {
	if err := seccomp.StartRelay(seccomp.VMM, "", false); err != nil {
		return err
	}
	return seccomp.Install(seccomp.VMM)
}

// maxConfig bounds the configuration vessel sends.
const maxConfig = 1 << 20

// maxLog bounds what the VMM writes about the VM on its stderr (virtio
// rule breaches and the like): the guest can cause them.
const maxLog = 1 << 20

// Main is the jailed VMM process: it reads its Config, builds the VM,
// enters the jail, runs the guest and sends back how it ended. It returns
// the process's exit status: 0 once the VM ran, 2 when the
// configuration or the host cannot work, 125 on any other failure (the
// statuses vessel itself uses).
func Main() int {
	// vessel passes pipes; run by hand, the descriptors are absent or
	// the Go runtime's own.
	for fd := 3; fd <= 4; fd++ {
		var st unix.Stat_t
		if err := unix.Fstat(fd, &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFIFO {
			fmt.Fprintf(os.Stderr, "%s: vessel's jailed VMM process, started by vessel with its configuration on fd 3; not a command\n", Name)
			return 2
		}
	}
	in, out := os.NewFile(3, "config"), os.NewFile(4, "messages")
	send := func(m Msg) { json.NewEncoder(out).Encode(m) }
	seccomp.ParentRelays() // vessel relays our stderr, outside our PID namespace
	fail := func(err error) int {
		usage, msg := Describe(err)
		send(Msg{Error: &Error{Usage: usage, Msg: msg, Snapshot: errors.Is(err, vmm.ErrSnapshot)}})
		if usage {
			return 2
		}
		return 125
	}
	var w Config
	err := json.NewDecoder(io.LimitReader(in, maxConfig)).Decode(&w)
	in.Close()
	if err != nil {
		return fail(fmt.Errorf("read the VM's configuration: %w", err))
	}
	// A jailed VMM needs few descriptors (the 9P shares' budget, in the
	// share server that inherits the limit, follows this) and threads:
	// a vCPU each and the Go runtime's.
	if err := jail.Limits(4096); err != nil {
		return fail(err)
	}
	cfg := vmm.Config{Kernel: w.Kernel, Initrd: w.Initrd, Cmdline: w.Cmdline, CPUs: w.CPUs, Memory: w.Memory,
		Disks: w.Disks, Nets: w.Nets, Vsock: w.Vsock, Balloon: w.Balloon, Shares: w.Shares, AllowPVM: w.AllowPVM, HugePages: w.HugePages,
		Console: io.Discard, Log: limitio.Writer(os.Stderr, maxLog, "vessel: further reports about the VM suppressed\n")}
	if w.Console {
		cfg.Console = os.Stdout
	}
	if cfg.Vsock != nil {
		// Guest connections to the host dial PATH_<port>, a name the
		// jail hides: vessel dials them.
		b, err := newVsockBroker(os.NewFile(5, "vsock dials"))
		if err != nil {
			return fail(err)
		}
		cfg.Vsock.Dial = b.dial
	}
	// The user network's helper, started by vmm.New in the host's
	// network namespace, runs as the jail's user too, and so does the
	// shares' server, with a file server's capabilities (which the VMM
	// does not keep).
	jailUser := &syscall.Credential{Uid: uint32(w.UID), Gid: uint32(w.GID), Groups: []uint32{}}
	for i := range cfg.Nets {
		if u := cfg.Nets[i].User; u != nil {
			c := *u
			c.Credential = jailUser
			cfg.Nets[i].User = &c
		}
	}
	cfg.ShareCredential = jailUser
	// The shares are opened through the jail's bind mounts of them, not
	// by their host paths: a descriptor of the host's tree would lead
	// out of the jail once it is entered. The share server, started by
	// vmm.New in this mount namespace, is moved into the jail with
	// this process by Enter's pivot_root.
	spec := jail.Spec{Root: w.Root, UID: w.UID, GID: w.GID}
	for _, sh := range w.Shares {
		spec.Shares = append(spec.Shares, jail.Share{Dir: sh.Dir, ReadOnly: sh.ReadOnly})
	}
	bound, err := jail.Mount(spec)
	if err != nil {
		return fail(err)
	}
	cfg.Shares = append([]vmm.Share(nil), w.Shares...)
	for i := range cfg.Shares {
		cfg.Shares[i].Dir = bound[i]
	}
	// The VM is built, or restored (its memory file mapped), before the
	// jail is entered: the files are opened by their host paths.
	vm, err := NewVM(cfg, w.Restore, w.Version)
	if err != nil {
		return fail(err)
	}
	defer vm.Close()
	SetInput(vm, w.Input)
	if err := jail.Enter(spec); err != nil {
		return fail(err)
	}
	if err := Sandbox(); err != nil {
		return fail(err)
	}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP, DiagnoseSignal)
	go func() {
		if <-sigs == DiagnoseSignal {
			vm.StopDiagnosed()
		}
		vm.Stop()
	}()
	// What building the VM allocated is garbage now (the kernel's
	// and initramfs's reads, the seccomp filter's tables): collected
	// and its pages returned to the host before the guest runs, the
	// heap starts the VM's life at its live size. Without it the first
	// collection waits for 4 MB of allocations, which a VM that does
	// little I/O may never make.
	debug.FreeOSMemory()
	send(Msg{Ready: true})
	res := vm.Run()
	send(Msg{Result: &Result{Kind: res.Kind, Status: res.Status, Detail: res.Detail, ConsoleTail: res.ConsoleTail,
		Metrics: res.Metrics, Diagnosis: res.Diagnosis}})
	return 0
}
