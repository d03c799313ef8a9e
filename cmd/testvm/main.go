// Command testvm runs a command on a platform where vessel can boot real
// Linux guests, so that `make test` proves guest features on any machine.
//
//	go run ./cmd/testvm [flags] -- COMMAND [ARG...]
//
// # Platforms
//
// Direct: when the host's /dev/kvm can boot a stock kernel (it exists,
// /sys/module/kvm_pvm does not, and /proc/cpuinfo has vmx or svm), testvm
// simply execs COMMAND.
//
// Nested: otherwise (e.g. on PVM hosts, whose /dev/kvm runs only PVM
// guests) testvm boots an "outer" Linux VM under QEMU's software emulation
// (TCG, -cpu max, which emulates AMD SVM) and runs COMMAND inside it, where
// /dev/kvm is real KVM (KVM_AMD). The outer kernel is the project's own
// (images/build-kernel.sh, found from the module root above the working
// directory; built on first use, about 5 minutes, cached afterwards). The
// host's root is shared read-only over virtio-9p with a tmpfs-backed
// overlayfs on top, so COMMAND sees the same files, working directory,
// uid/gid and environment as on the host and can write anywhere; its writes
// are discarded when it ends. /proc, /sys, /dev (with /dev/kvm), /dev/pts,
// /dev/shm, and fresh tmpfs on /tmp and /run (unless the working directory,
// an argument or a path in the environment lies under them) are mounted,
// loopback is up, the clock is taken from the host. COMMAND's stdin is
// /dev/null; its stdout and stderr are pipes relayed to testvm's own.
// Everything in the outer VM is emulated (10-50x slower than hardware):
// compile on the host (go build, go test -c) and run only binaries inside.
// One outer VM serves one COMMAND; it may run many inner VMs.
//
// The outer kernel on this platform occasionally crashes. When the outer VM
// dies without reporting COMMAND's status and its console shows an
// outer-kernel crash, or QEMU's log shows that an outer CPU triple-faulted
// (QEMU's TCG emulation failing the outer kernel, which then prints
// nothing), testvm says so and retries once. So it does when the outer
// kernel reports an RCU stall a third time during the command (a CPU
// wedged for minutes): it ends the outer VM rather than wait for the
// time limit. And so it does when the outer VM's init, which prints a
// sign of life every 10 s while COMMAND runs, is silent for --alive-limit:
// an outer CPU that stays in a nested guest for good wedges the rest of
// the outer VM without a kernel message. A failure of COMMAND is never
// retried.
//
// testvm itself must be statically linked (it becomes the outer VM's init):
// it uses no cgo packages, and checks its executable before using it.
//
// # Flags
//
//	--platform auto|direct|nested   where to run COMMAND (default auto)
//	--cpus N        outer VM vCPUs (default 2)
//	--memory MiB    outer VM memory (default 4096)
//	--timeout D     kill the outer VM after D (e.g. 10m; default 0 = none;
//	                counted from the outer VM's start, not the kernel build)
//	--kernel PATH   outer kernel bzImage (or a directory holding one)
//	--alive-limit D end the outer VM as wedged, and retry once, when its
//	                init shows no sign of life for D while COMMAND runs
//	                (default 2m; 0: never)
//	-v              show the outer VM's console in full, and timings
//
// testvm prints one line on stderr naming the platform it used.
//
// # Exit status
//
//	0-255  COMMAND's exit status (128+N if it was killed by signal N;
//	       127 if it was not found, 126 if it could not be executed)
//	124    --timeout expired (the outer VM was killed)
//	125    testvm or the platform failed: bad usage, QEMU missing, kernel
//	       build failed, or the outer VM died without reporting a status
//	128+N  testvm got signal N (SIGINT, SIGTERM, SIGHUP) and killed the VM
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime/debug"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

const (
	exitTimeout = 124
	exitFailure = 125
)

type options struct {
	platform string
	cpus     int
	memory   int
	timeout  time.Duration
	kernel   string
	verbose  bool
	// aliveLimit is how long init may show no sign of life while the
	// command runs before the outer VM counts as wedged (0: no limit).
	aliveLimit time.Duration
	argv       []string
	qemu       string
	tscKHz     uint64 // the host's TSC rate, given to the outer kernel
}

const usageText = `usage: testvm [flags] -- COMMAND [ARG...]
  --platform auto|direct|nested  where to run COMMAND (default auto)
  --cpus N                       outer VM vCPUs (default 2)
  --memory MiB                   outer VM memory in MiB (default 4096)
  --timeout DURATION             kill the outer VM after DURATION (default 0: none)
  --kernel PATH                  outer kernel bzImage (default: images/build-kernel.sh)
  --alive-limit DURATION         retry once when the outer VM is silent this long (default 2m; 0: never)
  -v                             show the outer console in full
exit status: COMMAND's, 124 on timeout, 125 on testvm/platform failure
`

var errHelp = errors.New("help requested")

// parseArgs parses testvm's arguments (without the program name).
func parseArgs(args []string) (*options, error) {
	o := &options{}
	fs := flag.NewFlagSet("testvm", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.StringVar(&o.platform, "platform", "auto", "")
	fs.IntVar(&o.cpus, "cpus", 2, "")
	fs.IntVar(&o.memory, "memory", 4096, "")
	fs.DurationVar(&o.timeout, "timeout", 0, "")
	fs.StringVar(&o.kernel, "kernel", "", "")
	fs.BoolVar(&o.verbose, "v", false, "")
	fs.DurationVar(&o.aliveLimit, "alive-limit", 2*time.Minute, "")
	dash := -1
	for i, a := range args {
		if a == "--" {
			dash = i
			break
		}
	}
	flags := args
	if dash >= 0 {
		flags = args[:dash]
	}
	if err := fs.Parse(flags); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil, errHelp
		}
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q: put COMMAND after --", fs.Arg(0))
	}
	if dash < 0 {
		return nil, errors.New("missing -- COMMAND")
	}
	o.argv = args[dash+1:]
	switch {
	case len(o.argv) == 0 || o.argv[0] == "":
		return nil, errors.New("missing COMMAND after --")
	case o.platform != "auto" && o.platform != "direct" && o.platform != "nested":
		return nil, fmt.Errorf("--platform must be auto, direct or nested, not %q", o.platform)
	case o.cpus < 1 || o.cpus > 64:
		return nil, fmt.Errorf("--cpus must be between 1 and 64, not %d", o.cpus)
	case o.memory < 256:
		return nil, fmt.Errorf("--memory must be at least 256 (MiB), not %d", o.memory)
	case o.timeout < 0:
		return nil, fmt.Errorf("--timeout must not be negative")
	case o.aliveLimit < 0:
		return nil, fmt.Errorf("--alive-limit must not be negative")
	}
	return o, nil
}

func main() {
	if isGuestInit() {
		guestMain()
		return
	}
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func failf(stderr io.Writer, format string, args ...any) int {
	fmt.Fprintf(stderr, "testvm: "+format+"\n", args...)
	return exitFailure
}

func run(args []string, stdout, stderr io.Writer) (code int) {
	defer func() {
		if r := recover(); r != nil {
			code = failf(stderr, "internal error: %v\n%s", r, debug.Stack())
		}
	}()
	o, err := parseArgs(args)
	if err == errHelp {
		fmt.Fprint(stderr, usageText)
		return 0
	}
	if err != nil {
		return failf(stderr, "%v (usage: testvm [flags] -- COMMAND [ARG...]; -h for help)", err)
	}
	host := detectHost("/")
	direct, _ := choosePlatform(o.platform, host)
	if direct {
		return runDirect(o, host, stderr)
	}
	return runNested(o, host, stdout, stderr)
}

func runDirect(o *options, host hostKVM, stderr io.Writer) int {
	why := host.Why
	if o.platform == "direct" && !host.Direct {
		why = "forced by --platform direct; " + why
	}
	fmt.Fprintf(stderr, "testvm: platform: host KVM (VT-x/AMD-V): running directly (%s)\n", why)
	path, err := exec.LookPath(o.argv[0])
	if err != nil {
		fmt.Fprintf(stderr, "testvm: %s: command not found\n", o.argv[0])
		if errors.Is(err, exec.ErrNotFound) || errors.Is(err, os.ErrNotExist) {
			return 127
		}
		return 126
	}
	err = syscall.Exec(path, o.argv, os.Environ())
	fmt.Fprintf(stderr, "testvm: cannot run %s: %v\n", path, err)
	if errors.Is(err, syscall.ENOENT) {
		return 127
	}
	return 126
}

func runNested(o *options, host hostKVM, stdout, stderr io.Writer) int {
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	defer signal.Stop(sigs)
	// A write to a closed stdout pipe must fail, not kill us and leave QEMU behind.
	signal.Notify(make(chan os.Signal, 1), syscall.SIGPIPE)

	var err error
	if o.qemu, err = exec.LookPath("qemu-system-x86_64"); err != nil {
		return failf(stderr, "%v", errNoQemu)
	}
	exe, err := os.Executable()
	if err != nil {
		return failf(stderr, "cannot find my own executable: %v", err)
	}
	if err := checkStatic(exe); err != nil {
		return failf(stderr, "%v", err)
	}
	cwd, err := os.Getwd()
	if err != nil {
		return failf(stderr, "working directory: %v", err)
	}
	kernel := o.kernel
	if kernel != "" {
		if kernel, err = resolveKernel(kernel); err != nil {
			return failf(stderr, "%v", err)
		}
	} else {
		root, err := findModuleRoot(cwd)
		if err != nil {
			return failf(stderr, "%v", err)
		}
		var sig os.Signal
		kernel, sig, err = buildKernel(root, stderr, sigs)
		if sig != nil {
			fmt.Fprintf(stderr, "testvm: %v: stopped the kernel build\n", sig)
			return 128 + int(sig.(syscall.Signal))
		}
		if err != nil {
			return failf(stderr, "%v", err)
		}
	}
	why := ""
	if o.platform == "nested" {
		why = "forced by --platform nested; "
	}
	fmt.Fprintf(stderr, "testvm: platform: nested KVM in QEMU TCG (-cpu max), outer kernel %s (%s%s)\n", kernel, why, host.Why)
	if o.tscKHz, err = tscKHz(); err != nil {
		return failf(stderr, "%v", err)
	}

	tmp, err := os.MkdirTemp("", "testvm-")
	if err != nil {
		return failf(stderr, "%v", err)
	}
	defer os.RemoveAll(tmp)

	nonce, err := newNonce()
	if err != nil {
		return failf(stderr, "random nonce: %v", err)
	}
	env := guestEnv(os.Environ())
	groups, _ := os.Getgroups()
	umask := unix.Umask(0o022)
	unix.Umask(umask)
	hostname, _ := os.Hostname()
	sp := &spec{
		Argv: o.argv, Dir: cwd, Env: env,
		UID: os.Getuid(), GID: os.Getgid(), Groups: groups, Umask: umask,
		Hostname: hostname, Nonce: nonce,
		TmpfsDirs: tmpfsDirs([]string{"/tmp", "/run"}, protectedPaths(cwd, o.argv, env)),
		NineP:     ninePOpts, Verbose: o.verbose,
	}

	var deadline time.Time
	if o.timeout > 0 {
		deadline = time.Now().Add(o.timeout)
	}
	for attempt := 1; ; attempt++ {
		sp.HostTimeNs = time.Now().UnixNano()
		initrd := filepath.Join(tmp, fmt.Sprintf("initramfs-%d.cpio", attempt))
		qemuLog := filepath.Join(tmp, fmt.Sprintf("qemu-%d.log", attempt))
		if err := writeInitramfsFile(initrd, exe, sp); err != nil {
			return failf(stderr, "initramfs: %v", err)
		}
		out := runOuter(&runEnv{o: o, kernel: kernel, initrd: initrd, qemuLog: qemuLog, nonce: nonce, deadline: deadline, sigs: sigs, stdout: stdout, stderr: stderr})
		_ = os.Remove(initrd)
		_ = os.Remove(qemuLog)
		switch {
		case out.signal != nil:
			fmt.Fprintf(stderr, "testvm: %v: killed the outer VM\n", out.signal)
			return 128 + int(out.signal.(syscall.Signal))
		case out.timedOut:
			fmt.Fprintf(stderr, "testvm: timed out after %v: killed the outer VM\n", o.timeout)
			return exitTimeout
		case out.reported:
			if out.lost > 0 {
				fmt.Fprintf(stderr, "testvm: warning: %d bytes of the command's output were lost\n", out.lost)
			}
			return out.status
		case out.setupError != "":
			return failf(stderr, "outer VM could not run the command: %s%s", out.setupError, formatTail(out))
		case out.crash != "" && attempt == 1:
			fmt.Fprintf(stderr, "testvm: outer kernel crashed (%s); retrying once\n", out.crash)
			continue
		case out.crash != "":
			return failf(stderr, "outer kernel crashed again (%s); giving up%s", out.crash, formatTail(out))
		default:
			why := "outer VM ended without reporting the command's status"
			if out.qemuExit != nil {
				why += " (QEMU: " + out.qemuExit.Error() + ")"
			}
			return failf(stderr, "%s%s", why, formatTail(out))
		}
	}
}

func writeInitramfsFile(path, exe string, sp *spec) error {
	b, err := sp.marshal()
	if err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	if err := writeInitramfs(f, exe, b); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// formatTail renders the last console lines and QEMU's complaints for an
// error message.
func formatTail(out outcome) string {
	var b strings.Builder
	if len(out.tail) > 0 {
		b.WriteString("; last console lines:")
		for _, l := range out.tail {
			b.WriteString("\n    " + l)
		}
	}
	if out.qemuErr != "" {
		b.WriteString("\n  QEMU said: " + strings.ReplaceAll(out.qemuErr, "\n", "\n    "))
	}
	return b.String()
}
