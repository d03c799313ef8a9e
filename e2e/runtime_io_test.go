//go:build e2e

package e2e

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/console"
	runc "github.com/containerd/go-runc"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// ttyOutput collects what a terminal's master reads.
type ttyOutput struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func readTTY(r io.Reader) *ttyOutput {
	o := &ttyOutput{}
	go func() {
		b := make([]byte, 4096)
		for {
			n, err := r.Read(b)
			o.mu.Lock()
			o.buf.Write(b[:n])
			o.mu.Unlock()
			if err != nil {
				return
			}
		}
	}()
	return o
}

func (o *ttyOutput) String() string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.buf.String()
}

// waitFor waits until the output holds s.
func (o *ttyOutput) waitFor(t *testing.T, s string, d time.Duration) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !strings.Contains(o.String(), s) {
		if time.Now().After(deadline) {
			t.Fatalf("terminal output %q: no %q within %v%s", o.String(), s, d, describeVMMs())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func busyboxProcess(args ...string) specs.Process {
	return specs.Process{Args: args, Cwd: "/", Env: []string{"PATH=/bin"}}
}

// terminalScript is a container's shell that shows its terminal at
// work: the terminal's name, a line it reads, then the size the host
// sets; it exits 7.
const terminalScript = `tty; read l; echo got=$l; for i in $(seq 150); do s=$(stty size); [ "$s" = "37 91" ] && break; sleep 0.2; done; echo size=$s; exit 7`

// checkTerminal creates and starts container id from bundle (its process
// runs terminalScript with a terminal) with a console socket, as
// containerd's shim does, types a line into the master the socket gives
// and sets the master's size, checks that the container saw both and
// that its process exited 7, and deletes it.
func checkTerminal(t *testing.T, ctx context.Context, r *runc.Runc, id, bundle string) {
	t.Helper()
	sock, err := runc.NewTempConsoleSocket()
	if err != nil {
		t.Fatal(err)
	}
	defer sock.Close()
	pidFile := filepath.Join(t.TempDir(), "pid")
	if err := r.Create(ctx, id, bundle, &runc.CreateOpts{PidFile: pidFile, ConsoleSocket: sock}); err != nil {
		t.Fatalf("create %s: %v (log: %s)", id, err, readFile(r.Log))
	}
	pid, err := runc.ReadPidFile(pidFile)
	if err != nil {
		t.Fatal(err)
	}
	master, err := sock.ReceiveMaster()
	if err != nil {
		t.Fatalf("the console socket: %v", err)
	}
	defer master.Close()
	out := readTTY(master)
	if err := r.Start(ctx, id); err != nil {
		t.Fatalf("start %s: %v (log: %s)", id, err, readFile(r.Log))
	}
	out.waitFor(t, "/dev/pts/0", time.Minute)
	if _, err := master.Write([]byte("hello\r")); err != nil {
		t.Fatal(err)
	}
	out.waitFor(t, "got=hello", time.Minute)
	// A size set on the master reaches the container's terminal.
	if err := master.Resize(console.WinSize{Height: 37, Width: 91}); err != nil {
		t.Fatal(err)
	}
	out.waitFor(t, "size=", time.Minute)
	if status := waitPid(t, pid); status != 7 {
		t.Errorf("%s: the process create started exited %d, want the container's 7", id, status)
	}
	if got := out.String(); !strings.Contains(got, "size=37 91") || strings.Count(got, "hello") != 2 {
		t.Errorf("%s: terminal output %q: want size=37 91, and hello echoed once (then got=hello)", id, got)
	}
	if err := r.Delete(ctx, id, nil); err != nil {
		t.Fatalf("delete %s: %v", id, err)
	}
}

// runtimeIO is TestRuntime's terminal, exec, ps and list subtests.
func runtimeIO(t *testing.T, ctx context.Context) {
	t.Run("terminal", func(t *testing.T) {
		r, state := runtimeClient(t)
		bundle, spec := makeBundle(t, "sh", "-c", terminalScript)
		spec.Process.Terminal = true
		writeSpec(t, bundle, spec)
		checkTerminal(t, ctx, r, "terminal", bundle)
		checkNothingLeft(t, state)
	})

	t.Run("run-terminal", func(t *testing.T) {
		// run with a terminal and no console socket: vessel-runtime's own
		// stdio is the terminal, as runc's.
		r, state := runtimeClient(t)
		// A failed test must not leave its VM to the next ones.
		t.Cleanup(func() { r.Delete(context.Background(), "run-terminal", &runc.DeleteOpts{Force: true}) })
		bundle, spec := makeBundle(t, "sh", "-c", `tty; read l; echo got=$l; exit 5`)
		spec.Process.Terminal = true
		writeSpec(t, bundle, spec)
		master, slaveName, err := console.NewPty()
		if err != nil {
			t.Fatal(err)
		}
		defer master.Close()
		slave, err := os.OpenFile(slaveName, os.O_RDWR|unix.O_NOCTTY, 0)
		if err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(runtimeBin(t), "--root", state, "run", "--bundle", bundle, "run-terminal")
		cmd.Stdin, cmd.Stdout, cmd.Stderr = slave, slave, slave
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		slave.Close()
		out := readTTY(master)
		out.waitFor(t, "/dev/pts/0", time.Minute)
		master.Write([]byte("line\r"))
		err = cmd.Wait()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 5 {
			t.Errorf("run: %v, want exit status 5; output %q", err, out.String())
		}
		out.waitFor(t, "got=line", 10*time.Second)
		checkNothingLeft(t, state)
	})

	t.Run("exec", func(t *testing.T) {
		r, state := runtimeClient(t)
		bundle, _ := makeBundle(t, "sleep", "1000")
		const id = "exec"
		_, pid := createContainer(t, ctx, r, id, bundle)
		if err := r.Start(ctx, id); err != nil {
			t.Fatalf("start: %v (log: %s)", err, readFile(r.Log))
		}

		// ps: the host process that runs the container (callers match
		// ps's PIDs against the host's processes), never the guest's
		// numbers; list: running.
		pids, err := r.Ps(ctx, id)
		if err != nil || len(pids) != 1 || pids[0] != pid {
			t.Errorf("ps: %v (%v), want the VMM process %d", pids, err, pid)
		}
		cs, err := r.List(ctx)
		if err != nil || len(cs) != 1 || cs[0].ID != id || cs[0].Status != "running" || cs[0].Pid != pid || cs[0].Bundle != bundle {
			t.Errorf("list: %+v (%v), want %s running with PID %d", cs, err, id, pid)
		}

		// exec without --detach: vessel-runtime's stdio, its status.
		pio, err := runc.NewPipeIO(0, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer pio.Close()
		var stdout, stderr []byte
		var wg sync.WaitGroup
		wg.Add(2)
		go func() { defer wg.Done(); stdout, _ = io.ReadAll(pio.Stdout()) }()
		go func() { defer wg.Done(); stderr, _ = io.ReadAll(pio.Stderr()) }()
		io.WriteString(pio.Stdin(), "in\n")
		pio.Stdin().Close()
		err = r.Exec(ctx, id, busyboxProcess("sh", "-c", "read x; echo out-$x; echo err >&2; exit 3"), &runc.ExecOpts{IO: pio})
		var ee *runc.ExitError
		if !errors.As(err, &ee) || ee.Status != 3 {
			t.Errorf("exec: %v, want exit status 3 (log: %s)", err, readFile(r.Log))
		}
		wg.Wait()
		if string(stdout) != "out-in\n" || string(stderr) != "err\n" {
			t.Errorf("exec: stdout %q stderr %q, want %q %q", stdout, stderr, "out-in\n", "err\n")
		}

		// An exec whose background child keeps its stdout and stderr:
		// the exec ends with its own process, and passes on what it
		// wrote (runc exec returns when its process exits; docker
		// closes the streams 2 s after).
		bgIO, bgOut := stdoutPipe(t)
		bgCtx, cancel := context.WithTimeout(ctx, 2*time.Minute) // a hang's bound, not a time limit
		err = r.Exec(bgCtx, id, busyboxProcess("sh", "-c", "echo left; sleep 900 & exit 5"), &runc.ExecOpts{IO: bgIO})
		cancel()
		if !errors.As(err, &ee) || ee.Status != 5 {
			t.Errorf("exec leaving a background process on its stdout: %v, want exit status 5 (log: %s)", err, readFile(r.Log))
		}
		if got := bgOut(); got != "left\n" {
			t.Errorf("exec leaving a background process: stdout %q, want %q", got, "left\n")
		}

		// exec --detach (as containerd's shim): the PID in the pid file
		// holds the stdio and exits with the process's status.
		pio2, err := runc.NewPipeIO(0, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer pio2.Close()
		pidFile := filepath.Join(t.TempDir(), "exec.pid")
		if err := r.Exec(ctx, id, busyboxProcess("sh", "-c", "read x; echo got-$x; exit 4"), &runc.ExecOpts{IO: pio2, Detach: true, PidFile: pidFile}); err != nil {
			t.Fatalf("exec --detach: %v (log: %s)", err, readFile(r.Log))
		}
		helper, err := runc.ReadPidFile(pidFile)
		if err != nil {
			t.Fatal(err)
		}
		// The exec'd process is in the VM: ps still names the VMM.
		if pids, err := r.Ps(ctx, id); err != nil || len(pids) != 1 || pids[0] != pid {
			t.Errorf("ps with an exec'd process: %v (%v), want the VMM process %d", pids, err, pid)
		}
		go io.Copy(io.Discard, pio2.Stderr())
		io.WriteString(pio2.Stdin(), "hi\n")
		pio2.Stdin().Close()
		got, _ := io.ReadAll(pio2.Stdout())
		if status := waitPid(t, helper); status != 4 {
			t.Errorf("the exec helper exited %d, want the process's 4", status)
		}
		if string(got) != "got-hi\n" {
			t.Errorf("detached exec's stdout %q, want %q", got, "got-hi\n")
		}

		// A signal to the helper goes to the process.
		pio3, err := runc.NewPipeIO(0, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer pio3.Close()
		if err := r.Exec(ctx, id, busyboxProcess("sleep", "1000"), &runc.ExecOpts{IO: pio3, Detach: true, PidFile: pidFile}); err != nil {
			t.Fatalf("exec --detach: %v (log: %s)", err, readFile(r.Log))
		}
		helper, err = runc.ReadPidFile(pidFile)
		if err != nil {
			t.Fatal(err)
		}
		unix.Kill(helper, unix.SIGTERM)
		if status := waitPid(t, helper); status != 143 {
			t.Errorf("the exec helper of sleep exited %d after SIGTERM, want 143", status)
		}

		// exec -t: a terminal over the console socket.
		sock, err := runc.NewTempConsoleSocket()
		if err != nil {
			t.Fatal(err)
		}
		defer sock.Close()
		proc := busyboxProcess("sh", "-c", "tty; stty size; exit 2")
		proc.Terminal = true
		proc.ConsoleSize = &specs.Box{Height: 20, Width: 60}
		if err := r.Exec(ctx, id, proc, &runc.ExecOpts{Detach: true, PidFile: pidFile, ConsoleSocket: sock}); err != nil {
			t.Fatalf("exec -t: %v (log: %s)", err, readFile(r.Log))
		}
		helper, err = runc.ReadPidFile(pidFile)
		if err != nil {
			t.Fatal(err)
		}
		master, err := sock.ReceiveMaster()
		if err != nil {
			t.Fatalf("exec -t: the console socket: %v", err)
		}
		defer master.Close()
		out := readTTY(master)
		if status := waitPid(t, helper); status != 2 {
			t.Errorf("exec -t: the helper exited %d, want 2", status)
		}
		out.waitFor(t, "20 60", 10*time.Second)
		if !strings.Contains(out.String(), "/dev/pts/") {
			t.Errorf("exec -t: output %q, want a /dev/pts/ terminal", out.String())
		}

		// Once the container has stopped: runc's error.
		if err := r.Kill(ctx, id, int(unix.SIGKILL), nil); err != nil {
			t.Fatalf("kill: %v", err)
		}
		waitPid(t, pid)
		err = r.Exec(ctx, id, busyboxProcess("true"), nil)
		if err == nil || !strings.Contains(err.Error(), "cannot exec in a stopped container") {
			t.Errorf("exec in a stopped container: %v", err)
		}
		if err := r.Delete(ctx, id, nil); err != nil {
			t.Fatalf("delete: %v", err)
		}
		checkNothingLeft(t, state)
	})
}
