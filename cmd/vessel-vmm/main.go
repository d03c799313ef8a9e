// Command vessel-vmm is vessel's jailed VMM process (package
// internal/vmmproc): vessel starts it in the jail it built for one VM,
// sends it the VM's configuration and gets back how the VM ended. It is
// not a command for users: run alone, it says so and exits with status 2.
//
// It is a binary of its own, not a mode of vessel's, to keep the VMM
// small: it maps and runs only the VMM's code (vmm, devices, kvm, boot,
// the jail and the seccomp filter), none of vessel's image store, OCI
// and CLI code, so the process that holds the guest touches a fraction
// of the memory a vessel process does.
package main

import (
	"os"

	"github.com/vesselvm/vessel/internal/seccomp"
	"github.com/vesselvm/vessel/internal/vmmproc"
)

func main() {
	seccomp.RelayMain()
	os.Exit(vmmproc.Main())
}
