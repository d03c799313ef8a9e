//go:build seccomptest

package seccomp

import (
	"os"
	"strconv"
	"syscall"
	"time"
)

// afterInstall, in a build with the seccomptest tag only (the end-to-end
// tests build one; bin/ never has it), makes the system call whose number
// VESSEL_SECCOMP_TEST_SYSCALL gives, a second after the filter is in, in
// the process whose profile VESSEL_SECCOMP_TEST_WHO names ("VMM" or "user
// network helper"), so that a test can see the filter stop it.
func afterInstall(p Profile) {
	nr, err := strconv.Atoi(os.Getenv("VESSEL_SECCOMP_TEST_SYSCALL"))
	if err != nil || os.Getenv("VESSEL_SECCOMP_TEST_WHO") != p.String() {
		return
	}
	go func() {
		time.Sleep(time.Second)
		syscall.RawSyscall(uintptr(nr), 0, 0, 0)
	}()
}
