package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"time"

	runc "github.com/containerd/go-runc"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/vesselvm/vessel/container"
	"github.com/vesselvm/vessel/guest/agentproto"
	"github.com/vesselvm/vessel/guest/cmdline"
	"github.com/vesselvm/vessel/internal/fdpass"
	"github.com/vesselvm/vessel/internal/limitio"
	"github.com/vesselvm/vessel/internal/seccomp"
	"github.com/vesselvm/vessel/internal/template"
	"github.com/vesselvm/vessel/vmm"
)

// defaultCmdline is the guest kernel's command line (vmm.DefaultCmdline).
const defaultCmdline = vmm.DefaultCmdline

// rootTag is the mount tag of the bundle's rootfs share.
const rootTag = "vessel-root"

// readyFD is the VMM process's pipe to create (fd 3): "ok" once the
// container is created in the guest, or one line saying why not.
const readyFD = 3

// goFD is create's pipe to the VMM process (fd 4): "go" once the
// createRuntime and prestart hooks have run; its end without it means
// create failed and the VMM process leaves at once.
const goFD = 4

// Timeouts of the VMM process. bootTimeout bounds the boot up to the
// agent's control connection and the container's creation (generous:
// the emulated test platform boots in 10-20 s; vessel run waits as
// long, and the e2e tests' clients 4 minutes, so that a guest that
// stopped answering is reported by the runtime, VESSEL_DEBUG's
// description included); teardownTimeout the clean removal at the end.
const (
	bootTimeout     = 3 * time.Minute
	teardownTimeout = 30 * time.Second
)

// Control operations, between the other commands and the VMM process.
const (
	opState  = "state"
	opStart  = "start"
	opKill   = "kill"
	opDelete = "delete"
)

// ctlRequest is one request on the VMM's control socket (one per
// connection).
type ctlRequest struct {
	Op     string `json:"op"`
	Signal int    `json:"signal,omitempty"`
	// Container, if set, is a pod container of the sandbox whose VMM
	// process gets the request; Member is opMember's request.
	Container string         `json:"container,omitempty"`
	Member    *memberRequest `json:"member,omitempty"`
	// Resources are opUpdate's.
	Resources *specs.LinuxResources `json:"resources,omitempty"`
	// Exec names an exec'd process for kill and resize; Process is
	// exec's process, Size resize's.
	Exec    string         `json:"exec,omitempty"`
	Process *specs.Process `json:"process,omitempty"`
	Size    *specs.Box     `json:"size,omitempty"`
}

// ctlReply answers it.
type ctlReply struct {
	Status string `json:"status,omitempty"`
	Error  string `json:"error,omitempty"`
	// Exit is a pod container's exit status, sent on its member
	// connection when it has stopped.
	Exit *int `json:"exit,omitempty"`
	// Stats answers opStats.
	Stats *runc.Stats `json:"stats,omitempty"`
}

// maxCtl bounds a control message.
const maxCtl = 64 << 10

// ctlTimeout bounds a control call: start and kill are one request to
// the agent each.
const ctlTimeout = 2 * time.Minute

// handlerTimeout bounds the VMM process's work on one control request.
// It ends before the connection's deadline (ctlTimeout), so that a
// guest that stopped answering reaches the caller as an error naming it,
// with the VM's state (agentError), not as the connection's end.
var handlerTimeout = ctlTimeout - 20*time.Second

// killConfirmTimeout bounds how long SIGKILL to a container's process
// waits for the guest agent to confirm it. A guest that does not (hung,
// or hostile) cannot keep the container alive: its VM is stopped
// instead (forceEnd), as SIGKILL to a runc container's first process
// always ends the container. Stopping the VM ends the container as
// SIGKILL would, so a slow guest loses nothing by it.
var killConfirmTimeout = 10 * time.Second

// call sends req to the VMM of the container in dir and returns its
// reply; a reply with an error is returned as a *runtimeError.
func call(dir string, req ctlRequest) (ctlReply, error) {
	path, err := sockPath(dir, ctlSock)
	if err != nil {
		return ctlReply{}, fmt.Errorf("the container's VMM: %w", err)
	}
	c, err := net.DialTimeout("unix", path, ctlTimeout)
	if err != nil {
		return ctlReply{}, fmt.Errorf("the container's VMM: %w", err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(ctlTimeout))
	if err := json.NewEncoder(c).Encode(req); err != nil {
		return ctlReply{}, fmt.Errorf("the container's VMM: %w", err)
	}
	var rep ctlReply
	if err := json.NewDecoder(io.LimitReader(c, maxCtl)).Decode(&rep); err != nil {
		return ctlReply{}, fmt.Errorf("the container's VMM: %w", err)
	}
	if rep.Error != "" {
		return rep, errorf("%s", rep.Error)
	}
	return rep, nil
}

func newVMM(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:    "vmm ID",
		Short:  "the VMM process of a container (started by create)",
		Hidden: true,
		Args:   cobra.ExactArgs(1),
		RunE: func(_ *cobra.Command, args []string) error {
			return serveVMM(g, args[0])
		},
	}
}

// vmmProc is the state of the VMM process.
type vmmProc struct {
	g      *globals
	id     string
	dir    string
	ag     *container.Agent
	vm     *vmm.VM
	ended  chan struct{} // the VM has ended
	result vmm.Result    // set before ended closes

	mu       sync.Mutex
	status   string
	deleting chan struct{} // closed by a delete request
	unpaused string        // the status before pause
	held     []heldSignal  // kills while paused, for resume
	forced   bool          // SIGKILL ended the VM without the guest (forceEnd)

	vmCPUs   int // the VM's size, for update
	vmMemory uint64

	pod *podState // a pod sandbox's

	netUndo func() // removes what redirect added to the namespace's interfaces

	closeOnce sync.Once
}

// serveVMM is the VMM process: it boots the VM, has the agent create
// the container, tells create (readyFD), serves the control socket, and
// returns the container's exit status as an exitCode.
func serveVMM(g *globals, id string) error {
	readyW, err := startDetached()
	if err != nil {
		return err
	}
	p := &vmmProc{g: g, id: id, status: statusCreating, deleting: make(chan struct{}), ended: make(chan struct{})}
	defer p.close()
	err = privateMounts()
	if err == nil {
		err = p.create()
	}
	if err != nil {
		// Undo first: create kills this process once it has read the
		// line, and the namespace's interfaces (a CNI namespace, a
		// container's joined by another) outlive the attempt.
		p.close()
		fmt.Fprintln(readyW, strings.ReplaceAll(err.Error(), "\n", " "))
		readyW.Close()
		return exitCode(1)
	}
	fmt.Fprintln(readyW, "ok")
	readyW.Close()
	return p.wait()
}

// logf writes one line to --log (stderr is the container's).
func (p *vmmProc) logf(format string, args ...any) {
	logError(p.g.log, p.g.logFormat, fmt.Sprintf(format, args...), time.Now())
}

// create boots the VM and creates the container in it.
func (p *vmmProc) create() error {
	dir, rec, err := p.g.load(p.id)
	if err != nil {
		return err
	}
	p.dir = dir
	b, err := loadBundle(rec.Bundle)
	if err != nil {
		return err
	}
	sdir, err := sockDir(dir)
	if err != nil {
		return err
	}
	ln, err := net.Listen("unix", fmt.Sprintf("%s_%d", filepath.Join(sdir, vsockBase), agentproto.Port))
	if err != nil {
		return fmt.Errorf("agent socket: %w", err)
	}
	ctl, err := net.Listen("unix", filepath.Join(sdir, ctlSock))
	if err != nil {
		ln.Close()
		return fmt.Errorf("control socket: %w", err)
	}
	go p.serveControl(ctl)

	ifs, err := findInterfaces()
	if err != nil {
		ln.Close()
		return err
	}
	extra, err := cmdline.Encode(cmdline.Spec{Argv: []string{"vesselagent"}, Control: true, Net: guestNets(ifs)})
	if err != nil {
		ln.Close()
		return err
	}
	var diag io.Writer = io.Discard
	if p.g.log != "" {
		diag = limitio.Writer(logWriter{p}, container.DiagLimit, "vessel-runtime: further reports about the VM suppressed")
	}
	if b.spec.Root.Readonly {
		if err := b.makeMountpoints(); err != nil {
			ln.Close()
			return err
		}
	}
	var pod string
	if isSandbox(b.spec) {
		if pod, err = podShare(dir); err != nil {
			ln.Close()
			return err
		}
		p.pod = &podState{share: pod, members: map[string]*member{}}
	}
	files, err := bindFiles(dir, b.binds)
	if err != nil {
		ln.Close()
		return err
	}
	shares := vmShares(b, pod, files)
	var vols []agentproto.Volume
	for _, bd := range b.binds {
		vols = append(vols, bd.vol)
	}
	cpus, memory, err := p.g.vmSize(b.spec)
	if err != nil {
		ln.Close()
		return err
	}
	p.vmCPUs, p.vmMemory = cpus, memory
	cfg := vmm.Config{
		Kernel:  p.g.kernel,
		Initrd:  p.g.initramfs,
		Cmdline: defaultCmdline + " " + extra,
		CPUs:    cpus,
		Memory:  memory,
		Console: io.Discard, // the result keeps the last lines for errors
		Shares:  shares,
		Nets:    vmNets(ifs),
		Vsock:   &vmm.Vsock{CID: 3, Path: filepath.Join(sdir, vsockBase)},
		Balloon: vmm.FreePageReporting(),
		Log:     diag,
	}
	// From the template create chose (template.go), else booted.
	var vm *vmm.VM
	if rec.Template != "" {
		if vm, err = restoreVM(rec.Template, cfg); err != nil {
			p.logf("container %s: template %s: %v; booting its VM", p.id, rec.Template, err)
			vm = nil
		}
	}
	restored := vm != nil
	if !restored {
		if vm, err = vmm.New(cfg); err != nil {
			ln.Close()
			return fmt.Errorf("start the VM: %w", err)
		}
	}
	undo, err := redirect(ifs)
	p.netUndo = undo
	if err != nil {
		vm.Close()
		ln.Close()
		return err
	}
	p.vm = vm
	// SIGUSR2 asks for the VM's description (before the filter: it
	// changes a signal's handling).
	describe := make(chan os.Signal, 1)
	signal.Notify(describe, DescribeSignal)
	// The VM is built and the namespace's interfaces joined: from here
	// on, the calls a running VM and its pod need (internal/seccomp).
	if err := seccomp.StartRelay(seccomp.RuntimeVMM, p.g.log, p.g.logFormat == "json"); err != nil {
		return err
	}
	if err := seccomp.Install(seccomp.RuntimeVMM); err != nil {
		return err
	}
	go func() {
		p.result = vm.Run()
		close(p.ended)
	}()
	go p.describeOnSignal(vm, describe)
	ctx, cancel := context.WithTimeout(context.Background(), bootTimeout)
	defer cancel()
	go func() {
		select {
		case <-p.ended:
			cancel()
		case <-ctx.Done():
		}
	}()
	ag, err := container.Accept(ctx, ln)
	if err != nil {
		if container.Debugging() && errors.Is(err, context.DeadlineExceeded) {
			vm.StopDiagnosed()
		}
		vm.Stop()
		<-p.ended
		if restored {
			// A clone whose agent never came back: the next creates
			// boot rather than restore it again.
			template.Reject(rec.Template, fmt.Errorf("a clone's agent did not come up: %w", err))
		}
		return p.guestFailure("the guest agent did not come up", err)
	}
	p.ag = ag
	spec := b.guestSpec()
	pio := &agentproto.ProcessIO{Stdin: true}
	if spec.Process.Terminal {
		pio = &agentproto.ProcessIO{Terminal: true}
	}
	cr := &agentproto.Create{Spec: spec, RootShare: rootTag, Volumes: vols}
	if restored {
		// The clone's interfaces have their template's MACs and no
		// configuration: the agent gives them the container's.
		cr.MACs, cr.Net = cloneNet(ifs)
	}
	rep, err := ag.Call(ctx, agentproto.Request{Op: agentproto.OpCreate, Container: p.id, IO: pio, Create: cr})
	if err != nil {
		var se *container.StartError
		if errors.As(err, &se) {
			return fmt.Errorf("create in the guest: %s", se.Msg)
		}
		return p.agentError("create in the guest", err)
	}
	if err := cr.CheckNet(&rep); err != nil {
		// An agent that cannot configure a clone's network (one older
		// than the fields): its template is no use.
		template.Reject(rec.Template, err)
		return fmt.Errorf("create in the guest: %w", err)
	}
	attach := p.attach
	if spec.Process.Terminal {
		attach = p.attachTTY
	}
	if err := attach(ctx); err != nil {
		return err
	}
	p.setStatus(statusCreated)
	return nil
}

// DescribeSignal asks a VMM process to write its VM's description
// (vmm.VM.Diagnose) to --log and leave the VM running: for a caller whose
// container never ends, to tell a hung guest from a busy one (as
// vmmproc.DiagnoseSignal does for vessel's jailed VMM, which also stops
// the VM).
const DescribeSignal = syscall.SIGUSR2

// describeOnSignal writes vm's description to --log, a line each after
// container.DiagnosisHeader, whenever DescribeSignal arrives on sigs;
// once the VM has ended, a line saying so. With container.Debugging, it
// also writes every goroutine's stack, after goroutinesHeader: a VMM
// process that hangs whatever its guest does (a lock never released, a
// call never answered) shows where. It serves sigs for the process's
// life, so that the signal never takes its default action (the end of
// the process).
func (p *vmmProc) describeOnSignal(vm *vmm.VM, sigs chan os.Signal) {
	for range sigs {
		select {
		case <-p.ended:
			p.logf("%v", p.guestFailure(fmt.Sprintf("container %s: no description of its VM", p.id), errors.New("it has ended")))
		default:
			d, err := vm.Diagnose()
			if err != nil {
				p.logf("container %s: no description of its VM: %v", p.id, err)
				break
			}
			logLine(p.g.log, p.g.logFormat, "warning", fmt.Sprintf("container %s: %s", p.id, container.DiagnosisHeader), time.Now())
			for _, l := range strings.Split(strings.TrimRight(d, "\n"), "\n") {
				logLine(p.g.log, p.g.logFormat, "warning", "    "+l, time.Now())
			}
		}
		if container.Debugging() {
			p.logGoroutines()
		}
	}
}

// goroutinesHeader starts the dump of a VMM process's goroutines in its
// --log (describeOnSignal).
const goroutinesHeader = "the VMM process's goroutines:"

// maxGoroutineDump bounds that dump.
const maxGoroutineDump = 1 << 20

// logGoroutines writes every goroutine's stack to --log, a line each.
func (p *vmmProc) logGoroutines() {
	buf := make([]byte, maxGoroutineDump)
	buf = buf[:runtime.Stack(buf, true)]
	logLine(p.g.log, p.g.logFormat, "warning", fmt.Sprintf("container %s: %s", p.id, goroutinesHeader), time.Now())
	for _, l := range strings.Split(strings.TrimRight(string(buf), "\n"), "\n") {
		logLine(p.g.log, p.g.logFormat, "warning", "    "+l, time.Now())
	}
}

// logWriter passes the VMM's reports on to --log, a line each.
type logWriter struct{ p *vmmProc }

func (w logWriter) Write(b []byte) (int, error) {
	w.p.logf("%s", strings.TrimRight(string(b), "\n"))
	return len(b), nil
}

// outputs counts the output streams still being copied.
var outputs outputSet

// outputSet is a container's output copies: from the guest's streams to
// the caller's files.
type outputSet struct {
	wg    sync.WaitGroup
	mu    sync.Mutex
	conns []net.Conn
}

// copy copies the guest's stream c to w until c ends, counted in o.
func (o *outputSet) copy(w io.Writer, c net.Conn) {
	o.mu.Lock()
	o.conns = append(o.conns, c)
	o.mu.Unlock()
	o.wg.Add(1)
	go func() {
		defer o.wg.Done()
		io.Copy(w, c)
	}()
}

// abandon closes the streams, which ends their copies: for a guest that
// holds them open past its process's exit.
func (o *outputSet) abandon() {
	o.mu.Lock()
	defer o.mu.Unlock()
	for _, c := range o.conns {
		c.Close()
	}
}

// attach connects the container's stdio to the VMM process's fds 0, 1
// and 2, which create's caller gave it: stdin's end reaches the
// container as EOF.
func (p *vmmProc) attach(ctx context.Context) error {
	return p.attachStdio(ctx, p.id, os.Stdin, os.Stdout, os.Stderr, &outputs)
}

// attachStdio connects container id's stdio streams to the files given,
// and counts the output copies in outs.
func (p *vmmProc) attachStdio(ctx context.Context, id string, stdin, stdout, stderr *os.File, outs *outputSet) error {
	conns := map[string]net.Conn{}
	for _, n := range []string{agentproto.Stdin, agentproto.Stdout, agentproto.Stderr} {
		c, err := p.ag.Stream(ctx, agentproto.StreamID{Container: id, Name: n})
		if err != nil {
			for _, c := range conns {
				c.Close()
			}
			return p.guestFailure("the container's stdio", err)
		}
		conns[n] = c
	}
	go func() {
		io.Copy(conns[agentproto.Stdin], stdin)
		if h, ok := conns[agentproto.Stdin].(interface{ CloseWrite() error }); ok {
			h.CloseWrite()
		}
	}()
	for n, w := range map[string]io.Writer{agentproto.Stdout: stdout, agentproto.Stderr: stderr} {
		outs.copy(w, conns[n])
	}
	return nil
}

// guestFailure describes a failure around the VM, with how it ended.
func (p *vmmProc) guestFailure(what string, err error) error {
	select {
	case <-p.ended:
	default:
		return fmt.Errorf("%s: %w", what, err)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%s: %v", what, err)
	switch p.result.Kind {
	case vmm.ExitPanic, vmm.ExitTripleFault, vmm.ExitError:
		fmt.Fprintf(&b, " (the VM ended: %s)", container.CleanText(p.result.Detail))
	case vmm.ExitGuestStatus:
		fmt.Fprintf(&b, " (the agent exited with status %d)", p.result.Status)
	}
	if n := len(p.result.ConsoleTail); n > 0 {
		// The guest wrote it: no escape sequences reach the caller's
		// terminal or log.
		fmt.Fprintf(&b, "; console: %s", container.CleanText(p.result.ConsoleTail[n-1]))
	}
	if d := strings.TrimSpace(p.result.Diagnosis); d != "" {
		fmt.Fprintf(&b, "; the VM's state: %s", joinLines(d))
	}
	return errors.New(b.String())
}

// agentError describes a failed call to the agent for a control
// request: how the VM ended, if it did; if the agent did not answer in
// time and VESSEL_DEBUG is set (container.Debugging), the state of the
// still running VM, which tells a hung guest from a slow one.
func (p *vmmProc) agentError(what string, err error) error {
	if !errors.Is(err, context.DeadlineExceeded) || !container.Debugging() || p.vm == nil {
		return p.guestFailure(what, err)
	}
	select {
	case <-p.ended:
		return p.guestFailure(what, err)
	default:
	}
	d, derr := p.vm.Diagnose()
	if derr != nil {
		d = fmt.Sprintf("no diagnosis: %v", derr)
	}
	return fmt.Errorf("%s: the guest agent did not answer: %w; the VM's state: %s", what, err, joinLines(d))
}

// joinLines joins a VM's multi-line description (vmm.VM.Diagnose) into one
// line, as the runtime's errors are (container.DebugEnv).
func joinLines(d string) string {
	return strings.Join(strings.Split(strings.TrimSpace(d), "\n"), " | ")
}

func (p *vmmProc) setStatus(s string) {
	p.mu.Lock()
	p.status = s
	p.mu.Unlock()
}

func (p *vmmProc) getStatus() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.status
}

// wait waits until the container exits (or a delete request comes, or
// the VM ends), tears the VM down and returns the exit status.
func (p *vmmProc) wait() error {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	exited := make(chan exit, 1)
	go func() {
		s, err := p.ag.Wait(ctx, p.id, "")
		exited <- exit{s, err}
	}()
	code := 128 + int(syscall.SIGKILL)
	select {
	case e := <-exited:
		code = p.exitCode(e.status, e.err)
	case <-p.deleting:
		// Deleted or killed without the guest: SIGKILL's status, and
		// nothing more waited for (the output streams may never end).
	case <-p.ended:
		code = p.endedFirst(exited)
		p.waitMembers(2 * vmEndGrace)
	}
	p.setStatus(statusStopped)
	p.teardown()
	return exitCode(code)
}

// exit is what the agent's wait for a container's process returned.
type exit struct {
	status int
	err    error
}

// vmEndGrace is how long an exit the guest reported just before its VM
// ended may take to arrive.
const vmEndGrace = time.Second

// endedFirst is the container's exit status when its VM ended (a guest
// crash, a triple fault, a power-off) before the guest reported the
// container's exit: the exit reported on exited meanwhile, or as
// waitFailed has it. The container cannot outlive its VM: without this,
// the VMM process waited for an exit no guest would ever report.
func (p *vmmProc) endedFirst(exited <-chan exit) int {
	t := time.NewTimer(vmEndGrace)
	defer t.Stop()
	select {
	case e := <-exited:
		return p.exitCode(e.status, e.err)
	case <-t.C:
		return p.waitFailed(p.id, "its VM", errNoExit, p.wasForced, p.failed)
	}
}

// errNoExit is the failure of a wait for an exit the guest never
// reported before its VM ended.
var errNoExit = errors.New("the guest reported no exit")

// waitFailed is the exit status of container id whose guest wait failed
// with err, and has tell report why: 137 without a word when SIGKILL
// stopped it (killed); else 255, because its VM (vm names it) ended
// before it did, when the VM ends within vmEndGrace (the agent's
// connection goes a moment before the VM's end is seen), or for err.
// A container alone and a pod's (memberCreate) end this one way.
func (p *vmmProc) waitFailed(id, vm string, err error, killed func() bool, tell func(error)) int {
	if killed() {
		return 128 + int(syscall.SIGKILL)
	}
	ended := p.endedWithin(vmEndGrace)
	switch {
	case killed(): // SIGKILL stopped the VM meanwhile
		return 128 + int(syscall.SIGKILL)
	case ended:
		tell(p.guestFailure("container "+id, errors.New(vm+" ended before it did")))
	default:
		tell(p.guestFailure("container "+id, err))
	}
	return 255
}

// endedWithin reports whether the VM ends within d (or has ended): a
// guest request that failed because the VM was going.
func (p *vmmProc) endedWithin(d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-p.ended:
		return true
	case <-t.C:
		return false
	}
}

// failed reports a failure that ends the container with status 255 (its
// VM or its guest agent gone) to --log and, as one line, to the
// container's stderr: all that docker run, docker logs or kubectl logs
// show of it, where a bare 255 says nothing.
func (p *vmmProc) failed(err error) { p.report(err, &outputs, p.deleting, os.Stderr) }

// report is failed for a container whose output copies are outs (waited
// for until stop) and whose stderr (or terminal) is errOut.
func (p *vmmProc) report(err error, outs *outputSet, stop <-chan struct{}, errOut *os.File) {
	p.logf("%v", err)
	select {
	case <-p.ended: // after what the container wrote last: its streams end with the VM
		waitOutputs(outs, stop, p.ended)
	default:
	}
	tellFile(errOut, err)
}

// tellWait bounds tellFile's write: a container's stderr nobody reads
// must not keep its VMM process from ending.
const tellWait = time.Second

// tellFile writes "vessel-runtime: ERR" as one line to f, a container's
// stderr, waiting at most tellWait. A terminal there is a raw host pty:
// the line ends with CR LF.
func tellFile(f *os.File, err error) {
	end := "\n"
	if term.IsTerminal(int(f.Fd())) {
		end = "\r\n"
	}
	line := "vessel-runtime: " + strings.ReplaceAll(err.Error(), "\n", " ") + end
	done := make(chan struct{})
	go func() {
		defer close(done)
		f.WriteString(line)
	}()
	t := time.NewTimer(tellWait)
	defer t.Stop()
	select {
	case <-done:
	case <-t.C: // left blocked; the process is about to end
	}
}

// waitMembers gives a pod's containers, whose VM has ended, at most d
// to report their own end to their member processes before the
// sandbox's VMM process exits: its exit would end their connections,
// which a member process takes for SIGKILL.
func (p *vmmProc) waitMembers(d time.Duration) {
	if p.pod == nil {
		return
	}
	p.pod.mu.Lock()
	var gone []chan struct{}
	for _, m := range p.pod.members {
		gone = append(gone, m.gone)
	}
	p.pod.mu.Unlock()
	t := time.NewTimer(d)
	defer t.Stop()
	for _, g := range gone {
		select {
		case <-g:
		case <-t.C:
			return
		}
	}
}

// exitCode is the container's exit status for what the agent's wait
// returned: the status the guest reported (once the container's output
// has been passed on), or for a failed wait waitFailed's (255, the
// failure reported, or 137 when SIGKILL ended the VM: forceEnd).
func (p *vmmProc) exitCode(status int, err error) int {
	if err != nil {
		return p.waitFailed(p.id, "its VM", err, p.wasForced, p.failed)
	}
	if !waitOutputs(&outputs, p.deleting, p.ended) {
		p.logf("container %s: its output streams did not end within %v of its exit (the guest holds them open); it ends without the rest", p.id, outputsWait)
	}
	code := exitStatus(status)
	if code != status {
		p.logf("the guest reported exit status %d, not one of 0-255", status)
	}
	return code
}

// outputsWait bounds how long a container's exit waits for its output
// streams to end. The guest agent reports an exit only once the
// process's output is drained, so they end at once, unless the guest
// holds one open (broken or hostile): that must not keep the container
// from ending, which its caller (a shim, docker) waits for.
var outputsWait = time.Minute // as vessel run's drainTimeout

// waitOutputs waits for outs, a container's output copies, for at most
// outputsWait or until stop closes, and at most vmEndGrace more once
// ended (the VM's end) closes: the guest's streams then stay open until
// the VM is closed. It reports whether they all ended; when they did
// not, it closes the streams, which ends the copies.
func waitOutputs(outs *outputSet, stop, ended <-chan struct{}) (all bool) {
	done := make(chan struct{})
	go func() {
		outs.wg.Wait()
		close(done)
	}()
	defer func() {
		if !all {
			outs.abandon()
		}
	}()
	t := time.NewTimer(outputsWait)
	defer t.Stop()
	for {
		select {
		case <-done:
			return true
		case <-stop:
			return false
		case <-ended:
			ended = nil
			if !t.Stop() {
				return false
			}
			t.Reset(vmEndGrace)
		case <-t.C:
			return false
		}
	}
}

// exitStatus is the status the VMM process exits with for the status
// the guest reported: the guest is not trusted, and os.Exit keeps only
// the low 8 bits, so a reported 256 would read as success.
func exitStatus(s int) int {
	if s < 0 || s > 255 {
		return 255
	}
	return s
}

// teardown removes the container in the guest, shuts the agent down and
// waits for the VM to end, stopping it if it does not.
func (p *vmmProc) teardown() {
	if p.wasForced() {
		// The VM is stopping without the guest (forceEnd): nothing in
		// it is asked for anything more.
		if p.vm != nil {
			<-p.ended
		}
		return
	}
	select {
	case <-p.ended:
		return // no guest left to ask
	default:
	}
	ctx, cancel := context.WithTimeout(context.Background(), teardownTimeout)
	defer cancel()
	if _, err := p.ag.Call(ctx, agentproto.Request{Op: agentproto.OpDelete, Container: p.id}); err != nil && !errors.Is(err, container.ErrAgentGone) {
		p.logf("remove the container in the guest: %v", err)
	}
	p.ag.Call(ctx, agentproto.Request{Op: agentproto.OpShutdown})
	select {
	case <-p.ended:
	case <-ctx.Done():
		p.vm.Stop()
		<-p.ended
	}
}

// close releases what the VMM process holds.
func (p *vmmProc) close() { p.closeOnce.Do(p.doClose) }

func (p *vmmProc) doClose() {
	if p.netUndo != nil {
		defer p.netUndo()
	}
	if p.ag != nil {
		p.ag.Close()
	}
	if p.vm != nil {
		select {
		case <-p.ended:
		default:
			p.vm.Stop()
			<-p.ended
		}
		p.vm.Close()
	}
}

// serveControl answers the other commands until the process ends.
func (p *vmmProc) serveControl(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			uc := c.(*net.UnixConn)
			req, fds, err := readCtl(uc)
			if err != nil {
				c.Close()
				return
			}
			if req.Op == opMember && req.Member != nil {
				// The connection stays for the pod container's life.
				p.memberCreate(uc, req.Container, req.Member, fds)
				return
			}
			if req.Op == opExec {
				fdpass.Close(fds)
				p.serveExec(uc, req) // the connection lasts as long as the process
				return
			}
			defer c.Close()
			fdpass.Close(fds)
			c.SetDeadline(time.Now().Add(ctlTimeout))
			var rep ctlReply
			if req.Container != "" && req.Container != p.id {
				rep = p.handleMember(req)
			} else {
				rep = p.handle(req)
			}
			json.NewEncoder(c).Encode(rep)
		}()
	}
}

// handle carries out one control request.
func (p *vmmProc) handle(req ctlRequest) ctlReply {
	st := p.getStatus()
	fail := func(format string, args ...any) ctlReply {
		return ctlReply{Status: st, Error: fmt.Sprintf(format, args...)}
	}
	ctx, cancel := context.WithTimeout(context.Background(), handlerTimeout)
	defer cancel()
	switch req.Op {
	case opState:
		return ctlReply{Status: st}
	case opStart:
		return p.startIn(ctx, p.id, p)
	case opKill:
		if req.Signal <= 0 || req.Signal > 64 {
			return fail("invalid signal %d", req.Signal)
		}
		if req.Signal == int(syscall.SIGKILL) && req.Exec == "" {
			return p.kill(st)
		}
		if p.holdSignal(heldSignal{req.Signal, req.Exec}) {
			return ctlReply{Status: statusPaused}
		}
		return p.signalIn(ctx, p.id, req.Exec, st, req.Signal)
	case opResize:
		return p.handleIO(ctx, req, st, p.id)
	case opStats:
		return p.statsIn(ctx, p.id, st)
	case opDelete:
		p.unpause()
		p.mu.Lock()
		select {
		case <-p.deleting:
		default:
			close(p.deleting)
		}
		p.mu.Unlock()
		return ctlReply{Status: st}
	}
	if rep, ok := p.handleControl(ctx, req, st); ok {
		return rep
	}
	return fail("unknown operation %q", req.Op)
}

// statusHolder is where a container's status is kept: the VMM process's
// own container, or a pod's container (member).
type statusHolder interface {
	getStatus() string
	setStatus(string)
}

// startIn starts container id's process, created and not yet started.
func (p *vmmProc) startIn(ctx context.Context, id string, h statusHolder) ctlReply {
	st := h.getStatus()
	if st != statusCreated {
		return ctlReply{Status: st, Error: fmt.Sprintf("cannot start a container that is %s", st)}
	}
	h.setStatus(statusRunning)
	if _, err := p.ag.Call(ctx, agentproto.Request{Op: agentproto.OpStart, Container: id}); err != nil {
		return ctlReply{Status: st, Error: p.agentError("start", err).Error()}
	}
	return ctlReply{Status: statusRunning}
}

// kill sends SIGKILL to the container's process (status st). A paused
// container's VM is stopped at once: a frozen cgroup's processes die of
// SIGKILL too (cgroup v2), and a paused guest cannot act on it. A guest
// that does not confirm the signal within killConfirmTimeout has its VM
// stopped. Either way the container ends with status 137 (wait).
func (p *vmmProc) kill(st string) ctlReply {
	switch st {
	case statusPaused:
		p.forceEnd()
		return ctlReply{Status: st}
	case statusCreated, statusRunning:
	default:
		return ctlReply{Status: st, Error: "container not running"}
	}
	rep, ok := p.sigkillIn(p.id, st, "the VM is stopped instead")
	if !ok {
		p.forceEnd()
	}
	return rep
}

// sigkillIn sends SIGKILL to container id's process (status st)
// and reports whether the guest confirmed it within killConfirmTimeout.
// When it did not, the reply is a success (the caller ends the
// container without the guest) and the log says why, and then what
// happens instead.
func (p *vmmProc) sigkillIn(id, st, then string) (ctlReply, bool) {
	ctx, cancel := context.WithTimeout(context.Background(), killConfirmTimeout)
	defer cancel()
	// The time limit holds whatever holds the request up (another
	// request's write to a guest that stopped reading): the call runs
	// on its own.
	done := make(chan ctlReply, 1)
	go func() { done <- p.signalIn(ctx, id, "", st, int(syscall.SIGKILL)) }()
	var why string
	select {
	case rep := <-done:
		if rep.Error == "" {
			return rep, true
		}
		why = rep.Error
	case <-ctx.Done():
		why = fmt.Sprintf("kill: the guest agent took no SIGKILL within %v", killConfirmTimeout)
	}
	select {
	case <-p.ended:
		// The VM ended meanwhile, and the container with it: wait
		// reports how.
		return ctlReply{Status: st}, true
	default:
	}
	p.logf("%s; %s", why, then)
	return ctlReply{Status: st}, false
}

// forceEnd ends the container without the guest: the VM is stopped and
// wait returns SIGKILL's status.
func (p *vmmProc) forceEnd() {
	p.mu.Lock()
	p.forced = true
	select {
	case <-p.deleting:
	default:
		close(p.deleting)
	}
	p.mu.Unlock()
	if p.vm != nil {
		p.vm.Stop()
	}
}

// wasForced reports whether forceEnd ended the container.
func (p *vmmProc) wasForced() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.forced
}

// signalIn sends sig to container id's process (exec "") or an exec'd
// one; st is the container's status.
func (p *vmmProc) signalIn(ctx context.Context, id, exec, st string, sig int) ctlReply {
	if st != statusCreated && st != statusRunning {
		return ctlReply{Status: st, Error: "container not running"}
	}
	if _, err := p.ag.Call(ctx, agentproto.Request{Op: agentproto.OpSignal, Container: id, Exec: exec, Signal: sig}); err != nil {
		return ctlReply{Status: st, Error: p.agentError("kill", err).Error()}
	}
	return ctlReply{Status: st}
}

// startDetached begins a process create started (the VMM process, a
// member process): it outlives create, so it ignores SIGPIPE and
// SIGHUP and keeps no directory busy (the caller's is often the
// bundle, on a mount); then it waits for create's "go" on goFD, sent
// once the createRuntime and prestart hooks have run. It returns the
// pipe to answer create on (readyFD), or an exitCode(1) error when
// create failed before that.
func startDetached() (*os.File, error) {
	signal.Ignore(syscall.SIGPIPE, syscall.SIGHUP)
	if err := os.Chdir("/"); err != nil {
		return nil, err
	}
	readyW := os.NewFile(readyFD, "ready")
	goR := os.NewFile(goFD, "go")
	line, _ := bufio.NewReader(goR).ReadString('\n')
	goR.Close()
	if line != "go\n" {
		return nil, exitCode(1)
	}
	return readyW, nil
}
