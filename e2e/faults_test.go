//go:build e2e

package e2e

import (
	"archive/tar"
	"compress/gzip"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"golang.org/x/sys/unix"

	"github.com/vesselvm/vessel/internal/bbimage"
)

// containerState reads the state vessel records of container id (the
// fields these tests need).
func containerState(t *testing.T, env []string, id string) (pid int, socket, scratch string) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(envValue(env, "XDG_RUNTIME_DIR"), "vessel", "containers", id, "state.json"))
	if err != nil {
		t.Fatal(err)
	}
	var st struct {
		Pid     int    `json:"pid"`
		Socket  string `json:"socket"`
		Scratch string `json:"scratch"`
	}
	if err := json.Unmarshal(b, &st); err != nil {
		t.Fatal(err)
	}
	return st.Pid, st.Socket, st.Scratch
}

// detachedLog is what the detached vessel of container id wrote to its
// vessel.log (its error as its VM ended, and with VESSEL_DEBUG the VM's
// description), or why it cannot be read.
func detachedLog(env []string, id string) string {
	b, err := os.ReadFile(filepath.Join(envValue(env, "XDG_RUNTIME_DIR"), "vessel", "containers", id, "vessel.log"))
	if err != nil {
		return err.Error()
	}
	if len(b) == 0 {
		return "(empty)"
	}
	return string(b)
}

// parentPID is pid's parent, from /proc (0 if pid is gone).
func parentPID(pid int) int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	ppid, _ := strconv.Atoi(f[1])
	return ppid
}

// childVMM is the jailed VMM process (vessel-vmm) that vessel process
// pid runs, or 0.
func childVMM(pid int) int {
	for vmm := range liveProcesses(func(args []string) bool { return filepath.Base(args[0]) == "vessel-vmm" }) {
		if parentPID(vmm) == pid {
			return vmm
		}
	}
	return 0
}

// cancelDescribingVM makes cmd, a vessel command that may run a VM
// (vessel run), when its context ends, first have its jailed VMM
// describe the VM (SIGUSR2: vessel then ends with 125, the description
// on its stderr: a hung guest's vCPUs, interrupts and rings), and then,
// if vessel is still there half a minute later or has no VMM, send it
// stop: SIGABRT or SIGQUIT, whose goroutine dump shows what it waits for.
func cancelDescribingVM(cmd *exec.Cmd, stop syscall.Signal) {
	cmd.Cancel = func() error {
		if vmm := childVMM(cmd.Process.Pid); vmm != 0 && syscall.Kill(vmm, syscall.SIGUSR2) == nil &&
			waitGoneWithin(cmd.Process.Pid, 30*time.Second) {
			return nil
		}
		return cmd.Process.Signal(stop)
	}
	cmd.WaitDelay = 10 * time.Second
}

// waitGone waits up to a minute until pid is no longer a live process
// (gone, or a zombie), and reports whether it went.
func waitGone(pid int) bool { return waitGoneWithin(pid, time.Minute) }

// waitGoneWithin is waitGone waiting up to d.
func waitGoneWithin(pid int, d time.Duration) bool {
	for deadline := time.Now().Add(d); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if _, live := liveProcesses(func([]string) bool { return true })[pid]; !live {
			return true
		}
	}
	return false
}

// exclusiveLock reports whether an exclusive flock of path can be taken
// now (and releases it): false while a VM has the disk open.
func exclusiveLock(t *testing.T, path string) bool {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	err = unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
	if err != nil && !errors.Is(err, unix.EWOULDBLOCK) {
		t.Fatal(err)
	}
	return err == nil
}

// TestFaultKillVessel: SIGKILL to the vessel process of a detached
// container (the process that runs its VM) ends the VM and its user
// network helper (which exits when its end of the VM's socket pair
// closes: usernet starts it without a parent-death signal), releases its
// disks' locks, and leaves a container that ps shows exited (137, with
// its scratch disk gone) and rm removes with everything of it; one run
// with --rm is gone entirely at the next ps; the image runs again.
func TestFaultKillVessel(t *testing.T) {
	if *guestMode {
		t.Skip("host half only")
	}
	env := runEnv(t)
	tmpBefore := runDirs()
	port := freePort(t)
	r := cli(t, env, "", "run", "-d", "--name", "victim", "-m", loadMemory, "--disk-size", "64M",
		"-p", fmt.Sprintf("127.0.0.1:%d:80", port), runImage, "httpd", "-f", "-p", "80", "-h", "/www")
	id := strings.TrimSpace(r.stdout)
	if r.code != 0 || len(id) != 64 {
		t.Fatalf("vessel run -d: want the container ID:\n%v", r)
	}
	defer cli(t, env, "", "rm", "-f", "victim")
	if body, err := httpGet(fmt.Sprintf("http://127.0.0.1:%d/", port), 2*time.Minute); body != bbimage.Index {
		t.Fatalf("GET from the published port: %q, %v", body, err)
	}
	pid, _, scratch := containerState(t, env, id)
	helpers := liveProcesses(func(args []string) bool { return filepath.Base(args[0]) == "vessel-usernet" })
	helper := 0
	for p := range helpers {
		// Its child, or (jailed, the default as root) its jailed VMM
		// process's.
		if parentPID(p) == pid || parentPID(parentPID(p)) == pid {
			helper = p
		}
	}
	if helper == 0 {
		t.Fatalf("no vessel-usernet below the container's vessel process %d among %v", pid, helpers)
	}
	disks, _ := filepath.Glob(filepath.Join(envValue(env, "XDG_DATA_HOME"), "vessel", "images", "rootfs", "*.ext4"))
	if len(disks) != 1 || scratch == "" {
		t.Fatalf("want one image disk and a scratch disk: %v, %q", disks, scratch)
	}
	disks = append(disks, scratch)
	for _, d := range disks {
		if exclusiveLock(t, d) {
			t.Errorf("%s is not locked while the VM runs", d)
		}
	}

	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if !waitGone(pid) {
		t.Fatalf("the vessel process %d outlived SIGKILL", pid)
	}
	if !waitGone(helper) {
		t.Errorf("vessel-usernet %d outlived its VM's vessel process", helper)
	}
	for _, d := range disks {
		if !exclusiveLock(t, d) {
			t.Errorf("%s is still locked after the VM's process was killed", d)
		}
	}
	if r := cli(t, env, "", "ps", "-a"); r.code != 0 || !strings.Contains(r.stdout, "Exited (137)") || !strings.Contains(r.stdout, "victim") {
		t.Errorf("ps -a: want victim exited, killed:\n%v", r)
	}
	// ps finished with the container as its process would have: the
	// scratch disk, of no use to a VM that cannot start again, is gone.
	if _, err := os.Stat(scratch); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the killed container's scratch disk outlived ps: %v", err)
	}
	if r := cli(t, env, "", "ps", "-q"); r.code != 0 || r.stdout != "" {
		t.Errorf("ps -q: want no running container:\n%v", r)
	}
	if r := cli(t, env, "", "rm", "victim"); r.code != 0 {
		t.Errorf("rm of the killed container:\n%v", r)
	}
	checkRunLeftovers(t, env, tmpBefore)

	// A container run with --rm whose vessel process is killed goes
	// entirely at the next ps, as its process would have removed it:
	// state, scratch disk, socket directory, jail.
	r = cliRetried(t, env, "", "run", "-d", "--rm", "--name", "victim-rm", "-m", loadMemory, "--disk-size", "64M", runImage, "sleep", "600")
	rmID := strings.TrimSpace(r.stdout)
	if r.code != 0 || len(rmID) != 64 {
		t.Fatalf("vessel run -d --rm: want the container ID:\n%v", r)
	}
	defer cli(t, env, "", "rm", "-f", "victim-rm")
	rmPid, _, rmScratch := containerState(t, env, rmID)
	if rmScratch == "" {
		t.Fatal("the --rm container has no scratch disk")
	}
	if err := syscall.Kill(rmPid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if !waitGone(rmPid) {
		t.Fatalf("the vessel process %d outlived SIGKILL", rmPid)
	}
	if r := cli(t, env, "", "ps", "-a"); r.code != 0 || strings.Contains(r.stdout, "victim-rm") {
		t.Errorf("ps -a after the --rm container's process was killed: want it gone:\n%v", r)
	}
	if _, err := os.Stat(rmScratch); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the killed --rm container's scratch disk outlived ps: %v", err)
	}
	if _, err := os.Stat(filepath.Join(envValue(env, "XDG_RUNTIME_DIR"), "vessel", "containers", rmID)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the killed --rm container's state outlived ps: %v", err)
	}
	checkRunLeftovers(t, env, tmpBefore)
	if r := cliRetried(t, env, "", "run", "--rm", "-m", loadMemory, "--disk-size", "64M", runImage, "echo", "again"); r.code != 0 || r.stdout != "again\n" {
		t.Errorf("a new container of the same image:\n%v", r)
	}
	checkRunLeftovers(t, env, tmpBefore)
}

// bigImage is the image TestFaultKillImage and TestFaultDiskFull load:
// the run image with a layer of bigSize random bytes on top, large
// enough that loading it and building its disk take seconds on the
// test platform.
const (
	bigImage = "vessel-e2e/big:1"
	bigSize  = 96 << 20
)

// bigImageArchive writes bigImage as a `docker save` archive (its big
// layer gzip-framed without compression: random bytes do not compress).
func bigImageArchive(t *testing.T, path string) {
	t.Helper()
	pr, pw := io.Pipe()
	go func() {
		tw := tar.NewWriter(pw)
		err := tw.WriteHeader(&tar.Header{Name: "big/random", Mode: 0o644, Size: bigSize, Typeflag: tar.TypeReg})
		if err == nil {
			rng := rand.NewChaCha8([32]byte{1})
			_, err = io.CopyN(tw, rng, bigSize)
		}
		if err == nil {
			err = tw.Close()
		}
		pw.CloseWithError(err)
	}()
	layerTar := filepath.Join(t.TempDir(), "layer.tar")
	f, err := os.Create(layerTar)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(f, pr); err != nil {
		t.Fatal(err)
	}
	f.Close()
	layer, err := tarball.LayerFromFile(layerTar, tarball.WithCompressionLevel(gzip.NoCompression))
	if err != nil {
		t.Fatal(err)
	}
	img, err := mutate.AppendLayers(buildRunImage(t), layer)
	if err != nil {
		t.Fatal(err)
	}
	tag, err := name.NewTag(bigImage)
	if err != nil {
		t.Fatal(err)
	}
	if err := tarball.WriteToFile(path, tag, img); err != nil {
		t.Fatal(err)
	}
}

// privateEnv is an environment with an empty image store and state root
// of its own.
func privateEnv(t *testing.T) []string {
	return append(os.Environ(), "XDG_DATA_HOME="+t.TempDir(), "XDG_RUNTIME_DIR="+t.TempDir(), "VESSEL_GUEST_DIR="+guestDir)
}

// killWhen starts vessel ARGS with env, waits until a file matching
// pattern appears with some bytes in it (the operation is under way),
// and kills vessel with SIGKILL. It fails t if vessel ended first.
func killWhen(t *testing.T, env []string, pattern string, args ...string) {
	t.Helper()
	cmd := exec.Command(vesselBin, args...)
	cmd.Env = env
	var out syncBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	for {
		select {
		case <-done:
			t.Fatalf("vessel %s ended before a file %s appeared:\n%s", strings.Join(args, " "), pattern, out.String())
		case <-time.After(10 * time.Millisecond):
		}
		m, _ := filepath.Glob(pattern)
		if len(m) > 0 {
			if fi, err := os.Stat(m[0]); err == nil && fi.Size() > 0 {
				cmd.Process.Kill()
				<-done
				t.Logf("killed vessel %s while it wrote %s (%d bytes)", strings.Join(args, " "), m[0], fi.Size())
				return
			}
		}
	}
}

// storeFiles lists the files below the image store of env.
func storeFiles(t *testing.T, env []string) []string {
	t.Helper()
	var files []string
	root := filepath.Join(envValue(env, "XDG_DATA_HOME"), "vessel", "images")
	filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			files = append(files, strings.TrimPrefix(p, root+"/"))
		}
		return nil
	})
	return files
}

// TestFaultKillImage: SIGKILL in the middle of `vessel image load` and of
// the build of an image's disk (the first run of an image) leaves no
// half-made image: the next image command works and does not list it,
// the half-written files are removed, and the operation done again
// succeeds.
func TestFaultKillImage(t *testing.T) {
	if *guestMode {
		t.Skip("host half only")
	}
	env := privateEnv(t)
	tmpBefore := runDirs()
	small, big := filepath.Join(t.TempDir(), "run.tar"), filepath.Join(t.TempDir(), "big.tar")
	runImageArchive(t, small)
	bigImageArchive(t, big)
	if r := cli(t, env, "", "image", "load", small); r.code != 0 {
		t.Fatalf("image load:\n%v", r)
	}
	before := storeFiles(t, env)
	store := filepath.Join(envValue(env, "XDG_DATA_HOME"), "vessel", "images")

	killWhen(t, env, filepath.Join(store, "blobs", "sha256", ".incoming-*"), "image", "load", big)
	r := cli(t, env, "", "image", "ls")
	if r.code != 0 || !strings.Contains(r.stdout, "vessel-e2e/run") || strings.Contains(r.stdout, "big") {
		t.Errorf("image ls after a killed load: want the run image and no big one:\n%v", r)
	}
	if after := storeFiles(t, env); strings.Join(after, " ") != strings.Join(before, " ") {
		t.Errorf("store files after a killed load and an image command: %v, before the load: %v", after, before)
	}
	if r := cli(t, env, "", "image", "load", big); r.code != 0 {
		t.Fatalf("image load after a killed one:\n%v", r)
	}

	killWhen(t, env, filepath.Join(store, "rootfs", ".rootfs-*"), "run", "--rm", "-m", loadMemory, bigImage, "true")
	if r := cli(t, env, "", "image", "ls"); r.code != 0 || !strings.Contains(r.stdout, "vessel-e2e/big") {
		t.Errorf("image ls after a killed disk build:\n%v", r)
	}
	if disks, _ := filepath.Glob(filepath.Join(store, "rootfs", "*")); len(disks) != 0 {
		t.Errorf("disk files after a killed build and an image command: %v", disks)
	}
	// The run was killed before it made the container: there is none.
	if r := cli(t, env, "", "ps", "-a", "-q"); r.code != 0 || r.stdout != "" {
		t.Errorf("ps -a -q after a run killed while it built the disk: want nothing:\n%v", r)
	}
	r = cliRetried(t, env, "", "run", "--rm", "-m", loadMemory, bigImage, "sh", "-c", "wc -c < /big/random")
	if want := strconv.Itoa(bigSize) + "\n"; r.code != 0 || r.stdout != want {
		t.Errorf("run after a killed disk build: want %q:\n%v", want, r)
	}
	checkRunLeftovers(t, env, tmpBefore)
}

// testMounts holds the mount points of mountTmpfs's file systems, which
// checkRunLeftovers does not count as left by vessel.
var testMounts sync.Map

// mountTmpfs mounts a tmpfs of size bytes at dir (made if need be) for
// the rest of the test.
func mountTmpfs(t *testing.T, dir string, size int) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, fmt.Sprintf("size=%d,mode=0700", size)); err != nil {
		t.Fatalf("mount a tmpfs at %s: %v", dir, err)
	}
	testMounts.Store(dir, true)
	t.Cleanup(func() {
		testMounts.Delete(dir)
		if err := unix.Unmount(dir, 0); err != nil {
			t.Errorf("unmount %s: %v", dir, err)
		}
	})
}

// oneLine fails t unless r failed with status code and a single line on
// stderr containing want.
func oneLine(t *testing.T, what string, r result, code int, want string) {
	t.Helper()
	if r.code != code || strings.Count(strings.TrimSpace(r.stderr), "\n") != 0 || !strings.Contains(r.stderr, want) {
		t.Errorf("%s: want status %d and one line saying %q:\n%v", what, code, want, r)
	}
}

// TestFaultDiskFull: a file system that fills up under the image store
// (loading an image, building its disk), the scratch disks or the
// container states (the log) gives one clear error and leaves nothing
// half-made.
func TestFaultDiskFull(t *testing.T) {
	if *guestMode {
		t.Skip("host half only")
	}
	tmpBefore := runDirs()
	small, big := filepath.Join(t.TempDir(), "run.tar"), filepath.Join(t.TempDir(), "big.tar")
	runImageArchive(t, small)
	bigImageArchive(t, big)

	t.Run("image load", func(t *testing.T) {
		env := privateEnv(t)
		data := envValue(env, "XDG_DATA_HOME")
		mountTmpfs(t, data, 48<<20)
		if r := cli(t, env, "", "image", "load", small); r.code != 0 {
			t.Fatalf("image load:\n%v", r)
		}
		before := storeFiles(t, env)
		oneLine(t, "image load into a full store", cli(t, env, "", "image", "load", big), 1, "no space left on device")
		if r := cli(t, env, "", "image", "ls"); r.code != 0 || strings.Contains(r.stdout, "big") || !strings.Contains(r.stdout, "vessel-e2e/run") {
			t.Errorf("image ls after a failed load:\n%v", r)
		}
		if after := storeFiles(t, env); strings.Join(after, " ") != strings.Join(before, " ") {
			t.Errorf("store files after a failed load: %v, before: %v", after, before)
		}
	})
	t.Run("rootfs", func(t *testing.T) {
		env := privateEnv(t)
		if r := cli(t, env, "", "image", "load", big); r.code != 0 {
			t.Fatalf("image load:\n%v", r)
		}
		disks := filepath.Join(envValue(env, "XDG_DATA_HOME"), "vessel", "images", "rootfs")
		mountTmpfs(t, disks, 48<<20)
		oneLine(t, "run with the image's disk on a full file system", cli(t, env, "", "run", "--rm", "-m", loadMemory, bigImage, "true"), 125, "space")
		if left, _ := os.ReadDir(disks); len(left) != 0 {
			t.Errorf("disk files left: %v", left)
		}
		checkRunLeftovers(t, env, tmpBefore)
	})
	t.Run("scratch", func(t *testing.T) {
		env := privateEnv(t)
		if r := cli(t, env, "", "image", "load", small); r.code != 0 {
			t.Fatalf("image load:\n%v", r)
		}
		scratch := filepath.Join(envValue(env, "XDG_DATA_HOME"), "vessel", "scratch")
		mountTmpfs(t, scratch, 128<<10)
		oneLine(t, "run with a scratch disk on a full file system", cli(t, env, "", "run", "--rm", "-m", loadMemory, "--disk-size", "64M", runImage, "true"), 125, "space")
		checkRunLeftovers(t, env, tmpBefore)
	})
	t.Run("scratch writes", func(t *testing.T) {
		env := privateEnv(t)
		if r := cli(t, env, "", "image", "load", small); r.code != 0 {
			t.Fatalf("image load:\n%v", r)
		}
		// Room for the scratch disk's file system, not for what the
		// container writes to it: the guest gets I/O errors, and vessel
		// says once why. The writes bypass the guest's page cache
		// (oflag=direct): ext4 keeps the pages of a file system it
		// aborted dirty, and the guest kernel's dirty-page throttling
		// then held a buffered writer for minutes (ci: 5 minutes, on a
		// guest that ran on).
		mountTmpfs(t, filepath.Join(envValue(env, "XDG_DATA_HOME"), "vessel", "scratch"), 4<<20)
		r := cliRetried(t, env, "", "run", "--rm", "-m", loadMemory, "--disk-size", "64M", runImage,
			"sh", "-c", "yes 0123456789abcdef | dd of=/fill bs=1M count=16 iflag=fullblock oflag=direct; sync; echo done")
		if n := strings.Count(r.stderr, "no space left on device"); n != 1 || !strings.Contains(r.stderr, `vessel: virtio block "vessel-scratch"`) || !strings.Contains(r.stdout, "done") {
			t.Errorf("a container filling its scratch disk's host file system: want it to finish and one line from vessel about the host's error, got %d:\n%v", n, r)
		}
		checkRunLeftovers(t, env, tmpBefore)
	})
	t.Run("log", func(t *testing.T) {
		env := privateEnv(t)
		if r := cli(t, env, "", "image", "load", small); r.code != 0 {
			t.Fatalf("image load:\n%v", r)
		}
		mountTmpfs(t, envValue(env, "XDG_RUNTIME_DIR"), 256<<10)
		// About 1.3 MB of output, far more than the log's file system
		// holds and than the guest's streams buffer: the output keeps
		// flowing to vessel's stdout after the log filled, and vessel
		// says once that it no longer logs.
		const lines = 20000
		r := cliRetried(t, env, "", "run", "--rm", "-m", loadMemory, "--log-opt", "max-size=100m", runImage,
			"sh", "-c", fmt.Sprintf("i=0; while [ $i -lt %d ]; do echo line $i of the container output that fills the log; i=$((i+1)); done; echo finished", lines))
		oneLine(t, "run with a full log", r, 0, "no space left on device")
		if got := strings.Count(r.stdout, " fills the log\n"); got != lines || !strings.HasSuffix(r.stdout, "finished\n") {
			t.Errorf("stdout: %d whole lines and %q at the end, want %d and finished", got, r.stdout[max(0, len(r.stdout)-40):], lines)
		}
		checkRunLeftovers(t, env, tmpBefore)
	})
}
