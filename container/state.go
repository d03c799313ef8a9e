package container

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/vesselvm/vessel/images/store"
	"github.com/vesselvm/vessel/internal/atomicfile"
)

// Sentinel errors for container lookups.
var (
	// ErrNoContainer: no container has that ID (prefix) or name.
	ErrNoContainer = errors.New("no such container")
	// ErrNameInUse: another container already has the name.
	ErrNameInUse = errors.New("the container name is already in use")
)

// Container statuses.
const (
	StatusCreated = "created"
	StatusRunning = "running"
	StatusExited  = "exited"
)

// State is what vessel records of a container on the host, in
// <StateRoot>/<id>/state.json, for ps, logs, exec, stop and rm. The
// process that runs the container's VM (vessel run, in the foreground
// or detached with -d) keeps it up to date and serves the container's
// control socket (Dir/ctl.sock) while it runs.
type State struct {
	ID       string    `json:"id"`
	Name     string    `json:"name"`
	Image    string    `json:"image"`
	Command  []string  `json:"command"`
	Created  time.Time `json:"created"`
	Status   string    `json:"status"`
	ExitCode int       `json:"exit_code"`
	Finished time.Time `json:"finished,omitempty"`
	// Pid is the vessel process that owns the container (from its
	// creation; it runs the VM), and Socket its control socket
	// (agentproto, relayed to the guest agent), which exists while
	// the container runs.
	Pid int `json:"pid"`
	// PidNS is the PID namespace Pid belongs to (PidNamespace): a
	// process of another one cannot tell whether the owner lives.
	PidNS  string `json:"pid_ns,omitempty"`
	Socket string `json:"socket,omitempty"`
	// Process is the container process's configuration: exec starts
	// from its environment and working directory.
	Process *specs.Process `json:"process"`
	// Remove: the container is removed when it exits (--rm).
	Remove bool `json:"remove,omitempty"`
	// Scratch is the host file of the container's scratch disk
	// (--disk-size), removed with the container.
	Scratch string `json:"scratch,omitempty"`

	dir string
}

// StateRoot returns where container states live, creating it if need
// be: $XDG_RUNTIME_DIR/vessel/containers, or /run/vessel/containers for
// root without XDG_RUNTIME_DIR, or <temporary directory>/vessel-UID/containers.
// Each directory vessel makes there is made 0700 and, found already
// there, refused unless it is a directory (not a symlink) of the
// effective user that no other user can enter: in a shared /tmp another
// user can make vessel-UID first and plant states in it.
func StateRoot() (string, error) {
	return makeStateRoot(stateBase(os.Getenv("XDG_RUNTIME_DIR"), os.Geteuid()))
}

// makeStateRoot makes (or checks) the directories dirs, each below the
// one before, below base, and returns the last.
func makeStateRoot(base string, dirs []string) (string, error) {
	if err := os.MkdirAll(base, 0o700); err != nil {
		return "", fmt.Errorf("container state: %w", err)
	}
	dir := base
	for _, d := range dirs {
		dir = filepath.Join(dir, d)
		if err := PrivateDir(dir); err != nil {
			return "", err
		}
	}
	return dir, nil
}

// stateBase is the directory StateRoot trusts as it is (the user's
// runtime directory, /run, or the temporary directory), given
// XDG_RUNTIME_DIR and the effective user, and the names of the
// directories below it that vessel makes and checks.
func stateBase(runtimeDir string, euid int) (base string, dirs []string) {
	if runtimeDir != "" {
		return runtimeDir, []string{"vessel", "containers"}
	}
	if euid == 0 {
		return "/run", []string{"vessel", "containers"}
	}
	return os.TempDir(), []string{fmt.Sprintf("vessel-%d", euid), "containers"}
}

// PrivateDir makes dir with mode 0700 if it is missing, then checks
// that it is a directory, not a symlink, owned by the effective user,
// with no permissions for group or others.
func PrivateDir(dir string) error {
	if err := os.Mkdir(dir, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("container state: %w", err)
	}
	fi, err := os.Lstat(dir)
	if err != nil {
		return fmt.Errorf("container state: %w", err)
	}
	euid := os.Geteuid()
	switch st, ok := fi.Sys().(*syscall.Stat_t); {
	case fi.Mode()&fs.ModeSymlink != 0:
		return fmt.Errorf("container state: %s is a symlink, not vessel's directory: refusing it", dir)
	case !fi.IsDir():
		return fmt.Errorf("container state: %s is not a directory: refusing it", dir)
	case !ok || int(st.Uid) != euid:
		return fmt.Errorf("container state: %s belongs to another user, not to uid %d: refusing it (remove it, or set XDG_RUNTIME_DIR)", dir, euid)
	case fi.Mode().Perm()&0o077 != 0:
		return fmt.Errorf("container state: %s has mode %04o, open to other users: refusing it (want 0700)", dir, fi.Mode().Perm())
	}
	return nil
}

// ValidID reports whether id has the form of the container IDs vessel
// makes: 64 lower-case hex digits.
func ValidID(id string) bool {
	if len(id) != 64 {
		return false
	}
	for _, c := range id {
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// ShortID is the 12-digit form of a container ID that ps shows.
func (s *State) ShortID() string { return s.ID[:12] }

// Dir is the container's state directory.
func (s *State) Dir() string { return s.dir }

// LogPath is the container's output log (see LogWriter).
func (s *State) LogPath() string { return filepath.Join(s.dir, "log.json") }

// Running reports whether the container's vessel process still runs it
// (by the owner lock, or for an older vessel's state by its PID); a
// state that says running but whose process is gone (killed) counts as
// exited.
func (s *State) Running() bool {
	if s.Status != StatusRunning {
		return false
	}
	if held, ok := s.ownerLocked(); ok {
		return held
	}
	return s.Pid > 0 && alive(s.Pid)
}

// alive reports whether the process pid exists.
func alive(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}

// Orphaned reports whether the vessel process that owned the container
// is gone without having finished with it: killed (SIGKILL, which it
// cannot handle) before it recorded the exit, removed the container
// (--rm) or removed its scratch disk. The owner lock tells whether it is
// gone; for a state without one (an older vessel's), its PID does, and a
// PID reused by another process keeps such a container from counting as
// orphaned until that one ends too.
func (s *State) Orphaned() bool {
	switch held, ok := s.ownerLocked(); {
	case ok && held:
		return false
	case !ok && (s.Pid <= 0 || s.PidNS != PidNamespace() || alive(s.Pid)):
		return false
	}
	return s.Status != StatusExited || s.Remove || s.Scratch != ""
}

// ownerLocked reports whether the container's owner lock is held (held),
// if the state directory has one (ok).
// Whatever it cannot tell counts as held: a live container is never
// taken for a dead one. A planted FIFO or symlink does not block it.
func (s *State) ownerLocked() (held, ok bool) {
	if HeldLock(s.ID) != nil {
		return true, true // this process owns it
	}
	fd, err := syscall.Open(filepath.Join(s.dir, ownerLockFile), syscall.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK|syscall.O_CLOEXEC, 0)
	if errors.Is(err, syscall.ENOENT) {
		return false, false
	}
	if err != nil {
		return true, true
	}
	defer syscall.Close(fd)
	var st syscall.Stat_t
	if err := syscall.Fstat(fd, &st); err != nil || st.Mode&syscall.S_IFMT != syscall.S_IFREG {
		return true, true
	}
	return syscall.Flock(fd, syscall.LOCK_SH|syscall.LOCK_NB) != nil, true
}

// ownerLockFile is the file in a container's state directory on which
// its owner holds an exclusive flock for its whole life: Create takes
// it, a detached run's vessel process inherits it (HeldLock, AdoptLock).
// OwnerAlive tells by it, which no reused PID fools.
const ownerLockFile = "owner.lock"

// heldLocks are the owner locks this process holds, by container ID:
// referenced here, so that no finalizer closes them.
var heldLocks sync.Map

// lockOwner creates the container's owner lock and takes it.
func (s *State) lockOwner() error {
	f, err := os.OpenFile(filepath.Join(s.dir, ownerLockFile), os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("container state: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		return fmt.Errorf("container state: lock %s: %w", f.Name(), err)
	}
	heldLocks.Store(s.ID, f)
	return nil
}

// HeldLock returns the owner lock of container id that this process
// holds (nil if none), for a process that takes the container over to
// inherit.
func HeldLock(id string) *os.File {
	f, _ := heldLocks.Load(id)
	lf, _ := f.(*os.File)
	return lf
}

// AdoptLock makes f, an owner lock of container id inherited from the
// process that created it, this process's: held until it exits, and not
// passed on to the programs it runs.
func AdoptLock(id string, f *os.File) {
	syscall.CloseOnExec(int(f.Fd()))
	heldLocks.Store(id, f)
}

// IsOwnerLock checks that f is the container's owner lock.
func (s *State) IsOwnerLock(f *os.File) error {
	got, err := f.Stat()
	if err != nil {
		return fmt.Errorf("container state: the owner lock passed on: %w", err)
	}
	want, err := os.Stat(filepath.Join(s.dir, ownerLockFile))
	if err != nil {
		return fmt.Errorf("container state: %w", err)
	}
	if !os.SameFile(got, want) {
		return fmt.Errorf("container state: descriptor %d is not container %s's owner lock", f.Fd(), s.ShortID())
	}
	return nil
}

// ReleaseLock closes this process's descriptor of container id's owner
// lock: once another process inherited it, that one holds the lock.
func ReleaseLock(id string) {
	if f, ok := heldLocks.LoadAndDelete(id); ok {
		f.(*os.File).Close()
	}
}

// OwnerAlive reports whether the vessel process that owns the container
// still runs, whatever the state says: after it recorded the exit it
// still ends the VM, removes the scratch disk and saves the state once
// more. It tells by the owner lock. A state without one (from an older
// vessel) falls back to its PID: alive in this PID namespace, running
// this program.
func (s *State) OwnerAlive() bool {
	if held, ok := s.ownerLocked(); ok {
		return held
	}
	return s.PidNS == PidNamespace() && RunsThisProgram(s.Pid)
}

// RunsThisProgram reports whether process pid (of this PID namespace)
// runs the same executable as this process: a PID in a state is taken
// for its vessel process, or killed, only while it does.
func RunsThisProgram(pid int) bool {
	self, err := os.Executable()
	if err != nil || pid <= 0 {
		return false
	}
	exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
	return err == nil && strings.TrimSuffix(exe, " (deleted)") == self
}

// PidNamespace names this process's PID namespace ("pid:[INODE]"), for
// State.PidNS; empty if /proc cannot tell.
func PidNamespace() string {
	ns, _ := os.Readlink("/proc/self/ns/pid")
	return ns
}

// Reload reads the container's state again, as its owner last saved
// it.
func (s *State) Reload() (*State, error) {
	b, err := os.ReadFile(filepath.Join(s.dir, "state.json"))
	if err != nil {
		return nil, fmt.Errorf("container state: %w", err)
	}
	cur := &State{}
	if err := json.Unmarshal(b, cur); err != nil || cur.ID != s.ID {
		return nil, fmt.Errorf("container state: %s: unreadable state", s.ShortID())
	}
	cur.dir = s.dir
	return cur, nil
}

// Reap finishes what the container's vessel process would have done at
// its end had it not been killed: a container run with --rm is removed;
// another one has its scratch disk and private directory removed (a
// container's VM cannot be started again, so its writable layer has no
// use) and, unless it had recorded its exit, the exit status of a
// process killed by SIGKILL (137). Call it for an Orphaned container,
// or one whose vessel process was just killed.
func (s *State) Reap() error {
	if s.Remove {
		return s.Delete()
	}
	if err := s.removeScratch(); err != nil {
		return err
	}
	if err := s.removeRunDir(); err != nil {
		return err
	}
	s.Scratch = ""
	if s.Status != StatusExited {
		s.Status, s.ExitCode, s.Finished = StatusExited, 128+int(syscall.SIGKILL), time.Now().UTC()
	}
	return s.Save()
}

// Create makes the state directory of a new container under root (see
// StateRoot) and saves s there, and takes the container's owner lock
// for this process (see OwnerAlive). A name another container has is
// ErrNameInUse.
func Create(root string, s *State) error {
	if !ValidID(s.ID) {
		return fmt.Errorf("container state: invalid container ID %q: want 64 hex digits", s.ID)
	}
	all, err := List(root)
	if err != nil {
		return err
	}
	for _, o := range all {
		if o.Name == s.Name {
			return fmt.Errorf("%w: %q (by %s)", ErrNameInUse, s.Name, o.ShortID())
		}
	}
	s.dir = filepath.Join(root, s.ID)
	if err := os.Mkdir(s.dir, 0o700); err != nil {
		return fmt.Errorf("container state: %w", err)
	}
	if err := s.lockOwner(); err != nil {
		os.RemoveAll(s.dir)
		return err
	}
	return s.Save()
}

// Save writes s atomically. The container's vessel process rewrites
// the file, and so does a process that reaps the container (Reap): each
// writes a whole file of its own, renamed over the state.
func (s *State) Save() error {
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	if err := atomicfile.Write(filepath.Join(s.dir, "state.json"), b, 0o600, false); err != nil {
		return fmt.Errorf("container state: %w", err)
	}
	return nil
}

// ScratchPath is where the scratch disk (--disk-size) of the container
// id lives: under vessel's data directory, not in the state directory,
// which is usually in memory.
func ScratchPath(id string) (string, error) {
	data, err := store.DataDir()
	if err != nil {
		return "", err
	}
	return filepath.Join(data, "scratch", id+".ext4"), nil
}

// Delete removes the container's state directory and scratch disk. The
// scratch disk a state names is removed only if it is the one
// ScratchPath gives for the container: a state file is not trusted to
// name a file to delete.
func (s *State) Delete() error {
	if err := s.removeScratch(); err != nil {
		return err
	}
	if err := s.removeRunDir(); err != nil {
		return err
	}
	// Out of List's sight first, as one step: a removal cut short
	// leaves no state without its owner lock (SweepRemovals finishes it).
	gone := filepath.Join(filepath.Dir(s.dir), removingPrefix+s.ID)
	if err := os.Rename(s.dir, gone); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		return fmt.Errorf("container state: %w", err)
	}
	return os.RemoveAll(gone)
}

// removingPrefix names a state directory Delete took out of List's
// sight before removing it.
const removingPrefix = ".removing-"

// SweepRemovals removes what a Delete cut short (the process killed)
// left under root: directories named removingPrefix and a container ID.
func SweepRemovals(root string) {
	ents, err := os.ReadDir(root)
	if err != nil {
		return
	}
	for _, e := range ents {
		if id, ok := strings.CutPrefix(e.Name(), removingPrefix); ok && ValidID(id) && e.Type().IsDir() {
			os.RemoveAll(filepath.Join(root, e.Name()))
		}
	}
}

// removeScratch removes the scratch disk the state names, if it is the
// one ScratchPath gives for the container.
func (s *State) removeScratch() error {
	if s.Scratch == "" {
		return nil
	}
	want, err := ScratchPath(s.ID)
	if err != nil {
		return fmt.Errorf("container %s: %w", s.ID, err)
	}
	if s.Scratch != want {
		return fmt.Errorf("container %s: its state names %q as its scratch disk, not %s: refusing to remove it", s.ShortID(), s.Scratch, want)
	}
	if err := os.Remove(s.Scratch); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("container %s: %w", s.ID, err)
	}
	return nil
}

// RunDirPrefix names the private directory (in the temporary directory)
// where the vessel process of a container keeps its sockets: the
// control socket the state names, and the guest agent's port.
const RunDirPrefix = "vessel-run-"

// removeRunDir removes the private socket directory of a container whose
// vessel process did not remove it (it was killed). Only a directory
// that is what vessel makes is removed: one named RunDirPrefix* directly
// in the temporary directory, not a symbolic link, the effective user's.
func (s *State) removeRunDir() error {
	if s.Socket == "" || s.Running() {
		return nil
	}
	dir := filepath.Dir(s.Socket)
	if filepath.Dir(dir) != filepath.Clean(os.TempDir()) || !strings.HasPrefix(filepath.Base(dir), RunDirPrefix) {
		return nil
	}
	fi, err := os.Lstat(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("container %s: %w", s.ShortID(), err)
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); !ok || !fi.IsDir() || int(st.Uid) != os.Geteuid() {
		return nil
	}
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("container %s: %w", s.ShortID(), err)
	}
	return nil
}

// List returns every container under root, newest first. Directories
// without a readable state (one being created), and states whose ID is
// not their directory's name or not an ID vessel makes, are skipped.
func List(root string) ([]*State, error) {
	ents, err := os.ReadDir(root)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("container state: %w", err)
	}
	var l []*State
	for _, e := range ents {
		if !e.IsDir() {
			continue
		}
		dir := filepath.Join(root, e.Name())
		b, err := os.ReadFile(filepath.Join(dir, "state.json"))
		if err != nil {
			continue
		}
		s := &State{}
		if json.Unmarshal(b, s) != nil || s.ID != e.Name() || !ValidID(s.ID) {
			continue
		}
		s.dir = dir
		l = append(l, s)
	}
	sort.Slice(l, func(i, j int) bool { return l[i].Created.After(l[j].Created) })
	return l, nil
}

// Find returns the container with that name, or whose ID starts with
// ref (a unique prefix).
func Find(root, ref string) (*State, error) {
	all, err := List(root)
	if err != nil {
		return nil, err
	}
	var match []*State
	for _, s := range all {
		if s.Name == ref {
			return s, nil
		}
		if ref != "" && strings.HasPrefix(s.ID, ref) {
			match = append(match, s)
		}
	}
	switch len(match) {
	case 1:
		return match[0], nil
	case 0:
		return nil, fmt.Errorf("%w: %s", ErrNoContainer, ref)
	}
	return nil, fmt.Errorf("%w: %s matches %d containers", ErrNoContainer, ref, len(match))
}
