package seccomp

import (
	"encoding/binary"
	"os"
	"testing"

	bpf "github.com/elastic/go-seccomp-bpf"
	"github.com/elastic/go-seccomp-bpf/arch"
	netbpf "golang.org/x/net/bpf"
	"golang.org/x/sys/unix"
)

// The filters' decisions on calls' arguments, run in x/net/bpf's
// simulator on a seccomp_data (its loads are big-endian, so each 32-bit
// word is written big-endian where go-seccomp-bpf's little-endian
// offsets read it). Most refused cases were found by the session 9
// review, allowed before.

func decide(t *testing.T, p Profile, nr int, args ...uint64) uint32 {
	t.Helper()
	policy, err := p.policy()
	if err != nil {
		t.Fatal(err)
	}
	prog, err := policy.Assemble()
	if err != nil {
		t.Fatal(err)
	}
	vm, err := netbpf.NewVM(prog)
	if err != nil {
		t.Fatal(err)
	}
	info, _ := arch.GetInfo("")
	data := make([]byte, 64)
	binary.BigEndian.PutUint32(data[0:], uint32(nr))
	binary.BigEndian.PutUint32(data[4:], uint32(info.ID))
	for i, a := range args {
		binary.BigEndian.PutUint32(data[16+8*i:], uint32(a))
		binary.BigEndian.PutUint32(data[16+8*i+4:], uint32(a>>32))
	}
	r, err := vm.Run(data)
	if err != nil {
		t.Fatal(err)
	}
	return uint32(r)
}

// TestFilterDecisions: calls a compromised VMM could use are refused by
// their arguments, and the same calls as the VMM makes them pass.
func TestFilterDecisions(t *testing.T) {
	allow := uint32(bpf.ActionAllow)
	// Sanity: the simulator agrees with the lists.
	if decide(t, VMM, unix.SYS_READ) != allow || decide(t, VMM, unix.SYS_EXECVE) == allow ||
		decide(t, VMM, unix.SYS_SOCKET, unix.AF_INET) == allow || decide(t, VMM, unix.SYS_SOCKET, unix.AF_UNIX) != allow {
		t.Fatal("the simulator does not agree with the filter's lists")
	}
	thread := uint64(unix.CLONE_VM | unix.CLONE_FS | unix.CLONE_FILES | unix.CLONE_SIGHAND | unix.CLONE_THREAD | unix.CLONE_SYSVSEM)
	minus1 := ^uint64(0)
	for _, tc := range []struct {
		name string
		p    Profile
		nr   int
		args []uint64
	}{
		// clone is checked for CLONE_THREAD only: a thread in new
		// network, IPC, UTS or cgroup namespaces passes (root: the
		// runtime's VMM; copy_process refuses only NEWUSER/NEWPID).
		{"clone thread into a new network namespace", RuntimeVMM, unix.SYS_CLONE, []uint64{thread&^unix.CLONE_FS | unix.CLONE_NEWNET | unix.CLONE_NEWNS}},
		// kill(-1, SIGKILL): every process the VMM's user may signal
		// (as root, the runtime's VMM: the whole host but init).
		{"kill(-1, SIGKILL)", RuntimeVMM, unix.SYS_KILL, []uint64{minus1, 9}},
		{"kill(-1) with junk high bits", VMM, unix.SYS_KILL, []uint64{0xdead0000ffffffff, 9}},
		// The 9P server makes no device nodes; mknodat is listed for
		// FIFOs and sockets, but a block device passes.
		{"mknodat S_IFBLK", RuntimeVMM, unix.SYS_MKNODAT, []uint64{uint64(unix.AT_FDCWD & 0xffffffff), 0, unix.S_IFBLK | 0o600, 8 << 8}},
		// AF_NETLINK of any protocol, for a root process: netfilter,
		// audit, uevents, not only NETLINK_ROUTE for the tc teardown.
		{"socket AF_NETLINK NETLINK_NETFILTER", RuntimeVMM, unix.SYS_SOCKET, []uint64{unix.AF_NETLINK, unix.SOCK_RAW, unix.NETLINK_NETFILTER}},
		{"kill(0)", VMM, unix.SYS_KILL, []uint64{0, 9}},
		{"tgkill of another process", VMM, unix.SYS_TGKILL, []uint64{uint64(os.Getpid() + 1), 1, 9}},
		{"fchmodat set-user-ID", VMM, unix.SYS_FCHMODAT, []uint64{0, 0, 0o4755}},
		{"fchmodat set-user-ID", Share, unix.SYS_FCHMODAT, []uint64{0, 0, 0o4755}},
		{"openat O_CREAT set-group-ID", Share, unix.SYS_OPENAT, []uint64{0, 0, unix.O_CREAT | unix.O_WRONLY, 0o2755}},
		{"mknodat a character device", Share, unix.SYS_MKNODAT, []uint64{0, 0, unix.S_IFCHR | 0o644, 0}},
		{"mknodat a regular file", VMM, unix.SYS_MKNODAT, []uint64{0, 0, unix.S_IFREG | 0o644, 0}},
		{"fchmod set-group-ID", RuntimeVMM, unix.SYS_FCHMOD, []uint64{3, 0o2755}},
		{"openat O_CREAT set-user-ID", VMM, unix.SYS_OPENAT, []uint64{0, 0, unix.O_CREAT | unix.O_WRONLY, 0o4755}},
		{"fsetxattr", VMM, unix.SYS_FSETXATTR, nil},
		{"clone without CLONE_THREAD", Usernet, unix.SYS_CLONE, []uint64{uint64(unix.SIGCHLD)}},
	} {
		if decide(t, tc.p, tc.nr, tc.args...) == allow {
			t.Errorf("the %v filter allows %s", tc.p, tc.name)
		}
	}
	for _, tc := range []struct {
		name string
		p    Profile
		nr   int
		args []uint64
	}{
		{"Go's thread clone", VMM, unix.SYS_CLONE, []uint64{thread}},
		{"kill of the helper", VMM, unix.SYS_KILL, []uint64{1234, 9}},
		{"tgkill of its own thread", Usernet, unix.SYS_TGKILL, []uint64{uint64(os.Getpid()), 1, 23}},
		{"fchmodat 0755", VMM, unix.SYS_FCHMODAT, []uint64{0, 0, 0o755}},
		{"mknodat a regular file", Share, unix.SYS_MKNODAT, []uint64{0, 0, unix.S_IFREG | 0o644, 0}},
		{"openat O_RDONLY", VMM, unix.SYS_OPENAT, []uint64{0, 0, unix.O_RDONLY, 0}},
		{"socket AF_NETLINK NETLINK_ROUTE", RuntimeVMM, unix.SYS_SOCKET, []uint64{unix.AF_NETLINK, unix.SOCK_RAW, unix.NETLINK_ROUTE}},
	} {
		if decide(t, tc.p, tc.nr, tc.args...) != allow {
			t.Errorf("the %v filter refuses %s", tc.p, tc.name)
		}
	}
}

// TestFilterRefuses: what the session 9 review checked and found refused in
// every profile (relay included).
func TestFilterRefuses(t *testing.T) {
	allow := uint32(bpf.ActionAllow)
	for _, p := range []Profile{VMM, RuntimeVMM, Usernet, Share, relay} {
		for name, nr := range map[string]int{
			"execve": unix.SYS_EXECVE, "execveat": unix.SYS_EXECVEAT, "fork": unix.SYS_FORK, "vfork": unix.SYS_VFORK,
			"clone3": unix.SYS_CLONE3, "ptrace": unix.SYS_PTRACE, "process_vm_writev": unix.SYS_PROCESS_VM_WRITEV,
			"process_vm_readv": unix.SYS_PROCESS_VM_READV, "pidfd_getfd": unix.SYS_PIDFD_GETFD,
			"open_by_handle_at": unix.SYS_OPEN_BY_HANDLE_AT, "name_to_handle_at": unix.SYS_NAME_TO_HANDLE_AT,
			"setns": unix.SYS_SETNS, "unshare": unix.SYS_UNSHARE, "pivot_root": unix.SYS_PIVOT_ROOT, "chroot": unix.SYS_CHROOT,
			"bpf": unix.SYS_BPF, "perf_event_open": unix.SYS_PERF_EVENT_OPEN, "userfaultfd": unix.SYS_USERFAULTFD,
			"io_uring_setup": unix.SYS_IO_URING_SETUP, "keyctl": unix.SYS_KEYCTL, "add_key": unix.SYS_ADD_KEY,
			"init_module": unix.SYS_INIT_MODULE, "finit_module": unix.SYS_FINIT_MODULE, "kexec_load": unix.SYS_KEXEC_LOAD,
			"reboot": unix.SYS_REBOOT, "personality": unix.SYS_PERSONALITY, "pkey_mprotect": unix.SYS_PKEY_MPROTECT,
			"setuid": unix.SYS_SETUID, "setresuid": unix.SYS_SETRESUID, "capset": unix.SYS_CAPSET,
			"fsopen": unix.SYS_FSOPEN, "open_tree": unix.SYS_OPEN_TREE, "fsmount": unix.SYS_FSMOUNT,
			"mount_setattr": unix.SYS_MOUNT_SETATTR, "seccomp": unix.SYS_SECCOMP, "memfd_create": unix.SYS_MEMFD_CREATE,
			"shmat": unix.SYS_SHMAT, "swapon": unix.SYS_SWAPON, "acct": unix.SYS_ACCT, "quotactl": unix.SYS_QUOTACTL,
			"uselib": unix.SYS_USELIB, "remap_file_pages": unix.SYS_REMAP_FILE_PAGES, "modify_ldt": unix.SYS_MODIFY_LDT,
			"iopl": unix.SYS_IOPL, "ioperm": unix.SYS_IOPERM, "lookup_dcookie": unix.SYS_LOOKUP_DCOOKIE,
		} {
			if decide(t, p, nr) == allow {
				t.Errorf("the %v filter allows %s", p, name)
			}
		}
		// prctl: only PR_SET_VMA (no PR_SET_DUMPABLE, no PR_SET_SECCOMP,
		// no PR_SET_MM, no PR_CAP_AMBIENT).
		for _, op := range []uint64{unix.PR_SET_DUMPABLE, unix.PR_SET_SECCOMP, unix.PR_SET_MM, unix.PR_CAP_AMBIENT, unix.PR_SET_NO_NEW_PRIVS} {
			if decide(t, p, unix.SYS_PRCTL, op) == allow {
				t.Errorf("the %v filter allows prctl %d", p, op)
			}
		}
		// No executable mappings, and no high bits sneaking past.
		if decide(t, p, unix.SYS_MMAP, 0, 4096, unix.PROT_READ|unix.PROT_EXEC) == allow ||
			decide(t, p, unix.SYS_MPROTECT, 0, 4096, unix.PROT_EXEC) == allow {
			t.Errorf("the %v filter allows PROT_EXEC", p)
		}
		// socket: the family's high bits are checked too.
		if decide(t, p, unix.SYS_SOCKET, 1<<32|unix.AF_UNIX) == allow {
			t.Errorf("the %v filter allows socket with high bits over AF_UNIX", p)
		}
		// An x32 call number is refused (ENOSYS), never allowed.
		if decide(t, p, unix.SYS_READ|0x40000000) == allow {
			t.Errorf("the %v filter allows x32's read", p)
		}
	}
	// An i386 call (int 0x80 from a 64-bit process) is never allowed:
	// i386's 11 is execve, x86-64's 11 munmap (listed).
	policy, _ := VMM.policy()
	prog, _ := policy.Assemble()
	vm, _ := netbpf.NewVM(prog)
	data := make([]byte, 64)
	binary.BigEndian.PutUint32(data[0:], 11)
	binary.BigEndian.PutUint32(data[4:], unix.AUDIT_ARCH_I386)
	if r, err := vm.Run(data); err != nil || uint32(r) == allow {
		t.Errorf("the VMM filter allows i386's call 11 (execve): %#x %v", r, err)
	}
	// Usernet opens read-only only.
	for _, fl := range []uint64{unix.O_WRONLY, unix.O_RDWR, unix.O_CREAT, unix.O_TRUNC} {
		if decide(t, Usernet, unix.SYS_OPENAT, uint64(unix.AT_FDCWD&0xffffffff), 0, fl) == allow {
			t.Errorf("the user network filter allows openat with flags %#x", fl)
		}
	}
}

// TestShareNoOpenat2: the share server's filter refuses set-ID modes on
// openat (noSetID), but allows openat2, whose mode is in struct open_how
// where no filter can look: openat2(dir, "x", {O_CREAT|O_WRONLY, 04755})
// makes a set-user-ID file in a shared host directory (the jail's
// nosuid bind mount is the helper's view only). devices/share never
// calls openat2 (nor does Go's os package).
func TestShareNoOpenat2(t *testing.T) {
	if decide(t, Share, unix.SYS_OPENAT2) == uint32(bpf.ActionAllow) {
		t.Error("the share server filter allows openat2, which bypasses its set-ID check on openat")
	}
}
