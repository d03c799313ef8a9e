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

// Review (session 9): what a compromised jailed VMM (jail.Enter with
// FileCaps, as vessel's jailed-vmm has whenever the VM has a 9P share)
// can still reach. Each line the child prints is something it should
// not have been able to do.

const reviewEnv = "REVIEW_JAIL_CHILD" // dir|abstract socket name

func TestMain(m *testing.M) {
	if v := os.Getenv(reviewEnv); v != "" {
		reviewChild(v)
		return
	}
	os.Exit(m.Run())
}

func reviewChild(v string) {
	dir, abstract, _ := strings.Cut(v, "|")
	say := func(f string, a ...any) { fmt.Printf(f+"\n", a...) }
	// Opened before Enter, as devices/share.New opens a share's root.
	share, err := unix.Open(filepath.Join(dir, "share"), unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		say("setup: %v", err)
		os.Exit(3)
	}
	if err := Enter(Spec{Root: filepath.Join(dir, "jail", "root"), UID: Nobody, GID: Nobody, FileCaps: true}); err != nil {
		say("setup: enter: %v", err)
		os.Exit(3)
	}
	say("entered uid %d", os.Getuid())
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

// TestReviewJailedVMMReach runs a process through Enter as vessel's
// jailed VMM does, with a share's directory descriptor opened before,
// and fails for each thing it could still do.
func TestReviewJailedVMMReach(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
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
	abstract := fmt.Sprintf("vessel-review-%d", os.Getpid())
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
	cmd.Env = append(os.Environ(), reviewEnv+"="+dir+"|"+abstract)
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: Cloneflags}
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		t.Fatalf("child: %v\n%s%s", err, out.String(), errb.String())
	}
	t.Logf("child:\n%s", out.String())
	if !strings.Contains(out.String(), "entered uid 65534") {
		t.Fatalf("the child did not enter the jail")
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
