package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/vesselvm/vessel/container"
)

// plantState writes a state.json for a container id under root, as
// another user (or a bug) could, naming scratch as its scratch disk.
func plantState(t *testing.T, root, id, scratch string) {
	t.Helper()
	dir := filepath.Join(root, id)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(map[string]any{"id": id, "name": "planted", "image": "busybox", "created": time.Now(),
		"status": "exited", "scratch": scratch})
	if err := os.WriteFile(filepath.Join(dir, "state.json"), b, 0o600); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, "log.json"), nil, 0o600)
}

// TestPlantedStateRefused: the container commands refuse a state root
// another user could write to, and rm never deletes a file outside the
// container's own state and scratch disk whatever its state says.
func TestPlantedStateRefused(t *testing.T) {
	id := strings.Repeat("f", 64)
	for _, tc := range []struct {
		name  string
		plant func(t *testing.T, vesselDir string) // makes $XDG_RUNTIME_DIR/vessel
		open  bool                                 // the state root itself is sound
	}{
		{"world-writable", func(t *testing.T, d string) {
			os.Mkdir(d, 0o777)
			os.Chmod(d, 0o777)
		}, false},
		{"symlink", func(t *testing.T, d string) {
			target := t.TempDir()
			os.Chmod(target, 0o700)
			os.Symlink(target, d)
		}, false},
		{"another user's", func(t *testing.T, d string) {
			if os.Geteuid() != 0 {
				t.Skip("needs root to give a directory to another user")
			}
			os.Mkdir(d, 0o700)
			os.Chown(d, 4242, 4242)
		}, false},
		{"sound root, scratch outside", func(t *testing.T, d string) { os.Mkdir(d, 0o700) }, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("XDG_DATA_HOME", t.TempDir())
			runtime := t.TempDir()
			t.Setenv("XDG_RUNTIME_DIR", runtime)
			victim := filepath.Join(t.TempDir(), "precious")
			if err := os.WriteFile(victim, []byte("keep"), 0o600); err != nil {
				t.Fatal(err)
			}
			tc.plant(t, filepath.Join(runtime, "vessel"))
			plantState(t, filepath.Join(runtime, "vessel", "containers"), id, victim)
			for _, args := range [][]string{{"ps", "-a"}, {"logs", id}, {"rm", id}, {"rm", "-f", "planted"}} {
				want := exitContainer
				if tc.open && args[0] != "rm" {
					want = 0
				}
				if code := run(args); code != want {
					t.Errorf("vessel %v: exit %d, want %d", args, code, want)
				}
			}
			if _, err := os.Stat(victim); err != nil {
				t.Errorf("vessel rm deleted %s, which a planted state named: %v", victim, err)
			}
		})
	}
}

// TestPsShortID: a state with an ID shorter than ps's short IDs is not
// vessel's: ps does not list it (it used to panic).
func TestPsShortID(t *testing.T) {
	t.Setenv("XDG_DATA_HOME", t.TempDir())
	runtime := t.TempDir()
	t.Setenv("XDG_RUNTIME_DIR", runtime)
	root := filepath.Join(runtime, "vessel", "containers")
	os.MkdirAll(root, 0o700)
	plantState(t, root, "abc", "")
	for _, args := range [][]string{{"ps", "-a"}, {"ps", "-a", "-q"}} {
		if code := run(args); code != 0 {
			t.Errorf("vessel %v: exit %d, want 0", args, code)
		}
	}
}

// runStderr runs vessel with args and returns its exit status and what
// it wrote to stderr.
func runStderr(t *testing.T, args ...string) (int, string) {
	t.Helper()
	f, err := os.CreateTemp(t.TempDir(), "stderr")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	saved := os.Stderr
	os.Stderr = f
	code := run(args)
	os.Stderr = saved
	b, _ := os.ReadFile(f.Name())
	return code, string(b)
}

// runFixture makes the image busybox:bad and a guest (that cannot
// boot) for vessel run in temporary data and runtime directories.
func runFixture(t *testing.T) (data, runtime string) {
	t.Helper()
	data, runtime, guest := t.TempDir(), t.TempDir(), t.TempDir()
	t.Setenv("XDG_DATA_HOME", data)
	t.Setenv("XDG_RUNTIME_DIR", runtime)
	t.Setenv("VESSEL_GUEST_DIR", guest)
	for _, f := range []string{"bzImage", "initramfs.cpio"} {
		os.WriteFile(filepath.Join(guest, f), []byte("not a kernel"), 0o644)
	}
	img, err := random.Image(512, 1)
	if err != nil {
		t.Fatal(err)
	}
	tag, _ := name.NewTag("busybox:bad")
	archive := filepath.Join(t.TempDir(), "busybox.tar")
	if err := tarball.WriteToFile(archive, tag, img); err != nil {
		t.Fatal(err)
	}
	if code := run([]string{"image", "load", archive}); code != 0 {
		t.Fatalf("vessel image load: exit %d", code)
	}
	return data, runtime
}

// TestRunBadFlags: every bad flag of vessel run is refused with one line
// and status 125 before anything is made: no container state, no disk.
// The image and a guest are there, so nothing else stops the run first.
func TestRunBadFlags(t *testing.T) {
	data, runtime := runFixture(t)
	nul := filepath.Join(t.TempDir(), "env")
	os.WriteFile(nul, []byte("A=1\nB=x\x00y\n"), 0o600)
	vol := t.TempDir()
	for _, tc := range []struct {
		name string
		args []string
		env  string // VESSEL_RUN_ID
		want string
	}{
		{"tiny memory", []string{"--memory", "1K"}, "", "--memory must be at least"},
		{"odd memory", []string{"--memory", "33333K"}, "", "--memory must be a multiple"},
		{"huge memory", []string{"--memory", "1000000T"}, "", "--memory"},
		{"too many cpus", []string{"--cpus", "100000"}, "", "--cpus 100000"},
		{"no cpus", []string{"--cpus", "0"}, "", "--cpus"},
		{"negative pids limit", []string{"--pids-limit", "-5"}, "", "--pids-limit -5"},
		{"NUL in env file", []string{"--env-file", nul}, "", "NUL"},
		{"ro and rw", []string{"-v", vol + ":/data:ro,rw"}, "", "want one of ro or rw"},
		{"bad log size", []string{"--log-opt", "max-size=lots"}, "", "max-size"},
		{"zero log files", []string{"--log-opt", "max-file=0"}, "", "max-file"},
		{"unknown log option", []string{"--log-opt", "compress=true"}, "", "unknown option"},
		{"log option without value", []string{"--log-opt", "max-size"}, "", "KEY=VALUE"},
		{"short run ID", nil, "abc", "not a container ID"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.env != "" {
				t.Setenv(envRunID, tc.env)
			}
			code, stderr := runStderr(t, append(append([]string{"run", "--pull", "never"}, tc.args...), "busybox:bad", "true")...)
			lines := strings.Split(strings.TrimSpace(stderr), "\n")
			if code != exitRun || len(lines) != 1 || !strings.Contains(lines[0], tc.want) {
				t.Errorf("exit %d, stderr %q; want %d and one line with %q", code, stderr, exitRun, tc.want)
			}
			if ents, _ := os.ReadDir(filepath.Join(runtime, "vessel", "containers")); len(ents) != 0 {
				t.Errorf("a refused run left %d container states", len(ents))
				for _, e := range ents {
					os.RemoveAll(filepath.Join(runtime, "vessel", "containers", e.Name()))
				}
			}
			filepath.WalkDir(data, func(p string, d fs.DirEntry, err error) error {
				if err == nil && strings.HasSuffix(p, ".ext4") {
					t.Errorf("a refused run made the disk %s", p)
					os.Remove(p)
				}
				return nil
			})
		})
	}
}

// TestRunGoodFlags: docker's values for no pids limit, and log options
// within bounds, pass the flag checks (the run then stops at the
// missing image).
func TestRunGoodFlags(t *testing.T) {
	t.Setenv("XDG_DATA_HOME", t.TempDir())
	for _, args := range [][]string{
		{"--pids-limit", "-1"},
		{"--pids-limit", "0"},
		{"--pids-limit", "100"},
		{"--log-opt", "max-size=10m", "--log-opt", "max-file=3"},
		{"--memory", "32M", "--cpus", "2"},
	} {
		code, stderr := runStderr(t, append(append([]string{"run", "--pull", "never"}, args...), "missing:1", "true")...)
		if code != exitRun || !strings.Contains(stderr, "unable to find image") {
			t.Errorf("vessel run %v: exit %d, %q; want the flags to pass and the image to be missing", args, code, stderr)
		}
	}
}

// TestRunVMReportsBounded: the VMM's reports about a guest, which a
// guest can make in a loop, take a bounded part of vessel's stderr
// (a detached container's vessel.log, in memory).
func TestRunVMReportsBounded(t *testing.T) {
	runFixture(t)
	f, err := os.CreateTemp(t.TempDir(), "stderr")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	saved := os.Stderr
	os.Stderr = f
	defer func() { os.Stderr = saved }()
	p, err := planRun(runFlags{memory: "512M", cpus: 1, network: "none", pull: "never", maxImageSize: defaultMaxImageSize}, "busybox:bad", []string{"true"})
	if err != nil {
		t.Fatal(err)
	}
	line := "vessel: virtio net: device needs reset: a broken chain\n"
	for range 2 * container.DiagLimit / len(line) {
		fmt.Fprint(p.cfg.Log, line)
	}
	if fi, err := f.Stat(); err != nil || fi.Size() > container.DiagLimit+100 {
		t.Errorf("%d bytes of the VMM's reports written (%v), want at most about %d", fi.Size(), err, container.DiagLimit)
	}
}

// ownerEnv makes the test binary a container's vessel process. With
// "finish:DIR" it recorded the exit and is still finishing with the
// container: after a moment it writes into the state directory DIR, as
// the real one saves the state once more, and fails if it cannot. With
// "start" it is starting the container, and ends only when killed.
const ownerEnv = "VESSEL_TEST_OWNER"

func TestMain(m *testing.M) {
	switch mode := os.Getenv(ownerEnv); {
	case strings.HasPrefix(mode, "finish:"):
		time.Sleep(300 * time.Millisecond)
		if err := os.WriteFile(filepath.Join(strings.TrimPrefix(mode, "finish:"), "late"), []byte("x"), 0o600); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	case mode == "start":
		select {}
	}
	os.Exit(m.Run())
}

// startOwner creates the container st under root and starts cmd as its
// vessel process, as `vessel run -d` does: cmd holds the owner lock.
func startOwner(t *testing.T, root string, st *container.State, cmd *exec.Cmd) {
	t.Helper()
	if err := container.Create(root, st); err != nil {
		t.Fatal(err)
	}
	cmd.ExtraFiles = []*os.File{container.HeldLock(st.ID)}
	err := cmd.Start()
	container.ReleaseLock(st.ID)
	if err != nil {
		t.Fatal(err)
	}
	st.Pid, st.PidNS = cmd.Process.Pid, container.PidNamespace()
	if err := st.Save(); err != nil {
		t.Fatal(err)
	}
}

// TestStopRmAwaitOwner: stop and rm of a container whose exit is
// recorded wait until its vessel process, still finishing with it, has
// ended (rm used to remove the state directory under it: "directory not
// empty", or the container back in ps); rm refuses a container whose
// vessel process is starting it, and rm -f kills that process first.
func TestStopRmAwaitOwner(t *testing.T) {
	for _, tc := range []struct {
		args    []string
		status  string
		code    int
		dirGone bool // the state directory is removed
		late    bool // the owner finished its last write
		killed  bool // the owner was killed
		reused  bool // the process is another vessel process, not the owner: its PID was reused
	}{
		{[]string{"stop", "c"}, container.StatusExited, 0, false, true, false, false},
		{[]string{"rm", "c"}, container.StatusExited, 0, true, false, false, false},
		{[]string{"rm", "c"}, container.StatusCreated, exitContainer, false, false, false, false},
		{[]string{"rm", "-f", "c"}, container.StatusCreated, 0, true, false, true, false},
		// A long-gone owner's PID, now another vessel process's (say
		// another container's): neither waited for nor killed.
		{[]string{"rm", "c"}, container.StatusExited, 0, true, false, false, true},
		{[]string{"rm", "-f", "c"}, container.StatusExited, 0, true, false, false, true},
	} {
		name := strings.Join(tc.args, " ") + " " + tc.status
		if tc.reused {
			name += " reused PID"
		}
		t.Run(name, func(t *testing.T) {
			t.Setenv("XDG_DATA_HOME", t.TempDir())
			t.Setenv("XDG_RUNTIME_DIR", t.TempDir())
			root, err := container.StateRoot()
			if err != nil {
				t.Fatal(err)
			}
			self, err := os.Executable()
			if err != nil {
				t.Fatal(err)
			}
			id := strings.Repeat("e", 64)
			mode := "finish:" + filepath.Join(root, id)
			if tc.status == container.StatusCreated || tc.reused {
				mode = "start"
			}
			owner := exec.Command(self)
			owner.Env = append(os.Environ(), ownerEnv+"="+mode)
			owner.Stderr = os.Stderr
			st := &container.State{ID: id, Name: "c", Created: time.Now(), Status: tc.status}
			if tc.reused {
				if err := container.Create(root, st); err != nil {
					t.Fatal(err)
				}
				container.ReleaseLock(id) // the owner is gone
				if err := owner.Start(); err != nil {
					t.Fatal(err)
				}
				st.Pid, st.PidNS = owner.Process.Pid, container.PidNamespace()
				if err := st.Save(); err != nil {
					t.Fatal(err)
				}
			} else {
				startOwner(t, root, st, owner)
			}
			ended := make(chan error, 1)
			go func() { ended <- owner.Wait() }()
			defer func() {
				owner.Process.Kill()
				<-ended
			}()
			if code := run(tc.args); code != tc.code {
				t.Fatalf("vessel %v: exit %d, want %d", tc.args, code, tc.code)
			}
			if _, err := os.Stat(filepath.Join(root, id)); errors.Is(err, fs.ErrNotExist) != tc.dirGone {
				t.Errorf("the state directory: %v; want it removed: %v", err, tc.dirGone)
			}
			if _, err := os.Stat(filepath.Join(root, id, "late")); (err == nil) != tc.late {
				t.Errorf("the owner's last write: %v; want it done: %v", err, tc.late)
			}
			wait := 5 * time.Second // for the owner to end
			if (tc.status != container.StatusExited || tc.reused) && !tc.killed {
				wait = 100 * time.Millisecond // it goes on
			}
			select {
			case err := <-ended:
				ended <- err
				if killed := err != nil && strings.Contains(err.Error(), "killed"); killed != tc.killed || (!killed && err != nil) {
					t.Errorf("the owner ended with %v; want killed: %v", err, tc.killed)
				}
			case <-time.After(wait):
				if (tc.status == container.StatusExited && !tc.reused) || tc.killed {
					t.Errorf("the owner still runs after vessel %v returned", tc.args)
				}
			}
		})
	}
}
