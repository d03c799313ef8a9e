package main

// The host side of nested mode: build the initramfs, run QEMU, relay output.

import (
	"bufio"
	"bytes"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// ninePOpts are the options of the host-root mount in the outer VM.
// cache=loose caches pages, attributes and directory entries without
// revalidating them against the host: correct as long as the host does not
// change files the command uses while it runs, and much faster under
// emulation than cache=mmap or none (see the measurements in the report).
const ninePOpts = "trans=virtio,version=9p2000.L,cache=loose,msize=512000"

// checkStatic verifies that the executable at path can run as the outer VM's
// init before any library is reachable, i.e. has no ELF interpreter.
func checkStatic(path string) error {
	f, err := elf.Open(path)
	if err != nil {
		return fmt.Errorf("cannot inspect %s: %w", path, err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			interp, _ := io.ReadAll(io.LimitReader(p.Open(), 256))
			return fmt.Errorf("%s is dynamically linked (ELF interpreter %s) and cannot be the outer VM's init: build it with CGO_ENABLED=0", path, strings.TrimRight(string(interp), "\x00"))
		}
	}
	return nil
}

// writeInitramfs writes the outer VM's initramfs: /init (this executable),
// the spec, and the /dev/console node the kernel opens for init.
func writeInitramfs(w io.Writer, exe string, specJSON []byte) error {
	f, err := os.Open(exe)
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	c := newCpioWriter(w)
	if err := c.Dir("dev", 0o755); err != nil {
		return err
	}
	if err := c.CharDev("dev/console", 0o600, 5, 1); err != nil {
		return err
	}
	if err := c.File("init", 0o755, fi.Size(), f); err != nil {
		return err
	}
	if err := c.File(strings.TrimPrefix(specPath, "/"), 0o600, int64(len(specJSON)), bytes.NewReader(specJSON)); err != nil {
		return err
	}
	return c.Close()
}

func kernelCmdline(verbose bool, tscKHz uint64) string {
	// panic=-1 and oops=panic: an outer-kernel crash ends the VM at once
	// (QEMU exits because of -no-reboot), so it is seen and retried rather
	// than leaving a half-dead VM. reboot=t: restart by triple fault, the
	// only reset microvm without ACPI has. tsc_early_khz: the TSC rate
	// measured on the host, so the outer kernel never calibrates against
	// the emulated PIT (see tscKHz for what a failed calibration does).
	s := fmt.Sprintf("console=ttyS0 panic=-1 oops=panic reboot=t rdinit=/init tsc=reliable tsc_early_khz=%d", tscKHz)
	if verbose {
		return s + " loglevel=7"
	}
	return s + " quiet"
}

// qemuArgs returns QEMU's command line. log receives QEMU's own record of
// CPU resets (-d cpu_reset): its "Triple fault" line is the only trace
// of an outer CPU that triple-faulted, which -no-reboot turns into a
// silent, successful exit.
func qemuArgs(o *options, kernel, initrd, log string) []string {
	return []string{
		"-M", "microvm,x-option-roms=off,rtc=on,isa-serial=on,acpi=off",
		"-accel", "tcg,thread=multi", "-cpu", "max",
		"-smp", fmt.Sprint(o.cpus), "-m", fmt.Sprint(o.memory),
		"-nodefaults", "-no-user-config", "-nographic", "-no-reboot",
		"-kernel", kernel, "-initrd", initrd, "-append", kernelCmdline(o.verbose, o.tscKHz),
		// The console: kernel and init only; the host answers on its input.
		"-chardev", "stdio,id=con,signal=off", "-serial", "chardev:con",
		"-fsdev", "local,id=hr,path=/,security_model=none,readonly=on,multidevs=remap",
		"-device", "virtio-9p-device,fsdev=hr,mount_tag=hostroot",
		// The command's stdout and stderr: raw byte streams into pipes the
		// host passes as fds 3 and 4.
		"-device", "virtio-serial-device,max_ports=4",
		"-chardev", "file,id=out,path=/proc/self/fd/3",
		"-device", "virtserialport,chardev=out,name=" + stdoutPort,
		"-chardev", "file,id=err,path=/proc/self/fd/4",
		"-device", "virtserialport,chardev=err,name=" + stderrPort,
		"-object", "rng-random,id=rng,filename=/dev/urandom",
		"-device", "virtio-rng-device,rng=rng",
		"-d", "cpu_reset", "-D", log,
	}
}

// outcome is what one run of the outer VM ended with.
type outcome struct {
	reported   bool // the command ran and its status is known
	status     int
	setupError string // init could not run the command
	crash      string // first line of an outer-kernel crash
	tail       []string
	qemuErr    string
	qemuExit   error
	timedOut   bool
	signal     os.Signal
	lost       int64 // output bytes announced but not received
}

// tailBuffer keeps the last max bytes written to it.
type tailBuffer struct {
	mu  sync.Mutex
	max int
	b   []byte
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.b = append(t.b, p...)
	if len(t.b) > t.max {
		t.b = t.b[len(t.b)-t.max:]
	}
	return len(p), nil
}

func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(t.b)
}

// relay copies a pipe from QEMU to w, counting bytes. If w fails (e.g. our
// stdout is a closed pipe) it keeps draining so QEMU never blocks.
type relay struct {
	n    atomic.Int64
	done chan struct{}
}

func startRelay(w io.Writer, r io.ReadCloser) *relay {
	rl := &relay{done: make(chan struct{})}
	go func() {
		defer close(rl.done)
		defer r.Close()
		buf := make([]byte, 64<<10)
		failed := false
		for {
			k, err := r.Read(buf)
			if k > 0 {
				if !failed {
					_, werr := w.Write(buf[:k])
					failed = werr != nil
				}
				rl.n.Add(int64(k))
			}
			if err != nil {
				return
			}
		}
	}()
	return rl
}

type runEnv struct {
	o        *options
	kernel   string
	initrd   string
	qemuLog  string // QEMU's -D log file
	nonce    string
	deadline time.Time // zero: none
	sigs     <-chan os.Signal
	stdout   io.Writer
	stderr   io.Writer
}

// runOuter boots the outer VM once and waits for it to end.
func runOuter(e *runEnv) (out outcome) {
	stdinR, stdinW, err := os.Pipe()
	if err != nil {
		return outcome{setupError: err.Error()}
	}
	conR, conW, err := os.Pipe()
	if err != nil {
		return outcome{setupError: err.Error()}
	}
	outR, outW, err := os.Pipe()
	if err != nil {
		return outcome{setupError: err.Error()}
	}
	errR, errW, err := os.Pipe()
	if err != nil {
		return outcome{setupError: err.Error()}
	}
	qerr := &tailBuffer{max: 4096}
	cmd := exec.Command(e.o.qemu, qemuArgs(e.o, e.kernel, e.initrd, e.qemuLog)...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = stdinR, conW, qerr
	cmd.ExtraFiles = []*os.File{outW, errW}
	// Own process group: a terminal's ^C reaches only us, and we end QEMU.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	t0 := time.Now()
	err = cmd.Start()
	for _, f := range []*os.File{stdinR, conW, outW, errW} {
		f.Close()
	}
	if err != nil {
		stdinW.Close()
		conR.Close()
		outR.Close()
		errR.Close()
		return outcome{setupError: fmt.Sprintf("cannot start %s: %v", e.o.qemu, err)}
	}
	defer stdinW.Close()
	outRelay := startRelay(e.stdout, outR)
	errRelay := startRelay(e.stderr, errR)
	qemuDone := make(chan struct{})
	go func() { out.qemuExit = cmd.Wait(); close(qemuDone) }()

	// Console reader.
	var mu sync.Mutex
	var lines []consoleLine
	stalls, firstStall := 0, ""
	stallc := make(chan struct{}, 1)
	started, ended := false, false
	var lastSign time.Time // the command's start or init's latest alive line
	events := make(chan marker, 8)
	conDone := make(chan struct{})
	go func() {
		defer close(conDone)
		br := bufio.NewReaderSize(conR, 64<<10)
		for {
			l, err := br.ReadString('\n')
			if l != "" {
				l = strings.TrimRight(l, "\r\n")
				l = strings.ReplaceAll(l, "\r", "")
				if m, ok := parseMarker(l, e.nonce); ok {
					mu.Lock()
					switch m.Kind {
					case markStart:
						started, lastSign = true, time.Now()
					case markAlive:
						lastSign = time.Now()
					case markExit, markError:
						ended = true
					}
					mu.Unlock()
					if m.Kind != markAlive {
						events <- m
					}
				} else if l != "" {
					mu.Lock()
					lines = append(lines, consoleLine{Text: l, AfterStart: started})
					if len(lines) > 2000 {
						lines = append(lines[:0:0], lines[len(lines)-1000:]...)
					}
					during := started && !ended
					stalled := false
					if during && rcuStallRE.MatchString(l) {
						stalls++
						stalled = stalls == maxRCUStalls
						if stalls == 1 {
							firstStall = l
						}
					}
					mu.Unlock()
					if stalled {
						// The outer kernel is wedged: end it, to be
						// retried as a crash, rather than wait for the
						// time limit.
						select {
						case stallc <- struct{}{}:
						default:
						}
					}
					switch {
					case e.o.verbose:
						fmt.Fprintf(e.stderr, "%s\n", l)
					case during && kernelLineRE.MatchString(l):
						// Kernel messages during the run (errors and
						// crashes: the console is quiet) are worth seeing.
						fmt.Fprintf(e.stderr, "testvm: outer kernel: %s\n", l)
					}
				}
			}
			if err != nil {
				return
			}
		}
	}()

	var timeout <-chan time.Time
	if !e.deadline.IsZero() {
		tm := time.NewTimer(time.Until(e.deadline))
		defer tm.Stop()
		timeout = tm.C
	}
	kill := func() {
		_ = cmd.Process.Kill()
		<-qemuDone
	}
	// An outer VM whose init stopped showing signs of life while the
	// command ran is wedged: ended, to be retried as a crash.
	var aliveCheck <-chan time.Time
	if e.o.aliveLimit > 0 {
		tk := time.NewTicker(min(e.o.aliveLimit/4, aliveEvery))
		defer tk.Stop()
		aliveCheck = tk.C
	}
	wedged := ""
	var tStart time.Time
	finished := false
loop:
	for {
		select {
		case <-aliveCheck:
			mu.Lock()
			silent := time.Since(lastSign)
			if !started || ended || silent < e.o.aliveLimit {
				mu.Unlock()
				continue
			}
			mu.Unlock()
			wedged = fmt.Sprintf("the outer VM's init showed no sign of life for %v while the command ran: an outer CPU wedged, and the rest of the outer VM waits on it", e.o.aliveLimit)
			kill()
			break loop
		case m := <-events:
			switch m.Kind {
			case markStart:
				tStart = time.Now()
				if e.o.verbose {
					fmt.Fprintf(e.stderr, "testvm: outer VM booted to the command in %.2fs\n", tStart.Sub(t0).Seconds())
				}
			case markError:
				out.setupError = m.Msg
				fmt.Fprintln(stdinW, ackLine(e.nonce))
				finished = true
				break loop
			case markExit:
				out.reported, out.status = true, m.Status
				if e.o.verbose && !tStart.IsZero() {
					fmt.Fprintf(e.stderr, "testvm: command ran %.2fs, exit status %d\n", time.Since(tStart).Seconds(), m.Status)
				}
				// Wait for all announced output before letting the VM go.
				wait := time.Now().Add(30 * time.Second)
				for (outRelay.n.Load() < m.OutN || errRelay.n.Load() < m.ErrN) && time.Now().Before(wait) {
					time.Sleep(5 * time.Millisecond)
				}
				out.lost = m.OutN - outRelay.n.Load() + m.ErrN - errRelay.n.Load()
				fmt.Fprintln(stdinW, ackLine(e.nonce))
				finished = true
				break loop
			}
		case <-qemuDone:
			break loop
		case <-stallc:
			kill()
			break loop
		case <-timeout:
			out.timedOut = true
			kill()
			break loop
		case s := <-e.sigs:
			out.signal = s
			kill()
			break loop
		}
	}
	if finished {
		// Init powers off once acknowledged; don't wait long for it.
		select {
		case <-qemuDone:
		case <-time.After(15 * time.Second):
			kill()
		case <-timeout:
			out.timedOut = !out.reported
			kill()
		case s := <-e.sigs:
			out.signal = s
			kill()
		}
	}
	<-qemuDone
	if e.o.verbose {
		fmt.Fprintf(e.stderr, "testvm: QEMU ran %.2fs\n", time.Since(t0).Seconds())
	}
	// QEMU is gone: the pipes reach EOF.
	for _, ch := range []chan struct{}{conDone, outRelay.done, errRelay.done} {
		select {
		case <-ch:
		case <-time.After(5 * time.Second):
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if !out.reported && out.setupError == "" {
		out.crash, _ = outerCrash(lines)
		if out.crash == "" && stalls >= maxRCUStalls {
			out.crash = fmt.Sprintf("the outer kernel reported an RCU stall %d times, the first: %s", stalls, firstStall)
		}
		if out.crash == "" && qemuLogged(e.qemuLog, tripleFault) {
			out.crash = "the outer VM's CPU triple-faulted with no kernel message first: QEMU's TCG emulation failed it"
		}
		if out.crash == "" {
			out.crash = wedged
		}
	}
	for _, l := range lines[max(0, len(lines)-15):] {
		out.tail = append(out.tail, l.Text)
	}
	out.qemuErr = strings.TrimSpace(qerr.String())
	return out
}

// rcuStallRE matches the outer kernel's report of an RCU stall, which
// it repeats about once a minute while a CPU stays wedged (seen on this
// platform with one outer CPU stuck for good; no healthy run here has
// printed one).
var rcuStallRE = regexp.MustCompile(`rcu: INFO: rcu_\w+ (self-)?detected stalls?`)

// maxRCUStalls is how many RCU stall reports during the command end the
// outer VM as crashed (about three minutes of a wedged CPU).
const maxRCUStalls = 3

// tripleFault is the line QEMU's cpu_reset log gets when an emulated CPU
// triple-faults (target/i386/tcg/excp_helper.c, check_exception). The
// outer kernel restarts by triple fault too (reboot=t), but only after
// init reported, or after a panic that the console shows.
const tripleFault = "Triple fault"

// qemuLogged reports whether QEMU's log at path holds the line want. It
// reads at most the log's first 4 MiB: the log has a CPU state dump per
// reset, a few at start, and nothing else.
func qemuLogged(path, want string) bool {
	f, err := os.Open(path)
	if err != nil {
		return false
	}
	defer f.Close()
	sc := bufio.NewScanner(io.LimitReader(f, 4<<20))
	for sc.Scan() {
		if strings.TrimSpace(sc.Text()) == want {
			return true
		}
	}
	return false
}

// findModuleRoot walks up from dir to the go.mod of the vessel module.
func findModuleRoot(dir string) (string, error) {
	for d := dir; ; d = filepath.Dir(d) {
		b, err := os.ReadFile(filepath.Join(d, "go.mod"))
		if err == nil && modulePathIs(b, "github.com/vesselvm/vessel") {
			return d, nil
		}
		if d == filepath.Dir(d) {
			return "", fmt.Errorf("no go.mod of module github.com/vesselvm/vessel above %s: run inside the vessel checkout or pass --kernel", dir)
		}
	}
}

func modulePathIs(gomod []byte, path string) bool {
	for _, l := range strings.Split(string(gomod), "\n") {
		f := strings.Fields(l)
		if len(f) >= 2 && f[0] == "module" && strings.Trim(f[1], `"`) == path {
			return true
		}
	}
	return false
}

// buildKernel runs images/build-kernel.sh (which reuses its cache) and
// returns the bzImage path. Its stderr is passed through.
func buildKernel(root string, stderr io.Writer, sigs <-chan os.Signal) (string, os.Signal, error) {
	script := filepath.Join(root, "images", "build-kernel.sh")
	cmd := exec.Command("bash", script)
	cmd.Dir = root
	cmd.Stderr = stderr
	var stdout bytes.Buffer
	cmd.Stdout = &stdout
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return "", nil, fmt.Errorf("cannot run %s: %w", script, err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	var err error
	select {
	case err = <-done:
	case s := <-sigs:
		_ = syscall.Kill(-cmd.Process.Pid, s.(syscall.Signal))
		<-done
		return "", s, nil
	}
	if err != nil {
		return "", nil, fmt.Errorf("kernel build failed: %s: %v", script, err)
	}
	dir := strings.TrimSpace(stdout.String())
	if i := strings.LastIndexByte(dir, '\n'); i >= 0 {
		dir = dir[i+1:]
	}
	k, err := kernelInDir(dir)
	if err != nil {
		return "", nil, fmt.Errorf("kernel build printed %q: %v", dir, err)
	}
	return k, nil, nil
}

// kernelInDir picks the kernel image of a build directory: the
// uncompressed vmlinux if present (QEMU boots it through PVH, which skips
// the decompression that takes about a second under emulation), else the
// bzImage.
func kernelInDir(dir string) (string, error) {
	for _, name := range []string{"vmlinux", "bzImage"} {
		p := filepath.Join(dir, name)
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() {
			return filepath.Abs(p)
		}
	}
	return "", fmt.Errorf("no vmlinux or bzImage in %s", dir)
}

// resolveKernel interprets --kernel: a kernel image (bzImage, or a vmlinux
// with a PVH entry point), or a directory holding one.
func resolveKernel(p string) (string, error) {
	fi, err := os.Stat(p)
	if err != nil {
		return "", fmt.Errorf("--kernel: %w", err)
	}
	if fi.IsDir() {
		k, err := kernelInDir(p)
		if err != nil {
			return "", fmt.Errorf("--kernel: %w", err)
		}
		return k, nil
	}
	return filepath.Abs(p)
}

var errNoQemu = errors.New("qemu-system-x86_64 not found: install it with `make deps` or `apt-get install qemu-system-x86`")
