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
		{"mknodat a regular file", VMM, unix.SYS_MKNODAT, []uint64{0, 0, unix.S_IFREG | 0o644, 0}},
		{"openat O_RDONLY", VMM, unix.SYS_OPENAT, []uint64{0, 0, unix.O_RDONLY, 0}},
		{"socket AF_NETLINK NETLINK_ROUTE", RuntimeVMM, unix.SYS_SOCKET, []uint64{unix.AF_NETLINK, unix.SOCK_RAW, unix.NETLINK_ROUTE}},
	} {
		if decide(t, tc.p, tc.nr, tc.args...) != allow {
			t.Errorf("the %v filter refuses %s", tc.p, tc.name)
		}
	}
}
