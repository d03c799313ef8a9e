// Package seccomp confines vessel's host processes with seccomp-bpf
// allow-lists, as Firecracker's filters do: a VMM process, once its VM is
// built and about to run, may make only the system calls a running VM
// needs, and the user network's helper only those of a network stack.
// A call outside the list stops the process (SECCOMP_RET_TRAP: Go's
// runtime dies of the SIGSYS with exit status 2), and a relay process
// that holds its standard error turns the runtime's crash report into one
// line naming the call (see relay.go).
//
// The filters are installed with SECCOMP_FILTER_FLAG_TSYNC on every
// thread of the process and no_new_privs, through
// github.com/elastic/go-seccomp-bpf. VESSEL_SECCOMP=off skips them (for
// debugging a filter; documented in the README).
package seccomp

import (
	"fmt"
	"os"
	"runtime"

	bpf "github.com/elastic/go-seccomp-bpf"
	"golang.org/x/sys/unix"

	"github.com/vesselvm/vessel/kvm"
)

// Profile names an allow-list.
type Profile int

const (
	// VMM is a running VM's process: vessel vm run's and vessel run's.
	VMM Profile = iota
	// RuntimeVMM is vessel-runtime's VMM process: VMM, plus the pod
	// share's mounts (a pod's containers are attached while it runs)
	// and the netlink socket that takes the namespace's tc redirects
	// down at the end.
	RuntimeVMM
	// Usernet is the vessel-usernet helper: a user-space network stack
	// on its socketpair and the host's TCP and UDP sockets.
	Usernet
	// Share is the vessel-share helper: the 9P file server of a VM's
	// shares, on its connections from the VMM, making and changing
	// files below the shared directories.
	Share
	// relay is the relay process (relay.go): it reads a pipe and writes
	// descriptors it was given. Its default is an error, not a trap: a
	// call it lacks must not cost the report it exists for.
	relay
)

// String names the profile as its reports do.
func (p Profile) String() string {
	switch p {
	case VMM:
		return "VMM"
	case RuntimeVMM:
		return "VMM"
	case Usernet:
		return "user network helper"
	case Share:
		return "share server"
	case relay:
		return "seccomp relay"
	}
	return fmt.Sprintf("profile %d", int(p))
}

// disabled reports whether VESSEL_SECCOMP=off asks for no filter.
func disabled() bool { return os.Getenv("VESSEL_SECCOMP") == "off" }

// Install installs p's filter on every thread of this process. Call it
// when everything the process opens, binds or starts before it runs is
// done.
func Install(p Profile) error {
	if disabled() {
		return nil
	}
	policy, err := p.policy()
	if err != nil {
		return err
	}
	// Not dumpable: the process's /proc/PID/mem and the like open only
	// with CAP_SYS_PTRACE. A filtered process could otherwise write into
	// the memory of another of its user's processes (its relay, the user
	// network's helper) and run there what its own filter refuses.
	if err := unix.Prctl(unix.PR_SET_DUMPABLE, 0, 0, 0, 0); err != nil {
		return fmt.Errorf("seccomp: PR_SET_DUMPABLE: %w", err)
	}
	f := bpf.Filter{NoNewPrivs: true, Flag: bpf.FilterFlagTSync, Policy: policy}
	// no_new_privs is a thread's: LoadFilter sets it, then installs the
	// filter, in two system calls. Between them the goroutine could move
	// to another thread, whose install the kernel then refuses (EACCES)
	// to a process without CAP_SYS_ADMIN: the user network's helper of
	// an unprivileged or jailed VMM failed so, now and then, under load.
	runtime.LockOSThread()
	err = bpf.LoadFilter(f)
	runtime.UnlockOSThread()
	if err != nil {
		return fmt.Errorf("seccomp: install the %s filter: %w", p, err)
	}
	afterInstall(p)
	return nil
}

// policy is p's allow-list; anything else traps.
func (p Profile) policy() (bpf.Policy, error) {
	var names []string
	var conds []bpf.NameWithConditions
	switch p {
	case VMM, RuntimeVMM:
		names = append(append(names, goRuntime...), vmmCalls...)
		conds = append(conds, ioctls(vmmIoctls())...)
		conds = append(conds, socketFamilies(unix.AF_UNIX)...)
		conds = append(conds, noSetID("openat", "fchmod", "fchmodat", "mkdirat")...)
		// Signals to processes (its user network helper), not to process
		// groups or everyone (pid 0 or negative).
		conds = append(conds, bpf.NameWithConditions{Name: "kill", Conditions: bpf.ArgumentConditions{
			{Argument: 0, Operation: bpf.BitsNotSet, Value: 0x80000000},
			{Argument: 0, Operation: bpf.NotEqual, Value: 0}}})
		if p == RuntimeVMM {
			names = append(names, runtimeVMMCalls...)
			// NETLINK_ROUTE only: the tc redirects' teardown.
			conds = append(conds, bpf.NameWithConditions{Name: "socket", Conditions: bpf.ArgumentConditions{
				{Argument: 0, Operation: bpf.Equal, Value: unix.AF_NETLINK},
				{Argument: 2, Operation: bpf.Equal, Value: unix.NETLINK_ROUTE}}})
		}
	case Usernet:
		names = append(append(names, goRuntime...), usernetCalls...)
		conds = append(conds, socketFamilies(unix.AF_INET, unix.AF_INET6, unix.AF_UNIX)...)
		// Reads only (resolv.conf, hosts): no file is made or changed.
		conds = append(conds, bpf.NameWithConditions{Name: "openat", Conditions: bpf.ArgumentConditions{
			{Argument: 2, Operation: bpf.BitsNotSet, Value: unix.O_WRONLY | unix.O_RDWR | unix.O_CREAT | unix.O_TRUNC}}})
		conds = append(conds, ioctls([]uintptr{unix.TIOCINQ})...)
	case Share:
		names = append(append(names, goRuntime...), shareCalls...)
		// mknodat makes no device node either (the 9P server makes
		// regular files only; S_IFCHR's bit is in S_IFBLK too).
		conds = append(conds, noSetID("openat", "fchmod", "fchmodat", "mkdirat", "mknodat")...)
	case relay:
		names = append(names, goRuntime...)
	default:
		return bpf.Policy{}, fmt.Errorf("seccomp: unknown profile %d", int(p))
	}
	// Threads only: a new process (fork, vfork, clone without
	// CLONE_THREAD) is refused; clone3, which Go's runtime does not use
	// for threads, fails (below).
	// Go's runtime signals its own threads (preemption, crashes) only.
	conds = append(conds, bpf.NameWithConditions{Name: "tgkill", Conditions: bpf.ArgumentConditions{
		{Argument: 0, Operation: bpf.Equal, Value: uint64(os.Getpid())}}})
	// A thread joins no new namespace (clone refuses only a new user or
	// PID namespace for a thread; the others would be unshare's).
	conds = append(conds, bpf.NameWithConditions{Name: "clone", Conditions: bpf.ArgumentConditions{
		{Argument: 0, Operation: bpf.BitsSet, Value: unix.CLONE_THREAD},
		{Argument: 0, Operation: bpf.BitsNotSet, Value: unix.CLONE_NEWNS | unix.CLONE_NEWCGROUP | unix.CLONE_NEWUTS |
			unix.CLONE_NEWIPC | unix.CLONE_NEWUSER | unix.CLONE_NEWPID | unix.CLONE_NEWNET | unix.CLONE_NEWTIME}}})
	// Go's runtime names its anonymous mappings (PR_SET_VMA); no other
	// prctl (no_new_privs stays, the filter cannot be changed).
	conds = append(conds, bpf.NameWithConditions{Name: "prctl", Conditions: bpf.ArgumentConditions{
		{Argument: 0, Operation: bpf.Equal, Value: unix.PR_SET_VMA}}})
	// No new executable mappings.
	for _, name := range []string{"mmap", "mprotect"} {
		conds = append(conds, bpf.NameWithConditions{Name: name, Conditions: bpf.ArgumentConditions{
			{Argument: 2, Operation: bpf.BitsNotSet, Value: unix.PROT_EXEC}}})
	}
	def := bpf.ActionTrap
	if p == relay {
		def = bpf.ActionErrno
	}
	policy := bpf.Policy{
		DefaultAction: def,
		Syscalls: []bpf.SyscallGroup{
			// clone3 fails with ENOSYS, as in docker's default profile:
			// glibc's pthread_create (a cgo or race-detector build's
			// threads) then falls back to clone, which the list checks.
			// A trap would kill such a thread's process with no report.
			{Action: bpf.ActionErrno | bpf.Action(unix.ENOSYS), Names: []string{"clone3"}},
			{Action: bpf.ActionAllow, Names: names},
			{Action: bpf.ActionAllow, NamesWithCondtions: conds},
		},
	}
	if _, err := policy.Assemble(); err != nil {
		return bpf.Policy{}, fmt.Errorf("seccomp: the %s filter: %w", p, err)
	}
	return policy, nil
}

// noSetID allows each of the calls (openat, fchmod, fchmodat, mkdirat,
// mknodat) with no set-user-ID or set-group-ID mode bit: the share server
// never sets them, and keeps CAP_CHOWN and CAP_FOWNER, with which it could
// otherwise chown a file in a shared host directory to root and make it
// set-user-ID. mknodat makes no device node either.
func noSetID(calls ...string) []bpf.NameWithConditions {
	const setID = unix.S_ISUID | unix.S_ISGID
	arg := map[string]uint32{"openat": 3, "fchmod": 1, "fchmodat": 2, "mkdirat": 2, "mknodat": 2}
	var out []bpf.NameWithConditions
	for _, c := range calls {
		bits := uint64(setID)
		if c == "mknodat" {
			bits |= unix.S_IFCHR
		}
		out = append(out, bpf.NameWithConditions{Name: c, Conditions: bpf.ArgumentConditions{
			{Argument: arg[c], Operation: bpf.BitsNotSet, Value: bits}}})
	}
	return out
}

// ioctls allows ioctl with each of the requests.
func ioctls(reqs []uintptr) []bpf.NameWithConditions {
	var out []bpf.NameWithConditions
	for _, r := range reqs {
		out = append(out, bpf.NameWithConditions{Name: "ioctl", Conditions: bpf.ArgumentConditions{
			{Argument: 1, Operation: bpf.Equal, Value: uint64(r)}}})
	}
	return out
}

// socketFamilies allows socket for each of the address families.
func socketFamilies(families ...int) []bpf.NameWithConditions {
	var out []bpf.NameWithConditions
	for _, f := range families {
		out = append(out, bpf.NameWithConditions{Name: "socket", Conditions: bpf.ArgumentConditions{
			{Argument: 0, Operation: bpf.Equal, Value: uint64(f)}}})
	}
	return out
}

// vmmIoctls are a running VMM's ioctl requests: KVM's (kvm.RunningIoctls),
// the TAP device's offloads (set when the guest's driver negotiates
// them), and the console's terminal (raw mode, restored at the end; the
// window size of a container's terminal).
func vmmIoctls() []uintptr {
	return append(kvm.RunningIoctls(),
		unix.TUNSETOFFLOAD,
		unix.TCGETS, unix.TCSETS, unix.TCSETSW, unix.TCSETSF,
		unix.TIOCGWINSZ, unix.TIOCSWINSZ, unix.TIOCINQ)
}

// goRuntime are the calls of Go's runtime and standard library in a
// process that runs goroutines, timers, the network poller and signals,
// and reads and writes descriptors it has.
var goRuntime = []string{
	"read", "write", "readv", "writev", "pread64", "pwrite64", "preadv", "pwritev", "preadv2", "pwritev2",
	"sendfile", "splice", "copy_file_range", // io.Copy between files and sockets
	"close", "close_range", "lseek", "fstat", "newfstatat", "statx", "fcntl", "dup", "dup3", "pipe2",
	"munmap", "madvise", "mremap", "mlock", "munlock", "brk",
	"rt_sigaction", "rt_sigprocmask", "rt_sigreturn", "sigaltstack", "rt_sigtimedwait", "restart_syscall",
	"futex", "nanosleep", "clock_nanosleep", "clock_gettime", "clock_getres", "gettimeofday",
	"sched_yield", "sched_getaffinity", "getpid", "gettid", "getppid", "getuid", "geteuid", "getgid", "getegid",
	"exit", "exit_group",
	"epoll_create1", "epoll_ctl", "epoll_pwait", "epoll_pwait2", "epoll_wait", "eventfd2", "poll", "ppoll",
	"getrandom", "prlimit64", "getrlimit", "uname", "getrusage",
	"timer_create", "timer_settime", "timer_delete", "setitimer",
	// A new thread under glibc (a cgo or race-detector build): its
	// restartable sequences and robust futex list.
	"rseq", "set_robust_list",
}

// vmmCalls are what a running VMM does besides: the devices' I/O on
// their files (block requests, discard, flush), vsock's, the control
// sockets' and the share server's connections, the container's state and
// logs, and waiting for or stopping its helpers at the end. The shares'
// file system calls are the share server's (shareCalls): a VMM makes no
// link, symlink or device node, changes no owner and no time stamp.
var vmmCalls = []string{
	"fsync", "fdatasync", "fallocate", "ftruncate",
	"getdents64", "readlinkat", "unlinkat", "renameat", "renameat2",
	"fstatfs", "statfs", "faccessat", "faccessat2",
	"getcwd", "flock",
	"connect", "accept4", "bind", "listen", "getsockopt", "setsockopt", "getsockname", "getpeername",
	"recvfrom", "sendto", "recvmsg", "sendmsg", "shutdown", "socketpair",
	"wait4", "waitid", "pidfd_open", "pidfd_send_signal",
}

// shareCalls are the share server's besides the runtime's: the 9P
// server's file system calls, confined by descriptor in devices/share
// (a setattr truncates /proc/self/fd/N), and its connections, which
// arrive on its control socket.
var shareCalls = []string{
	"fsync", "fdatasync", "ftruncate", "truncate",
	"getdents64", "readlinkat", "fchown", "fchownat", "unlinkat", "renameat", "renameat2", "symlinkat", "linkat", "utimensat",
	"fgetxattr", "flistxattr", "fstatfs", "statfs", "faccessat", "faccessat2",
	"recvmsg", "shutdown",
	// No openat2: its mode is in a struct the filter cannot read, and
	// would pass the set-ID bits noSetID refuses in openat.
}

// runtimeVMMCalls are vessel-runtime's VMM's besides: attaching and
// detaching a pod's containers below its pod share (pod.go).
var runtimeVMMCalls = []string{
	"mount", "umount2", "move_mount",
}

// usernetCalls are the user network helper's besides the runtime's: its
// socketpair with the VMM, the NAT's TCP and UDP sockets and the
// published ports' listeners it was given.
var usernetCalls = []string{
	"connect", "accept4", "bind", "listen", "getsockopt", "setsockopt", "getsockname", "getpeername",
	"recvfrom", "sendto", "recvmsg", "sendmsg", "recvmmsg", "sendmmsg", "shutdown",
}
