//go:build linux

package jail

import (
	"fmt"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// capsetAllThreads sets the permitted and effective capabilities of every
// thread to set (capabilities 0-31), inheritable to none.
func capsetAllThreads(set uint32) error {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	data := [2]unix.CapUserData{{Effective: set, Permitted: set}}
	// unsafe: capset(2) takes the addresses of a header and of two data
	// words. AllThreadsSyscall is go:uintptrescapes, so both are moved
	// to the heap and kept alive until it returns, after every thread
	// made the call; the kernel only reads them.
	_, _, e := syscall.AllThreadsSyscall(unix.SYS_CAPSET, uintptr(unsafe.Pointer(&hdr)), uintptr(unsafe.Pointer(&data[0])), 0)
	if e != 0 {
		return fmt.Errorf("jail: capset: %w", e)
	}
	return nil
}
