//go:build e2e

package e2e

import (
	"bytes"
	"fmt"
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

// TestInteractiveConsole runs `vessel vm run` without a command on a
// terminal: the guest's shell answers what is typed, Ctrl-A X quits with
// status 0, and the terminal's settings are restored afterwards.
func TestInteractiveConsole(t *testing.T) {
	if *guestMode {
		t.Skip("host half only")
	}
	m, s := openPTY(t)
	before, err := unix.IoctlGetTermios(int(s.Fd()), unix.TCGETS)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(vesselBin, "vm", "run")
	cmd.Stdin, cmd.Stdout, cmd.Stderr = s, s, s
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	var out syncBuffer
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := m.Read(buf)
			out.Write(buf[:n])
			// Answer the queries the guest shell's line editor sends a
			// terminal, as a terminal would: cursor position (DSR) and
			// foreground colour (OSC 10).
			if bytes.Contains(buf[:n], []byte("\x1b[6n")) {
				m.Write([]byte("\x1b[1;1R"))
			}
			if bytes.Contains(buf[:n], []byte("\x1b]10;?")) {
				m.Write([]byte("\x1b]10;rgb:ffff/ffff/ffff\x1b\\"))
			}
			if bytes.Contains(buf[:n], []byte("\x1b]11;?")) {
				m.Write([]byte("\x1b]11;rgb:0000/0000/0000\x1b\\"))
			}
			if err != nil {
				return
			}
		}
	}()
	defer cmd.Process.Kill()

	// Wait for the shell's line editor (it asks the terminal for the
	// cursor position when it starts): typed-ahead text would be read as
	// the terminal's answers. Then type until the shell has evaluated the
	// line: "vessel-42" appears only as the shell's output, never in the
	// echo of what was typed.
	deadline := time.Now().Add(bootTimeout)
	typed := time.Time{}
	for !strings.Contains(out.String(), "vessel-42") {
		if time.Now().After(deadline) {
			t.Fatalf("the guest shell never answered:\n%q", out.String())
		}
		select {
		case err := <-done:
			t.Fatalf("vessel ended before the shell answered (%v):\n%q", err, out.String())
		case <-time.After(500 * time.Millisecond):
		}
		if strings.Contains(out.String(), "\x1b[6n") && time.Since(typed) > 20*time.Second {
			time.Sleep(2 * time.Second) // let the editor take the answers
			m.Write([]byte("echo vessel-$((6*7))\r"))
			typed = time.Now()
		}
	}

	m.Write([]byte{0x01, 'x'}) // Ctrl-A X
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("after Ctrl-A X vessel ended with %v, want status 0:\n%s", err, out.String())
		}
	case <-time.After(time.Minute):
		t.Fatalf("vessel did not quit on Ctrl-A X:\n%s", out.String())
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
