//go:build linux

// Package jail confines a VMM process the way Firecracker's jailer does,
// in two halves.
//
// The host half (Prepare, run by vessel as root) makes an empty per-VM
// directory and, where cgroup v2 is writable, a cgroup with the VM's
// memory and CPU limits, and gives the SysProcAttr that starts the VMM
// process in new mount, PID, IPC and UTS namespaces, born in that cgroup.
// Cleanup removes both once the VMM process is gone.
//
// The VMM half runs in that process: Limits and Mount before it builds
// the VM, Enter once the VM is built, before the guest runs. Mount puts
// a small tmpfs on the directory, with a read-only /proc of the new PID
// namespace and a bind mount of each 9P share's directory, which the VMM
// then opens there. Enter pivot_roots into it and detaches the old root,
// moves the process into an empty network namespace, drops to an
// unprivileged uid and gid with no supplementary groups, keeps only the
// capabilities a 9P share server needs (none without shares), and sets
// no_new_privs. Everything else the VM needs (/dev/kvm, the VM's and
// vCPUs' descriptors, disk images, the kernel already loaded, TAP
// descriptors, the user network's helper) was opened before.
package jail

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vesselvm/vessel/boot"
	"github.com/vesselvm/vessel/internal/cgroup"
)

// Nobody is the uid and gid a jailed VMM runs as unless told otherwise.
const Nobody = 65534

// Cloneflags are the namespaces a jailed VMM process is created in.
const Cloneflags = syscall.CLONE_NEWNS | syscall.CLONE_NEWPID | syscall.CLONE_NEWIPC | syscall.CLONE_NEWUTS

// MemoryOverhead is what the jail's cgroup allows beyond the guest's RAM:
// the VMM's own heap and the user network helper.
const MemoryOverhead = 256 << 20

// vessel's jails' cgroups live in cgroupParent/<name>, beside vessel's
// own cgroup.
const (
	cgroupRoot   = cgroup.Root
	cgroupParent = "vessel-jails"
)

// maxTasks is a jail's pids.max besides a task per vCPU: Go's runtime
// threads and the I/O workers of the VMM, its helpers (the user network,
// the share server: 9P requests blocked in file I/O hold threads too) and
// the relays, with room to spare.
const maxTasks = 512

// Host is the host's side of one jail.
type Host struct {
	// Dir is the jail's private directory (0700) and Root the directory
	// in it that becomes the VMM's root.
	Dir, Root string
	// Cgroup is the jail's cgroup directory, "" when cgroup v2 was not
	// writable (Note says why).
	Cgroup string
	Note   string
	cgfd   *os.File
}

// Prepare makes a jail for a VM of cpus vCPUs and mem bytes of RAM: a
// private directory under base and, if it can, a cgroup. name (letters
// and digits), if not empty, names the jail so that Remove finds it;
// otherwise the name is random.
func Prepare(base, name string, cpus int, mem uint64) (*Host, error) {
	if err := os.MkdirAll(base, 0o700); err != nil {
		return nil, fmt.Errorf("jail: %w", err)
	}
	var dir string
	var err error
	if name == "" {
		dir, err = os.MkdirTemp(base, "jail-")
	} else {
		dir = filepath.Join(base, "jail-"+name)
		err = os.Mkdir(dir, 0o700)
	}
	if err != nil {
		return nil, fmt.Errorf("jail: %w", err)
	}
	h := &Host{Dir: dir, Root: filepath.Join(dir, "root")}
	// The root is reachable only through Dir (0700); once it is the
	// VMM's /, the unprivileged VMM must be able to walk it.
	if err := os.Mkdir(h.Root, 0o755); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("jail: %w", err)
	}
	if err := h.makeCgroup(filepath.Base(dir), cpus, mem); err != nil {
		h.Note = fmt.Sprintf("no cgroup v2 limits for the VMM (%v)", err)
	} else if err := os.WriteFile(filepath.Join(dir, cgroupFile), []byte(h.Cgroup), 0o600); err != nil {
		h.Cleanup()
		return nil, fmt.Errorf("jail: %w", err)
	}
	return h, nil
}

// cgroupFile, in a jail's directory, names its cgroup for Remove.
const cgroupFile = "cgroup"

// Remove removes the jail name under base, left by a vessel process that
// was killed: what is left in its cgroup is killed first. Nothing to
// remove is no error.
func Remove(base, name string) error {
	dir := filepath.Join(base, "jail-"+name)
	h := &Host{Dir: dir}
	if b, err := os.ReadFile(filepath.Join(dir, cgroupFile)); err == nil {
		// Only a group of the form makeCgroup makes, under this jail's
		// name: cgroup.kill in any other would kill what it holds.
		cg := filepath.Clean(string(b))
		if strings.HasPrefix(cg, cgroupRoot+"/") && filepath.Base(cg) == filepath.Base(dir) &&
			filepath.Base(filepath.Dir(cg)) == cgroupParent {
			h.Cgroup = cg
			os.WriteFile(filepath.Join(h.Cgroup, "cgroup.kill"), []byte("1"), 0)
		}
	}
	return h.Cleanup()
}

// makeCgroup makes the jail's cgroup, name in the cgroupParent group
// beside vessel's own (so that limits set above vessel still hold; not
// below it: a group that holds a process, vessel, cannot delegate
// controllers to children, cgroup-v2.rst's "no internal processes"),
// with the VM's memory, CPU and task limits, and opens it for
// CLONE_INTO_CGROUP.
func (h *Host) makeCgroup(name string, cpus int, mem uint64) error {
	if err := cgroup.Writable(cgroup.Root); err != nil {
		return err
	}
	self, err := cgroup.Own()
	if err != nil {
		return err
	}
	cg := filepath.Join(cgroup.Root, filepath.Dir(self), cgroupParent, name)
	if _, err := os.Lstat(cg); err == nil {
		return fmt.Errorf("jail: cgroup %s exists", cg)
	}
	made, err := cgroup.Make(cgroup.Root, cg, []cgroup.Limit{
		{File: "memory.max", Value: strconv.FormatUint(mem+MemoryOverhead, 10)},
		{File: "memory.swap.max", Value: "0", Optional: true},
		{File: "cpu.max", Value: fmt.Sprintf("%d 100000", cpus*100000)},
		// Bounded however many vCPUs were asked for: the VM's own
		// checks, which refuse too many, come later.
		{File: "pids.max", Value: strconv.Itoa(maxTasks + min(cpus, boot.MaxCPUs))},
	})
	if err != nil {
		return err
	}
	if len(made) == 0 || made[len(made)-1] != cg {
		cgroup.Remove(made)
		return fmt.Errorf("jail: cgroup %s exists", cg)
	}
	fd, err := os.Open(cg)
	if err != nil {
		os.Remove(cg)
		return err
	}
	h.Cgroup, h.cgfd = cg, fd
	return nil
}

// SysProcAttr is how the VMM process is started: in new mount, PID, IPC
// and UTS namespaces, in the jail's cgroup if it has one, killed if
// vessel dies.
func (h *Host) SysProcAttr() *syscall.SysProcAttr {
	a := &syscall.SysProcAttr{Cloneflags: Cloneflags, Pdeathsig: syscall.SIGKILL}
	if h.cgfd != nil {
		a.UseCgroupFD, a.CgroupFD = true, int(h.cgfd.Fd())
	}
	return a
}

// Cleanup removes the jail's directory and cgroup; the VMM process must
// be gone (its PID namespace, and so the user network helper in it, ends
// with it).
func (h *Host) Cleanup() error {
	var errs []error
	if h.cgfd != nil {
		h.cgfd.Close()
	}
	if h.Cgroup != "" {
		// The namespace's last processes may still be on their way out.
		var err error
		for i := 0; i < 100; i++ {
			if err = os.Remove(h.Cgroup); err == nil || !errors.Is(err, syscall.EBUSY) {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("jail: remove cgroup: %w", err))
		}
	}
	// The mounts were made in the VMM's own mount namespace and are gone
	// with it; the directories are empty.
	if err := os.RemoveAll(h.Dir); err != nil {
		errs = append(errs, fmt.Errorf("jail: %w", err))
	}
	return errors.Join(errs...)
}

// Spec is what the VMM half needs to know.
type Spec struct {
	// Root is Host.Root.
	Root string
	// Shares are the host directories the VM serves over 9P. Mount binds
	// each into the jail; the VMM opens them there, never by their host
	// paths (see Mount).
	Shares []Share
	// UID and GID the VMM runs as.
	UID, GID int
	// FileCaps keeps CAP_CHOWN, CAP_DAC_OVERRIDE, CAP_FOWNER and
	// CAP_FSETID, which a 9P share server needs to give files the
	// guest's owners and reach files of any owner in the shared
	// directory; without it the VMM keeps no capability.
	FileCaps bool
}

// A Share is a host directory a jailed VMM serves to its guest.
type Share struct {
	Dir      string
	ReadOnly bool
}

// Limits sets the VMM process's rlimits: no core dumps (guest memory),
// at most nofile descriptors. Call it before building the VM, whose
// descriptor budgets follow RLIMIT_NOFILE. Its threads are bounded by its
// cgroup's pids.max, not RLIMIT_NPROC, which counts every process of the
// uid the jails share: one VMM could use up every other's.
func Limits(nofile uint64) error {
	for _, l := range []struct {
		res int
		max uint64
	}{{unix.RLIMIT_CORE, 0}, {unix.RLIMIT_NOFILE, nofile}} {
		var cur unix.Rlimit
		if err := unix.Getrlimit(l.res, &cur); err != nil {
			return fmt.Errorf("jail: getrlimit %d: %w", l.res, err)
		}
		if cur.Max < l.max {
			l.max = cur.Max
		}
		if err := unix.Setrlimit(l.res, &unix.Rlimit{Cur: l.max, Max: l.max}); err != nil {
			return fmt.Errorf("jail: setrlimit %d: %w", l.res, err)
		}
	}
	return nil
}

// sharesDir is where Mount binds the shares, below the jail's root.
const sharesDir = "shares"

// Mount makes the jail's file system in the calling process's new mount
// namespace (the VMM's, created with Cloneflags), before the VMM builds
// its VM: a small tmpfs on s.Root, a read-only /proc of the new PID
// namespace (the 9P server reopens its files through /proc/self/fd; the
// host-wide files below it, sysrq-trigger, irq, sys, stay unwritable
// whatever capabilities the VMM keeps), and each of s.Shares bound at
// shares/N. It returns those bound paths as seen before Enter: the VMM
// opens its shares there. A descriptor opened through the bind mount
// stays in the jail's tree once Enter has detached the host's root: its
// ".." ends at the jail's root, where one opened by the host path would
// climb out into the host's file system.
func Mount(s Spec) ([]string, error) {
	if os.Getpid() != 1 {
		return nil, errors.New("jail: not in a new PID namespace")
	}
	// Nothing made from here on may reach the host's mount namespace.
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return nil, fmt.Errorf("jail: make mounts private: %w", err)
	}
	const flags = unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC
	if err := unix.Mount("vessel-jail", s.Root, "tmpfs", flags, "mode=0755,size=64k,nr_inodes=256"); err != nil {
		return nil, fmt.Errorf("jail: tmpfs on %s: %w", s.Root, err)
	}
	var paths []string
	if len(s.Shares) > 0 {
		if err := os.Mkdir(filepath.Join(s.Root, sharesDir), 0o755); err != nil {
			return nil, fmt.Errorf("jail: %w", err)
		}
	}
	for i, sh := range s.Shares {
		dst := filepath.Join(s.Root, sharesDir, strconv.Itoa(i))
		if err := bindDir(sh.Dir, dst, sh.ReadOnly); err != nil {
			return nil, err
		}
		paths = append(paths, dst)
	}
	proc := filepath.Join(s.Root, "proc")
	if err := os.Mkdir(proc, 0o555); err != nil {
		return nil, fmt.Errorf("jail: %w", err)
	}
	if err := unix.Mount("proc", proc, "proc", flags|unix.MS_RDONLY, ""); err != nil {
		return nil, fmt.Errorf("jail: mount proc: %w", err)
	}
	return paths, nil
}

// Enter confines the calling process to the jail Mount made: it
// pivot_roots into s.Root and detaches the host's root, moves every
// thread into a new, empty network namespace (the host's abstract Unix
// sockets are named per network namespace and checked by no file
// permission), and drops privileges. The VMM's TAP descriptors and the
// user network's helper (started before, in the host's namespace) keep
// working. On error the process must exit: it may be half confined.
func Enter(s Spec) error {
	if err := os.Chdir(s.Root); err != nil {
		return fmt.Errorf("jail: %w", err)
	}
	// pivot_root(".", ".") stacks the old root under the new one, at
	// the same place; detaching "." then takes the old root away (runc
	// does the same, without a directory for the old root).
	if err := unix.PivotRoot(".", "."); err != nil {
		return fmt.Errorf("jail: pivot_root: %w", err)
	}
	if err := unix.Unmount(".", unix.MNT_DETACH); err != nil {
		return fmt.Errorf("jail: detach the old root: %w", err)
	}
	if err := os.Chdir("/"); err != nil {
		return fmt.Errorf("jail: %w", err)
	}
	const flags = unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC
	if err := unix.Mount("", "/", "", unix.MS_REMOUNT|unix.MS_RDONLY|flags, ""); err != nil {
		return fmt.Errorf("jail: make / read-only: %w", err)
	}
	if err := unix.Sethostname([]byte("vessel-jail")); err != nil {
		return fmt.Errorf("jail: sethostname: %w", err)
	}
	if err := newNetns(); err != nil {
		return err
	}
	return dropPrivileges(s.UID, s.GID, s.FileCaps)
}

// newNetns moves every thread of the process into one new network
// namespace. A namespace is a thread's in the kernel: one thread makes
// it, and every thread (Go's runtime has several) joins it by its
// descriptor; threads made later inherit it.
func newNetns() error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
		return fmt.Errorf("jail: new network namespace: %w", err)
	}
	fd, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("jail: new network namespace: %w", err)
	}
	defer unix.Close(fd)
	if _, _, e := syscall.AllThreadsSyscall(unix.SYS_SETNS, uintptr(fd), unix.CLONE_NEWNET, 0); e != 0 {
		return fmt.Errorf("jail: join the new network namespace: %w", e)
	}
	return nil
}

// bindDir binds host directory src at dst (made here), read-only if
// asked, with no set-ID, device or executable files.
func bindDir(src, dst string, readOnly bool) error {
	if !filepath.IsAbs(src) {
		return fmt.Errorf("jail: share %s: not an absolute path", src)
	}
	if err := os.Mkdir(dst, 0o755); err != nil {
		return fmt.Errorf("jail: %w", err)
	}
	if err := unix.Mount(src, dst, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("jail: bind share %s: %w", src, err)
	}
	flags := uintptr(unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC)
	if readOnly {
		flags |= unix.MS_RDONLY
	}
	if err := unix.Mount("", dst, "", unix.MS_REMOUNT|unix.MS_BIND|flags, ""); err != nil {
		return fmt.Errorf("jail: remount share %s: %w", src, err)
	}
	return nil
}

// ShareCaps are the capabilities a 9P share server needs (FileCaps keeps
// them; the VMM's share server, vessel-share, gets them from the VMM).
var ShareCaps = []uintptr{unix.CAP_CHOWN, unix.CAP_DAC_OVERRIDE, unix.CAP_FOWNER, unix.CAP_FSETID}

// dropPrivileges empties the bounding set but for what keep says, drops
// to uid and gid, keeps those capabilities as permitted and effective
// only, and sets no_new_privs, on every thread of the process (Go's
// runtime has many: credentials and these flags are per thread in the
// kernel, so each change goes through syscall.AllThreadsSyscall).
func dropPrivileges(uid, gid int, keep bool) error {
	var kept []uintptr
	if keep {
		kept = ShareCaps
	}
	if err := dropBounding(kept); err != nil {
		return err
	}
	if keep {
		if _, _, e := syscall.AllThreadsSyscall(unix.SYS_PRCTL, unix.PR_SET_KEEPCAPS, 1, 0); e != 0 {
			return fmt.Errorf("jail: PR_SET_KEEPCAPS: %w", e)
		}
	}
	if err := syscall.Setgroups(nil); err != nil {
		return fmt.Errorf("jail: setgroups: %w", err)
	}
	if err := syscall.Setresgid(gid, gid, gid); err != nil {
		return fmt.Errorf("jail: setresgid %d: %w", gid, err)
	}
	if err := syscall.Setresuid(uid, uid, uid); err != nil {
		return fmt.Errorf("jail: setresuid %d: %w", uid, err)
	}
	if keep {
		if err := capsetAllThreads(capSet(kept)); err != nil {
			return err
		}
		if _, _, e := syscall.AllThreadsSyscall(unix.SYS_PRCTL, unix.PR_SET_KEEPCAPS, 0, 0); e != 0 {
			return fmt.Errorf("jail: PR_SET_KEEPCAPS: %w", e)
		}
	}
	if _, _, e := syscall.AllThreadsSyscall(unix.SYS_PRCTL, unix.PR_SET_NO_NEW_PRIVS, 1, 0); e != 0 {
		return fmt.Errorf("jail: PR_SET_NO_NEW_PRIVS: %w", e)
	}
	return nil
}

// RestrictCaps leaves the process at most keep (at most ShareCaps) as its
// permitted and effective capabilities and none inheritable or ambient,
// on every thread; with CAP_SETPCAP (which it then drops) it also empties
// the bounding set but for keep. The share server, started with keep and
// CAP_SETPCAP as ambient capabilities, or as root, or as a user with
// whatever it inherited, calls it first thing.
func RestrictCaps(keep []uintptr) error {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return fmt.Errorf("jail: capget: %w", err)
	}
	if data[0].Effective&(1<<unix.CAP_SETPCAP) != 0 {
		if err := dropBounding(keep); err != nil {
			return err
		}
	}
	if _, _, e := syscall.AllThreadsSyscall(unix.SYS_PRCTL, unix.PR_CAP_AMBIENT, unix.PR_CAP_AMBIENT_CLEAR_ALL, 0); e != 0 {
		return fmt.Errorf("jail: clear the ambient capabilities: %w", e)
	}
	return capsetAllThreads(capSet(keep) & data[0].Permitted)
}

// dropBounding empties every thread's bounding set but for keep.
func dropBounding(keep []uintptr) error {
	kept := map[uintptr]bool{}
	for _, c := range keep {
		kept[c] = true
	}
	last := uintptr(unix.CAP_LAST_CAP)
	if b, err := os.ReadFile("/proc/sys/kernel/cap_last_cap"); err == nil {
		if n, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil {
			last = uintptr(n)
		}
	}
	for c := uintptr(0); c <= last; c++ {
		if kept[c] {
			continue
		}
		if _, _, e := syscall.AllThreadsSyscall(unix.SYS_PRCTL, unix.PR_CAPBSET_DROP, c, 0); e != 0 {
			return fmt.Errorf("jail: drop capability %d from the bounding set: %w", c, e)
		}
	}
	return nil
}

// capSet is the first word of a capability set holding caps (all below
// 32).
func capSet(caps []uintptr) uint32 {
	var set uint32
	for _, c := range caps {
		set |= 1 << c
	}
	return set
}
