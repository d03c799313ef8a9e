//go:build e2e

package e2e

import (
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// x32Bit marks a system call of the x32 ABI (__X32_SYSCALL_BIT).
const x32Bit = 0x40000000

// TestContainerSeccomp: a `vessel run` container runs under docker's
// default seccomp profile as the guest's runc compiles it, without the
// i386 rules the agent drops on a kernel that cannot run i386 code, and
// with the x32 ones it keeps. The guest half runs inside the container:
// this test binary, bound in read-only.
func TestContainerSeccomp(t *testing.T) {
	if *guestMode {
		containerSeccompChecks(t)
		return
	}
	env := runEnv(t)
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	r := vesselRun(t, env, "", "-v", filepath.Dir(self)+":/e2e:ro", runImage,
		"/e2e/"+filepath.Base(self), "-e2e.guest", "-test.v", "-test.run", "^TestContainerSeccomp$")
	if r.code != 0 || !strings.Contains(r.stdout, "--- PASS: TestContainerSeccomp") {
		t.Fatalf("the checks in the container failed:\n%v", r)
	}
}

// containerSeccompChecks is TestContainerSeccomp's half in the container.
func containerSeccompChecks(t *testing.T) {
	status, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(status), "Seccomp:\t2\n") {
		t.Fatalf("not in seccomp filter mode:\n%s", status)
	}
	// The premise of dropping the i386 rules: this kernel has no IA32
	// emulation (which registers abi.vsyscall32).
	if _, err := os.Stat("/proc/sys/abi/vsyscall32"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("/proc/sys/abi/vsyscall32: %v; the guest kernel is not the one without IA32 emulation", err)
	}
	// docker's profile refuses the kernel keyring (keyctl) with EPERM,
	// in the 64-bit ABI and in x32; allowed x32 calls reach a kernel
	// without that ABI and fail with ENOSYS. A profile without its x32
	// rules kills the calling thread instead, and the Go runtime then
	// hangs this process: the host half's time limit fails the test
	// (tried: a guest agent that dropped x32 failed it after 4 minutes);
	// each call runs on a thread of its own, so a killed thread that
	// left the process running fails it here, at 20 s.
	for _, tc := range []struct {
		name string
		nr   uintptr
		want unix.Errno
	}{
		{"keyctl", unix.SYS_KEYCTL, unix.EPERM},
		{"x32 keyctl", x32Bit | unix.SYS_KEYCTL, unix.EPERM},
		{"x32 getpid", x32Bit | unix.SYS_GETPID, unix.ENOSYS},
	} {
		ch := make(chan unix.Errno, 1)
		go func() {
			runtime.LockOSThread() // a killed thread is not reused
			_, _, e := unix.RawSyscall(tc.nr, 0, 0, 0)
			ch <- e
		}()
		select {
		case e := <-ch:
			if e != tc.want {
				t.Errorf("%s: errno %d (%v), want %d (%v)", tc.name, e, e, tc.want, tc.want)
			}
		case <-time.After(20 * time.Second):
			t.Errorf("%s: no answer within 20 s: the filter killed the calling thread", tc.name)
		}
	}
}
