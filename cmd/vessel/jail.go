package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/vesselvm/vessel/container"
	"github.com/vesselvm/vessel/internal/jail"
	"github.com/vesselvm/vessel/internal/seccomp"
	"github.com/vesselvm/vessel/vmm"
)

// jailFlags are --jail and --jail-user, shared by vm run and run.
type jailFlags struct {
	jail bool
	user string
}

const jailHelp = "run the VMM in a jail: its own mount, PID, IPC and UTS namespaces, a root holding only what the VM still uses, an unprivileged user, no_new_privs, rlimits and a cgroup v2 with the VM's memory and CPU limits (needs root; the default as root, --jail=false opts out)"

func addJailFlags(fl *pflag.FlagSet, j *jailFlags) {
	fl.BoolVar(&j.jail, "jail", os.Geteuid() == 0, jailHelp)
	fl.StringVar(&j.user, "jail-user", "65534:65534", "with --jail, the UID[:GID] the VMM runs as")
}

// ids parses --jail-user.
func (j jailFlags) ids() (uid, gid int, err error) {
	u, g, hasGID := strings.Cut(j.user, ":")
	uid, err = strconv.Atoi(u)
	if err == nil && hasGID {
		gid, err = strconv.Atoi(g)
	} else {
		gid = uid
	}
	if err != nil || uid <= 0 || gid <= 0 || uid > 1<<31-2 || gid > 1<<31-2 {
		return 0, 0, fmt.Errorf("--jail-user %q: want UID[:GID], numbers above 0", j.user)
	}
	return uid, gid, nil
}

// check refuses --jail where it cannot work.
func (j jailFlags) check() error {
	if !j.jail {
		return nil
	}
	if os.Geteuid() != 0 {
		return errors.New("--jail needs root (as an ordinary user the VMM runs unjailed, with that user's rights)")
	}
	_, _, err := j.ids()
	return err
}

// runningVM is a VM as vm run and run drive it: built in this process
// (*vmm.VM) or in a jailed VMM process (*jailedVM).
type runningVM interface {
	Run() vmm.Result
	Stop()
	// StopDiagnosed stops the VM after describing its state into the
	// result's Diagnosis (vmm.VM.StopDiagnosed).
	StopDiagnosed()
	Close() error
}

// vmOptions say how startVM runs a VM.
type vmOptions struct {
	jail jailFlags
	// console: the guest console goes to stdout, else it is discarded
	// (the result still holds its last lines).
	console bool
	// input is the guest console's input: "" none, "stdin", or "escape"
	// (stdin on a raw terminal, Ctrl-A X stops the VM).
	input string
	// name names the jail (a container's ID), so that a later vessel
	// command can remove what a killed vessel process left; "" for a
	// random name.
	name string
	// restore, if set, is a snapshot directory to restore the VM from
	// (a template's) instead of booting: the configuration's disks,
	// networks and vsock device then replace the snapshot's backends
	// (restoreOptions), and its machine (size, devices) is the
	// snapshot's.
	restore string
}

// restoreOptions are the vmm.RestoreOptions that attach cfg's backends
// to a snapshot's devices.
func restoreOptions(cfg vmm.Config) vmm.RestoreOptions {
	o := vmm.RestoreOptions{Version: version(), Console: cfg.Console, Input: cfg.Input, Log: cfg.Log,
		Disks: cfg.Disks, Nets: cfg.Nets, KVMDevice: cfg.KVMDevice, AllowPVM: cfg.AllowPVM}
	if cfg.Vsock != nil {
		vs := *cfg.Vsock
		o.Vsock = &vs
	}
	return o
}

// newVM builds cfg's VM, or restores the snapshot in dir with cfg's
// backends.
func newVM(cfg vmm.Config, dir string) (*vmm.VM, error) {
	if dir != "" {
		return vmm.Restore(dir, restoreOptions(cfg))
	}
	return vmm.New(cfg)
}

// startVM builds the VM of cfg, in this process or, with o.jail, in a
// jailed VMM process; in the latter case errors are *exitError already.
func startVM(cfg vmm.Config, o vmOptions) (runningVM, error) {
	if o.jail.jail {
		return startJailed(cfg, o)
	}
	vm, err := newVM(cfg, o.restore)
	if err != nil {
		return nil, err
	}
	setInput(vm, o.input)
	return vm, nil
}

func setInput(vm *vmm.VM, input string) {
	switch input {
	case "escape":
		vm.SetInput(&escapeReader{r: os.Stdin, quit: vm.Stop})
	case "stdin":
		vm.SetInput(os.Stdin)
	}
}

// wireConfig is the part of a vmm.Config the jailed VMM process gets
// (on its fd 3, as JSON), with how to run it.
type wireConfig struct {
	Kernel, Initrd, Cmdline string
	CPUs                    int
	Memory                  uint64
	Disks                   []vmm.Disk
	Nets                    []vmm.Net
	Vsock                   *vmm.Vsock
	Balloon                 *vmm.Balloon
	Shares                  []vmm.Share
	AllowPVM                bool
	Console                 bool
	Input                   string
	UID, GID                int
	Root                    string
	// Restore is the snapshot directory to restore instead of booting
	// (vmOptions.restore).
	Restore string
}

// wireMsg is one message from the jailed VMM process (on its fd 4):
// an error before the guest ran, ready, or the result.
type wireMsg struct {
	Error  *wireError  `json:",omitempty"`
	Ready  bool        `json:",omitempty"`
	Result *wireResult `json:",omitempty"`
}

type wireError struct {
	Code int
	Msg  string
	// Snapshot: the snapshot to restore was refused (vmm.ErrSnapshot).
	Snapshot bool `json:",omitempty"`
}

// err is the jailed VMM's error on vessel's side: its text cleaned (the
// VMM may be the guest's), a refused snapshot still vmm.ErrSnapshot.
func (w *wireError) err() error {
	e := &exitError{code: w.Code, msg: container.CleanText(w.Msg)}
	if w.Snapshot {
		e.cause = vmm.ErrSnapshot
	}
	return e
}

// wireResult is a vmm.Result without its Err.
type wireResult struct {
	Kind        vmm.ExitKind
	Status      int
	Detail      string
	ConsoleTail []string
	Metrics     vmm.Metrics
	Diagnosis   string
}

// diagnoseSignal asks a jailed VMM process to stop its VM after
// describing its state (jailedVM.StopDiagnosed).
const diagnoseSignal = syscall.SIGUSR2

// maxDiagnosis bounds the diagnosis vessel keeps of a jailed VMM's
// result (a few lines per vCPU and device).
const maxDiagnosis = 16 << 10

// maxWireMsgs bounds all a jailed VMM process sends vessel (its ready
// message and its result: 40 console lines, metrics), and maxTailLines
// the console lines vessel keeps of it.
const (
	maxWireMsgs  = 1 << 20
	maxTailLines = 40
)

// wireDecoder reads what a jailed VMM process sends, at most
// maxWireMsgs bytes in all: past that, a decode fails.
func wireDecoder(r io.Reader) *json.Decoder {
	return json.NewDecoder(io.LimitReader(r, maxWireMsgs))
}

// result is how the VM ended as the VMM process told it, its text
// cleaned (no escape sequences reach the user's terminal) and its
// console tail capped.
func (r *wireResult) result() vmm.Result {
	tail := r.ConsoleTail
	if len(tail) > maxTailLines {
		tail = tail[len(tail)-maxTailLines:]
	}
	for i := range tail {
		tail[i] = container.CleanText(tail[i])
	}
	diag := r.Diagnosis
	if len(diag) > maxDiagnosis {
		diag = diag[:maxDiagnosis]
	}
	var lines []string
	for _, l := range strings.Split(strings.TrimRight(diag, "\n"), "\n") {
		if l != "" {
			lines = append(lines, container.CleanText(l)+"\n")
		}
	}
	return vmm.Result{Kind: r.Kind, Status: r.Status, Detail: container.CleanText(r.Detail), ConsoleTail: tail, Metrics: r.Metrics,
		Diagnosis: strings.Join(lines, "")}
}

// jailedVMMCommand is the hidden command the jailed VMM process runs.
const jailedVMMCommand = "jailed-vmm"

func newJailedVMM() *cobra.Command {
	return &cobra.Command{
		Use:    jailedVMMCommand,
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			return jailedVMM(os.NewFile(3, "config"), os.NewFile(4, "messages"))
		},
	}
}

// jailedVMM is the jailed VMM process: it builds the VM as vessel sent
// it, enters the jail, runs the guest and sends back how it ended.
func jailedVMM(in, out *os.File) error {
	if in == nil || out == nil {
		return usageErr("%s is vessel's own VMM process, not a command", jailedVMMCommand)
	}
	send := func(m wireMsg) { json.NewEncoder(out).Encode(m) }
	seccomp.ParentRelays() // startJailed's Relay, outside our PID namespace
	fail := func(err error) error {
		var ee *exitError
		if !errors.As(classify(err), &ee) {
			ee = &exitError{code: exitInternal, msg: err.Error()}
		}
		send(wireMsg{Error: &wireError{Code: ee.code, Msg: ee.msg, Snapshot: errors.Is(err, vmm.ErrSnapshot)}})
		return &exitError{code: ee.code}
	}
	var w wireConfig
	err := json.NewDecoder(io.LimitReader(in, 1<<20)).Decode(&w)
	in.Close()
	if err != nil {
		return fail(fmt.Errorf("read the VM's configuration: %w", err))
	}
	// A jailed VMM needs few descriptors (the 9P shares' budget follows
	// this) and threads: a vCPU each and the Go runtime's.
	if err := jail.Limits(4096); err != nil {
		return fail(err)
	}
	cfg := vmm.Config{Kernel: w.Kernel, Initrd: w.Initrd, Cmdline: w.Cmdline, CPUs: w.CPUs, Memory: w.Memory,
		Disks: w.Disks, Nets: w.Nets, Vsock: w.Vsock, Balloon: w.Balloon, Shares: w.Shares, AllowPVM: w.AllowPVM,
		Console: io.Discard, Log: container.LimitWriter(os.Stderr, container.DiagLimit, "vessel: further reports about the VM suppressed\n")}
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
	// network namespace, runs as the jail's user too.
	for i := range cfg.Nets {
		if u := cfg.Nets[i].User; u != nil {
			c := *u
			c.Credential = &syscall.Credential{Uid: uint32(w.UID), Gid: uint32(w.GID), Groups: []uint32{}}
			cfg.Nets[i].User = &c
		}
	}
	// The shares are opened through the jail's bind mounts of them, not
	// by their host paths: a descriptor of the host's tree would lead
	// out of the jail once it is entered.
	spec := jail.Spec{Root: w.Root, UID: w.UID, GID: w.GID, FileCaps: len(w.Shares) > 0}
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
	vm, err := newVM(cfg, w.Restore)
	if err != nil {
		return fail(err)
	}
	defer vm.Close()
	setInput(vm, w.Input)
	if err := jail.Enter(spec); err != nil {
		return fail(err)
	}
	if err := sandboxVMM(); err != nil {
		return fail(err)
	}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP, diagnoseSignal)
	go func() {
		if <-sigs == diagnoseSignal {
			vm.StopDiagnosed()
		}
		vm.Stop()
	}()
	send(wireMsg{Ready: true})
	res := vm.Run()
	send(wireMsg{Result: &wireResult{Kind: res.Kind, Status: res.Status, Detail: res.Detail, ConsoleTail: res.ConsoleTail,
		Metrics: res.Metrics, Diagnosis: res.Diagnosis}})
	return nil
}

// jailedVM is a VM run by a jailed VMM process.
type jailedVM struct {
	cmd  *exec.Cmd
	host *jail.Host
	done chan struct{} // closed once the process is gone
	res  vmm.Result
	once sync.Once
	// diagnosing: StopDiagnosed asked the VMM process to stop.
	diagnosing atomic.Bool
	// dials is vessel's end of the VMM's vsock dials (see jaildial.go),
	// to uds_<port>.
	dials *net.UnixConn
	uds   string
}

// jailBase is where jails are made: beside the container state.
func jailBase() (string, error) {
	root, err := container.StateRoot()
	if err != nil {
		return "", err
	}
	return filepath.Join(filepath.Dir(root), "jails"), nil
}

func startJailed(cfg vmm.Config, o vmOptions) (*jailedVM, error) {
	uid, gid, err := o.jail.ids()
	if err != nil {
		return nil, usageErr("%v", err)
	}
	base, err := jailBase()
	if err != nil {
		return nil, &exitError{code: exitInternal, msg: err.Error()}
	}
	host, err := jail.Prepare(base, o.name, cfg.CPUs, cfg.Memory)
	if err != nil {
		return nil, &exitError{code: exitInternal, msg: err.Error()}
	}
	if host.Note != "" {
		fmt.Fprintf(os.Stderr, "vessel: --jail: %s\n", host.Note)
	}
	j := &jailedVM{host: host, done: make(chan struct{})}
	ok := false
	defer func() {
		if !ok {
			host.Cleanup()
		}
	}()
	self, err := os.Executable()
	if err != nil {
		return nil, &exitError{code: exitInternal, msg: err.Error()}
	}
	cfgR, cfgW, err := os.Pipe()
	if err != nil {
		return nil, &exitError{code: exitInternal, msg: err.Error()}
	}
	defer cfgR.Close()
	defer cfgW.Close()
	msgR, msgW, err := os.Pipe()
	if err != nil {
		return nil, &exitError{code: exitInternal, msg: err.Error()}
	}
	defer msgW.Close()
	j.cmd = exec.Command(self, jailedVMMCommand)
	// Its stdout is the guest's console when asked for (vm run shows
	// it as it comes); otherwise the VMM has nothing to say there, and
	// what a guest-owned VMM would write (into vessel.log, for run -d)
	// goes nowhere.
	j.cmd.Stderr = os.Stderr
	if o.console {
		j.cmd.Stdout = os.Stdout
	}
	if o.input != "" {
		j.cmd.Stdin = os.Stdin
	}
	j.cmd.ExtraFiles = []*os.File{cfgR, msgW, nil}
	if cfg.Vsock != nil {
		ours, theirs, err := dialPair()
		if err != nil {
			return nil, &exitError{code: exitInternal, msg: fmt.Sprintf("--jail: %v", err)}
		}
		defer theirs.Close()
		j.dials, j.uds = ours, cfg.Vsock.Path
		j.cmd.ExtraFiles[2] = theirs
		defer func() {
			if !ok {
				ours.Close()
			}
		}()
	}
	j.cmd.SysProcAttr = host.SysProcAttr()
	// Its stderr comes through us: a call outside its seccomp filter
	// ends it with Go's crash report, which Relay turns into one line
	// (its own relay would die with it, PID 1 of its namespace).
	errR, errW, err := os.Pipe()
	if err != nil {
		msgR.Close()
		return nil, &exitError{code: exitInternal, msg: err.Error()}
	}
	j.cmd.Stderr = errW
	err = j.cmd.Start()
	errW.Close()
	if err != nil {
		errR.Close()
		msgR.Close()
		return nil, &exitError{code: exitInternal, msg: fmt.Sprintf("--jail: start the VMM process: %v", err)}
	}
	relayed := make(chan string, 1)
	go func() {
		relayed <- strings.TrimPrefix(seccomp.Relay(errR, container.LimitWriter(os.Stderr, container.DiagLimit, "vessel: further reports of the VMM process suppressed\n"), "VMM"), "vessel: ")
		errR.Close()
	}()
	cfgR.Close()
	msgW.Close()
	w := wireConfig{Kernel: cfg.Kernel, Initrd: cfg.Initrd, Cmdline: cfg.Cmdline, CPUs: cfg.CPUs, Memory: cfg.Memory,
		Disks: cfg.Disks, Nets: cfg.Nets, Vsock: cfg.Vsock, Balloon: cfg.Balloon, Shares: cfg.Shares, AllowPVM: cfg.AllowPVM,
		Console: o.console, Input: o.input, UID: uid, GID: gid, Root: host.Root, Restore: o.restore}
	json.NewEncoder(cfgW).Encode(w)
	cfgW.Close()
	// The VMM process may be the guest's by now: what it says is
	// bounded and cleaned before anyone reads it.
	dec := wireDecoder(msgR)
	var m wireMsg
	if err := dec.Decode(&m); err != nil || !m.Ready {
		msgR.Close()
		j.cmd.Process.Kill()
		werr := j.cmd.Wait()
		line := <-relayed
		if m.Error != nil {
			return nil, m.Error.err()
		}
		if line != "" {
			return nil, &exitError{code: exitInternal, msg: line}
		}
		return nil, &exitError{code: exitInternal, msg: fmt.Sprintf("--jail: the VMM process ended before the guest ran (%v)", werr)}
	}
	go func() {
		defer close(j.done)
		var m wireMsg
		err := dec.Decode(&m)
		msgR.Close()
		if err != nil || m.Result == nil {
			// A VMM that stopped talking, or said too much or
			// something else, is ended.
			j.cmd.Process.Kill()
		}
		werr := j.cmd.Wait()
		switch {
		case err == nil && m.Result != nil:
			j.res = m.Result.result()
		default:
			detail := fmt.Sprintf("the jailed VMM process died (%v)", werr)
			if line := <-relayed; line != "" {
				detail = line
			}
			j.res = vmm.Result{Kind: vmm.ExitError, Detail: detail}
			j.res.Err = errors.New(j.res.Detail)
		}
	}()
	if j.dials != nil {
		go serveVsockDials(j.dials, j.uds)
	}
	ok = true
	return j, nil
}

// removeJail removes the jail of container id that its killed vessel
// process left, if any.
func removeJail(id string) {
	if base, err := jailBase(); err == nil {
		if err := jail.Remove(base, id); err != nil {
			fmt.Fprintf(os.Stderr, "vessel: %v\n", err)
		}
	}
}

// Run waits until the VM ended.
func (j *jailedVM) Run() vmm.Result {
	<-j.done
	return j.res
}

// Stop asks the VMM process to stop the VM, unless StopDiagnosed has
// (a SIGTERM would race its diagnosis; Close still ends the process).
func (j *jailedVM) Stop() {
	select {
	case <-j.done:
	default:
		if !j.diagnosing.Load() {
			j.cmd.Process.Signal(syscall.SIGTERM)
		}
	}
}

// StopDiagnosed asks the VMM process to stop the VM after describing
// its state.
func (j *jailedVM) StopDiagnosed() {
	select {
	case <-j.done:
	default:
		j.diagnosing.Store(true)
		j.cmd.Process.Signal(diagnoseSignal)
	}
}

// jailStopTimeout bounds how long Close waits for the VMM process after
// asking it to stop, before it kills it.
const jailStopTimeout = 30 * time.Second

// Close ends the VMM process if it still runs and removes the jail.
func (j *jailedVM) Close() error {
	var err error
	j.once.Do(func() {
		j.Stop()
		select {
		case <-j.done:
		case <-time.After(jailStopTimeout):
			j.cmd.Process.Kill()
			<-j.done
		}
		err = j.host.Cleanup()
		if j.uds != "" {
			// The VMM's listener, which it could not unlink in the jail.
			if fi, e := os.Lstat(j.uds); e == nil && fi.Mode()&os.ModeSocket != 0 {
				os.Remove(j.uds)
			}
		}
	})
	return err
}
