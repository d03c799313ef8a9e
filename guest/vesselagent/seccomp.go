package main

import (
	"errors"
	"os"
	"runtime"
	"sync"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// foreignArches reports which architectures other than its own the
// guest's kernel cannot run system calls of: i386 on an x86_64 kernel
// built without CONFIG_IA32_EMULATION, which has no 32-bit entry (int
// 0x80 faults, 32-bit binaries do not load) and no
// /proc/sys/abi/vsyscall32, which that option registers. Where it cannot
// tell (no sysctl in /proc), it says the kernel runs it.
//
// x32 stays even on a kernel without CONFIG_X86_X32_ABI: its calls come
// through the 64-bit entry and do reach the filter, and a profile that
// lists x32 fails them with ENOSYS where one that does not kills the
// caller (measured with runc 1.5.2).
var foreignArches = sync.OnceValue(func() map[specs.Arch]bool {
	out := map[specs.Arch]bool{}
	if runtime.GOARCH != "amd64" {
		return out
	}
	if _, err := os.Stat("/proc/sys/kernel"); err == nil {
		if _, err := os.Stat("/proc/sys/abi/vsyscall32"); errors.Is(err, os.ErrNotExist) {
			out[specs.ArchX86] = true
		}
	}
	return out
})

// trimArches takes out of a seccomp profile the architectures whose
// system calls the guest's kernel cannot take (foreign). None of their
// calls ever reaches the filter, but runc compiles each listed
// architecture's rules into it for every container: docker's default
// profile lists x86_64, x86 and x32, and each costs its share of runc
// create. A profile that lists only foreign architectures is left alone.
func trimArches(spec *specs.Spec, foreign map[specs.Arch]bool) {
	if spec.Linux == nil || spec.Linux.Seccomp == nil || len(foreign) == 0 {
		return
	}
	s := spec.Linux.Seccomp
	var keep []specs.Arch
	for _, a := range s.Architectures {
		if !foreign[a] {
			keep = append(keep, a)
		}
	}
	if len(keep) > 0 {
		s.Architectures = keep
	}
}
