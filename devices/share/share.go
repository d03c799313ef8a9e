// Package share serves a host directory to a guest over 9P2000.L, as the
// file tree behind github.com/hugelgupf/p9's server (the virtio-9p device
// in devices/virtio carries the messages). It is confined to the
// directory against a hostile guest:
//
//   - every file is an O_PATH descriptor, and a walk opens one name at a
//     time with openat(O_NOFOLLOW) from its parent's descriptor, so a
//     symlink (including one the guest made, pointing at "/") is never
//     followed on the host: the guest's kernel resolves symlinks itself,
//     in its own name space, through Readlink;
//   - names with "/", "." and ".." are refused;
//   - a file is opened for I/O by reopening its own descriptor through
//     /proc/self/fd, and only when it is a regular file or a directory,
//     so device nodes, FIFOs and sockets in the directory are never
//     opened, and the guest cannot create any (Mknod makes regular files
//     only);
//   - an entry the guest makes gets its mode and owner through a
//     descriptor of that entry, never by its name again, so another
//     writer of the directory (a second share of it, another VM, a host
//     user) cannot swap in a symlink for the change to follow;
//   - set-user-ID and set-group-ID bits never reach the host;
//   - a read-only share refuses every change with EROFS;
//   - descriptors are counted against a budget that all shares of one VM
//     draw from (FDBudget), so however many directories a VM shares,
//     its guest cannot exhaust the VMM's descriptors.
//
// Files the guest creates belong to the guest's user and group when the
// VMM runs as root (as with a docker bind mount), else to the VMM's user.
package share

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"sync"
	"sync/atomic"

	"github.com/hugelgupf/p9/fsimpl/templatefs"
	"github.com/hugelgupf/p9/linux"
	"github.com/hugelgupf/p9/p9"
	"golang.org/x/sys/unix"
)

// Share is one shared host directory: a p9.Attacher.
type Share struct {
	root     int // O_PATH descriptor of the directory
	rootDev  uint64
	readOnly bool
	chown    bool // the VMM is root: created files get the guest's owner
	// uid and gid own what the guest creates without naming an owner,
	// with chown: the VMM's when the share was made (root's, also after
	// a jailed VMM dropped to another user).
	uid, gid int

	budget *FDBudget    // shared with the VM's other shares
	fds    atomic.Int64 // descriptors held by the share's files
	closed atomic.Bool
}

// maxSymlink is the longest symlink target Readlink returns.
const maxSymlink = 4096

// FDBudget is how many descriptors the shares of one VM may hold
// together, their roots included. Every share of a VM draws from the
// VM's one budget: a share that would go over it fails with ENFILE, as
// the guest would see on a host out of descriptors.
type FDBudget struct {
	used atomic.Int64
	max  int64
}

// NewFDBudget returns a budget of max descriptors.
func NewFDBudget(max int) *FDBudget { return &FDBudget{max: int64(max)} }

// InUse returns how many descriptors the budget's shares hold.
func (b *FDBudget) InUse() int { return int(b.used.Load()) }

// Max returns the budget's size.
func (b *FDBudget) Max() int { return int(b.max) }

// take counts one descriptor against the budget, or fails with ENFILE.
func (b *FDBudget) take() error {
	if b.used.Add(1) > b.max {
		b.used.Add(-1)
		return linux.ENFILE
	}
	return nil
}

func (b *FDBudget) give() { b.used.Add(-1) }

// Sizing of a VM's budget against RLIMIT_NOFILE (Go raises the soft
// limit to the hard one when the process starts).
const (
	// VMMReserveFDs is what the VMM keeps for its own descriptors:
	// KVM's, eventfds, disks, the network backend, and the vsock
	// device's connections (up to 1152 Unix sockets, and as many again
	// where vessel itself serves the other ends, as `vessel run` does
	// for the agent's streams), with room to spare.
	VMMReserveFDs = 4096
	// MaxVMFDs caps a VM's budget however high the limit: every open
	// file costs host kernel memory.
	MaxVMFDs = 65536
)

// VMFDs is the budget for the shares of one VM in a process whose
// RLIMIT_NOFILE is nofile: what VMMReserveFDs leaves, at most MaxVMFDs,
// and at least a quarter of nofile where the limit is too low to keep
// the whole reserve (the VMM keeps the other three quarters).
func VMFDs(nofile uint64) int {
	n := int64(min(nofile, 1<<40))
	fds := max(n-VMMReserveFDs, n/4)
	return int(min(fds, MaxVMFDs))
}

// New opens dir to share it, its descriptors counted against fds, the
// budget of the VM's shares. The path itself is the host user's and may
// contain symlinks; everything below it is confined. Files the guest
// creates get the guest's owner when this process is root.
func New(dir string, readOnly bool, fds *FDBudget) (*Share, error) {
	fd, err := unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("share %s: %w", dir, err)
	}
	owner := Owner{Chown: os.Geteuid() == 0, UID: os.Geteuid(), GID: os.Getegid()}
	s, err := FromFD(fd, dir, readOnly, owner, fds)
	if err != nil {
		unix.Close(fd)
	}
	return s, err
}

// Owner says who owns the files the guest creates.
type Owner struct {
	// Chown gives them the guest's user and group (the server needs
	// CAP_CHOWN), and UID and GID when the guest names none, as a
	// root file server does; without it they are the server's.
	Chown    bool
	UID, GID int
}

// FromFD shares the directory open at fd (O_PATH is enough), named name
// in errors, its descriptors counted against fds; the share owns fd once
// it returns without an error.
func FromFD(fd int, name string, readOnly bool, owner Owner, fds *FDBudget) (*Share, error) {
	if err := fds.take(); err != nil {
		return nil, fmt.Errorf("share %s: the VM's shares hold %d descriptors: %w", name, fds.Max(), err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		fds.give()
		return nil, fmt.Errorf("share %s: %w", name, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFDIR {
		fds.give()
		return nil, fmt.Errorf("share %s: %w", name, unix.ENOTDIR)
	}
	// Files are reopened through /proc/self/fd: make sure that works.
	if _, err := os.Stat(procPath(fd)); err != nil {
		fds.give()
		return nil, fmt.Errorf("share %s: /proc/self/fd is needed: %w", name, err)
	}
	if !owner.Chown {
		owner.UID, owner.GID = os.Geteuid(), os.Getegid()
	}
	return &Share{root: fd, rootDev: st.Dev, readOnly: readOnly, chown: owner.Chown, uid: owner.UID, gid: owner.GID, budget: fds}, nil
}

// Close releases the directory. Files the server still holds keep their
// own descriptors until it closes them.
func (s *Share) Close() error {
	if s.closed.Swap(true) {
		return nil
	}
	s.budget.give()
	return unix.Close(s.root)
}

// Attach implements p9.Attacher: the root of the share.
func (s *Share) Attach() (p9.File, error) {
	if s.closed.Load() {
		return nil, linux.EBADF
	}
	return s.dup(s.root, unix.S_IFDIR)
}

// acquire counts one descriptor against the VM's budget.
func (s *Share) acquire() error {
	if err := s.budget.take(); err != nil {
		return err
	}
	s.fds.Add(1)
	return nil
}

func (s *Share) release() {
	s.fds.Add(-1)
	s.budget.give()
}

// OpenFiles returns how many descriptors the share holds, its root's
// included.
func (s *Share) OpenFiles() int { return int(s.fds.Load()) + 1 }

// dup returns a new file for the same inode as fd.
func (s *Share) dup(fd int, mode uint32) (*file, error) {
	if err := s.acquire(); err != nil {
		return nil, err
	}
	nfd, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		s.release()
		return nil, err
	}
	return &file{s: s, fd: nfd, mode: mode}, nil
}

// openAt opens name below dir without following a symlink, as an O_PATH
// descriptor, and returns it with its status.
func (s *Share) openAt(dir int, name string) (*file, unix.Stat_t, error) {
	var st unix.Stat_t
	if err := checkName(name); err != nil {
		return nil, st, err
	}
	if err := s.acquire(); err != nil {
		return nil, st, err
	}
	fd, err := unix.Openat(dir, name, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err == nil {
		err = unix.Fstat(fd, &st)
		if err != nil {
			unix.Close(fd)
		}
	}
	if err != nil {
		s.release()
		return nil, st, err
	}
	return &file{s: s, fd: fd, mode: st.Mode & unix.S_IFMT}, st, nil
}

// qid names an inode for the guest. Inode numbers of other file systems
// mounted below the share are mixed with their device number, so they do
// not collide with the share's own.
func (s *Share) qid(st *unix.Stat_t) p9.QID {
	path := st.Ino
	if st.Dev != s.rootDev {
		path ^= st.Dev << 48
	}
	return p9.QID{Type: p9.FileMode(st.Mode).QIDType(), Path: path}
}

// checkName refuses anything but one plain path component.
func checkName(name string) error {
	if name == "" || name == "." || name == ".." {
		return linux.EINVAL
	}
	for i := 0; i < len(name); i++ {
		if name[i] == '/' || name[i] == 0 {
			return linux.EINVAL
		}
	}
	return nil
}

// procPath is the /proc path that reopens descriptor fd.
func procPath(fd int) string { return "/proc/self/fd/" + strconv.Itoa(fd) }

// file is one walked-to file: an O_PATH descriptor, and after Open or
// Create a second descriptor open for I/O.
type file struct {
	p9.DefaultWalkGetAttr
	templatefs.XattrUnimplemented
	templatefs.NoopRenamed

	s    *Share
	fd   int
	mode uint32 // S_IFMT bits when walked to

	mu   sync.Mutex // the fields below
	open *os.File
	dir  dirCursor
}

var _ p9.File = (*file)(nil)

func (f *file) isDir() bool { return f.mode == unix.S_IFDIR }

// writable fails on a read-only share.
func (f *file) writable() error {
	if f.s.readOnly {
		return linux.EROFS
	}
	return nil
}

// Walk implements p9.File: one name at a time, never following symlinks.
func (f *file) Walk(names []string) ([]p9.QID, p9.File, error) {
	if len(names) == 0 {
		nf, err := f.s.dup(f.fd, f.mode)
		if err != nil {
			return nil, nil, err
		}
		return nil, nf, nil
	}
	qids := make([]p9.QID, 0, len(names))
	cur := f
	for _, name := range names {
		next, st, err := f.s.openAt(cur.fd, name)
		if cur != f {
			cur.Close()
		}
		if err != nil {
			return nil, nil, err
		}
		qids = append(qids, f.s.qid(&st))
		cur = next
	}
	return qids, cur, nil
}

// GetAttr implements p9.File.
func (f *file) GetAttr(req p9.AttrMask) (p9.QID, p9.AttrMask, p9.Attr, error) {
	var st unix.Stat_t
	if err := unix.Fstat(f.fd, &st); err != nil {
		return p9.QID{}, p9.AttrMask{}, p9.Attr{}, err
	}
	attr := p9.Attr{
		Mode:             p9.FileMode(st.Mode),
		UID:              p9.UID(st.Uid),
		GID:              p9.GID(st.Gid),
		NLink:            p9.NLink(st.Nlink),
		RDev:             p9.Dev(st.Rdev),
		Size:             uint64(st.Size),
		BlockSize:        uint64(st.Blksize),
		Blocks:           uint64(st.Blocks),
		ATimeSeconds:     uint64(st.Atim.Sec),
		ATimeNanoSeconds: uint64(st.Atim.Nsec),
		MTimeSeconds:     uint64(st.Mtim.Sec),
		MTimeNanoSeconds: uint64(st.Mtim.Nsec),
		CTimeSeconds:     uint64(st.Ctim.Sec),
		CTimeNanoSeconds: uint64(st.Ctim.Nsec),
	}
	valid := p9.AttrMask{Mode: true, NLink: true, UID: true, GID: true, RDev: true, ATime: true,
		MTime: true, CTime: true, INo: true, Size: true, Blocks: true}
	return f.s.qid(&st), valid, attr, nil
}

// SetAttr implements p9.File: chown, chmod (without set-ID bits),
// truncate and utimes. Changed only by the kernel, CTime is ignored.
func (f *file) SetAttr(valid p9.SetAttrMask, attr p9.SetAttr) error {
	if err := f.writable(); err != nil {
		return err
	}
	if valid.UID || valid.GID {
		uid, gid := -1, -1
		if valid.UID {
			uid = int(attr.UID)
		}
		if valid.GID {
			gid = int(attr.GID)
		}
		if err := unix.Fchownat(f.fd, "", uid, gid, unix.AT_EMPTY_PATH|unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return err
		}
	}
	// The remaining changes go through /proc/self/fd, which would follow
	// a symlink: Linux has no such changes for symlinks anyway.
	if (valid.Permissions || valid.Size || valid.ATime || valid.MTime) && f.mode == unix.S_IFLNK {
		return linux.EOPNOTSUPP
	}
	if valid.Permissions {
		if err := chmodFD(f.fd, uint32(attr.Permissions&0o1777)); err != nil {
			return err
		}
	}
	if valid.Size {
		if f.isDir() {
			return linux.EISDIR
		}
		if f.mode != unix.S_IFREG {
			return linux.EINVAL
		}
		if err := unix.Truncate(procPath(f.fd), int64(attr.Size)); err != nil {
			return err
		}
	}
	if valid.ATime || valid.MTime {
		ts := [2]unix.Timespec{{Nsec: unix.UTIME_OMIT}, {Nsec: unix.UTIME_OMIT}}
		if valid.ATime {
			ts[0] = timespec(valid.ATimeNotSystemTime, attr.ATimeSeconds, attr.ATimeNanoSeconds)
		}
		if valid.MTime {
			ts[1] = timespec(valid.MTimeNotSystemTime, attr.MTimeSeconds, attr.MTimeNanoSeconds)
		}
		if err := unix.UtimesNanoAt(unix.AT_FDCWD, procPath(f.fd), ts[:], 0); err != nil {
			return err
		}
	}
	return nil
}

// timespec is a time the guest set, or now.
func timespec(given bool, sec, nsec uint64) unix.Timespec {
	if !given {
		return unix.Timespec{Nsec: unix.UTIME_NOW}
	}
	return unix.Timespec{Sec: int64(sec), Nsec: int64(nsec)}
}

// Close implements p9.File.
func (f *file) Close() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	var err error
	if f.open != nil {
		err = f.open.Close()
		f.open = nil
		f.s.release()
	}
	if f.fd >= 0 {
		if cerr := unix.Close(f.fd); err == nil {
			err = cerr
		}
		f.fd = -1
		f.s.release()
	}
	return err
}

// Open flags the guest may ask for, besides the access mode (9P2000.L
// sends Linux's generic open flags, which are x86's).
const openFlagsKept = unix.O_TRUNC | unix.O_APPEND

// Open implements p9.File: a regular file or directory is reopened
// through its own descriptor; nothing else is opened on the host.
func (f *file) Open(flags p9.OpenFlags) (p9.QID, uint32, error) {
	acc := int(flags) & unix.O_ACCMODE
	if acc == unix.O_ACCMODE {
		return p9.QID{}, 0, linux.EINVAL
	}
	if acc != unix.O_RDONLY || int(flags)&unix.O_TRUNC != 0 {
		if err := f.writable(); err != nil {
			return p9.QID{}, 0, err
		}
	}
	osFlags := acc | int(flags)&openFlagsKept
	switch f.mode {
	case unix.S_IFREG:
	case unix.S_IFDIR:
		osFlags = unix.O_RDONLY | unix.O_DIRECTORY
	case unix.S_IFLNK:
		return p9.QID{}, 0, linux.ELOOP
	default:
		return p9.QID{}, 0, linux.EPERM
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.open != nil {
		return p9.QID{}, 0, linux.EINVAL
	}
	if err := f.s.acquire(); err != nil {
		return p9.QID{}, 0, err
	}
	fd, err := unix.Open(procPath(f.fd), osFlags|unix.O_CLOEXEC|unix.O_NOCTTY|unix.O_LARGEFILE, 0)
	if err != nil {
		f.s.release()
		return p9.QID{}, 0, err
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		f.s.release()
		return p9.QID{}, 0, err
	}
	f.open = os.NewFile(uintptr(fd), "")
	return f.s.qid(&st), 0, nil
}

// ioFD returns the descriptor open for I/O.
func (f *file) ioFD() (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.open == nil {
		return -1, linux.EBADF
	}
	return int(f.open.Fd()), nil
}

// ReadAt implements p9.File.
func (f *file) ReadAt(p []byte, off int64) (int, error) {
	fd, err := f.ioFD()
	if err != nil {
		return 0, err
	}
	for {
		n, err := unix.Pread(fd, p, off)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return 0, err
		}
		return n, nil
	}
}

// WriteAt implements p9.File.
func (f *file) WriteAt(p []byte, off int64) (int, error) {
	if err := f.writable(); err != nil {
		return 0, err
	}
	fd, err := f.ioFD()
	if err != nil {
		return 0, err
	}
	done := 0
	for done < len(p) {
		n, err := unix.Pwrite(fd, p[done:], off+int64(done))
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			if done > 0 {
				return done, nil
			}
			return 0, err
		}
		if n == 0 {
			break
		}
		done += n
	}
	return done, nil
}

// FSync implements p9.File.
func (f *file) FSync() error {
	fd, err := f.ioFD()
	if err != nil {
		return nil // nothing written through this file
	}
	return unix.Fsync(fd)
}

// Lock implements p9.File. Locks stay the guest kernel's own, which takes
// them before it asks: the host does not take them (as QEMU's 9p server).
func (f *file) Lock(int, p9.LockType, p9.LockFlags, uint64, uint64, string) (p9.LockStatus, error) {
	return p9.LockStatusOK, nil
}

// StatFS implements p9.File.
func (f *file) StatFS() (p9.FSStat, error) {
	var st unix.Statfs_t
	if err := unix.Fstatfs(f.fd, &st); err != nil {
		return p9.FSStat{}, err
	}
	return p9.FSStat{
		Type:            uint32(st.Type),
		BlockSize:       uint32(st.Bsize),
		Blocks:          st.Blocks,
		BlocksFree:      st.Bfree,
		BlocksAvailable: st.Bavail,
		Files:           st.Files,
		FilesFree:       st.Ffree,
		FSID:            uint64(uint32(st.Fsid.Val[0])) | uint64(uint32(st.Fsid.Val[1]))<<32,
		NameLength:      uint32(st.Namelen),
	}, nil
}

// dirFD returns the descriptor of f, which must be a directory.
func (f *file) dirFD() (int, error) {
	if !f.isDir() {
		return -1, linux.ENOTDIR
	}
	return f.fd, nil
}

// changeIn checks a change to entry name of directory f and returns the
// directory's descriptor.
func (f *file) changeIn(name string) (int, error) {
	if err := f.writable(); err != nil {
		return -1, err
	}
	dir, err := f.dirFD()
	if err != nil {
		return -1, err
	}
	return dir, checkName(name)
}

// owner is a guest's user or group as a chown argument: -1 keeps it.
func owner(id uint32) int {
	if id == uint32(p9.NoUID) {
		return -1
	}
	return int(id)
}

// chmodFD sets the permissions of fd's inode. fd may be an O_PATH
// descriptor, which fchmod refuses: /proc/self/fd/N names the inode fd
// holds, not a path looked up again, so a rename or a symlink put in
// its place cannot redirect the change. fd must not be a symlink (the
// magic link would lead to the symlink, which chmod follows).
func chmodFD(fd int, perm uint32) error {
	return unix.Fchmodat(unix.AT_FDCWD, procPath(fd), perm, 0)
}

// finish gives the inode of fd, an entry just made, the permissions the
// guest asked for (the guest applied its umask, the host's must not
// apply again; a symlink has none) and, when the VMM is root, the
// guest's owner (the VMM's first user where the guest names none). It works through the descriptor only: a name looked up
// again could by now be a symlink to a host file outside the share,
// swapped in by another writer of the directory (a second share of it,
// another VM, a host user).
func (f *file) finish(fd int, name string, kind uint32, perm p9.FileMode, uid p9.UID, gid p9.GID) error {
	if kind != unix.S_IFLNK {
		if err := chmodFD(fd, uint32(perm&0o1777)); err != nil {
			return fmt.Errorf("share: chmod %q: %w", name, err)
		}
	}
	if f.s.chown {
		u, g := owner(uint32(uid)), owner(uint32(gid))
		if u == -1 {
			u = f.s.uid
		}
		if g == -1 {
			g = f.s.gid
		}
		if err := unix.Fchownat(fd, "", u, g, unix.AT_EMPTY_PATH|unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return fmt.Errorf("share: chown %q: %w", name, err)
		}
	}
	return nil
}

// removeMade removes name from dir after a failure, if it is still the
// inode st describes: another writer may have put something else there
// (which is theirs to keep). rmFlag is unlinkat's flag for its kind.
// A swap between the check and the unlink is still possible, but
// unlinkat removes an entry of this directory and never follows it:
// nothing outside the share is at stake.
func removeMade(dir int, name string, st *unix.Stat_t, rmFlag int) {
	var now unix.Stat_t
	if unix.Fstatat(dir, name, &now, unix.AT_SYMLINK_NOFOLLOW) == nil && now.Dev == st.Dev && now.Ino == st.Ino {
		unix.Unlinkat(dir, name, rmFlag)
	}
}

// makeEntry calls mk to make name below dir as a kind (S_IFDIR or S_IFLNK)
// entry, opens it without following it, and finishes it (see finish).
// When another writer of the directory has put something of another
// kind in its place, it fails with EEXIST and leaves that alone. The
// descriptor it needs for a moment is counted before anything is made.
func (f *file) makeEntry(dir int, name string, kind uint32, mk func() error, perm p9.FileMode, uid p9.UID, gid p9.GID) (p9.QID, error) {
	if err := f.s.acquire(); err != nil {
		return p9.QID{}, err
	}
	defer f.s.release()
	if err := mk(); err != nil {
		return p9.QID{}, err
	}
	flags := unix.O_PATH | unix.O_NOFOLLOW | unix.O_CLOEXEC
	if kind == unix.S_IFDIR {
		flags |= unix.O_DIRECTORY
	}
	replaced := func() error { return fmt.Errorf("share: %q was replaced as it was made: %w", name, linux.EEXIST) }
	fd, err := unix.Openat(dir, name, flags, 0)
	if errors.Is(err, unix.ENOTDIR) || errors.Is(err, unix.ELOOP) {
		return p9.QID{}, replaced()
	}
	if err != nil {
		return p9.QID{}, fmt.Errorf("share: open %q just made: %w", name, err)
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return p9.QID{}, fmt.Errorf("share: stat %q: %w", name, err)
	}
	if st.Mode&unix.S_IFMT != kind {
		return p9.QID{}, replaced()
	}
	if err := f.finish(fd, name, kind, perm, uid, gid); err != nil {
		rmFlag := 0
		if kind == unix.S_IFDIR {
			rmFlag = unix.AT_REMOVEDIR
		}
		removeMade(dir, name, &st, rmFlag)
		return p9.QID{}, err
	}
	if err := unix.Fstat(fd, &st); err != nil {
		return p9.QID{}, fmt.Errorf("share: stat %q: %w", name, err)
	}
	return f.s.qid(&st), nil
}

// createFile makes name below dir as a new regular file, opened with
// flags (besides O_CREAT|O_EXCL|O_NOFOLLOW), and finishes it through
// the descriptor it returns (see finish), counted against the share's
// descriptors. On failure nothing is left: the file is removed unless
// another writer has already put something else in its place.
func (f *file) createFile(dir int, name string, flags int, perm p9.FileMode, uid p9.UID, gid p9.GID) (int, unix.Stat_t, error) {
	var st unix.Stat_t
	if err := f.s.acquire(); err != nil {
		return -1, st, err
	}
	fd, err := unix.Openat(dir, name, flags|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC|unix.O_NOCTTY|unix.O_LARGEFILE, uint32(perm&0o1777))
	if err != nil {
		f.s.release()
		return -1, st, fmt.Errorf("share: create %q: %w", name, err)
	}
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		f.s.release()
		return -1, st, fmt.Errorf("share: stat %q: %w", name, err)
	}
	err = f.finish(fd, name, unix.S_IFREG, perm, uid, gid)
	if err == nil {
		if err = unix.Fstat(fd, &st); err != nil {
			err = fmt.Errorf("share: stat %q: %w", name, err)
		}
	}
	if err != nil {
		removeMade(dir, name, &st, 0)
		unix.Close(fd)
		f.s.release()
		return -1, st, err
	}
	return fd, st, nil
}

// Create implements p9.File: a new regular file, opened.
func (f *file) Create(name string, flags p9.OpenFlags, perm p9.FileMode, uid p9.UID, gid p9.GID) (p9.File, p9.QID, uint32, error) {
	dir, err := f.changeIn(name)
	if err != nil {
		return nil, p9.QID{}, 0, err
	}
	acc := int(flags) & unix.O_ACCMODE
	if acc == unix.O_ACCMODE {
		return nil, p9.QID{}, 0, linux.EINVAL
	}
	fd, st, err := f.createFile(dir, name, acc|int(flags)&openFlagsKept, perm, uid, gid)
	if err != nil {
		return nil, p9.QID{}, 0, err
	}
	nf, err := f.s.dup(fd, unix.S_IFREG)
	if err != nil {
		removeMade(dir, name, &st, 0)
		unix.Close(fd)
		f.s.release()
		return nil, p9.QID{}, 0, err
	}
	nf.open = os.NewFile(uintptr(fd), "")
	return nf, f.s.qid(&st), 0, nil
}

// Mkdir implements p9.File.
func (f *file) Mkdir(name string, perm p9.FileMode, uid p9.UID, gid p9.GID) (p9.QID, error) {
	dir, err := f.changeIn(name)
	if err != nil {
		return p9.QID{}, err
	}
	mk := func() error {
		if err := unix.Mkdirat(dir, name, uint32(perm&0o1777)); err != nil {
			return fmt.Errorf("share: mkdir %q: %w", name, err)
		}
		return nil
	}
	return f.makeEntry(dir, name, unix.S_IFDIR, mk, perm, uid, gid)
}

// Symlink implements p9.File: the target is stored as given; only the
// guest ever follows it.
func (f *file) Symlink(target, name string, uid p9.UID, gid p9.GID) (p9.QID, error) {
	dir, err := f.changeIn(name)
	if err != nil {
		return p9.QID{}, err
	}
	if len(target) == 0 || len(target) >= maxSymlink {
		return p9.QID{}, linux.EINVAL
	}
	mk := func() error {
		if err := unix.Symlinkat(target, dir, name); err != nil {
			return fmt.Errorf("share: symlink %q: %w", name, err)
		}
		return nil
	}
	return f.makeEntry(dir, name, unix.S_IFLNK, mk, 0, uid, gid)
}

// Link implements p9.File: a hard link to a regular file of this share.
func (f *file) Link(target p9.File, name string) error {
	dir, err := f.changeIn(name)
	if err != nil {
		return err
	}
	t, ok := target.(*file)
	if !ok || t.s != f.s {
		return linux.EXDEV
	}
	if t.mode != unix.S_IFREG {
		return linux.EPERM
	}
	return unix.Linkat(unix.AT_FDCWD, procPath(t.fd), dir, name, unix.AT_SYMLINK_FOLLOW)
}

// Mknod implements p9.File: regular files only; device nodes, FIFOs and
// sockets are refused.
func (f *file) Mknod(name string, mode p9.FileMode, _, _ uint32, uid p9.UID, gid p9.GID) (p9.QID, error) {
	dir, err := f.changeIn(name)
	if err != nil {
		return p9.QID{}, err
	}
	if mode.FileType() != p9.ModeRegular && mode.FileType() != 0 {
		return p9.QID{}, linux.EPERM
	}
	fd, st, err := f.createFile(dir, name, unix.O_RDONLY, mode, uid, gid)
	if err != nil {
		return p9.QID{}, err
	}
	unix.Close(fd)
	f.s.release()
	return f.s.qid(&st), nil
}

// Rename implements p9.File. Linux's client uses RenameAt and falls back
// to Rename only when that is not supported.
func (f *file) Rename(p9.File, string) error { return linux.EOPNOTSUPP }

// RenameAt implements p9.File.
func (f *file) RenameAt(oldName string, newDir p9.File, newName string) error {
	if err := f.writable(); err != nil {
		return err
	}
	nd, ok := newDir.(*file)
	if !ok || nd.s != f.s {
		return linux.EXDEV
	}
	from, err := f.dirFD()
	if err != nil {
		return err
	}
	to, err := nd.dirFD()
	if err != nil {
		return err
	}
	if err := checkName(oldName); err != nil {
		return err
	}
	if err := checkName(newName); err != nil {
		return err
	}
	return unix.Renameat(from, oldName, to, newName)
}

// UnlinkAt implements p9.File.
func (f *file) UnlinkAt(name string, flags uint32) error {
	dir, err := f.changeIn(name)
	if err != nil {
		return err
	}
	return unix.Unlinkat(dir, name, int(flags)&unix.AT_REMOVEDIR)
}

// Readlink implements p9.File.
func (f *file) Readlink() (string, error) {
	if f.mode != unix.S_IFLNK {
		return "", linux.EINVAL
	}
	buf := make([]byte, maxSymlink)
	n, err := unix.Readlinkat(f.fd, "", buf)
	if err != nil {
		return "", err
	}
	return string(buf[:n]), nil
}

// dirCursor remembers where the last Readdir stopped, so reading a
// directory in order costs one pass. Offsets are entry indexes: entry i
// carries offset i+1, the offset to continue after it.
type dirCursor struct {
	pos     uint64   // index of pending[0]
	pending []string // names read from the host but not yet returned
	eof     bool
}

// direntSize is the size of one entry in Rreaddir: qid[13] offset[8]
// type[1] name[s].
func direntSize(name string) uint64 { return 13 + 8 + 1 + 2 + uint64(len(name)) }

// Readdir implements p9.File: entries from offset that fit in count
// bytes, without "." and "..".
func (f *file) Readdir(offset uint64, count uint32) (p9.Dirents, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.open == nil || !f.isDir() {
		return nil, linux.EBADF
	}
	c := &f.dir
	if offset < c.pos {
		if _, err := f.open.Seek(0, 0); err != nil {
			return nil, err
		}
		*c = dirCursor{}
	}
	var out p9.Dirents
	var used uint64
	dir := int(f.open.Fd())
	for {
		if len(c.pending) == 0 {
			if c.eof {
				return out, nil
			}
			names, err := f.open.Readdirnames(64)
			if len(names) == 0 {
				if err != nil && !errors.Is(err, io.EOF) {
					return out, err
				}
				c.eof = true
				continue
			}
			c.pending = names
		}
		name := c.pending[0]
		if c.pos < offset {
			c.pending = c.pending[1:]
			c.pos++
			continue
		}
		if used+direntSize(name) > uint64(count) {
			return out, nil
		}
		var st unix.Stat_t
		if err := unix.Fstatat(dir, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			// Removed since it was listed: skip it.
			c.pending = c.pending[1:]
			c.pos++
			continue
		}
		q := f.s.qid(&st)
		c.pending = c.pending[1:]
		c.pos++
		out = append(out, p9.Dirent{QID: q, Type: q.Type, Offset: c.pos, Name: name})
		used += direntSize(name)
	}
}
