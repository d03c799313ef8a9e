//go:build linux

package jail

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// What a compromised jailed VMM (Enter with FileCaps, as vessel's
// vessel-vmm has whenever the VM has a 9P share) must not reach: the
// host's files beside its share through the share's descriptor, the
// host-wide files of its /proc, the host's abstract Unix sockets. Each
// line the child prints starting ESCAPE, DOS or HARDENING is something it
// could do. (Found by the session 9 review.)

const childEnv = "JAIL_TEST_CHILD" // dir|abstract socket name

func TestMain(m *testing.M) {
	if v := os.Getenv(childEnv); v != "" {
		jailChild(v)
		return
	}
	os.Exit(m.Run())
}

func jailChild(v string) {
	dir, abstract, _ := strings.Cut(v, "|")
	say := func(f string, a ...any) { fmt.Printf(f+"\n", a...) }
	spec := Spec{Root: filepath.Join(dir, "jail", "root"), UID: Nobody, GID: Nobody, FileCaps: true,
		Shares: []Share{{Dir: filepath.Join(dir, "share")}}}
	bound, err := Mount(spec)
	if err != nil {
		say("setup: mount: %v", err)
		os.Exit(3)
	}
	// Opened before Enter, where Mount bound it, as vessel-vmm has
	// devices/share.New open a share's root.
	share, err := unix.Open(bound[0], unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		say("setup: %v", err)
		os.Exit(3)
	}
	if err := Enter(spec); err != nil {
		say("setup: enter: %v", err)
		os.Exit(3)
	}
	say("entered uid %d", os.Getuid())
	// The share itself works.
	if fd, err := unix.Openat(share, "inside", unix.O_RDONLY, 0); err != nil {
		say("setup: the share's file: %v", err)
	} else {
		unix.Close(fd)
		say("share ok")
	}
	// 1. Climb out of the share through its descriptor.
	if fd, err := unix.Openat(share, "../secret", unix.O_RDONLY, 0); err == nil {
		b := make([]byte, 64)
		n, _ := unix.Read(fd, b)
		say("ESCAPE read ../secret through the share's fd: %q", b[:n])
	}
	if fd, err := unix.Openat(share, "../planted", unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL, 0o4755); err == nil {
		unix.Write(fd, []byte("#!/bin/sh\n"))
		unix.Fchown(fd, 0, 0)
		unix.Fchmod(fd, 0o4755)
		say("ESCAPE made ../planted (setuid root) outside the share")
	}
	if fd, err := unix.Openat(share, strings.Repeat("../", 40)+"etc/shadow", unix.O_RDONLY, 0); err == nil {
		b := make([]byte, 5)
		n, _ := unix.Read(fd, b)
		say("ESCAPE opened the host's /etc/shadow for reading (%q...)", b[:n])
	}
	// 2. The jail's /proc is read-write and the VMM has CAP_DAC_OVERRIDE
	// in the host's user namespace: sysrq (not written to here).
	if fd, err := unix.Open("/proc/sysrq-trigger", unix.O_WRONLY, 0); err == nil {
		unix.Close(fd)
		say("DOS opened /proc/sysrq-trigger for writing (b reboots the host, c crashes it)")
	}
	if fd, err := unix.Open("/proc/irq/default_smp_affinity", unix.O_WRONLY, 0); err == nil {
		unix.Close(fd)
		say("DOS opened /proc/irq/default_smp_affinity (root's, 0644) for writing")
	}
	// 3. No network namespace: the host's abstract Unix sockets.
	if c, err := net.Dial("unix", "@"+abstract); err == nil {
		c.Write([]byte("hello from the jail\n"))
		c.Close()
		say("HARDENING connected to the host's abstract socket @%s", abstract)
	}
	os.Exit(0)
}

// TestJailedVMMReach runs a process through Enter as vessel's
// jailed VMM does, with a share's directory descriptor opened before,
// and fails for each thing it could still do.
func TestJailedVMMReach(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	if withCgo {
		t.Skip("Enter needs a program without cgo (AllThreadsSyscall): make test-unit runs this test again with CGO_ENABLED=0")
	}
	dir := t.TempDir()
	for _, d := range []string{"share", "jail", "jail/root"} {
		if err := os.Mkdir(filepath.Join(dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	os.Chmod(filepath.Join(dir, "jail"), 0o700)
	if err := os.WriteFile(filepath.Join(dir, "secret"), []byte("host secret"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "share", "inside"), []byte("shared"), 0o600); err != nil {
		t.Fatal(err)
	}
	abstract := fmt.Sprintf("vessel-jail-test-%d", os.Getpid())
	l, err := net.Listen("unix", "@"+abstract)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), childEnv+"="+dir+"|"+abstract)
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: Cloneflags}
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		t.Fatalf("child: %v\n%s%s", err, out.String(), errb.String())
	}
	t.Logf("child:\n%s", out.String())
	if !strings.Contains(out.String(), "entered uid 65534") || !strings.Contains(out.String(), "share ok") {
		t.Fatalf("the child did not enter the jail, or its share did not work")
	}
	for _, l := range strings.Split(out.String(), "\n") {
		if strings.HasPrefix(l, "ESCAPE") || strings.HasPrefix(l, "DOS") || strings.HasPrefix(l, "HARDENING") {
			t.Errorf("a jailed VMM could: %s", l)
		}
	}
	if fi, err := os.Stat(filepath.Join(dir, "planted")); err == nil {
		t.Errorf("left on the host: %s %v", filepath.Join(dir, "planted"), fi.Mode())
	}
}
