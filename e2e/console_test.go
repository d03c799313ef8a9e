//go:build e2e

package e2e

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// openPTY returns a new pseudo-terminal pair (master, slave).
func openPTY(t *testing.T) (*os.File, *os.File) {
	t.Helper()
	m, err := os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatalf("open /dev/ptmx: %v", err)
	}
	if err := unix.IoctlSetPointerInt(int(m.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		t.Fatalf("unlock pty: %v", err)
	}
	n, err := unix.IoctlGetUint32(int(m.Fd()), unix.TIOCGPTN)
	if err != nil {
		t.Fatalf("pty number: %v", err)
	}
	s, err := os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatalf("open pty slave: %v", err)
	}
	t.Cleanup(func() { m.Close(); s.Close() })
	return m, s
}

// ptyRun is a vessel command running on the slave side of a pty.
type ptyRun struct {
	t    *testing.T
	out  syncBuffer // what it wrote, read from the master side
	done chan error // its end
}

// startOnPTY starts cmd in a session of its own with the pty slave s as
// its controlling terminal and stdio, and collects its output from the
// master m; the process is killed when the test ends.
func startOnPTY(t *testing.T, cmd *exec.Cmd, m, s *os.File) *ptyRun {
	t.Helper()
	cmd.Stdin, cmd.Stdout, cmd.Stderr = s, s, s
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	r := &ptyRun{t: t, done: make(chan error, 1)}
	go func() { r.done <- cmd.Wait() }()
	go io.Copy(&r.out, m)
	t.Cleanup(func() { cmd.Process.Kill() })
	return r
}

// waitFor waits until the output shows what; vessel ending first, or
// bootTimeout passing, fails the test.
func (r *ptyRun) waitFor(what string) {
	r.t.Helper()
	deadline := time.Now().Add(bootTimeout)
	for !strings.Contains(r.out.String(), what) {
		if time.Now().After(deadline) {
			r.t.Fatalf("no %q from the guest:\n%q", what, r.out.String())
		}
		select {
		case err := <-r.done:
			r.done <- err // still the caller's to wait for
			// What vessel wrote last may still be on its way through
			// the pty when it has ended.
			for end := time.Now().Add(2 * time.Second); time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
				if strings.Contains(r.out.String(), what) {
					return
				}
			}
			r.t.Fatalf("vessel ended (%v) before %q:\n%q", err, what, r.out.String())
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// TestInteractiveConsole runs `vessel vm run` on a terminal: what is typed
// reaches the guest command through its terminal, Ctrl-A X quits with
// status 0, and the terminal's settings are restored afterwards. (The
// command is a plain read: an interactive shell's line editor would make
// the test depend on its terminal queries.)
func TestInteractiveConsole(t *testing.T) {
	if *guestMode {
		t.Skip("host half only")
	}
	m, s := openPTY(t)
	before, err := unix.IoctlGetTermios(int(s.Fd()), unix.TCGETS)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(vesselBin, "vm", "run", "--", "sh", "-c", "echo ready-$((2*3)); read x; echo got-$x; sleep 1000")
	r := startOnPTY(t, cmd, m, s)
	wait, done, out := r.waitFor, r.done, &r.out
	wait("ready-6") // the command runs and reads its terminal
	m.Write([]byte("typed-line\r"))
	wait("got-typed-line")

	m.Write([]byte{0x01, 'x'}) // Ctrl-A X
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("after Ctrl-A X vessel ended with %v, want status 0:\n%q", err, out.String())
		}
	case <-time.After(time.Minute):
		t.Fatalf("vessel did not quit on Ctrl-A X:\n%q", out.String())
	}
	after, err := unix.IoctlGetTermios(int(s.Fd()), unix.TCGETS)
	if err != nil {
		t.Fatal(err)
	}
	if before.Iflag != after.Iflag || before.Oflag != after.Oflag || before.Lflag != after.Lflag || before.Cflag != after.Cflag {
		t.Errorf("terminal not restored: before %+v, after %+v", before, after)
	}
}

// TestPipedInput feeds the guest command from vessel's standard input
// when it is not a terminal; the input is there before the guest's
// console driver listens, and must not be lost.
func TestPipedInput(t *testing.T) {
	if *guestMode {
		t.Skip("host half only")
	}
	r := vesselCmd(t, func(c *exec.Cmd) { c.Stdin = strings.NewReader("piped-line-1\npiped-line-2\n") },
		"vm", "run", "--", "sh", "-c", "read a; read b; echo got:$b:$a")
	if r.code != 0 || !strings.Contains(r.stdout, "got:piped-line-2:piped-line-1") {
		t.Fatalf("the command did not read vessel's input:\n%v", r)
	}
}
