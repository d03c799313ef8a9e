package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/vesselvm/vessel/container"
	"github.com/vesselvm/vessel/guest/agentproto"
	"github.com/vesselvm/vessel/guest/cmdline"
	"github.com/vesselvm/vessel/images/store"
	"github.com/vesselvm/vessel/vmm"
)

// exitRun is the status of `vessel run` when vessel fails before or
// around the container, as docker run uses 125 ("the error is with the
// daemon itself"); 126 and 127 are a command that cannot be run or was
// not found, as docker.
const (
	exitRun         = 125
	exitCannotRun   = 126
	exitNotFound    = 127
	imageDiskSerial = "vessel-image"
)

type runFlags struct {
	interactive, tty bool
	env, envFiles    []string
	workdir, user    string
	entrypoint, name string
	entrypointSet    bool // --entrypoint given (possibly "")
	publish          []string
	network          string
	pull             string
	cpus             int
	memory           string
}

func newRun() *cobra.Command {
	var f runFlags
	cmd := &cobra.Command{
		Use:   "run [flags] IMAGE [COMMAND [ARG...]]",
		Short: "Run a container in its own microVM",
		Long: `Run a command in a new container from IMAGE (see vessel image), as docker
run does, inside a microVM of its own: the container's processes run on
the VM's kernel, started by runc in the guest. The image's file system is
a read-only disk (cached per image); what the container writes goes to a
writable layer in guest memory and is gone when it ends.

Signals vessel gets go to the container's first process, as docker's
--sig-proxy; that process is PID 1 of its namespace and gets only the
signals it handles, so a third SIGINT, SIGTERM or SIGHUP stops the VM.

The container shares the VM's network: by default a userspace network
(NAT to the host's network; -p publishes a host port), or none.

Exit statuses, as docker run: the container's exit status (128+N when
signal N killed it); 125 vessel failed (bad flags, no such image, the VM
failed); 126 the command cannot be run; 127 the command was not found.`,
		Args: cobra.ArbitraryArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 {
				return runErr("\"vessel run\" requires at least 1 argument: IMAGE [COMMAND [ARG...]]")
			}
			f.entrypointSet = cmd.Flags().Changed("entrypoint")
			return containerRun(f, args[0], args[1:])
		},
	}
	cmd.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return runErr("%v", err) })
	fl := cmd.Flags()
	fl.SetInterspersed(false) // flags after IMAGE belong to the command
	fl.BoolVarP(&f.interactive, "interactive", "i", false, "keep stdin open and pass it to the container")
	fl.BoolVarP(&f.tty, "tty", "t", false, "give the container a terminal")
	fl.StringArrayVarP(&f.env, "env", "e", nil, "set an environment variable: KEY=VALUE, or KEY to pass the host's value (repeatable)")
	fl.StringArrayVar(&f.envFiles, "env-file", nil, "read environment variables from a file, one KEY=VALUE or KEY per line (repeatable)")
	fl.StringVarP(&f.workdir, "workdir", "w", "", "working directory inside the container")
	fl.StringVarP(&f.user, "user", "u", "", "user[:group] to run as, names or numeric IDs")
	fl.StringVar(&f.entrypoint, "entrypoint", "", "replace the image's entrypoint (\"\" clears it)")
	fl.StringVar(&f.name, "name", "", "the container's name (and host name)")
	fl.StringArrayVarP(&f.publish, "publish", "p", nil, "publish a container port on the host: [HOSTIP:]HOSTPORT:PORT[/tcp] (repeatable)")
	fl.StringVar(&f.network, "network", "user", "the VM's network: user (NAT, the default) or none")
	fl.StringVar(&f.pull, "pull", "missing", "pull the image from its registry: missing (when not stored), always, or never")
	fl.IntVar(&f.cpus, "cpus", 1, "vCPUs of the container's VM")
	fl.StringVarP(&f.memory, "memory", "m", "512M", "RAM of the container's VM, e.g. 512M or 1G; the writable layer lives in it")
	return cmd
}

func runErr(format string, args ...any) error {
	return &exitError{code: exitRun, msg: fmt.Sprintf(format, args...)}
}

// nameRE is docker's rule for container names.
var nameRE = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_.-]*$`)

// runPlan is everything checked and resolved before the VM boots.
type runPlan struct {
	id, hostname string
	spec         *specs.Spec
	user         string
	disk         string
	cfg          vmm.Config
}

// planRun checks the flags and resolves the image; it boots nothing.
func planRun(f runFlags, ref string, args []string) (*runPlan, error) {
	mem, err := parseSize(f.memory)
	if err != nil || mem == 0 {
		return nil, runErr("--memory %q: want a size such as 512M or 1G", f.memory)
	}
	if f.cpus < 1 {
		return nil, runErr("--cpus must be at least 1 (got %d)", f.cpus)
	}
	p := &runPlan{}
	if f.name != "" {
		if !nameRE.MatchString(f.name) || len(f.name) > 128 {
			return nil, runErr("invalid container name %q: only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed", f.name)
		}
		p.id, p.hostname = f.name, f.name
	} else {
		var b [32]byte
		rand.Read(b[:])
		p.id = hex.EncodeToString(b[:])
		p.hostname = p.id[:12]
	}
	var nets []vmm.Net
	var guestNets []cmdline.Net
	switch f.network {
	case "user":
		un := &vmm.UserNet{}
		for _, s := range f.publish {
			pub, err := parsePublish(s)
			if err != nil {
				return nil, runErr("-p %s: %v", s, err)
			}
			un.Publish = append(un.Publish, pub)
		}
		mac := randomMAC()
		nets = append(nets, vmm.Net{MAC: mac, User: un})
		guestNets = append(guestNets, cmdline.Net{MAC: mac.String()})
	case "none":
		if len(f.publish) > 0 {
			return nil, runErr("-p needs a network: not with --network none")
		}
	default:
		return nil, runErr("--network %q: want user or none", f.network)
	}
	env, err := readEnvFiles(f.envFiles)
	if err != nil {
		return nil, runErr("%v", err)
	}
	env = append(env, f.env...)

	root, err := store.DefaultRoot()
	if err != nil {
		return nil, runErr("%v", err)
	}
	st, err := store.Open(root)
	if err != nil {
		return nil, runErr("%v", err)
	}
	img, err := st.Resolve(ref)
	switch {
	case f.pull != "missing" && f.pull != "always" && f.pull != "never":
		return nil, runErr("--pull %q: want missing, always or never", f.pull)
	case f.pull == "always" || f.pull == "missing" && errors.Is(err, store.ErrNotFound):
		local := err == nil
		if img, err = pullImage(context.Background(), st, ref); err != nil {
			if !local {
				return nil, runErr("unable to find image %q locally, and the %v", ref, err)
			}
			return nil, runErr("%v", err)
		}
	case errors.Is(err, store.ErrNotFound):
		return nil, runErr("unable to find image %q locally (and --pull never)", ref)
	case err != nil:
		return nil, runErr("%v", err)
	}
	vimg, err := st.Image(img)
	if err != nil {
		return nil, runErr("image %s: %v", ref, err)
	}
	cf, err := vimg.ConfigFile()
	if err != nil {
		return nil, runErr("image %s: config: %v", ref, err)
	}
	opts := container.Options{Args: args, Env: env, Workdir: f.workdir, User: f.user, Terminal: f.tty, Hostname: p.hostname}
	if f.entrypointSet {
		opts.Entrypoint = &f.entrypoint
	}
	if f.tty {
		if w, h, err := term.GetSize(int(os.Stdout.Fd())); err == nil {
			opts.ConsoleSize = &specs.Box{Width: uint(w), Height: uint(h)}
		}
	}
	if p.spec, p.user, err = container.Spec(cf.Config, opts); err != nil {
		return nil, runErr("%v", err)
	}
	if p.disk, err = st.Rootfs(img); err != nil {
		return nil, runErr("image %s: root file system: %v", ref, err)
	}

	dir := guestDir()
	kernel, initrd := filepath.Join(dir, "bzImage"), filepath.Join(dir, "initramfs.cpio")
	for _, a := range []string{kernel, initrd} {
		if _, err := os.Stat(a); err != nil {
			return nil, runErr("no guest artifact at %s: build it with `make`", a)
		}
	}
	extra, err := cmdline.Encode(cmdline.Spec{Argv: []string{"vesselagent"}, Control: true, Net: guestNets})
	if err != nil {
		return nil, runErr("%v", err)
	}
	p.cfg = vmm.Config{
		Kernel:  kernel,
		Initrd:  initrd,
		Cmdline: DefaultCmdline + " " + extra,
		CPUs:    f.cpus,
		Memory:  mem,
		Console: io.Discard, // the result keeps the last lines for errors
		Disks:   []vmm.Disk{{Path: p.disk, ReadOnly: true, Serial: imageDiskSerial}},
		Nets:    nets,
		Log:     os.Stderr,
	}
	return p, nil
}

// readEnvFiles reads docker's env files: KEY=VALUE or KEY lines; blank
// lines and lines starting with # are skipped.
func readEnvFiles(paths []string) ([]string, error) {
	var env []string
	for _, p := range paths {
		f, err := os.Open(p)
		if err != nil {
			return nil, fmt.Errorf("--env-file: %w", err)
		}
		sc := bufio.NewScanner(f)
		for n := 1; sc.Scan(); n++ {
			l := strings.TrimLeft(sc.Text(), " \t")
			if l == "" || strings.HasPrefix(l, "#") {
				continue
			}
			if k, _, _ := strings.Cut(l, "="); k == "" || strings.ContainsAny(k, " \t") {
				f.Close()
				return nil, fmt.Errorf("--env-file %s line %d: invalid variable %q", p, n, l)
			}
			env = append(env, l)
		}
		err = sc.Err()
		f.Close()
		if err != nil {
			return nil, fmt.Errorf("--env-file %s: %w", p, err)
		}
	}
	return env, nil
}

func containerRun(f runFlags, ref string, args []string) error {
	p, err := planRun(f, ref, args)
	if err != nil {
		return err
	}
	if f.interactive && f.tty && !term.IsTerminal(int(os.Stdin.Fd())) {
		return runErr("the input device is not a TTY (-t with -i needs a terminal on stdin)")
	}
	// The agent's port: the vsock device's host side lives in a private
	// directory removed at the end.
	dir, err := os.MkdirTemp("", "vessel-run-")
	if err != nil {
		return runErr("%v", err)
	}
	defer os.RemoveAll(dir)
	uds := filepath.Join(dir, "vsock")
	ln, err := net.Listen("unix", fmt.Sprintf("%s_%d", uds, agentproto.Port))
	if err != nil {
		return runErr("agent socket: %v", err)
	}
	defer ln.Close()
	p.cfg.Vsock = &vmm.Vsock{CID: 3, Path: uds}

	vm, err := vmm.New(p.cfg)
	if err != nil {
		e := classify(err)
		var ee *exitError
		if errors.As(e, &ee) {
			ee.code = exitRun
		}
		return e
	}
	defer vm.Close()
	results := make(chan vmm.Result, 1)
	ended := make(chan struct{})
	go func() {
		results <- vm.Run()
		close(ended)
	}()
	vmResult := func() vmm.Result { <-ended; return <-results }

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		<-ended
		cancel()
	}()
	// Host signals before the container runs stop the VM.
	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGQUIT, syscall.SIGUSR1, syscall.SIGUSR2, syscall.SIGWINCH)
	defer signal.Stop(sigs)

	ag, err := acceptAgent(ctx, ln, sigs, vm)
	if err != nil {
		vm.Stop()
		return guestFailure("the guest agent did not come up", err, vmResult())
	}
	defer ag.Close()
	var forced atomic.Value // the signal that forced the VM to stop
	force := func(s os.Signal) {
		forced.Store(s)
		vm.Stop()
	}
	status, err := runContainer(ctx, ag, p, f, sigs, force)
	if s, ok := forced.Load().(syscall.Signal); ok {
		vmResult()
		return &exitError{code: 128 + int(s)}
	}
	if err != nil {
		vm.Stop()
		res := vmResult()
		var se *container.StartError
		if errors.As(err, &se) {
			code := exitRun
			if se.Code != 0 {
				code = se.Code
			}
			return &exitError{code: code, msg: se.Msg}
		}
		return guestFailure("the container failed", err, res)
	}
	// The container is gone: remove it cleanly, then let the VM end.
	stopCtx, stop := context.WithTimeout(ctx, 30*time.Second)
	defer stop()
	if _, err := ag.Call(stopCtx, agentproto.Request{Op: agentproto.OpDelete, Container: p.id}); err != nil {
		fmt.Fprintf(os.Stderr, "vessel: remove the container: %v\n", err)
	}
	ag.Call(stopCtx, agentproto.Request{Op: agentproto.OpShutdown})
	select {
	case <-ended:
	case <-stopCtx.Done():
		vm.Stop()
	}
	if status != 0 {
		return &exitError{code: status}
	}
	return nil
}

// acceptAgent waits for the agent while the VM boots; a host signal
// meanwhile stops the VM.
func acceptAgent(ctx context.Context, ln net.Listener, sigs chan os.Signal, vm *vmm.VM) (*container.Agent, error) {
	actx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		for {
			select {
			case s := <-sigs:
				if s != syscall.SIGWINCH {
					vm.Stop()
				}
			case <-actx.Done():
				return
			}
		}
	}()
	return container.Accept(actx, ln)
}

// guestFailure reports a VM that ended or failed around the container.
func guestFailure(what string, err error, res vmm.Result) error {
	var b strings.Builder
	fmt.Fprintf(&b, "%s: %v", what, err)
	switch res.Kind {
	case vmm.ExitPanic, vmm.ExitTripleFault, vmm.ExitError:
		fmt.Fprintf(&b, " (the VM ended: %s)", res.Detail)
	case vmm.ExitGuestStatus:
		fmt.Fprintf(&b, " (the agent exited with status %d)", res.Status)
	}
	if len(res.ConsoleTail) > 0 {
		b.WriteString("; last console lines:\n")
		for _, l := range lastN(res.ConsoleTail, 15) {
			b.WriteString("  | " + l + "\n")
		}
	}
	return &exitError{code: exitRun, msg: strings.TrimRight(b.String(), "\n")}
}

// forceSignals is how many terminating signals (SIGINT, SIGTERM, SIGHUP)
// make vessel stop the VM instead of passing them on: the container's
// first process is PID 1 of its namespace and ignores what it does not
// handle, so without this a container that ignores Ctrl-C could not be
// stopped from its terminal.
const forceSignals = 3

// runContainer creates and starts the container, connects its stdio to
// vessel's, passes signals and terminal sizes on (calling force on the
// forceSignals-th terminating one), and returns its exit status.
func runContainer(ctx context.Context, ag *container.Agent, p *runPlan, f runFlags, sigs chan os.Signal, force func(os.Signal)) (int, error) {
	pio := &agentproto.ProcessIO{Terminal: f.tty, Stdin: f.interactive}
	if _, err := ag.Call(ctx, agentproto.Request{Op: agentproto.OpCreate, Container: p.id, IO: pio,
		Create: &agentproto.Create{Spec: p.spec, ImageDisk: imageDiskSerial, User: p.user}}); err != nil {
		return 0, err
	}
	stream := func(name string) (net.Conn, error) {
		return ag.Stream(ctx, agentproto.StreamID{Container: p.id, Name: name})
	}
	var out sync.WaitGroup // output copies
	var restore func()
	if f.tty {
		tty, err := stream(agentproto.TTY)
		if err != nil {
			return 0, err
		}
		defer tty.Close()
		if f.interactive {
			if old, err := term.MakeRaw(int(os.Stdin.Fd())); err == nil {
				restore = func() { term.Restore(int(os.Stdin.Fd()), old) }
				defer restore()
			}
			go io.Copy(tty, os.Stdin)
		}
		out.Add(1)
		go func() {
			defer out.Done()
			io.Copy(os.Stdout, tty)
		}()
	} else {
		for _, s := range []struct {
			name string
			w    io.Writer
		}{{agentproto.Stdout, os.Stdout}, {agentproto.Stderr, os.Stderr}} {
			c, err := stream(s.name)
			if err != nil {
				return 0, err
			}
			defer c.Close()
			out.Add(1)
			go func() {
				defer out.Done()
				io.Copy(s.w, c)
			}()
		}
		if f.interactive {
			in, err := stream(agentproto.Stdin)
			if err != nil {
				return 0, err
			}
			defer in.Close()
			go func() {
				io.Copy(in, os.Stdin)
				in.(*net.UnixConn).CloseWrite() // EOF for the container
			}()
		}
	}
	if _, err := ag.Call(ctx, agentproto.Request{Op: agentproto.OpStart, Container: p.id}); err != nil {
		return 0, err
	}
	// Signals reach the container's process, as docker's --sig-proxy;
	// window size changes reach its terminal.
	fwdCtx, stopFwd := context.WithCancel(ctx)
	defer stopFwd()
	go func() {
		terminating := 0
		for {
			select {
			case s := <-sigs:
				switch s {
				case syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP:
					if terminating++; terminating == forceSignals {
						fmt.Fprintf(os.Stderr, "vessel: %s %d times: stopping the VM\n", s, forceSignals)
						force(s)
						return
					}
				}
				req := agentproto.Request{Op: agentproto.OpSignal, Container: p.id, Signal: int(s.(syscall.Signal))}
				if s == syscall.SIGWINCH {
					if !f.tty {
						continue
					}
					w, h, err := term.GetSize(int(os.Stdout.Fd()))
					if err != nil {
						continue
					}
					req = agentproto.Request{Op: agentproto.OpResize, Container: p.id, Size: &specs.Box{Width: uint(w), Height: uint(h)}}
				}
				go ag.Call(fwdCtx, req)
			case <-fwdCtx.Done():
				return
			}
		}
	}()
	status, err := ag.Wait(ctx, p.id, "")
	if err != nil {
		return 0, err
	}
	out.Wait()
	return status, nil
}
