package container

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestStateLifecycle(t *testing.T) {
	root := t.TempDir()
	a := &State{ID: strings.Repeat("a", 64), Name: "web", Created: time.Now(), Status: StatusRunning, Pid: os.Getpid()}
	b := &State{ID: "ab" + strings.Repeat("0", 62), Name: "db", Created: time.Now().Add(time.Second), Status: StatusExited, ExitCode: 3}
	for _, s := range []*State{a, b} {
		if err := Create(root, s); err != nil {
			t.Fatal(err)
		}
	}
	if err := Create(root, &State{ID: strings.Repeat("c", 64), Name: "web"}); !errors.Is(err, ErrNameInUse) {
		t.Errorf("a second container named web: %v, want ErrNameInUse", err)
	}
	l, err := List(root)
	if err != nil || len(l) != 2 || l[0].Name != "db" {
		t.Fatalf("List = %v, %v; want db then web", l, err)
	}
	for ref, want := range map[string]string{"web": "web", "aaaa": "web", "ab0": "db", "db": "db"} {
		if s, err := Find(root, ref); err != nil || s.Name != want {
			t.Errorf("Find(%q) = %v, %v; want %s", ref, s, err, want)
		}
	}
	for _, ref := range []string{"a", "zz", ""} { // "a" is ambiguous
		if _, err := Find(root, ref); !errors.Is(err, ErrNoContainer) {
			t.Errorf("Find(%q): %v, want ErrNoContainer", ref, err)
		}
	}
	if !a.Running() {
		t.Error("a state whose process (this test) runs is not running")
	}
	if b.Running() {
		t.Error("an exited state is running")
	}
	if err := a.Delete(); err != nil {
		t.Fatal(err)
	}
	if l, _ := List(root); len(l) != 1 {
		t.Errorf("%d states after Delete, want 1", len(l))
	}
}

func TestStateBase(t *testing.T) {
	for _, tc := range []struct {
		runtimeDir string
		euid       int
		base       string
		dirs       []string
	}{
		{"/run/user/1000", 1000, "/run/user/1000", []string{"vessel", "containers"}},
		{"", 0, "/run", []string{"vessel", "containers"}},
		{"", 1000, os.TempDir(), []string{"vessel-1000", "containers"}},
	} {
		base, dirs := stateBase(tc.runtimeDir, tc.euid)
		if base != tc.base || !slices.Equal(dirs, tc.dirs) {
			t.Errorf("stateBase(%q, %d) = %s %v, want %s %v", tc.runtimeDir, tc.euid, base, dirs, tc.base, tc.dirs)
		}
	}
}

// TestStateRootRefused: a state root under a shared directory that
// another user made, or made open to others, or a symlink, is refused;
// one vessel makes is 0700.
func TestStateRootRefused(t *testing.T) {
	for _, tc := range []struct {
		name  string
		plant func(t *testing.T, dir string) // makes dir, the user's vessel-UID
		want  string                         // in the error; "" for none
	}{
		{"missing", func(*testing.T, string) {}, ""},
		{"ours and 0700", func(t *testing.T, dir string) { mkdir(t, dir, 0o700) }, ""},
		{"0777", func(t *testing.T, dir string) { mkdir(t, dir, 0o777) }, "mode 0777"},
		{"group readable", func(t *testing.T, dir string) { mkdir(t, dir, 0o740) }, "mode 0740"},
		{"symlink", func(t *testing.T, dir string) {
			target := t.TempDir()
			os.Chmod(target, 0o700)
			if err := os.Symlink(target, dir); err != nil {
				t.Fatal(err)
			}
		}, "symlink"},
		{"file", func(t *testing.T, dir string) {
			if err := os.WriteFile(dir, nil, 0o600); err != nil {
				t.Fatal(err)
			}
		}, "not a directory"},
		{"another user's", func(t *testing.T, dir string) {
			if os.Geteuid() != 0 {
				t.Skip("needs root to give a directory to another user")
			}
			mkdir(t, dir, 0o700)
			if err := os.Chown(dir, 4242, 4242); err != nil {
				t.Fatal(err)
			}
		}, "belongs to another user"},
		{"containers is another user's", func(t *testing.T, dir string) {
			if os.Geteuid() != 0 {
				t.Skip("needs root to give a directory to another user")
			}
			mkdir(t, dir, 0o700)
			mkdir(t, filepath.Join(dir, "containers"), 0o700)
			if err := os.Chown(filepath.Join(dir, "containers"), 4242, 4242); err != nil {
				t.Fatal(err)
			}
		}, "belongs to another user"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tmp := t.TempDir()
			dir := filepath.Join(tmp, "vessel-1000")
			tc.plant(t, dir)
			root, err := makeStateRoot(tmp, []string{"vessel-1000", "containers"})
			if tc.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				for _, d := range []string{dir, root} {
					if fi, err := os.Lstat(d); err != nil || !fi.IsDir() || fi.Mode().Perm() != 0o700 {
						t.Errorf("%s: %v, %v; want a 0700 directory", d, fi, err)
					}
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("makeStateRoot = %q, %v; want an error saying %q", root, err, tc.want)
			}
		})
	}
}

func mkdir(t *testing.T, dir string, mode os.FileMode) {
	t.Helper()
	if err := os.Mkdir(dir, mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, mode); err != nil { // whatever the umask
		t.Fatal(err)
	}
}

// TestDeleteScratchConfined: Delete removes the scratch disk vessel
// made for the container, and refuses any other file a state names.
func TestDeleteScratchConfined(t *testing.T) {
	t.Setenv("XDG_DATA_HOME", t.TempDir())
	victim := filepath.Join(t.TempDir(), "precious")
	if err := os.WriteFile(victim, []byte("keep"), 0o600); err != nil {
		t.Fatal(err)
	}
	id := strings.Repeat("d", 64)
	own, err := ScratchPath(id)
	if err != nil {
		t.Fatal(err)
	}
	os.MkdirAll(filepath.Dir(own), 0o700)
	for _, tc := range []struct {
		name, scratch string
		ok            bool
	}{
		{"outside", victim, false},
		{"climbs out", filepath.Dir(own) + "/../../" + filepath.Base(victim), false},
		{"another container's", filepath.Join(filepath.Dir(own), strings.Repeat("e", 64)+".ext4"), false},
		{"its own", own, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			os.WriteFile(own, nil, 0o600)
			root := t.TempDir()
			s := &State{ID: id, Name: "c", Created: time.Now(), Status: StatusExited, Scratch: tc.scratch}
			if err := Create(root, s); err != nil {
				t.Fatal(err)
			}
			s, err := Find(root, "c")
			if err != nil {
				t.Fatal(err)
			}
			err = s.Delete()
			if _, serr := os.Stat(victim); serr != nil {
				t.Fatalf("Delete removed %s, which the state named: %v", victim, serr)
			}
			_, dirErr := os.Stat(s.Dir())
			_, ownErr := os.Stat(own)
			if tc.ok {
				if err != nil || !errors.Is(dirErr, os.ErrNotExist) || !errors.Is(ownErr, os.ErrNotExist) {
					t.Errorf("Delete = %v; state dir %v, scratch %v; want both gone", err, dirErr, ownErr)
				}
			} else if err == nil || dirErr != nil || ownErr != nil {
				t.Errorf("Delete = %v (state dir %v, scratch %v); want it refused, removing nothing", err, dirErr, ownErr)
			}
		})
	}
}

// TestListSkipsForeignIDs: a state whose ID is not one vessel makes
// (too short for ps's short IDs, say) is not listed.
func TestListSkipsForeignIDs(t *testing.T) {
	root := t.TempDir()
	for _, id := range []string{"abc", strings.Repeat("A", 64), strings.Repeat("a", 63) + "g", strings.Repeat("a", 65)} {
		if err := Create(root, &State{ID: id, Name: "n" + id}); err == nil {
			t.Errorf("Create with ID %q succeeded", id)
		}
		dir := filepath.Join(root, id)
		os.Mkdir(dir, 0o700)
		os.WriteFile(filepath.Join(dir, "state.json"), []byte(`{"id":"`+id+`","name":"x"}`), 0o600)
	}
	if l, err := List(root); err != nil || len(l) != 0 {
		t.Errorf("List = %v, %v; want no containers", l, err)
	}
}

// TestDeleteRunDir: deleting a container whose vessel process was killed
// removes the private socket directory it left, and only a directory
// vessel makes: not one elsewhere, not one of a container still running.
func TestDeleteRunDir(t *testing.T) {
	tmp := t.TempDir()
	t.Setenv("TMPDIR", tmp)
	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Fatal(err)
	}
	other := filepath.Join(t.TempDir(), RunDirPrefix+"x") // not in the temporary directory
	for _, tc := range []struct {
		name    string
		dir     string
		pid     int
		removed bool
	}{
		{"killed", filepath.Join(tmp, RunDirPrefix+"1"), dead.Process.Pid, true},
		{"running", filepath.Join(tmp, RunDirPrefix+"2"), os.Getpid(), false},
		{"not vessel's name", filepath.Join(tmp, "precious"), dead.Process.Pid, false},
		{"elsewhere", other, dead.Process.Pid, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := os.MkdirAll(tc.dir, 0o700); err != nil {
				t.Fatal(err)
			}
			os.WriteFile(filepath.Join(tc.dir, "ctl.sock"), nil, 0o600)
			root := t.TempDir()
			s := &State{ID: strings.Repeat("f", 64), Name: "c", Created: time.Now(), Status: StatusRunning,
				Pid: tc.pid, Socket: filepath.Join(tc.dir, "ctl.sock")}
			if err := Create(root, s); err != nil {
				t.Fatal(err)
			}
			defer ReleaseLock(s.ID)
			if tc.pid != os.Getpid() {
				ReleaseLock(s.ID) // its owner is gone
			}
			if err := s.Delete(); err != nil {
				t.Fatal(err)
			}
			_, err := os.Stat(tc.dir)
			if gone := errors.Is(err, os.ErrNotExist); gone != tc.removed {
				t.Errorf("%s removed: %v, want %v (%v)", tc.dir, gone, tc.removed, err)
			}
		})
	}
}

// TestReapOrphans: a container whose vessel process is gone without
// having finished with it is orphaned; Reap removes one run with --rm,
// and of another its scratch disk and private directory, recording the
// exit of a killed process unless it had recorded its own. A container
// whose process lives, or that was finished with, is not orphaned.
func TestReapOrphans(t *testing.T) {
	tmp := t.TempDir()
	t.Setenv("TMPDIR", tmp)
	t.Setenv("XDG_DATA_HOME", t.TempDir())
	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Fatal(err)
	}
	ns := PidNamespace()
	if ns == "" {
		t.Fatal("no PID namespace in /proc/self/ns/pid")
	}
	for _, tc := range []struct {
		name     string
		pidNS    string
		pid      int
		status   string
		code     int
		remove   bool
		scratch  bool
		orphaned bool
		wantCode int    // after Reap; -1: the container is gone
		lock     string // the owner lock: held, free, or none (an older vessel's state)
	}{
		{"killed while running", ns, dead.Process.Pid, StatusRunning, 0, false, true, true, 137, "free"},
		{"killed while booting", ns, dead.Process.Pid, StatusCreated, 0, false, false, true, 137, "free"},
		{"killed with --rm", ns, dead.Process.Pid, StatusRunning, 0, true, true, true, -1, "free"},
		{"killed after its exit, with --rm", ns, dead.Process.Pid, StatusExited, 3, true, false, true, -1, "free"},
		{"killed after its exit, before the scratch disk went", ns, dead.Process.Pid, StatusExited, 3, false, true, true, 3, "free"},
		{"exited and finished with", ns, dead.Process.Pid, StatusExited, 3, false, false, false, 3, "free"},
		{"running", ns, os.Getpid(), StatusRunning, 0, true, true, false, 0, "held"},
		// The lock, not the PID, tells.
		{"killed, its PID taken by another process", ns, os.Getpid(), StatusRunning, 0, false, true, true, 137, "free"},
		{"running, its PID not this namespace's", ns, dead.Process.Pid, StatusRunning, 0, true, true, false, 0, "held"},
		// An older vessel's state: its PID tells.
		{"killed while running, no lock", ns, dead.Process.Pid, StatusRunning, 0, false, true, true, 137, "none"},
		{"running, no lock", ns, os.Getpid(), StatusRunning, 0, true, true, false, 0, "none"},
		{"no owner recorded", ns, 0, StatusCreated, 0, true, false, false, 0, "none"},
		// Its PID means nothing here: the owner may well live.
		{"owned in another PID namespace", "pid:[1]", dead.Process.Pid, StatusRunning, 0, true, true, false, 0, "none"},
		{"owned before PID namespaces were recorded", "", dead.Process.Pid, StatusRunning, 0, true, true, false, 0, "none"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			id := fmt.Sprintf("%064x", len(tc.name))
			runDir, err := os.MkdirTemp("", RunDirPrefix)
			if err != nil {
				t.Fatal(err)
			}
			s := &State{ID: id, Name: "c", Created: time.Now(), Status: tc.status, ExitCode: tc.code,
				Pid: tc.pid, PidNS: tc.pidNS, Remove: tc.remove, Socket: filepath.Join(runDir, "ctl.sock")}
			if tc.scratch {
				if s.Scratch, err = ScratchPath(id); err != nil {
					t.Fatal(err)
				}
				os.MkdirAll(filepath.Dir(s.Scratch), 0o700)
				if err := os.WriteFile(s.Scratch, nil, 0o600); err != nil {
					t.Fatal(err)
				}
			}
			root := t.TempDir()
			if err := Create(root, s); err != nil {
				t.Fatal(err)
			}
			defer ReleaseLock(id)
			if tc.lock != "held" {
				ReleaseLock(id) // the owner is gone
			}
			if tc.lock == "none" {
				os.Remove(filepath.Join(root, id, ownerLockFile))
			}
			s, err = Find(root, "c")
			if err != nil {
				t.Fatal(err)
			}
			if got := s.Orphaned(); got != tc.orphaned {
				t.Fatalf("Orphaned = %v, want %v", got, tc.orphaned)
			}
			if !tc.orphaned {
				return
			}
			scratch := s.Scratch
			if err := s.Reap(); err != nil {
				t.Fatal(err)
			}
			if _, err := os.Stat(runDir); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("the private directory is still there: %v", err)
			}
			if scratch != "" {
				if _, err := os.Stat(scratch); !errors.Is(err, os.ErrNotExist) {
					t.Errorf("the scratch disk is still there: %v", err)
				}
			}
			after, err := Find(root, "c")
			if tc.wantCode < 0 {
				if !errors.Is(err, ErrNoContainer) {
					t.Errorf("the container run with --rm is still there: %v", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if after.Status != StatusExited || after.ExitCode != tc.wantCode || after.Orphaned() {
				t.Errorf("after Reap: status %s, exit %d, orphaned %v; want exited, %d, not orphaned", after.Status, after.ExitCode, after.Orphaned(), tc.wantCode)
			}
		})
	}
}

// TestReload: Reload reads what the owner saved after the state was
// listed (vessel ps reaps only what is still orphaned on disk).
func TestReload(t *testing.T) {
	root := t.TempDir()
	s := &State{ID: strings.Repeat("c", 64), Name: "c", Created: time.Now(), Status: StatusCreated, Pid: 1}
	if err := Create(root, s); err != nil {
		t.Fatal(err)
	}
	listed, err := Find(root, "c")
	if err != nil {
		t.Fatal(err)
	}
	s.Status, s.ExitCode, s.Pid = StatusExited, 0, 42
	if err := s.Save(); err != nil {
		t.Fatal(err)
	}
	cur, err := listed.Reload()
	if err != nil || cur.Status != StatusExited || cur.Pid != 42 || cur.Dir() != listed.Dir() {
		t.Errorf("Reload = %+v, %v; want the saved exit", cur, err)
	}
	os.WriteFile(filepath.Join(s.Dir(), "state.json"), []byte("{"), 0o600)
	if _, err := listed.Reload(); err == nil {
		t.Error("Reload of a broken state succeeded")
	}
}

// TestOwnerLockPlanted: an owner lock that is not a regular file (a FIFO,
// which an open would wait on for good; a symlink) neither hangs the
// check nor lets a container pass for dead: it counts as held.
func TestOwnerLockPlanted(t *testing.T) {
	for _, tc := range []struct {
		name  string
		plant func(path string) error
	}{
		{"fifo", func(p string) error { return syscall.Mkfifo(p, 0o600) }},
		{"symlink", func(p string) error { return os.Symlink("/dev/null", p) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			s := &State{ID: strings.Repeat("a", 64), Name: "c", Created: time.Now(), Status: StatusRunning, Pid: 1}
			if err := Create(root, s); err != nil {
				t.Fatal(err)
			}
			ReleaseLock(s.ID) // its owner is gone, and someone planted
			lock := filepath.Join(root, s.ID, ownerLockFile)
			os.Remove(lock)
			if err := tc.plant(lock); err != nil {
				t.Fatal(err)
			}
			done := make(chan [3]bool, 1)
			go func() { done <- [3]bool{s.OwnerAlive(), s.Running(), s.Orphaned()} }()
			select {
			case got := <-done:
				if got != [3]bool{true, true, false} {
					t.Errorf("OwnerAlive, Running, Orphaned = %v, want true, true, false", got)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("the owner check hangs")
			}
		})
	}
}

// TestDeleteOutOfSight: Delete takes the state out of List's sight in
// one step (a rename) before it removes the files.
func TestDeleteOutOfSight(t *testing.T) {
	root := t.TempDir()
	s := &State{ID: strings.Repeat("b", 64), Name: "c", Created: time.Now(), Status: StatusExited}
	if err := Create(root, s); err != nil {
		t.Fatal(err)
	}
	ReleaseLock(s.ID)
	if err := s.Delete(); err != nil {
		t.Fatal(err)
	}
	if ents, _ := os.ReadDir(root); len(ents) != 0 {
		t.Errorf("left under the root: %v", ents)
	}
	if err := s.Delete(); err != nil {
		t.Errorf("a second Delete: %v", err)
	}
}

// TestSweepRemovals: what a Delete cut short left (a state renamed out
// of List's sight) is removed; nothing else is.
func TestSweepRemovals(t *testing.T) {
	root := t.TempDir()
	id := strings.Repeat("c", 64)
	left := filepath.Join(root, removingPrefix+id)
	keep := []string{filepath.Join(root, id), filepath.Join(root, removingPrefix+"notanid"), filepath.Join(root, "other")}
	for _, d := range append([]string{left}, keep...) {
		if err := os.MkdirAll(filepath.Join(d, "sub"), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	SweepRemovals(root)
	if _, err := os.Stat(left); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s is still there: %v", left, err)
	}
	for _, d := range keep {
		if _, err := os.Stat(d); err != nil {
			t.Errorf("%s went: %v", d, err)
		}
	}
}

// TestIsOwnerLock: the descriptor a detached run's process is handed is
// taken for the owner lock only if it is that file.
func TestIsOwnerLock(t *testing.T) {
	root := t.TempDir()
	s := &State{ID: strings.Repeat("d", 64), Name: "c", Created: time.Now(), Status: StatusCreated}
	if err := Create(root, s); err != nil {
		t.Fatal(err)
	}
	defer ReleaseLock(s.ID)
	if err := s.IsOwnerLock(HeldLock(s.ID)); err != nil {
		t.Errorf("the owner lock itself: %v", err)
	}
	other, err := os.Open(filepath.Join(s.Dir(), "state.json"))
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	if err := s.IsOwnerLock(other); err == nil {
		t.Error("state.json taken for the owner lock")
	}
}
