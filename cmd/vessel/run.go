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
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"strconv"
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
	"github.com/vesselvm/vessel/internal/limitio"
	"github.com/vesselvm/vessel/internal/template"
	"github.com/vesselvm/vessel/vmm"
)

// exitRun is the status of `vessel run` when vessel fails before or
// around the container, as docker run uses 125 ("the error is with the
// daemon itself"). 126 and 127 (a command that cannot be run or was not
// found) come from the guest agent's start errors.
const exitRun = 125

// imageDiskSerial is the serial of the image's disk, by which the agent
// finds it.
const imageDiskSerial = "vessel-image"

type runFlags struct {
	interactive, tty bool
	env, envFiles    []string
	workdir, user    string
	entrypoint, name string
	entrypointSet    bool // --entrypoint given (possibly "")
	publish          []string
	volumes          []string
	network          string
	pull             string
	hostname         string
	detach, remove   bool
	cpus             int
	memory           string
	diskSize         string
	pidsLimit        int64
	logOpts          []string
	maxImageSize     string
	noTemplate       bool
	metrics          string
	jail             jailFlags
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
writable layer in guest memory (or on a scratch disk, --disk-size) and is
gone when it ends.

Signals vessel gets go to the container's first process, as docker's
--sig-proxy; that process is PID 1 of its namespace and gets only the
signals it handles, so a third SIGINT, SIGTERM or SIGHUP stops the VM.
Before the container runs and after it exited, while vessel waits on the
guest, a signal stops the VM at once. Every wait on the guest is bounded:
on expiry the VM is stopped.

The container shares the VM's network: by default a userspace network
(NAT to the host's network; -p publishes a host port), or none. The
host's loopback (127.0.0.1) is out of the container's reach unless
--network user,host-loopback maps it to host.vessel.internal.

-v shares a host directory with the VM over virtio-9p, confined to that
directory whatever the guest does, and binds it into the container. As
root, files the container creates there get its user's IDs, as with
docker; otherwise they belong to the user running vessel.

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
	fl.StringVar(&f.name, "name", "", "the container's name (default: its short ID)")
	fl.Bool("help", false, "help for run") // -h is --hostname, as in docker run
	fl.StringVarP(&f.hostname, "hostname", "h", "", "the container's host name (default: its short ID)")
	fl.BoolVarP(&f.detach, "detach", "d", false, "run in the background and print the container ID (see vessel ps, logs, exec, stop, rm)")
	fl.BoolVar(&f.remove, "rm", false, "remove the container when it exits")
	fl.StringArrayVarP(&f.publish, "publish", "p", nil, "publish a container port on the host: [HOSTIP:]HOSTPORT:PORT[/tcp] (repeatable)")
	fl.StringArrayVarP(&f.volumes, "volume", "v", nil, "bind a host directory into the container: HOSTDIR:PATH[:ro] (repeatable)")
	fl.StringVar(&f.network, "network", "user", "the VM's network: user (NAT, the default), user,host-loopback (also the host's 127.0.0.1 at host.vessel.internal) or none")
	fl.StringVar(&f.pull, "pull", "missing", "pull the image from its registry: missing (when not stored), always, or never")
	fl.IntVar(&f.cpus, "cpus", 1, "vCPUs of the container's VM")
	fl.StringVarP(&f.memory, "memory", "m", "512M", "RAM of the container's VM, e.g. 512M or 1G; the writable layer lives in it unless --disk-size")
	fl.Int64Var(&f.pidsLimit, "pids-limit", 0, "the most processes the container may have (0 or -1: no limit but the VM's)")
	fl.StringArrayVar(&f.logOpts, "log-opt", nil, "bound the container's log as docker's json-file: max-size=SIZE (default 10m), max-file=N (default 2) (repeatable)")
	fl.StringVar(&f.maxImageSize, "max-image-size", defaultMaxImageSize, maxImageSizeUsage)
	addJailFlags(fl, &f.jail)
	fl.StringVar(&f.metrics, "metrics", "", "write the run's steps and their times (set-up, template, VM, agent, create with its parts in the guest, start, container, teardown) as JSON to this file")
	fl.BoolVar(&f.noTemplate, "no-template", false, "boot the VM cold instead of restoring the cached template (README \"Templates\")")
	fl.StringVar(&f.diskSize, "disk-size", "", "put the writable layer on a scratch disk of this size (e.g. 10G; a sparse file on the host, removed with the container) instead of the VM's memory")
	return cmd
}

func runErr(format string, args ...any) error {
	return &exitError{code: exitRun, msg: fmt.Sprintf(format, args...)}
}

// nameRE is docker's rule for container names.
var nameRE = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_.-]*$`)

// runPlan is everything checked and resolved before the VM boots.
type runPlan struct {
	id, name string
	hostname string
	spec     *specs.Spec
	user     string
	disk     string
	scratch  uint64 // bytes of scratch disk, 0 for none
	volumes  []agentproto.Volume
	logOpts  container.LogOptions
	cfg      vmm.Config
	// template, if set, is the template the VM is restored from
	// (README "Templates"); nil boots it.
	template *templateSpec
	// phases times the run's steps (--metrics).
	phases *runPhases
}

// planRun checks the flags and resolves the image; it boots nothing.
func planRun(f runFlags, ref string, args []string) (*runPlan, error) {
	// The flags are checked first, before the image is looked up and
	// anything (state, disks, processes) is made; those that need the
	// image's config (-u, -w) when the spec is made, before any disk.
	mem, err := parseSize(f.memory)
	if err != nil || mem == 0 {
		return nil, runErr("--memory %q: want a size such as 512M or 1G", f.memory)
	}
	if err := vmm.CheckResources(f.cpus, mem); err != nil {
		return nil, runErr("%s", strings.TrimPrefix(err.Error(), vmm.ErrInvalidConfig.Error()+": "))
	}
	if err := f.jail.check(); err != nil {
		return nil, runErr("%v", err)
	}
	if f.pidsLimit < -1 {
		return nil, runErr("--pids-limit %d: want a number of processes, or 0 or -1 for no limit", f.pidsLimit)
	}
	p := &runPlan{id: os.Getenv(envRunID), phases: newRunPhases()}
	if f.metrics != "" {
		// An unwritable metrics path fails before anything runs.
		mf, err := os.OpenFile(f.metrics, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
		if err != nil {
			return nil, runErr("--metrics: %v", err)
		}
		mf.Close()
	}
	if p.id != "" && !container.ValidID(p.id) {
		return nil, runErr("%s=%q is not a container ID", envRunID, p.id)
	}
	if p.logOpts, err = container.ParseLogOpts(f.logOpts); err != nil {
		return nil, runErr("%v", err)
	}
	if f.diskSize != "" {
		if p.scratch, err = parseSize(f.diskSize); err != nil || p.scratch < container.MinScratch {
			return nil, runErr("--disk-size %q: want a size of at least %dM, such as 10G", f.diskSize, container.MinScratch>>20)
		}
	}
	if p.id == "" {
		var b [32]byte
		rand.Read(b[:])
		p.id = hex.EncodeToString(b[:])
	}
	p.name, p.hostname = f.name, f.hostname
	if p.name == "" {
		p.name = p.id[:12]
	} else if !nameRE.MatchString(p.name) || len(p.name) > 128 {
		return nil, runErr("invalid container name %q: only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed", f.name)
	}
	if p.hostname == "" {
		p.hostname = p.id[:12]
	}
	var nets []vmm.Net
	var guestNets []cmdline.Net
	un, err := parseUserNetwork(f.network)
	if err != nil {
		return nil, runErr("%v", err)
	}
	if un != nil {
		for _, s := range f.publish {
			pub, err := parsePublish(s)
			if err != nil {
				return nil, runErr("-p %s: %v", s, err)
			}
			un.Publish = append(un.Publish, pub)
		}
		mac := randomMAC()
		nets = append(nets, vmm.Net{MAC: mac, User: un})
		guestNets = append(guestNets, userGuestNet(mac))
	} else if len(f.publish) > 0 {
		return nil, runErr("-p needs a network: not with --network none")
	}
	env, err := readEnvFiles(f.envFiles)
	if err != nil {
		return nil, runErr("%v", err)
	}
	env = append(env, f.env...)
	shares, err := planVolumes(p, f.volumes)
	if err != nil {
		return nil, err
	}

	root, err := store.DefaultRoot()
	if err != nil {
		return nil, runErr("%v", err)
	}
	st, err := store.Open(root)
	if err != nil {
		return nil, runErr("%v", err)
	}
	lim, err := imageLimits(f.maxImageSize)
	if err != nil {
		return nil, runErr("%v", err)
	}
	st.SetLimits(lim)
	pull := f.pull
	if os.Getenv(envRunID) != "" {
		// The vessel process of a detached container: the command that
		// started it has resolved the image, pulling it if asked to.
		pull = "never"
	}
	img, err := st.Resolve(ref)
	switch {
	case pull != "missing" && pull != "always" && pull != "never":
		return nil, runErr("--pull %q: want missing, always or never", pull)
	case pull == "always" || pull == "missing" && errors.Is(err, store.ErrNotFound):
		local := err == nil
		if img, err = pullImage(context.Background(), st, ref); err != nil {
			if !local {
				return nil, runErr("unable to find image %q locally, and the %s", ref, imageErrText(err))
			}
			return nil, runErr("%s", imageErrText(err))
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
	opts := container.Options{Args: args, Env: env, Workdir: f.workdir, User: f.user, Terminal: f.tty, Hostname: p.hostname, PidsLimit: f.pidsLimit}
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
	progress, finish := conversionProgress(ref)
	p.disk, err = st.RootfsProgress(img, progress)
	finish()
	if err != nil {
		return nil, runErr("image %s: root file system: %s", ref, imageErrText(err))
	}

	kernel, initrd, missing := builtGuest()
	if missing != "" {
		return nil, runErr("no guest artifact at %s: build it with `make`", missing)
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
		Shares:  shares,
		Balloon: vmm.FreePageReporting(),
		// The VMM's reports of a misbehaving guest driver: a detached
		// container's go to vessel.log in its state directory.
		Log: limitio.Writer(os.Stderr, container.DiagLimit, "vessel: further reports about the VM suppressed\n"),
	}
	// A template holds an empty slot for the image's disk and a user
	// network or none: runs with volumes or a scratch disk boot.
	if !f.noTemplate && p.scratch == 0 && len(shares) == 0 {
		p.template = &templateSpec{kernel: kernel, initrd: initrd, cpus: f.cpus, memory: mem, user: un != nil}
	}
	return p, nil
}

// scratchSerial is the serial of the scratch disk, by which the agent
// finds it.
const scratchSerial = "vessel-scratch"

// scratchSerial names the scratch disk to the agent, if there is one.
func (p *runPlan) scratchSerial() string {
	if p.scratch == 0 {
		return ""
	}
	return scratchSerial
}

// macChange is the address change the agent makes before the
// container: a VM restored from a template has the template's MAC, and
// its network device and backend have this run's own (vmm.RestoreOptions
// .Nets). A VM booted instead (no template, or one that failed) has this
// run's MAC already, which the agent sees.
func (p *runPlan) macChange() *agentproto.MACChange {
	if p.template == nil || len(p.cfg.Nets) != 1 {
		return nil
	}
	return &agentproto.MACChange{From: templateMAC.String(), To: p.cfg.Nets[0].MAC.String()}
}

// makeScratch creates the container's scratch disk under vessel's data
// directory, records it in st (so that rm removes it even if this
// process is killed) and attaches it to the VM.
func makeScratch(st *container.State, p *runPlan) error {
	path, err := container.ScratchPath(p.id)
	if err != nil {
		return runErr("%v", err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return runErr("--disk-size: %v", err)
	}
	st.Scratch = path
	if err := st.Save(); err != nil {
		return runErr("%v", err)
	}
	if err := container.MakeScratch(st.Scratch, p.scratch); err != nil {
		return runErr("--disk-size: %v", err)
	}
	p.cfg.Disks = append(p.cfg.Disks, vmm.Disk{Path: st.Scratch, Serial: scratchSerial})
	return nil
}

// planVolumes checks -v values: each becomes a share of the VM and a
// volume the agent binds into the container.
func planVolumes(p *runPlan, vols []string) ([]vmm.Share, error) {
	var shares []vmm.Share
	seen := map[string]bool{}
	for i, s := range vols {
		v, err := container.ParseVolume(s)
		if err != nil {
			return nil, runErr("-v %s: %v", s, err)
		}
		if seen[v.Destination] {
			return nil, runErr("-v %s: duplicate mount point %s", s, v.Destination)
		}
		seen[v.Destination] = true
		tag := fmt.Sprintf("vessel-volume-%d", i)
		shares = append(shares, vmm.Share{Tag: tag, Dir: v.HostDir, ReadOnly: v.ReadOnly})
		p.volumes = append(p.volumes, agentproto.Volume{Tag: tag, Destination: v.Destination, ReadOnly: v.ReadOnly})
	}
	return shares, nil
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
			if strings.ContainsRune(l, 0) {
				f.Close()
				return nil, fmt.Errorf("--env-file %s line %d: a NUL byte, which no environment variable can hold", p, n)
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

// envRunID carries a detached container's ID from `vessel run -d` to the
// vessel process it starts in the background to run the container, and
// readyFD is that process's pipe back (fd 3): "ok" once the container
// runs, or an exit status and a message. ownerLockFD is the container's
// owner lock (container.HeldLock), which that process holds from then on.
const (
	envRunID    = "VESSEL_RUN_ID"
	readyFD     = 3
	ownerLockFD = 4
)

func containerRun(f runFlags, ref string, args []string) error {
	child := os.Getenv(envRunID) != ""
	if f.detach && f.interactive {
		return runErr("-d and -i cannot be combined: a detached container has no stdin")
	}
	ready := func(error) {}
	if child {
		// The owner from now on, first thing: vessel stop or rm -f
		// reads the owner's PID from the state to kill it.
		id := os.Getenv(envRunID)
		if !container.ValidID(id) { // not run by vessel run -d: fd 3 is not its
			return runErr("%s=%q is not a container ID", envRunID, id)
		}
		ready = readyPipe()
		if err := takeOver(id); err != nil {
			ready(err)
			return runErr("%v", err)
		}
	}
	p, err := planRun(f, ref, args)
	if err != nil {
		return err
	}
	if f.interactive && f.tty && !term.IsTerminal(int(os.Stdin.Fd())) {
		return runErr("the input device is not a TTY (-t with -i needs a terminal on stdin)")
	}
	root, err := container.StateRoot()
	if err != nil {
		return runErr("%v", err)
	}
	if !child {
		reapOrphans(root)
		st := &container.State{ID: p.id, Name: p.name, Image: ref, Command: p.spec.Process.Args, Created: time.Now().UTC(),
			Status: container.StatusCreated, Pid: os.Getpid(), PidNS: container.PidNamespace(), Process: p.spec.Process, Remove: f.remove}
		if err := container.Create(root, st); err != nil {
			return runErr("%v", err)
		}
		if f.detach {
			return startDetached(st)
		}
	}
	st, err := container.Find(root, p.id)
	if err != nil {
		return runErr("%v", err)
	}
	err = superviseContainer(st, p, f, ready)
	if st.Remove {
		st.Delete()
	}
	return err
}

// takeOver makes this process the owner of container id, which the
// `vessel run -d` that started it created: it adopts the owner lock the
// parent passed on and records its PID.
func takeOver(id string) error {
	root, err := container.StateRoot()
	if err != nil {
		return err
	}
	st, err := container.Find(root, id)
	if err != nil {
		return err
	}
	lock := os.NewFile(ownerLockFD, "owner.lock")
	if err := st.IsOwnerLock(lock); err != nil {
		return err
	}
	container.AdoptLock(st.ID, lock)
	st.Pid, st.PidNS = os.Getpid(), container.PidNamespace()
	return st.Save()
}

// startDetached starts this vessel command again in the background, in
// a session of its own, to run the container st, and waits until the
// container runs (printing its ID) or failed (returning why).
func startDetached(st *container.State) error {
	self, err := os.Executable()
	if err != nil {
		st.Delete()
		return runErr("%v", err)
	}
	r, w, err := os.Pipe()
	if err != nil {
		st.Delete()
		return runErr("%v", err)
	}
	defer r.Close()
	diag, err := os.Create(filepath.Join(st.Dir(), "vessel.log"))
	if err != nil {
		st.Delete()
		return runErr("%v", err)
	}
	defer diag.Close()
	cmd := exec.Command(self, os.Args[1:]...)
	cmd.Env = append(os.Environ(), envRunID+"="+st.ID)
	cmd.Stdout, cmd.Stderr = diag, diag // vessel's own messages; the container's output goes to its log
	// fd 3: readyFD; fd 4: the owner lock, which the child holds from now on.
	cmd.ExtraFiles = []*os.File{w, container.HeldLock(st.ID)}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		w.Close()
		st.Delete()
		return runErr("start the container's vessel process: %v", err)
	}
	w.Close()
	container.ReleaseLock(st.ID)
	cmd.Process.Release()
	line, _ := bufio.NewReader(r).ReadString('\n')
	line = strings.TrimSpace(line)
	if line == "ok" {
		fmt.Println(st.ID)
		return nil
	}
	code, msg := exitRun, line
	if c, m, ok := strings.Cut(line, " "); ok {
		if n, err := strconv.Atoi(c); err == nil {
			code, msg = n, m
		}
	}
	if msg == "" {
		msg = "the container's vessel process ended before the container ran (see " + diag.Name() + ")"
	}
	return &exitError{code: code, msg: msg}
}

// readyPipe returns the function a detached container's vessel process
// calls once: with nil when the container runs, or with the error that
// stopped it.
func readyPipe() func(error) {
	w := os.NewFile(readyFD, "ready")
	var once sync.Once
	return func(err error) {
		once.Do(func() {
			if err == nil {
				fmt.Fprintln(w, "ok")
			} else {
				code := exitRun
				var ee *exitError
				if errors.As(err, &ee) {
					code = ee.code
				}
				fmt.Fprintf(w, "%d %s\n", code, strings.ReplaceAll(err.Error(), "\n", " "))
			}
			w.Close()
		})
	}
}

// Bounds of vessel run's waits on the guest: generous, as the emulated
// test platform is 10-50x slower than hardware (a boot to the agent
// takes 30 s and more there). Requests are bounded by
// container.RequestTimeout.
const (
	// agentTimeout bounds the boot, up to the agent's control
	// connection.
	agentTimeout = 3 * time.Minute
	// drainTimeout bounds how long the container's output streams may
	// stay open after the agent reported its exit, when they should
	// have ended.
	drainTimeout = time.Minute
	// shutdownTimeout bounds the container's removal and the VM's end
	// after the container exited.
	shutdownTimeout = 30 * time.Second
)

// runBounds are the bounds of vessel run's waits on the guest; on
// expiry the VM is stopped.
type runBounds struct {
	agent, request, drain, shutdown time.Duration
}

// defaultBounds are the bounds vessel run uses.
var defaultBounds = runBounds{agent: agentTimeout, request: container.RequestTimeout, drain: drainTimeout, shutdown: shutdownTimeout}

// superviseContainer boots the VM, runs the container in it, records
// its state in st while it runs (serving its control socket for exec and
// stop) and after it exited, and returns its exit status as an error.
// Its output goes to the container's log and, in the foreground, to
// vessel's stdout and stderr. ready is told once the container runs, or
// why it could not.
func superviseContainer(st *container.State, p *runPlan, f runFlags, ready func(error)) (err error) {
	b := defaultBounds
	if f.metrics != "" {
		defer func() {
			p.phases.mark("teardown")
			if werr := p.phases.write(f.metrics); werr != nil {
				fmt.Fprintf(os.Stderr, "vessel: --metrics: %v\n", werr)
			}
		}()
	}
	defer func() {
		ready(err)
		if st.Status != container.StatusExited {
			st.Status, st.Finished = container.StatusExited, time.Now().UTC()
			st.ExitCode = exitRun
			var ee *exitError
			if errors.As(err, &ee) {
				st.ExitCode = ee.code
			} else if err == nil {
				st.ExitCode = 0
			}
			st.Save()
		}
	}()
	logf, err := container.OpenLog(st.LogPath(), p.logOpts)
	if err != nil {
		return runErr("%v", err)
	}
	defer logf.Close()
	logf.OnError(func(err error) {
		fmt.Fprintf(os.Stderr, "vessel: %v: the container's output is no longer logged\n", err)
	})
	stdout, stderr := logf.Writer("stdout"), logf.Writer("stderr")
	if !f.detach {
		stdout, stderr = io.MultiWriter(os.Stdout, stdout), io.MultiWriter(os.Stderr, stderr)
	}

	// The agent's port (the vsock device's host side) and the control
	// socket live in a private directory removed at the end: Unix
	// socket paths are short.
	dir, err := os.MkdirTemp("", container.RunDirPrefix)
	if err != nil {
		return runErr("%v", err)
	}
	defer os.RemoveAll(dir)
	// Recorded before the VM starts, so that the directory goes with
	// the container should this process be killed (State.Reap).
	st.Socket = filepath.Join(dir, "ctl.sock")
	if err := st.Save(); err != nil {
		return runErr("%v", err)
	}
	uds := filepath.Join(dir, "vsock")
	ln, err := net.Listen("unix", fmt.Sprintf("%s_%d", uds, agentproto.Port))
	if err != nil {
		return runErr("agent socket: %v", err)
	}
	defer ln.Close()
	p.cfg.Vsock = &vmm.Vsock{CID: 3, Path: uds}
	if p.scratch > 0 {
		if err := makeScratch(st, p); err != nil {
			return err
		}
		defer func() {
			if err := os.Remove(st.Scratch); err == nil || errors.Is(err, os.ErrNotExist) {
				st.Scratch = ""
				st.Save()
			}
		}()
	}

	p.phases.mark("setup")
	vm, err := startRunVM(p, f)
	p.phases.mark("vm")
	if err != nil {
		e := classify(err)
		var ee *exitError
		if errors.As(e, &ee) {
			ee.code = exitRun
		}
		return e
	}
	defer vm.Close()
	// A jailed VMM process filters itself (internal/vmmproc).
	if !f.jail.jail {
		if err := sandboxVMM(); err != nil {
			return err
		}
	}
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
	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGQUIT, syscall.SIGUSR1, syscall.SIGUSR2, syscall.SIGWINCH)
	defer signal.Stop(sigs)
	var forced atomic.Value // the signal that forced the VM to stop
	force := func(s os.Signal) {
		forced.Store(s)
		vm.Stop()
	}
	// forcedExit is the exit of a run a signal stopped, once the VM
	// ended; nil if none did.
	forcedExit := func() error {
		if s, ok := forced.Load().(syscall.Signal); ok {
			vmResult()
			return &exitError{code: 128 + int(s)}
		}
		return nil
	}
	var rs runSignals
	go rs.loop(ctx, sigs, p.id, f.tty, b.request, force)

	actx, acancel := context.WithTimeout(ctx, b.agent)
	ag, err := container.Accept(actx, ln)
	acancel()
	p.phases.mark("agent")
	if err != nil {
		stopFailed(vm, err)
		res := vmResult()
		if err := forcedExit(); err != nil {
			return err
		}
		if errors.Is(err, context.DeadlineExceeded) {
			err = fmt.Errorf("not within %v", b.agent)
		}
		return guestFailure("the guest agent did not come up", err, res)
	}
	defer ag.Close()
	started := func() error {
		ctl, err := net.Listen("unix", st.Socket)
		if err != nil {
			return runErr("control socket: %v", err)
		}
		go ag.ServeControl(ctl)
		st.Status = container.StatusRunning
		if err := st.Save(); err != nil {
			ctl.Close()
			return runErr("%v", err)
		}
		ready(nil)
		return nil
	}
	status, err := runContainer(ctx, ag, p, f, &rs, b, stdout, stderr, started)
	if err := forcedExit(); err != nil {
		return err
	}
	if err != nil {
		stopFailed(vm, err)
		res := vmResult()
		var se *container.StartError
		if errors.As(err, &se) {
			code := exitRun
			if se.Code != 0 {
				code = se.Code
			}
			return &exitError{code: code, msg: se.Msg}
		}
		var ee *exitError
		if errors.As(err, &ee) {
			return err
		}
		return guestFailure("the container failed", err, res)
	}
	st.Status, st.ExitCode, st.Finished = container.StatusExited, status, time.Now().UTC()
	st.Save()
	// The container is gone. Without a scratch disk nothing of it
	// outlives the VM (its writable layer is the guest's tmpfs, the
	// image disk is read-only, volumes are 9P without a cache, written
	// through as the container wrote): the VM is stopped without the
	// guest's teardown. With one, the container is removed and the
	// guest shuts down, which unmounts the scratch file system cleanly.
	if p.scratch == 0 {
		vm.Stop()
	} else {
		stopCtx, stop := context.WithTimeout(ctx, b.shutdown)
		defer stop()
		if _, err := ag.Call(stopCtx, agentproto.Request{Op: agentproto.OpDelete, Container: p.id}); err != nil && ctx.Err() == nil {
			fmt.Fprintf(os.Stderr, "vessel: remove the container: %v\n", err)
		}
		ag.Call(stopCtx, agentproto.Request{Op: agentproto.OpShutdown})
		select {
		case <-ended:
		case <-stopCtx.Done():
			vm.Stop()
		}
	}
	if err := forcedExit(); err != nil { // a signal while the VM ended
		return err
	}
	if status != 0 {
		return &exitError{code: status}
	}
	return nil
}

// startRunVM starts the container's VM: restored from its template when
// it has one (built first if the cache has none), else booted. A
// template that cannot be built or restored is reported in one line and
// the VM boots; one the restore refuses is dropped from the cache.
func startRunVM(p *runPlan, f runFlags) (runningVM, error) {
	o := vmOptions{jail: f.jail, name: p.id}
	if p.template == nil {
		return startVM(p.cfg, o)
	}
	snap, err := templateFor(*p.template)
	p.phases.mark("template")
	if err != nil {
		// The first line is the reason; a described VM (VESSEL_DEBUG)
		// follows it.
		why, more, _ := strings.Cut(err.Error(), "\n")
		if more != "" {
			more = "\n" + more
		}
		fmt.Fprintf(os.Stderr, "vessel: template: %s; booting the VM instead%s\n", why, more)
		return startVM(p.cfg, o)
	}
	o.restore = snap
	p.phases.setRestored(true)
	vm, err := startVM(p.cfg, o)
	if errors.Is(err, vmm.ErrSnapshot) {
		fmt.Fprintf(os.Stderr, "vessel: template: %v; booting the VM instead\n", err)
		template.Drop(snap)
		o.restore = ""
		p.phases.setRestored(false)
		return startVM(p.cfg, o)
	}
	return vm, err
}

// guestFailure reports a VM that ended or failed around the container.
func guestFailure(what string, err error, res vmm.Result) error {
	var b strings.Builder
	fmt.Fprintf(&b, "%s: %v", what, err)
	switch res.Kind {
	case vmm.ExitPanic, vmm.ExitTripleFault, vmm.ExitError:
		fmt.Fprintf(&b, " (the VM ended: %s)", container.CleanText(res.Detail))
	case vmm.ExitGuestStatus:
		fmt.Fprintf(&b, " (the agent exited with status %d)", res.Status)
	}
	writeConsoleTail(&b, res.ConsoleTail)
	container.WriteDiagnosis(&b, res.Diagnosis)
	return &exitError{code: exitRun, msg: strings.TrimRight(b.String(), "\n")}
}

// errNoAnswer is a request to the guest's agent that timed out.
var errNoAnswer = errors.New("the guest did not answer")

// stopFailed stops the VM of a run that failed around the guest: with
// container.DebugEnv set, after describing its state into the result
// when the failure was a guest that stopped answering.
func stopFailed(vm runningVM, err error) {
	if container.Debugging() && (errors.Is(err, context.DeadlineExceeded) || errors.Is(err, errNoAnswer)) {
		vm.StopDiagnosed()
	}
	vm.Stop()
}

// forceSignals is how many terminating signals (SIGINT, SIGTERM, SIGHUP)
// make vessel stop the VM instead of passing them on: the container's
// first process is PID 1 of its namespace and ignores what it does not
// handle, so without this a container that ignores Ctrl-C could not be
// stopped from its terminal.
const forceSignals = 3

// runContainer creates and starts the container, connects its stdio
// (output to stdout and stderr), calls started once it runs, has rs
// pass signals on while it runs, and returns its exit status. Each wait
// on the guest is bounded by b, or ends with ctx (the VM ended).
func runContainer(ctx context.Context, ag *container.Agent, p *runPlan, f runFlags, rs *runSignals, b runBounds,
	stdout, stderr io.Writer, started func() error) (int, error) {
	call := func(req agentproto.Request) (agentproto.Reply, error) {
		cctx, cancel := context.WithTimeout(ctx, b.request)
		defer cancel()
		r, err := ag.Call(cctx, req)
		if errors.Is(err, context.DeadlineExceeded) {
			err = fmt.Errorf("%s: %w within %v", req.Op, errNoAnswer, b.request)
		}
		return r, err
	}
	pio := &agentproto.ProcessIO{Terminal: f.tty, Stdin: f.interactive}
	r, err := call(agentproto.Request{Op: agentproto.OpCreate, Container: p.id, IO: pio,
		Create: &agentproto.Create{Spec: p.spec, ImageDisk: imageDiskSerial, User: p.user, Volumes: p.volumes, ScratchDisk: p.scratchSerial(), MAC: p.macChange()}})
	if err != nil {
		return 0, err
	}
	p.phases.mark("create", r.Steps...)
	stream := func(name string) (net.Conn, error) {
		cctx, cancel := context.WithTimeout(ctx, b.request)
		defer cancel()
		return ag.Stream(cctx, agentproto.StreamID{Container: p.id, Name: name})
	}
	at, err := attach(stream, f.tty, f.interactive, stdout, stderr)
	if err != nil {
		return 0, err
	}
	defer at.close()
	if _, err := call(agentproto.Request{Op: agentproto.OpStart, Container: p.id}); err != nil {
		return 0, err
	}
	p.phases.mark("start")
	if err := started(); err != nil {
		return 0, err
	}
	// Signals reach the container's process, as docker's --sig-proxy;
	// window size changes reach its terminal.
	rs.forward(ag)
	status, err := ag.Wait(ctx, p.id, "")
	rs.forward(nil)
	p.phases.mark("container")
	if err != nil {
		return 0, err
	}
	if err := at.drain(ctx, b.drain); err != nil {
		return 0, err
	}
	return status, nil
}

// signalRequest is what a signal vessel got asks of a process in the
// container (exec "" for its own): SIGWINCH becomes a resize to the host
// terminal's size (only with a terminal), the rest a signal. ok is false
// when there is nothing to send.
func signalRequest(s os.Signal, container, exec string, tty bool) (req agentproto.Request, ok bool) {
	if s != syscall.SIGWINCH {
		return agentproto.Request{Op: agentproto.OpSignal, Container: container, Exec: exec, Signal: int(s.(syscall.Signal))}, true
	}
	if !tty {
		return req, false
	}
	w, h, err := term.GetSize(int(os.Stdout.Fd()))
	if err != nil {
		return req, false
	}
	return agentproto.Request{Op: agentproto.OpResize, Container: container, Exec: exec, Size: &specs.Box{Width: uint(w), Height: uint(h)}}, true
}

// runSignals acts on the signals vessel gets while it runs a
// container. While the container runs they go to its process, as
// docker's --sig-proxy (terminal size changes as resizes, with a
// terminal), and the forceSignals-th terminating one stops the VM
// instead; before it runs and after it exited, while vessel waits on the
// guest, any but SIGWINCH stops the VM at once.
type runSignals struct {
	ag atomic.Pointer[container.Agent] // set while the container runs
}

// forward has signals go to the container's process through ag from
// now on; nil ends that.
func (r *runSignals) forward(ag *container.Agent) { r.ag.Store(ag) }

// loop acts on sigs until ctx ends or it called force, which stops the
// VM; each request it passes on is bounded by request.
func (r *runSignals) loop(ctx context.Context, sigs <-chan os.Signal, id string, tty bool, request time.Duration, force func(os.Signal)) {
	terminating := 0
	for {
		select {
		case s := <-sigs:
			ag := r.ag.Load()
			if ag == nil {
				if s != syscall.SIGWINCH {
					force(s)
					return
				}
				continue
			}
			switch s {
			case syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP:
				if terminating++; terminating == forceSignals {
					fmt.Fprintf(os.Stderr, "vessel: %s %d times: stopping the VM\n", s, forceSignals)
					force(s)
					return
				}
			}
			if req, ok := signalRequest(s, id, "", tty); ok {
				go func() {
					cctx, cancel := context.WithTimeout(ctx, request)
					defer cancel()
					ag.Call(cctx, req)
				}()
			}
		case <-ctx.Done():
			return
		}
	}
}
