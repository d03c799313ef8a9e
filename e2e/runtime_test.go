//go:build e2e

package e2e

import (
	"archive/tar"
	"bufio"
	"context"
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
	"testing"
	"time"

	runc "github.com/containerd/go-runc"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/vesselvm/vessel/container"
	"github.com/vesselvm/vessel/internal/bbimage"
)

// runtimeBin is bin/vessel-runtime, next to the vessel binary.
func runtimeBin(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(filepath.Dir(vesselBin), "vessel-runtime")
	if _, err := os.Stat(bin); err != nil {
		t.Fatalf("vessel-runtime binary: %v (run `make build`)", err)
	}
	return bin
}

// makeBundle makes an OCI bundle whose rootfs is the busybox image
// (package bbimage) and whose config runs args, as `runc spec` would
// make it but without a terminal.
func makeBundle(t *testing.T, args ...string) (string, *specs.Spec) {
	t.Helper()
	dir := t.TempDir()
	rootfs := filepath.Join(dir, "rootfs")
	img, err := bbimage.Build()
	if err != nil {
		t.Fatal(err)
	}
	if err := extractTar(mutate.Extract(img), rootfs); err != nil {
		t.Fatal(err)
	}
	spec := &specs.Spec{
		Version:  specs.Version,
		Root:     &specs.Root{Path: "rootfs"},
		Hostname: "vessel-runtime-e2e",
		Process: &specs.Process{
			Args: args,
			Env:  []string{"PATH=/bin"},
			Cwd:  "/",
			Capabilities: &specs.LinuxCapabilities{
				Bounding:  []string{"CAP_KILL", "CAP_NET_BIND_SERVICE", "CAP_AUDIT_WRITE"},
				Effective: []string{"CAP_KILL", "CAP_NET_BIND_SERVICE", "CAP_AUDIT_WRITE"},
				Permitted: []string{"CAP_KILL", "CAP_NET_BIND_SERVICE", "CAP_AUDIT_WRITE"},
			},
			NoNewPrivileges: true,
		},
		Mounts: []specs.Mount{
			{Destination: "/proc", Type: "proc", Source: "proc"},
			{Destination: "/dev", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "strictatime", "mode=755", "size=65536k"}},
			{Destination: "/dev/pts", Type: "devpts", Source: "devpts", Options: []string{"nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"}},
			{Destination: "/dev/shm", Type: "tmpfs", Source: "shm", Options: []string{"nosuid", "noexec", "nodev", "mode=1777", "size=65536k"}},
			{Destination: "/sys", Type: "sysfs", Source: "sysfs", Options: []string{"nosuid", "noexec", "nodev", "ro"}},
		},
		Linux: &specs.Linux{
			Namespaces: []specs.LinuxNamespace{
				{Type: specs.PIDNamespace}, {Type: specs.NetworkNamespace}, {Type: specs.IPCNamespace},
				{Type: specs.UTSNamespace}, {Type: specs.MountNamespace},
			},
			MaskedPaths:   []string{"/proc/kcore", "/sys/firmware"},
			ReadonlyPaths: []string{"/proc/sys", "/proc/sysrq-trigger"},
		},
	}
	writeSpec(t, dir, spec)
	return dir, spec
}

// runOnce creates container id from bundle with a runtime of its own,
// calls created (if not nil) with the VMM process's PID, starts the
// container with stdin closed, waits for it and deletes it, checking that
// nothing is left; it returns the exit status and the outputs.
func runOnce(t *testing.T, ctx context.Context, id, bundle string, created func(pid int)) (int, []byte, []byte) {
	t.Helper()
	r, state := runtimeClient(t)
	pio, pid := createContainer(t, ctx, r, id, bundle)
	if created != nil {
		created(pid)
	}
	outputs := readOutputs(pio)
	if err := r.Start(ctx, id); err != nil {
		t.Fatalf("start: %v (log: %s)", err, readFile(r.Log))
	}
	pio.Stdin().Close()
	status := waitPid(t, pid)
	stdout, stderr := outputs()
	if err := r.Delete(ctx, id, nil); err != nil {
		t.Fatalf("delete: %v", err)
	}
	checkNothingLeft(t, state)
	return status, stdout, stderr
}

func writeSpec(t *testing.T, dir string, spec *specs.Spec) {
	t.Helper()
	b, err := json.MarshalIndent(spec, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "config.json"), b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// extractTar unpacks an image's flattened file system (directories,
// regular files, symlinks) into dir, owners and modes kept.
func extractTar(r io.Reader, dir string) error {
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		p := filepath.Join(dir, filepath.Clean("/"+h.Name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		switch h.Typeflag {
		case tar.TypeDir:
			if err := os.MkdirAll(p, 0o755); err != nil {
				return err
			}
		case tar.TypeReg:
			f, err := os.OpenFile(p, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
			if err != nil {
				return err
			}
			_, err = io.Copy(f, tr)
			f.Close()
			if err != nil {
				return err
			}
		case tar.TypeSymlink:
			if err := os.Symlink(h.Linkname, p); err != nil {
				return err
			}
		default:
			continue
		}
		if err := os.Lchown(p, h.Uid, h.Gid); err != nil {
			return err
		}
		if h.Typeflag != tar.TypeSymlink {
			if err := os.Chmod(p, os.FileMode(h.Mode).Perm()|modeBits(h.Mode)); err != nil {
				return err
			}
		}
	}
}

func modeBits(m int64) os.FileMode {
	var fm os.FileMode
	if m&0o1000 != 0 {
		fm |= os.ModeSticky
	}
	return fm
}

// vmmProcesses lists the PIDs of vessel-runtime VMM processes.
func vmmProcesses(t *testing.T) []int {
	t.Helper()
	var pids []int
	for pid := range liveProcesses(func(args []string) bool {
		return strings.HasSuffix(args[0], "vessel-runtime") && (slicesContains(args, "vmm") || slicesContains(args, "member"))
	}) {
		pids = append(pids, pid)
	}
	return pids
}

// stdoutPipe makes pipes for a process's stdio whose stdin is closed
// and stderr discarded; stdout waits for the end of its stdout (every
// write end closed) and returns it.
func stdoutPipe(t *testing.T) (pio runc.IO, stdout func() string) {
	t.Helper()
	pio, err := runc.NewPipeIO(0, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pio.Close() })
	outputs := readOutputs(pio)
	pio.Stdin().Close()
	return pio, func() string { out, _ := outputs(); return string(out) }
}

// liveProcesses lists the running processes (not zombies, not this one)
// whose argument vector match accepts: PID to command line.
func liveProcesses(match func(args []string) bool) map[int]string {
	procs := map[int]string{}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil || len(b) == 0 {
			continue // gone, or a kernel thread
		}
		args := strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
		if !match(args) {
			continue
		}
		stat, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if i := strings.LastIndexByte(string(stat), ')'); i >= 0 && strings.HasPrefix(string(stat[i:]), ") Z") {
			continue // exited, not yet reaped
		}
		procs[pid] = strings.Join(args, " ")
	}
	return procs
}

func slicesContains(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

// becomeSubreaper makes this test process the reaper of the VMM
// processes that vessel-runtime create leaves, as containerd's shim is.
var subreaperOnce sync.Once

func becomeSubreaper(t *testing.T) {
	t.Helper()
	subreaperOnce.Do(func() {
		if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
			t.Fatalf("become a subreaper: %v", err)
		}
	})
}

// exitLimit bounds waitPid: every container of these tests ends within
// seconds of its start.
const exitLimit = 5 * time.Minute

// waitPid waits for the (adopted) process pid and returns its exit
// status, 128+N for signal N, as the shim reports it. A process still
// there after exitLimit fails the test; a VMM process is asked to
// describe its VM first (describeHung), and for another process (a pod
// container's) every VMM process is (describeVMMs), for the test's log.
func waitPid(t *testing.T, pid int) int {
	t.Helper()
	var ws unix.WaitStatus
	deadline := time.Now().Add(exitLimit)
	for {
		got, err := unix.Wait4(pid, &ws, unix.WNOHANG, nil)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			t.Fatalf("wait for the VMM process %d: %v", pid, err)
		}
		if got == pid {
			break
		}
		if time.Now().After(deadline) {
			desc := describeHung(pid)
			if desc == "" {
				// A pod container's member process: its container
				// runs in a sandbox's VM, described with every other.
				desc = describeVMMs()
			}
			unix.Kill(pid, unix.SIGKILL)
			unix.Wait4(pid, &ws, 0, nil)
			t.Fatalf("process %d did not end within %v (killed)%s", pid, exitLimit, desc)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if ws.Signaled() {
		return 128 + int(ws.Signal())
	}
	return ws.ExitStatus()
}

// describeVMMs describes the VM of every live vessel-runtime VMM
// process (describeHung), for a client command (docker, crictl) that
// did not end in time: "" when there is none.
func describeVMMs() string {
	var b strings.Builder
	for pid := range liveProcesses(func(args []string) bool {
		return strings.HasSuffix(args[0], "vessel-runtime") && slicesContains(args, "vmm")
	}) {
		if d := describeHung(pid); d != "" {
			fmt.Fprintf(&b, "\nvessel-runtime VMM process %d%s", pid, d)
		}
	}
	return b.String()
}

// describeHung asks the vessel-runtime VMM process pid for its VM's
// description (SIGUSR2: the runtime's DescribeSignal, which leaves the
// VM running) and returns what it wrote to its --log, for a hung
// container's failure (e2e/runblock reads the platform's known faults
// in it); "" for another process, or without a description in a minute.
func describeHung(pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return ""
	}
	args := strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
	if !strings.HasSuffix(args[0], "vessel-runtime") || !slicesContains(args, "vmm") {
		return ""
	}
	logPath := ""
	for i, a := range args[:len(args)-1] {
		if a == "--log" {
			logPath = args[i+1]
		}
	}
	if logPath == "" {
		return ""
	}
	before := len(readFile(logPath))
	unix.Kill(pid, unix.SIGUSR2)
	// The VM's description (or why there is none), then, with
	// VESSEL_DEBUG, the process's goroutines: a VMM process that hangs
	// whatever its guest does shows where.
	for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		if l := readFile(logPath); len(l) > before && strings.Contains(l[before:], "goroutines:") {
			time.Sleep(time.Second) // the lines after it
			return "; its VM and goroutines, described (VESSEL_DEBUG, SIGUSR2):\n" + readFile(logPath)[before:]
		}
	}
	if l := readFile(logPath); len(l) > before {
		return "; its VMM process wrote no goroutines within a minute, only:\n" + l[before:]
	}
	return "; its VMM process wrote nothing within a minute"
}

// cgroupMemory reports how much memory a host cgroup's processes used at
// most and its memory events (an oom_kill among them means the kernel
// killed one for the group's limit).
func cgroupMemory(dir string) string {
	b, err := os.ReadFile(filepath.Join(dir, "memory.peak"))
	if err != nil {
		return err.Error()
	}
	peak, _ := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
	events, _ := os.ReadFile(filepath.Join(dir, "memory.events"))
	return fmt.Sprintf("memory.peak %d MiB; memory.events %s", peak>>20, strings.Join(strings.Fields(string(events)), " "))
}

// runtimeClient is vessel-runtime as containerd's shim drives it.
func runtimeClient(t *testing.T) (*runc.Runc, string) {
	t.Helper()
	state := filepath.Join(t.TempDir(), "state")
	logf := filepath.Join(t.TempDir(), "log.json")
	// A kill the guest did not confirm ends the container anyway (its
	// VM stopped), which would let a test pass over a hung guest: it
	// fails here, with the runtime's line and the VM's description.
	t.Cleanup(func() {
		for _, l := range strings.Split(readFile(logf), "\n") {
			if strings.Contains(l, "the VM is stopped instead") || strings.Contains(l, "is ended without the guest") {
				t.Errorf("a guest did not confirm SIGKILL: %s", l)
			}
		}
	})

	return &runc.Runc{Command: runtimeBin(t), Root: state, Log: logf, LogFormat: runc.JSON}, state
}

// createContainer creates id from bundle through go-runc, with pipes as
// its stdio, and returns the pipes and the VMM's PID.
func createContainer(t *testing.T, ctx context.Context, r *runc.Runc, id, bundle string) (runc.IO, int) {
	t.Helper()
	pio, err := runc.NewPipeIO(0, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pio.Close() })
	pidFile := filepath.Join(t.TempDir(), "pid")
	start := time.Now()
	if err := r.Create(ctx, id, bundle, &runc.CreateOpts{PidFile: pidFile, IO: pio}); err != nil {
		t.Fatalf("create %s: %v (log: %s)", id, err, readFile(r.Log))
	}
	t.Logf("create %s: %v", id, time.Since(start).Round(time.Millisecond))
	// A failed test must not leave its VM to the next ones.
	t.Cleanup(func() { r.Delete(context.Background(), id, &runc.DeleteOpts{Force: true}) })
	pid, err := runc.ReadPidFile(pidFile)
	if err != nil {
		t.Fatal(err)
	}
	// Before that delete (cleanups run last first): a failed test's VMM
	// process, still there, says where it is (its VM, its goroutines),
	// whatever the failure, so that a VMM process that hung shows why.
	t.Cleanup(func() {
		if t.Failed() {
			if d := describeHung(pid); d != "" {
				t.Logf("container %s after the failure: VMM process %d%s", id, pid, d)
			}
		}
	})
	return pio, pid
}

// crashBundle is a bundle whose process prints "before" and crashes its
// guest's kernel (sysrq c, which its spec leaves writable), after edit
// (if not nil) changed its spec.
func crashBundle(t *testing.T, edit func(*specs.Spec)) (string, *specs.Spec) {
	t.Helper()
	bundle, spec := makeBundle(t, "sh", "-c", "echo before; echo c >/proc/sysrq-trigger; sleep 100")
	spec.Linux.ReadonlyPaths = []string{"/proc/sys"}
	if edit != nil {
		edit(spec)
	}
	writeSpec(t, bundle, spec)
	return bundle, spec
}

// joinPod makes spec a container of the pod whose sandbox is sandbox,
// its VMM process sbPid: in the sandbox's network and UTS namespaces,
// and with sharedPID in its PID namespace too (shareProcessNamespace),
// else in one of its own.
func joinPod(spec *specs.Spec, sandbox string, sbPid int, sharedPID bool) {
	spec.Annotations = map[string]string{"io.kubernetes.cri.container-type": "container", "io.kubernetes.cri.sandbox-id": sandbox}
	pid := specs.LinuxNamespace{Type: specs.PIDNamespace}
	if sharedPID {
		pid.Path = fmt.Sprintf("/proc/%d/ns/pid", sbPid)
	}
	spec.Linux.Namespaces = []specs.LinuxNamespace{pid, {Type: specs.MountNamespace},
		{Type: specs.NetworkNamespace, Path: fmt.Sprintf("/proc/%d/ns/net", sbPid)},
		{Type: specs.UTSNamespace, Path: fmt.Sprintf("/proc/%d/ns/uts", sbPid)}}
}

// wantReason checks that stderr (whose is who) is one line that starts
// with want: vessel-runtime's reason for a 255.
func wantReason(t *testing.T, who string, stderr []byte, want string) {
	t.Helper()
	if !strings.HasPrefix(string(stderr), want) || strings.Count(string(stderr), "\n") != 1 {
		t.Errorf("%s stderr %q, want one line %q...", who, stderr, want)
	}
}

// readOutputs reads a container's stdout and stderr to their ends, and
// returns a function that waits for both and returns what they held.
func readOutputs(pio runc.IO) func() (stdout, stderr []byte) {
	var stdout, stderr []byte
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); stdout, _ = io.ReadAll(pio.Stdout()) }()
	go func() { defer wg.Done(); stderr, _ = io.ReadAll(pio.Stderr()) }()
	return func() ([]byte, []byte) {
		wg.Wait()
		return stdout, stderr
	}
}

func wantStatus(t *testing.T, ctx context.Context, r *runc.Runc, id, want string) *runc.Container {
	t.Helper()
	c, err := r.State(ctx, id)
	if err != nil {
		t.Fatalf("state %s: %v", id, err)
	}
	if c.Status != want || c.ID != id {
		t.Fatalf("state %s: %+v, want status %s", id, c, want)
	}
	return c
}

// TestRuntime drives bin/vessel-runtime through go-runc, as
// containerd's runc shim does.
func TestRuntime(t *testing.T) {
	becomeSubreaper(t)
	ctx := context.Background()

	t.Run("lifecycle", func(t *testing.T) {
		r, state := runtimeClient(t)
		bundle, _ := makeBundle(t, "sh", "-c", "cat; echo to-stderr >&2; echo boot=$(cat /proc/sys/kernel/random/boot_id) host=$(hostname); exit 3")
		const id = "lifecycle"
		pio, pid := createContainer(t, ctx, r, id, bundle)
		c := wantStatus(t, ctx, r, id, "created")
		if c.Pid != pid || c.Bundle != bundle {
			t.Errorf("state: pid %d bundle %s, want %d %s", c.Pid, c.Bundle, pid, bundle)
		}

		// A second create with the same ID fails, and leaves the first.
		dup := exec.Command(r.Command, "--root", state, "create", "--bundle", bundle, id)
		out, err := dup.CombinedOutput()
		checkRuntimeFailure(t, "create of a duplicate ID", out, err)
		wantStatus(t, ctx, r, id, "created")
		if n := len(vmmProcesses(t)); n != 1 {
			t.Errorf("%d VMM processes after the duplicate create, want 1", n)
		}

		outputs := readOutputs(pio)
		if err := r.Start(ctx, id); err != nil {
			t.Fatalf("start: %v (log: %s)", err, readFile(r.Log))
		}
		wantStatus(t, ctx, r, id, "running")
		io.WriteString(pio.Stdin(), "from-stdin\n")
		pio.Stdin().Close()

		if status := waitPid(t, pid); status != 3 {
			t.Errorf("the VMM process exited %d, want the container's 3", status)
		}
		stdout, stderr := outputs()
		// The container runs on the guest's kernel: its boot ID is not
		// the host's.
		hostBoot, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
		if err != nil {
			t.Fatal(err)
		}
		want := "from-stdin\nboot="
		if got := string(stdout); !strings.HasPrefix(got, want) || !strings.HasSuffix(got, " host=vessel-runtime-e2e\n") ||
			strings.Contains(got, strings.TrimSpace(string(hostBoot))) || len(got) < len(want)+36 {
			t.Errorf("stdout %q, want %q, a boot ID other than the host's %s, host=vessel-runtime-e2e", got, want, hostBoot)
		}
		if string(stderr) != "to-stderr\n" {
			t.Errorf("stderr %q, want %q", stderr, "to-stderr\n")
		}
		wantStatus(t, ctx, r, id, "stopped")
		if err := r.Delete(ctx, id, nil); err != nil {
			t.Fatalf("delete: %v", err)
		}
		checkNothingLeft(t, state)
	})

	t.Run("kill", func(t *testing.T) {
		r, state := runtimeClient(t)
		bundle, spec := makeBundle(t, "sleep", "1000")
		// Without a PID namespace of its own the process is not an
		// init, which would ignore SIGTERM without a handler.
		spec.Linux.Namespaces = spec.Linux.Namespaces[1:]
		writeSpec(t, bundle, spec)
		const id = "kill"
		_, pid := createContainer(t, ctx, r, id, bundle)
		if err := r.Start(ctx, id); err != nil {
			t.Fatalf("start: %v (log: %s)", err, readFile(r.Log))
		}
		// What a hung container's wait (waitPid) asks for: the running
		// VM's description in the log, and the VM still running.
		if d := describeHung(pid); !strings.Contains(d, container.DiagnosisHeader) || !strings.Contains(d, "vCPU 0: ") {
			t.Errorf("SIGUSR2 to the VMM process: no description of its VM in the log: %q", d)
		}
		wantStatus(t, ctx, r, id, "running")
		if err := r.Kill(ctx, id, int(unix.SIGTERM), nil); err != nil {
			t.Fatalf("kill: %v (log: %s)", err, readFile(r.Log))
		}
		if status := waitPid(t, pid); status != 143 {
			t.Errorf("the VMM process exited %d, want 143 (SIGTERM)", status)
		}
		wantStatus(t, ctx, r, id, "stopped")
		if err := r.Kill(ctx, id, int(unix.SIGTERM), nil); err == nil {
			t.Errorf("kill of a stopped container succeeded")
		}
		if err := r.Delete(ctx, id, nil); err != nil {
			t.Fatalf("delete: %v", err)
		}
		checkNothingLeft(t, state)

		// SIGKILL to a paused container ends it, as it ends a frozen
		// cgroup's processes (cgroup v2): its VM is stopped.
		const paused = "kill-paused"
		_, pid = createContainer(t, ctx, r, paused, bundle)
		if err := r.Start(ctx, paused); err != nil {
			t.Fatalf("start: %v (log: %s)", err, readFile(r.Log))
		}
		if err := r.Pause(ctx, paused); err != nil {
			t.Fatalf("pause: %v (log: %s)", err, readFile(r.Log))
		}
		if err := r.Kill(ctx, paused, int(unix.SIGKILL), nil); err != nil {
			t.Fatalf("SIGKILL to the paused container: %v (log: %s)", err, readFile(r.Log))
		}
		if status := waitPid(t, pid); status != 137 {
			t.Errorf("the paused container's VMM process exited %d after SIGKILL, want 137", status)
		}
		wantStatus(t, ctx, r, paused, "stopped")
		if err := r.Delete(ctx, paused, nil); err != nil {
			t.Fatalf("delete: %v", err)
		}
		checkNothingLeft(t, state)
	})

	// A container whose VM ends under it (here: it crashes the guest's
	// kernel, which a container may do to its own VM) ends with 255,
	// and its stderr says why: all that docker run or kubectl logs show.
	t.Run("vm-ends", func(t *testing.T) {
		r, state := runtimeClient(t)
		bundle, _ := crashBundle(t, nil)
		const id = "vm-ends"
		pio, pid := createContainer(t, ctx, r, id, bundle)
		outputs := readOutputs(pio)
		pio.Stdin().Close()
		if err := r.Start(ctx, id); err != nil {
			t.Fatalf("start: %v (log: %s)", err, readFile(r.Log))
		}
		if status := waitPid(t, pid); status != 255 {
			t.Errorf("the VMM process exited %d, want 255", status)
		}
		stdout, stderr := outputs()
		if string(stdout) != "before\n" {
			t.Errorf("stdout %q, want %q", stdout, "before\n")
		}
		wantReason(t, "the container's", stderr, "vessel-runtime: container vm-ends: its VM ended before it did")
		wantStatus(t, ctx, r, id, "stopped")
		if err := r.Delete(ctx, id, nil); err != nil {
			t.Fatalf("delete: %v", err)
		}
		checkNothingLeft(t, state)
	})

	// The same in a pod: a container that crashes the pod's VM ends
	// with 255, and so does the sandbox; each one's stderr says why.
	t.Run("pod-vm-ends", func(t *testing.T) {
		r, state := runtimeClient(t)
		sbBundle, sbSpec := makeBundle(t, "sleep", "1000")
		sbSpec.Annotations = map[string]string{"io.kubernetes.cri.container-type": "sandbox", "io.kubernetes.cri.sandbox-id": "sb-ends"}
		writeSpec(t, sbBundle, sbSpec)
		sbIO, sbPid := createContainer(t, ctx, r, "sb-ends", sbBundle)
		if err := r.Start(ctx, "sb-ends"); err != nil {
			t.Fatalf("start the sandbox: %v (log: %s)", err, readFile(r.Log))
		}
		bundle, _ := crashBundle(t, func(spec *specs.Spec) { joinPod(spec, "sb-ends", sbPid, false) })
		pio, pid := createContainer(t, ctx, r, "crasher", bundle)
		outputs, sbOutputs := readOutputs(pio), readOutputs(sbIO)
		pio.Stdin().Close()
		sbIO.Stdin().Close()
		if err := r.Start(ctx, "crasher"); err != nil {
			t.Fatalf("start: %v (log: %s)", err, readFile(r.Log))
		}
		if status := waitPid(t, pid); status != 255 {
			t.Errorf("the crashing container's process exited %d, want 255", status)
		}
		if status := waitPid(t, sbPid); status != 255 {
			t.Errorf("the sandbox's VMM process exited %d, want 255", status)
		}
		stdout, stderr := outputs()
		_, sbStderr := sbOutputs()
		wantReason(t, "the crashing container's", stderr, "vessel-runtime: container crasher: its pod's VM ended before it did")
		wantReason(t, "the sandbox's", sbStderr, "vessel-runtime: container sb-ends: its VM ended before it did")
		if string(stdout) != "before\n" {
			t.Errorf("stdout %q, want %q", stdout, "before\n")
		}
		for _, id := range []string{"crasher", "sb-ends"} {
			if err := r.Delete(ctx, id, nil); err != nil {
				t.Errorf("delete %s: %v", id, err)
			}
		}
		checkNothingLeft(t, state)
	})

	t.Run("delete-created", func(t *testing.T) {
		r, state := runtimeClient(t)
		bundle, _ := makeBundle(t, "true")
		const id = "created"
		_, pid := createContainer(t, ctx, r, id, bundle)
		if err := r.Delete(ctx, id, &runc.DeleteOpts{Force: true}); err != nil {
			t.Fatalf("delete --force: %v", err)
		}
		waitPid(t, pid)
		checkNothingLeft(t, state)
	})

	// A container in a user namespace whose root is another user of the
	// guest (docker's userns-remap, runtime-tools' linux_uid_mappings):
	// runc resolves its rootfs from inside that namespace, through the
	// agent's directories, which failed with EACCES while they were 0700.
	t.Run("userns", func(t *testing.T) {
		// Its /sys is the guest's, without the guest's mounts below it.
		bundle, spec := makeBundle(t, "sh", "-c", "cat /proc/self/uid_map /proc/self/gid_map; id -u; id -g; "+
			"test -d /sys/class/net && echo sys; ls /sys/fs/cgroup | wc -l")
		spec.Linux.Namespaces = append(spec.Linux.Namespaces, specs.LinuxNamespace{Type: specs.UserNamespace})
		spec.Linux.UIDMappings = []specs.LinuxIDMapping{{ContainerID: 0, HostID: 1000, Size: 2000}}
		spec.Linux.GIDMappings = []specs.LinuxIDMapping{{ContainerID: 0, HostID: 1000, Size: 3000}}
		writeSpec(t, bundle, spec)
		status, stdout, stderr := runOnce(t, ctx, "userns", bundle, nil)
		got := strings.Join(strings.Fields(string(stdout)), " ")
		if want := "0 1000 2000 0 1000 3000 0 0 sys 0"; status != 0 || got != want {
			t.Errorf("exit %d, stdout %q (%s), want 0 and %q; stderr %q", status, stdout, got, want, stderr)
		}
	})

	// docker's --blkio-weight and --device-read-bps: the guest's runc
	// gets the weight (io.weight, through the guest kernel's io
	// controller); the throttle names a host device, which the guest does
	// not have (it failed the guest's runc), and bounds the VMM's host
	// cgroup, with the weight.
	t.Run("blkio", func(t *testing.T) {
		var st unix.Stat_t
		if err := unix.Stat("/dev/loop0", &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFBLK {
			t.Fatalf("/dev/loop0, the host block device to throttle: %v (mode %o)", err, st.Mode)
		}
		dev := fmt.Sprintf("%d:%d", unix.Major(st.Rdev), unix.Minor(st.Rdev))
		bundle, spec := makeBundle(t, "cat", "/sys/fs/cgroup/io.weight")
		spec.Linux.Namespaces = append(spec.Linux.Namespaces, specs.LinuxNamespace{Type: specs.CgroupNamespace})
		spec.Mounts = append(spec.Mounts, specs.Mount{Destination: "/sys/fs/cgroup", Type: "cgroup", Source: "cgroup",
			Options: []string{"nosuid", "noexec", "nodev", "relatime", "ro"}})
		w := uint16(300)
		spec.Linux.Resources = &specs.LinuxResources{BlockIO: &specs.LinuxBlockIO{Weight: &w,
			ThrottleReadBpsDevice: []specs.LinuxThrottleDevice{{LinuxBlockIODevice: specs.LinuxBlockIODevice{
				Major: int64(unix.Major(st.Rdev)), Minor: int64(unix.Minor(st.Rdev))}, Rate: 1 << 20}}}}
		spec.Linux.CgroupsPath = "/vessel-e2e/blkio"
		writeSpec(t, bundle, spec)
		const cgDir = "/sys/fs/cgroup/vessel-e2e/blkio"
		t.Cleanup(func() { os.Remove(cgDir); os.Remove(filepath.Dir(cgDir)) })
		status, stdout, stderr := runOnce(t, ctx, "blkio", bundle, func(int) {
			ioMax, err := os.ReadFile(filepath.Join(cgDir, "io.max"))
			if want := dev + " rbps=1048576 wbps=max riops=max wiops=max\n"; err != nil || string(ioMax) != want {
				t.Errorf("host cgroup io.max: %q, %v; want %q", ioMax, err, want)
			}
			ioWeight, err := os.ReadFile(filepath.Join(cgDir, "io.weight"))
			if err != nil || !strings.HasPrefix(string(ioWeight), "default 2930\n") {
				t.Errorf("host cgroup io.weight: %q, %v; want default 2930", ioWeight, err)
			}
		})
		// runc's conversion of the blkio weight 300 to io.weight.
		if want := "default 2930\n"; status != 0 || string(stdout) != want {
			t.Errorf("exit %d, io.weight %q, want 0 and %q; stderr %q", status, stdout, want, stderr)
		}
	})

	t.Run("binds", func(t *testing.T) {
		r, state := runtimeClient(t)
		bundle, spec := makeBundle(t, "sh", "-c",
			"cat /ro/file /data/in; echo written >/data/out; echo x >>/ro/file && echo wrote-ro; ls /data; "+
				// Single files, read-only and read-write (their siblings'
				// absence from the share: TestBindFiles).
				"cat /etc/one; echo x >>/etc/one && echo wrote-ro-file; echo appended >>/rw-one; "+
				// The bundle's seccomp profile holds in the guest.
				"mkdir /tmp/denied 2>/dev/null || echo mkdir-denied; exit 5")
		data, ro, files := t.TempDir(), t.TempDir(), t.TempDir()
		os.WriteFile(filepath.Join(data, "in"), []byte("from-dir\n"), 0o644)
		os.WriteFile(filepath.Join(ro, "file"), []byte("from-file\n"), 0o644)
		os.WriteFile(filepath.Join(files, "one"), []byte("single-file\n"), 0o644)
		os.WriteFile(filepath.Join(files, "two"), []byte("rw-file\n"), 0o644)
		spec.Mounts = append(spec.Mounts,
			specs.Mount{Destination: "/data", Type: "bind", Source: data, Options: []string{"rbind", "rw"}},
			specs.Mount{Destination: "/ro", Type: "bind", Source: ro, Options: []string{"rbind", "ro"}},
			specs.Mount{Destination: "/etc/one", Type: "bind", Source: filepath.Join(files, "one"), Options: []string{"rbind", "ro"}},
			specs.Mount{Destination: "/rw-one", Type: "bind", Source: filepath.Join(files, "two"), Options: []string{"rbind", "rw"}})
		// Hooks run on the host at runtime-spec's moments, with the
		// state on stdin: prestart while the container is being created,
		// with the VMM process's PID (whose network namespace docker's
		// prestart hook configures), then poststart and poststop.
		hookLog := filepath.Join(t.TempDir(), "hooks")
		hook := func(name string) specs.Hook {
			return specs.Hook{Path: "/bin/sh", Args: []string{"sh", "-c",
				`st=$(cat); pid=$(echo "$st" | sed -n 's/.*"pid":\([0-9]*\).*/\1/p'); ` +
					`status=$(echo "$st" | sed -n 's/.*"status":"\([a-z]*\)".*/\1/p'); ` +
					`alive=no; [ -n "$pid" ] && [ -d /proc/$pid ] && alive=yes; ` +
					`echo "` + name + ` $status $alive $PWD" >>` + hookLog}}
		}
		spec.Hooks = &specs.Hooks{
			CreateRuntime: []specs.Hook{hook("createRuntime")},
			Prestart:      []specs.Hook{hook("prestart")},
			Poststart:     []specs.Hook{hook("poststart")},
			Poststop:      []specs.Hook{hook("poststop")},
		}
		errno := uint(1)
		spec.Linux.Seccomp = &specs.LinuxSeccomp{DefaultAction: specs.ActAllow, Architectures: []specs.Arch{specs.ArchX86_64},
			Syscalls: []specs.LinuxSyscall{{Names: []string{"mkdir", "mkdirat"}, Action: specs.ActErrno, ErrnoRet: &errno}}}
		writeSpec(t, bundle, spec)
		pio, stdout := stdoutPipe(t)
		// vessel-runtime run: create, start, wait, delete.
		status, err := r.Run(ctx, "binds", bundle, &runc.CreateOpts{IO: pio})
		if status != 5 {
			t.Errorf("run: status %d (%v), want 5 (log: %s)", status, err, readFile(r.Log))
		}
		// go-runc's Run, unlike Create, leaves the pipes' child ends
		// open in this process: close them, as the shim does.
		pio.(runc.StartCloser).CloseAfterStart()
		if got, want := stdout(), "from-file\nfrom-dir\nin\nout\nsingle-file\nmkdir-denied\n"; got != want {
			t.Errorf("stdout %q, want %q", got, want)
		}
		if b, _ := os.ReadFile(filepath.Join(files, "one")); string(b) != "single-file\n" {
			t.Errorf("the read-only single file changed: %q", b)
		}
		if b, _ := os.ReadFile(filepath.Join(files, "two")); string(b) != "rw-file\nappended\n" {
			t.Errorf("the read-write single file: %q, want %q", b, "rw-file\nappended\n")
		}
		want := fmt.Sprintf("createRuntime creating yes %[1]s\nprestart creating yes %[1]s\npoststart running yes %[1]s\npoststop stopped no %[1]s\n", bundle)
		if got := readFile(hookLog); got != want {
			t.Errorf("hooks ran as\n%s\nwant\n%s", got, want)
		}
		if b, _ := os.ReadFile(filepath.Join(data, "out")); string(b) != "written\n" {
			t.Errorf("the host directory's new file: %q", b)
		}
		if b, _ := os.ReadFile(filepath.Join(ro, "file")); string(b) != "from-file\n" {
			t.Errorf("the read-only file changed: %q", b)
		}
		checkNothingLeft(t, state)
	})

	t.Run("pod", func(t *testing.T) {
		// containerd's CRI: a sandbox, then containers marked with its
		// ID that join its namespaces through its PID; vessel-runtime
		// runs them all in the sandbox's VM.
		r, state := runtimeClient(t)
		sbBundle, sbSpec := makeBundle(t, "sh", "-c", "cat /proc/sys/kernel/random/boot_id; exec sleep 1000")
		sbSpec.Annotations = map[string]string{"io.kubernetes.cri.container-type": "sandbox", "io.kubernetes.cri.sandbox-id": "sb"}
		writeSpec(t, sbBundle, sbSpec)
		sbIO, sbPid := createContainer(t, ctx, r, "sb", sbBundle)
		if err := r.Start(ctx, "sb"); err != nil {
			t.Fatalf("start sb: %v (log: %s)", err, readFile(r.Log))
		}
		sbBoot, err := bufio.NewReader(sbIO.Stdout()).ReadString('\n')
		if err != nil {
			t.Fatalf("the sandbox's boot ID: %v", err)
		}
		member := func(id string, args ...string) (runc.IO, int) {
			bundle, spec := makeBundle(t, args...)
			spec.Annotations = map[string]string{"io.kubernetes.cri.container-type": "container", "io.kubernetes.cri.sandbox-id": "sb"}
			ns := func(typ specs.LinuxNamespaceType, file string) specs.LinuxNamespace {
				return specs.LinuxNamespace{Type: typ, Path: fmt.Sprintf("/proc/%d/ns/%s", sbPid, file)}
			}
			spec.Linux.Namespaces = []specs.LinuxNamespace{{Type: specs.PIDNamespace}, {Type: specs.MountNamespace},
				ns(specs.NetworkNamespace, "net"), ns(specs.IPCNamespace, "ipc"), ns(specs.UTSNamespace, "uts"),
				{Type: specs.CgroupNamespace}}
			spec.Mounts = append(spec.Mounts, specs.Mount{Destination: "/sys/fs/cgroup", Type: "cgroup", Source: "cgroup", Options: []string{"ro", "nosuid", "noexec", "nodev"}})
			writeSpec(t, bundle, spec)
			pio, pid := createContainer(t, ctx, r, id, bundle)
			wantStatus(t, ctx, r, id, "created")
			if err := r.Start(ctx, id); err != nil {
				t.Fatalf("start %s: %v (log: %s)", id, err, readFile(r.Log))
			}
			return pio, pid
		}
		// The server's update (as the kubelet resizes a container)
		// reaches its cgroup in the VM.
		server, serverPid := member("server", "sh", "-c", "nc -l -p 9000; "+
			"for i in $(seq 300); do [ $(cat /sys/fs/cgroup/pids.max) = 40 ] && break; sleep 0.2; done; echo pids=$(cat /sys/fs/cgroup/pids.max); exit 6")
		pidsLimit := int64(40)
		if err := r.Update(ctx, "server", &specs.LinuxResources{Pids: &specs.LinuxPids{Limit: &pidsLimit}}); err != nil {
			t.Errorf("update of a pod's container: %v (log: %s)", err, readFile(r.Log))
		}
		tooMuch := int64(64 << 30)
		if err := r.Update(ctx, "server", &specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: &tooMuch}}); err == nil {
			t.Errorf("update of a pod's container beyond its VM succeeded")
		}
		client, clientPid := member("client", "sh", "-c",
			"cat /proc/sys/kernel/random/boot_id; hostname; "+
				"for i in 1 2 3 4 5 6 7 8 9 10; do echo hello-pod | nc 127.0.0.1 9000 && break; sleep 1; done; exit 4")
		var serverOut, clientOut []byte
		var wg sync.WaitGroup
		wg.Add(2)
		go func() { defer wg.Done(); serverOut, _ = io.ReadAll(server.Stdout()) }()
		go func() { defer wg.Done(); clientOut, _ = io.ReadAll(client.Stdout()) }()
		server.Stdin().Close()
		client.Stdin().Close()
		if status := waitPid(t, clientPid); status != 4 {
			t.Errorf("the client's process exited %d, want the container's 4 (log: %s)", status, readFile(r.Log))
		}
		if status := waitPid(t, serverPid); status != 6 {
			t.Errorf("the server's process exited %d, want the container's 6", status)
		}
		wg.Wait()
		// One kernel (the sandbox's boot ID), its UTS namespace (the
		// hostname), its network (localhost).
		if got, want := string(clientOut), sbBoot+"vessel-runtime-e2e\n"; got != want {
			t.Errorf("the client saw %q, want %q (the sandbox's boot ID and hostname)", got, want)
		}
		if got := string(serverOut); got != "hello-pod\npids=40\n" {
			t.Errorf("the server got %q over localhost, want %q (then its updated pids limit)", got, "hello-pod\npids=40\n")
		}
		wantStatus(t, ctx, r, "client", "stopped")
		for _, id := range []string{"client", "server"} {
			if err := r.Delete(ctx, id, nil); err != nil {
				t.Errorf("delete %s: %v", id, err)
			}
		}
		// A container in the sandbox's PID namespace (a pod with
		// shareProcessNamespace) ends whole when its first process
		// exits, as containerd's shim has runc do: what it left
		// running is killed then, and holds its output no longer (a
		// leftover that writes every second kept it open for the
		// agent's 30 s bound, with some 30 lines more).
		sharedPID := func(id string, args ...string) (runc.IO, int) {
			bundle, spec := makeBundle(t, args...)
			joinPod(spec, "sb", sbPid, true)
			writeSpec(t, bundle, spec)
			pio, pid := createContainer(t, ctx, r, id, bundle)
			pio.Stdin().Close()
			if err := r.Start(ctx, id); err != nil {
				t.Fatalf("start %s: %v (log: %s)", id, err, readFile(r.Log))
			}
			return pio, pid
		}
		leaverIO, leaverPid := sharedPID("leaver", "sh", "-c", "(sleep 999 & while :; do echo x; sleep 1; done) & echo left; sleep 1; exit 2")
		leaverOut := readOutputs(leaverIO)
		if status := waitPid(t, leaverPid); status != 2 {
			t.Errorf("the process of the container that left a process exited %d, want its 2", status)
		}
		if out, _ := leaverOut(); !strings.Contains(string(out), "left\n") || strings.Count(string(out), "x\n") > 5 {
			t.Errorf("the container that left a process wrote %q, want left and at most a few x (what its leftover wrote before it was killed)", out)
		}
		checkerIO, checkerPid := sharedPID("checker", "sh", "-c", `ps -o args | grep -c "[s]leep 999"; true`)
		checkerOut := readOutputs(checkerIO)
		waitPid(t, checkerPid)
		if out, _ := checkerOut(); string(out) != "0\n" {
			t.Errorf("processes left in the pod's PID namespace after their container's exit: %q, want 0", out)
		}
		for _, id := range []string{"leaver", "checker"} {
			if err := r.Delete(ctx, id, nil); err != nil {
				t.Errorf("delete %s: %v", id, err)
			}
		}
		// A pod's container with a terminal (kubectl run -it): the
		// master comes over the console socket, input and output and
		// the window size reach the container's pty in the VM.
		ttyBundle, ttySpec := makeBundle(t, "sh", "-c", terminalScript)
		ttySpec.Process.Terminal = true
		joinPod(ttySpec, "sb", sbPid, false)
		writeSpec(t, ttyBundle, ttySpec)
		checkTerminal(t, ctx, r, "shell", ttyBundle)
		// A container whose sandbox does not exist is refused.
		bundle, spec := makeBundle(t, "true")
		spec.Annotations = map[string]string{"io.kubernetes.cri.container-type": "container", "io.kubernetes.cri.sandbox-id": "nosuch"}
		writeSpec(t, bundle, spec)
		out, err := exec.Command(r.Command, "--root", state, "create", "--bundle", bundle, "orphan").CombinedOutput()
		checkRuntimeFailure(t, "create in a missing sandbox", out, err)
		// Annotations alone (podman copies an image's into the spec) do
		// not put a container in a pod's VM: it must be in the pod's
		// network namespace.
		bundle, spec = makeBundle(t, "true")
		spec.Annotations = map[string]string{"io.kubernetes.cri.container-type": "container", "io.kubernetes.cri.sandbox-id": "sb"}
		writeSpec(t, bundle, spec)
		out, err = exec.Command(r.Command, "--root", state, "create", "--bundle", bundle, "intruder").CombinedOutput()
		checkRuntimeFailure(t, "create in a pod by annotations alone", out, err)
		if !strings.Contains(string(out), "must join its sandbox's network namespace") {
			t.Errorf("create in a pod by annotations alone: %q, want it refused for its network namespace", out)
		}
		if err := r.Delete(ctx, "sb", &runc.DeleteOpts{Force: true}); err != nil {
			t.Fatalf("delete --force sb: %v", err)
		}
		waitPid(t, sbPid)
		checkNothingLeft(t, state)
	})

	t.Run("netns", func(t *testing.T) {
		// A network namespace made as CNI makes one (a path, a veth
		// pair to the host, an address): the container serves on its
		// address and reaches the host's.
		const ns = "vessel-e2e"
		cniNetns(t, ns, "vesselh0", 77)
		hostLn, err := net.Listen("tcp", "10.77.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer hostLn.Close()
		got := acceptOnce(hostLn)
		port := hostLn.Addr().(*net.TCPAddr).Port
		hostLn6, err := net.Listen("tcp", "[fd77::1]:0")
		if err != nil {
			t.Fatal(err)
		}
		defer hostLn6.Close()
		got6 := acceptOnce(hostLn6)
		port6 := hostLn6.Addr().(*net.TCPAddr).Port
		r, state := runtimeClient(t)
		bundle, spec := makeBundle(t, "sh", "-c", fmt.Sprintf(
			"ip -4 addr show eth0 | grep -o 'inet [0-9./]*'; ip route | grep default; "+
				"ip -6 addr show eth0 | grep -o 'inet6 fd77[0-9a-f:/]*'; ip route | grep 10.78; echo from-container6 | nc -w 20 fd77::1 %d; "+
				// linux.resources sized the VM and limits the container.
				"echo cpus=$(nproc) memory.max=$(cat /sys/fs/cgroup/memory.max) ram=$(awk '/MemTotal/ {print int($2/1024)}' /proc/meminfo); "+
				"echo from-container | nc 10.77.0.1 %d; echo served | nc -l -p 8080; exit 7", port6, port))
		for i, n := range spec.Linux.Namespaces {
			if n.Type == specs.NetworkNamespace {
				spec.Linux.Namespaces[i].Path = "/run/netns/" + ns
			}
		}
		// docker run --memory 256m --cpus 2
		limit, quota, period := int64(256<<20), int64(200000), uint64(100000)
		spec.Linux.Resources = &specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: &limit},
			CPU: &specs.LinuxCPU{Quota: &quota, Period: &period}}
		spec.Linux.Namespaces = append(spec.Linux.Namespaces, specs.LinuxNamespace{Type: specs.CgroupNamespace})
		spec.Mounts = append(spec.Mounts, specs.Mount{Destination: "/sys/fs/cgroup", Type: "cgroup", Source: "cgroup", Options: []string{"ro", "nosuid", "noexec", "nodev"}})
		// The host cgroup docker's cgroupfs driver names: the VMM process
		// runs in it, bounded as the whole VM.
		spec.Linux.CgroupsPath = "/vessel-e2e/netns"
		writeSpec(t, bundle, spec)
		// A create that fails in the guest (a hostile image can make it
		// fail at will: here the working directory is a file) leaves the
		// namespace's interface as it was, and the next create in the
		// same namespace works.
		badBundle, badSpec := makeBundle(t, "true")
		badSpec.Linux.Namespaces = spec.Linux.Namespaces
		badSpec.Process.Cwd = "/bin/busybox"
		writeSpec(t, badBundle, badSpec)
		out, err := exec.Command(r.Command, "--root", state, "create", "--bundle", badBundle, "netns-bad").CombinedOutput()
		checkRuntimeFailure(t, "create failing in the guest", out, err)
		if out, _ := exec.Command("tc", "-n", ns, "qdisc", "show", "dev", "eth0").CombinedOutput(); strings.Contains(string(out), "ingress") {
			t.Errorf("a failed create left an ingress qdisc on the namespace's eth0:\n%s", out)
		}
		checkNothingLeft(t, state)
		// The host's own namespace is refused (the VM would take over its
		// interfaces).
		hostBundle, hostSpec := makeBundle(t, "true")
		for i, n := range hostSpec.Linux.Namespaces {
			if n.Type == specs.NetworkNamespace {
				hostSpec.Linux.Namespaces[i].Path = "/proc/1/ns/net"
			}
		}
		writeSpec(t, hostBundle, hostSpec)
		out, err = exec.Command(r.Command, "--root", state, "create", "--bundle", hostBundle, "netns-host").CombinedOutput()
		checkRuntimeFailure(t, "create in the host's network namespace", out, err)
		if !strings.Contains(string(out), "is the host's") {
			t.Errorf("create in the host's network namespace: %q, want it refused as the host's", out)
		}
		checkNothingLeft(t, state)
		pio, pid := createContainer(t, ctx, r, "netns", bundle)
		const cgDir = "/sys/fs/cgroup/vessel-e2e/netns"
		t.Cleanup(func() { os.Remove(cgDir); os.Remove(filepath.Dir(cgDir)) })
		if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid)); err != nil || string(b) != "0::/vessel-e2e/netns\n" {
			t.Errorf("the VMM process's cgroup: %q, %v; want 0::/vessel-e2e/netns", b, err)
		}
		for file, want := range map[string]string{
			"cpu.max":    "200000 100000\n",
			"memory.max": fmt.Sprintf("%d\n", (256+160+64)<<20), // the VM and the VMM's own
		} {
			if b, err := os.ReadFile(filepath.Join(cgDir, file)); err != nil || string(b) != want {
				t.Errorf("host cgroup %s: %q, %v; want %q", file, b, err, want)
			}
		}
		var stdout []byte
		done := make(chan struct{})
		go func() { stdout, _ = io.ReadAll(pio.Stdout()); close(done) }()
		go io.Copy(io.Discard, pio.Stderr())
		pio.Stdin().Close()
		if err := r.Start(ctx, "netns"); err != nil {
			t.Fatalf("start: %v (log: %s)", err, readFile(r.Log))
		}
		select {
		case s := <-got:
			if s != "from-container\n" {
				t.Errorf("the host got %q", s)
			}
		case <-time.After(2 * time.Minute):
			t.Fatalf("the container did not reach the host (host cgroup: %s; log: %s)", cgroupMemory(cgDir), readFile(r.Log))
		}
		select {
		case s := <-got6:
			if s != "from-container6\n" {
				t.Errorf("the host got %q over IPv6", s)
			}
		case <-time.After(10 * time.Second):
			t.Errorf("the container did not reach the host over IPv6 (it tries before IPv4)")
		}
		// The container's address is served by the guest, through the
		// namespace's interface.
		var answer []byte
		for i := 0; i < 60; i++ {
			c, err := net.DialTimeout("tcp", "10.77.0.2:8080", 5*time.Second)
			if err == nil {
				answer, _ = io.ReadAll(c)
				c.Close()
				if len(answer) > 0 {
					break
				}
			}
			time.Sleep(time.Second)
		}
		if string(answer) != "served\n" {
			t.Errorf("10.77.0.2:8080 answered %q, want %q", answer, "served\n")
		}
		if status := waitPid(t, pid); status != 7 {
			t.Errorf("the VMM process exited %d, want 7 (host cgroup: %s)", status, cgroupMemory(cgDir))
		}
		// The VM fits its host cgroup's memory.max: the kernel did not
		// have to kill the VMM process for it.
		mem := cgroupMemory(cgDir)
		t.Logf("host cgroup: %s", mem)
		if !strings.Contains(mem, " oom_kill 0 ") && !strings.HasSuffix(mem, " oom_kill 0") {
			t.Errorf("host cgroup: %s: the VMM process met its memory.max", mem)
		}
		<-done
		printed := string(stdout)
		if !strings.HasPrefix(printed, "inet 10.77.0.2/24\n") || !strings.Contains(printed, "default via 10.77.0.1") {
			t.Errorf("the container's network: %q, want inet 10.77.0.2/24 and default via 10.77.0.1", printed)
		}
		for _, want := range []string{"inet6 fd77::2/64\n", "10.78.0.0/16 via 10.77.0.1 dev eth0"} {
			if !strings.Contains(printed, want) {
				t.Errorf("the container's network: %q, want %q in it (an IPv6 address, a route)", printed, want)
			}
		}
		var cpus, ram int
		var memMax string
		if i := strings.Index(printed, "cpus="); i < 0 {
			t.Errorf("no resources line in %q", printed)
		} else if _, err := fmt.Sscanf(printed[i:], "cpus=%d memory.max=%s ram=%d", &cpus, &memMax, &ram); err != nil {
			t.Errorf("resources line in %q: %v", printed, err)
		}
		// The VM: 2 vCPUs and the limit plus the guest's own share; the
		// container's cgroup: the limit.
		if cpus != 2 || memMax != "268435456" || ram < 256 || ram > 256+200 {
			t.Errorf("cpus=%d memory.max=%s ram=%d MiB, want 2, 268435456 and 256-456 MiB", cpus, memMax, ram)
		}
		if err := r.Delete(ctx, "netns", nil); err != nil {
			t.Fatalf("delete: %v", err)
		}
		checkNothingLeft(t, state)
		if _, err := os.Stat(cgDir); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("host cgroup %s left after delete (%v)", cgDir, err)
		}
		// What vessel-runtime made in the namespace is gone with the VM.
		out, _ = exec.Command("ip", "-n", ns, "-o", "link").CombinedOutput()
		if strings.Contains(string(out), "vtap") {
			t.Errorf("TAP left in the namespace:\n%s", out)
		}
		if out, _ := exec.Command("tc", "-n", ns, "qdisc", "show", "dev", "eth0").CombinedOutput(); strings.Contains(string(out), "ingress") {
			t.Errorf("ingress qdisc left on the namespace's eth0:\n%s", out)
		}
	})

	t.Run("pause-update", func(t *testing.T) { testPauseUpdate(t, ctx) })

	runtimeIO(t, ctx)

	t.Run("netns-new", func(t *testing.T) { testRuntimeNetnsNew(t, ctx) })

	t.Run("bad-input", func(t *testing.T) {
		bin := runtimeBin(t)
		state := filepath.Join(t.TempDir(), "state")
		noConfig := t.TempDir()
		badJSON := t.TempDir()
		os.WriteFile(filepath.Join(badJSON, "config.json"), []byte("{"), 0o644)
		for _, tc := range []struct {
			name string
			args []string
		}{
			{"missing config.json", []string{"create", "--bundle", noConfig, "x"}},
			{"invalid config.json", []string{"create", "--bundle", badJSON, "x"}},
			{"no bundle", []string{"create", "--bundle", filepath.Join(noConfig, "absent"), "x"}},
			{"state of an unknown ID", []string{"state", "unknown"}},
			{"start of an unknown ID", []string{"start", "unknown"}},
			{"kill of an unknown ID", []string{"kill", "unknown", "KILL"}},
			{"delete of an unknown ID", []string{"delete", "unknown"}},
			{"checkpoint", []string{"checkpoint", "--image-path", "/tmp/x", "--leave-running", "unknown"}},
			{"restore", []string{"restore", "--bundle", noConfig, "--image-path", "/tmp/x", "unknown"}},
		} {
			t.Run(tc.name, func(t *testing.T) {
				logf := filepath.Join(t.TempDir(), "log.json")
				cmd := exec.Command(bin, append([]string{"--root", state, "--log", logf, "--log-format", "json"}, tc.args...)...)
				out, err := cmd.CombinedOutput()
				checkRuntimeFailure(t, tc.name, out, err)
				var l struct{ Level, Msg string }
				sc := bufio.NewScanner(strings.NewReader(readFile(logf)))
				for sc.Scan() {
					json.Unmarshal(sc.Bytes(), &l)
				}
				if l.Level != "error" || l.Msg == "" {
					t.Errorf("log %q: want a last {\"level\":\"error\",\"msg\":...} line", readFile(logf))
				}
				checkNothingLeft(t, state)
			})
		}
	})
}

// checkRuntimeFailure checks a failed command: exit status 1 and one line.
func checkRuntimeFailure(t *testing.T, what string, out []byte, err error) {
	t.Helper()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 1 {
		t.Errorf("%s: %v, want exit status 1; output %q", what, err, out)
	}
	if s := string(out); strings.Count(s, "\n") != 1 || !strings.HasSuffix(s, "\n") {
		t.Errorf("%s: output %q, want one line", what, out)
	}
	t.Logf("%s: %s", what, strings.TrimSpace(string(out)))
}

// acceptOnce accepts one connection on ln and sends what it read until
// the peer closed it (at most a minute), or nothing if ln closes first.
func acceptOnce(ln net.Listener) <-chan string {
	got := make(chan string, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		c.SetDeadline(time.Now().Add(time.Minute))
		b, _ := io.ReadAll(c)
		c.Close()
		got <- string(b)
	}()
	return got
}

// cniNetns makes the network namespace ns as a CNI plugin makes one: a
// veth pair whose host end hostIf has 10.N.0.1/24 and fdN::1/64, whose
// end in ns (eth0) has 10.N.0.2/24 and fdN::2/64 (no DAD), a default route
// through the host end and a route to 10.N+1.0.0/16; it is removed when
// the test ends.
func cniNetns(t *testing.T, ns, hostIf string, n int) {
	t.Helper()
	ip := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	ip("netns", "add", ns)
	t.Cleanup(func() {
		exec.Command("ip", "netns", "del", ns).Run()
		exec.Command("ip", "link", "del", hostIf).Run()
	})
	ip("link", "add", hostIf, "type", "veth", "peer", "name", "eth0", "netns", ns)
	ip("addr", "add", fmt.Sprintf("10.%d.0.1/24", n), "dev", hostIf)
	ip("link", "set", hostIf, "up")
	ip("-n", ns, "addr", "add", fmt.Sprintf("10.%d.0.2/24", n), "dev", "eth0")
	ip("-n", ns, "link", "set", "eth0", "up")
	ip("-n", ns, "route", "add", "default", "via", fmt.Sprintf("10.%d.0.1", n))
	// What CNI plugins add besides: an IPv6 address and a route.
	ip("addr", "add", fmt.Sprintf("fd%d::1/64", n), "dev", hostIf, "nodad")
	ip("-n", ns, "addr", "add", fmt.Sprintf("fd%d::2/64", n), "dev", "eth0", "nodad")
	ip("-n", ns, "route", "add", fmt.Sprintf("10.%d.0.0/16", n+1), "via", fmt.Sprintf("10.%d.0.1", n))
}

// checkNothingLeft checks that no VMM process and no container's state
// directory remain.
func checkNothingLeft(t *testing.T, state string) {
	t.Helper()
	if pids := vmmProcesses(t); len(pids) > 0 {
		t.Errorf("VMM processes left: %v", pids)
	}
	ents, err := os.ReadDir(state)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	for _, e := range ents {
		t.Errorf("state left: %s", filepath.Join(state, e.Name()))
	}
	// No mount of vessel-runtime's reached this namespace, and no TAP
	// device is left in it.
	mi, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(mi), "\n") {
		if strings.Contains(l, state) {
			t.Errorf("mount left: %s", l)
		}
	}
	taps, _ := filepath.Glob("/sys/class/net/*/tun_flags")
	for _, tf := range taps {
		t.Errorf("TAP device left: %s", filepath.Base(filepath.Dir(tf)))
	}
}
