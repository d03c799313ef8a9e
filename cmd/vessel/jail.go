package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/spf13/pflag"

	"github.com/vesselvm/vessel/container"
	"github.com/vesselvm/vessel/internal/jail"
	"github.com/vesselvm/vessel/internal/limitio"
	"github.com/vesselvm/vessel/internal/seccomp"
	"github.com/vesselvm/vessel/internal/vmmproc"
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

// newVM builds cfg's VM, or restores the snapshot in dir with cfg's
// backends.
func newVM(cfg vmm.Config, dir string) (*vmm.VM, error) {
	return vmmproc.NewVM(cfg, dir, version())
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
	vmmproc.SetInput(vm, o.input)
	return vm, nil
}

// wireErr is the jailed VMM's error on vessel's side: its text cleaned
// (the VMM may be the guest's), a refused snapshot still vmm.ErrSnapshot.
func wireErr(w *vmmproc.Error) error {
	e := &exitError{code: exitInternal, msg: container.CleanText(w.Msg)}
	if w.Usage {
		e.code = exitUsage
	}
	if w.Snapshot {
		e.cause = vmm.ErrSnapshot
	}
	return e
}

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

// wireResult is how the VM ended as the VMM process told it, its text
// cleaned (no escape sequences reach the user's terminal) and its
// console tail capped.
func wireResult(r *vmmproc.Result) vmm.Result {
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
	bin, err := vmmproc.Executable()
	if err != nil {
		return nil, &exitError{code: exitInternal, msg: "--jail: " + err.Error()}
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
	j.cmd = exec.Command(bin)
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
		ours, theirs, err := vmmproc.DialPair()
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
		relayed <- strings.TrimPrefix(seccomp.Relay(errR, limitio.Writer(os.Stderr, container.DiagLimit, "vessel: further reports of the VMM process suppressed\n"), "VMM"), "vessel: ")
		errR.Close()
	}()
	cfgR.Close()
	msgW.Close()
	w := vmmproc.Config{Kernel: cfg.Kernel, Initrd: cfg.Initrd, Cmdline: cfg.Cmdline, CPUs: cfg.CPUs, Memory: cfg.Memory,
		Disks: cfg.Disks, Nets: cfg.Nets, Vsock: cfg.Vsock, Balloon: cfg.Balloon, Shares: cfg.Shares, AllowPVM: cfg.AllowPVM,
		HugePages: cfg.HugePages, Console: o.console, Input: o.input, UID: uid, GID: gid, Root: host.Root, Restore: o.restore, Version: version()}
	json.NewEncoder(cfgW).Encode(w)
	cfgW.Close()
	// The VMM process may be the guest's by now: what it says is
	// bounded and cleaned before anyone reads it.
	dec := wireDecoder(msgR)
	var m vmmproc.Msg
	if err := dec.Decode(&m); err != nil || !m.Ready {
		msgR.Close()
		j.cmd.Process.Kill()
		werr := j.cmd.Wait()
		line := <-relayed
		if m.Error != nil {
			return nil, wireErr(m.Error)
		}
		if line != "" {
			return nil, &exitError{code: exitInternal, msg: line}
		}
		return nil, &exitError{code: exitInternal, msg: fmt.Sprintf("--jail: the VMM process ended before the guest ran (%v)", werr)}
	}
	go func() {
		defer close(j.done)
		var m vmmproc.Msg
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
			j.res = wireResult(m.Result)
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
		go vmmproc.ServeDials(j.dials, j.uds)
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
		j.cmd.Process.Signal(vmmproc.DiagnoseSignal)
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
