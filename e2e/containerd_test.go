//go:build e2e

package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/vesselvm/vessel/internal/bbimage"
)

// clientImage is the busybox image (package bbimage) as the container
// clients' tests load it.
const clientImage = "localhost/vessel-e2e/busybox:1"

// clientImageArchive writes clientImage as a `docker save` archive, which
// `ctr image import`, `podman load` and `docker load` read, with the
// platform set in its config (ctr imports only images for its platform).
func clientImageArchive(t *testing.T, path string) {
	t.Helper()
	img, err := bbimage.BuildForHost()
	if err != nil {
		t.Fatal(err)
	}
	tag, err := name.NewTag(clientImage)
	if err != nil {
		t.Fatal(err)
	}
	if err := tarball.WriteToFile(path, tag, img); err != nil {
		t.Fatal(err)
	}
}

// clientTimeout bounds one client command; a container's VM boots in
// tens of seconds on the nested test platform.
const clientTimeout = 4 * time.Minute

// clientResult is one run of a client command (ctr, podman).
type clientResult struct {
	args           []string
	stdout, stderr string
	code           int
}

func (r clientResult) String() string {
	return fmt.Sprintf("%s: exit %d\n--- stdout ---\n%s\n--- stderr ---\n%s", strings.Join(r.args, " "), r.code, r.stdout, r.stderr)
}

// runClient runs a client command with env, an empty stdin and
// clientTimeout; a command that cannot start or times out fails the test.
func runClient(t *testing.T, env []string, args ...string) clientResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), clientTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, args[0], args[1:]...)
	cmd.Env = env
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	err := cmd.Run()
	r := clientResult{args: args, stdout: stdout.String(), stderr: stderr.String()}
	var ee *exec.ExitError
	switch {
	case ctx.Err() != nil:
		t.Fatalf("%s: no answer in %v\n%v", strings.Join(args, " "), clientTimeout, r)
	case errors.As(err, &ee):
		r.code = ee.ExitCode()
	case err != nil:
		t.Fatalf("%s: %v", strings.Join(args, " "), err)
	}
	t.Logf("%s: exit %d after %v", strings.Join(args, " "), r.code, time.Since(start).Round(time.Millisecond))
	return r
}

// runClientRetry is runClient for a command that boots a VM: when it
// fails on a guest triple fault on the emulated nested platform (a fault
// of the platform, see platformFlake), it says so and runs the command
// once more, after undo has removed what the failed attempt left.
func runClientRetry(t *testing.T, env []string, undo func(), args ...string) clientResult {
	t.Helper()
	r := runClient(t, env, args...)
	if r.code != 0 && strings.Contains(r.stderr, "triple fault") && onEmulatedSVM() {
		t.Logf("RETRY: %s: guest triple fault on the emulated nested platform; retrying once:\n%v", strings.Join(args, " "), r)
		undo()
		r = runClient(t, env, args...)
	}
	return r
}

// mustClient is runClient for a command that must succeed.
func mustClient(t *testing.T, env []string, args ...string) clientResult {
	t.Helper()
	r := runClient(t, env, args...)
	if r.code != 0 {
		t.Fatalf("%v", r)
	}
	return r
}

// hostBootID is the boot ID of the kernel the test runs on.
func hostBootID(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

// checkBootID checks a boot ID a container printed: the host's under
// runc, another (the VM's) under vessel-runtime.
func checkBootID(t *testing.T, got string, inVM bool) {
	t.Helper()
	got, host := strings.TrimSpace(got), hostBootID(t)
	if len(got) != len(host) {
		t.Errorf("the container printed %q, want a boot ID", got)
	} else if inVM && got == host {
		t.Errorf("the container's boot ID is the host's (%s): it did not run in a VM", got)
	} else if !inVM && got != host {
		t.Errorf("the container's boot ID %s is not the host's %s under runc", got, host)
	}
}

// clientEnv is the test's environment with HOME set to an empty
// directory, so that vessel-runtime finds the guest only through
// VESSEL_GUEST_DIR, which the clients must pass on to it.
func clientEnv(t *testing.T, extra ...string) []string {
	t.Helper()
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "HOME=") && !strings.HasPrefix(kv, "VESSEL_GUEST_DIR=") && !strings.HasPrefix(kv, "XDG_") {
			env = append(env, kv)
		}
	}
	return append(env, append([]string{"HOME=" + t.TempDir(), "VESSEL_GUEST_DIR=" + guestDir}, extra...)...)
}

// containerdDaemon is a containerd of the test's own: root, state and
// sockets in a private directory.
type containerdDaemon struct {
	dir  string
	sock string
	env  []string
	log  *syncBuffer
}

// startContainerd starts containerd (Debian's 1.6) with a config in a
// temporary directory and stops it when the test ends.
func startContainerd(t *testing.T) *containerdDaemon {
	t.Helper()
	if _, err := exec.LookPath("containerd"); err != nil {
		t.Fatalf("containerd: %v (make deps installs it)", err)
	}
	d := &containerdDaemon{dir: t.TempDir(), log: &syncBuffer{}}
	d.sock = filepath.Join(d.dir, "containerd.sock")
	// The CRI plugin would want a CNI configuration; ctr needs none of
	// it. The overlayfs snapshotter works on the outer VM's tmpfs.
	config := fmt.Sprintf(`version = 2
root = %[1]q
state = %[2]q
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = %[3]q
[ttrpc]
  address = "%[3]s.ttrpc"
[debug]
  address = "%[3]s.debug"
  level = "debug"
`, filepath.Join(d.dir, "root"), filepath.Join(d.dir, "state"), d.sock)
	cfg := filepath.Join(d.dir, "config.toml")
	if err := os.WriteFile(cfg, []byte(config), 0o644); err != nil {
		t.Fatal(err)
	}
	d.env = clientEnv(t)
	cmd := exec.Command("containerd", "--config", cfg)
	cmd.Env = d.env
	cmd.Stdout, cmd.Stderr = d.log, d.log
	if err := cmd.Start(); err != nil {
		t.Fatalf("containerd: %v", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Signal(os.Interrupt)
		select {
		case <-exited:
		case <-time.After(time.Minute):
			cmd.Process.Kill()
			<-exited
			t.Errorf("containerd did not stop on SIGINT in a minute")
		}
		if t.Failed() {
			t.Logf("containerd's log:\n%s", d.log)
		}
	})
	deadline := time.Now().Add(time.Minute)
	for {
		select {
		case err := <-exited:
			t.Fatalf("containerd exited: %v\n%s", err, d.log)
		default:
		}
		if exec.Command("ctr", "--address", d.sock, "version").Run() == nil {
			return d
		}
		if time.Now().After(deadline) {
			t.Fatalf("containerd did not answer in a minute:\n%s", d.log)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// ctrNamespace is the containerd namespace the tests work in.
const ctrNamespace = "vessel-e2e"

// ctr runs ctr against the daemon.
func (d *containerdDaemon) ctr(t *testing.T, args ...string) clientResult {
	t.Helper()
	return runClient(t, d.env, append([]string{"ctr", "--address", d.sock, "--namespace", ctrNamespace}, args...)...)
}

// ctrRun runs `ctr args...`, a ctr run of container id, retried once on
// a fault of the nested platform (runClientRetry).
func (d *containerdDaemon) ctrRun(t *testing.T, id string, args ...string) clientResult {
	t.Helper()
	base := []string{"ctr", "--address", d.sock, "--namespace", ctrNamespace}
	undo := func() {
		runClient(t, d.env, append(base, "task", "delete", "--force", id)...)
		runClient(t, d.env, append(base, "container", "delete", id)...)
	}
	return runClientRetry(t, d.env, undo, append(base, args...)...)
}

// taskStatus is a task's status in `ctr task ls`, "" when it has none.
func (d *containerdDaemon) taskStatus(t *testing.T, id string) string {
	t.Helper()
	r := d.ctr(t, "task", "ls")
	if r.code != 0 {
		t.Fatalf("%v", r)
	}
	for _, l := range strings.Split(r.stdout, "\n") {
		if f := strings.Fields(l); len(f) == 3 && f[0] == id {
			return f[2]
		}
	}
	return ""
}

// waitTaskStatus polls until the task has the status.
func (d *containerdDaemon) waitTaskStatus(t *testing.T, id, want string) {
	t.Helper()
	deadline := time.Now().Add(clientTimeout)
	for {
		got := d.taskStatus(t, id)
		if got == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("task %s: status %q after %v, want %s", id, got, clientTimeout, want)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// checkShimsGone checks, for up to 30 s, that no shim of this daemon
// runs any more (a shim exits once its last task is deleted).
func (d *containerdDaemon) checkShimsGone(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		shims := processesWith(t, "containerd-shim", d.sock)
		if len(shims) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("shims left: %v", shims)
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// processesWith lists the live processes whose argv[0] ends in cmd and
// whose arguments include arg, as "PID argv".
func processesWith(t *testing.T, cmd, arg string) []string {
	t.Helper()
	var found []string
	for pid, line := range liveProcesses(func(args []string) bool {
		return strings.HasSuffix(args[0], cmd) && slicesContains(args[1:], arg)
	}) {
		found = append(found, strconv.Itoa(pid)+" "+line)
	}
	return found
}

// checkNoTaskState checks that containerd's runtime keeps no state for
// any task of the namespace.
func (d *containerdDaemon) checkNoTaskState(t *testing.T) {
	t.Helper()
	dir := filepath.Join(d.dir, "state", "io.containerd.runtime.v2.task", ctrNamespace)
	ents, err := os.ReadDir(dir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	for _, e := range ents {
		t.Errorf("containerd's task state left: %s", filepath.Join(dir, e.Name()))
	}
}

// TestContainerd runs containers through containerd 1.6's runc shim
// (io.containerd.runc.v2) with ctr: first with runc, the harness's
// baseline, then with vessel-runtime as the shim's runc binary
// (`ctr run --runc-binary`, runc.v2's BinaryName option). vessel-runtime
// gets its guest kernel and initramfs from VESSEL_GUEST_DIR in
// containerd's environment, which the shim and the runtime inherit.
func TestContainerd(t *testing.T) {
	d := startContainerd(t)
	archive := filepath.Join(t.TempDir(), "busybox.tar")
	clientImageArchive(t, archive)
	mustClient(t, d.env, "ctr", "--address", d.sock, "--namespace", ctrNamespace, "image", "import", archive)

	for _, rt := range []struct {
		name string
		bin  string // the shim's runc binary; "" for runc from PATH
	}{
		{"runc", ""},
		{"vessel", runtimeBin(t)},
	} {
		inVM := rt.bin != ""
		// runc.v2's Root option: the runtime's --root is this
		// directory plus the namespace.
		runcRoot := t.TempDir()
		state := filepath.Join(runcRoot, ctrNamespace)
		runArgs := func(id string, flags ...string) []string {
			a := append([]string{"run", "--runc-root", runcRoot}, flags...)
			if rt.bin != "" {
				a = append(a, "--runc-binary", rt.bin)
			}
			return append(a, clientImage, id)
		}
		nothingLeft := func(t *testing.T) {
			t.Helper()
			d.checkShimsGone(t)
			d.checkNoTaskState(t)
			checkNothingLeft(t, state)
		}

		t.Run(rt.name+"/exit-status", func(t *testing.T) {
			id := rt.name + "-exit"
			r := d.ctrRun(t, id, append(runArgs(id, "--rm"), "sh", "-c", "cat /proc/sys/kernel/random/boot_id; exit 3")...)
			if r.code != 3 {
				t.Errorf("ctr run: exit %d, want the container's 3\n%v", r.code, r)
			}
			checkBootID(t, r.stdout, inVM)
			if r := d.ctr(t, "container", "info", id); r.code == 0 {
				t.Errorf("container %s still exists after ctr run --rm", id)
			}
			nothingLeft(t)
		})

		t.Run(rt.name+"/detached-kill", func(t *testing.T) {
			id := rt.name + "-detached"
			out := filepath.Join(t.TempDir(), "out")
			// The shell is the container's init: it ignores SIGTERM but
			// for this handler, so exit status 7 shows the signal
			// reached it.
			if r := d.ctrRun(t, id, append(runArgs(id, "-d", "--log-uri", "file://"+out), "sh", "-c",
				`trap 'echo got-term; exit 7' TERM; echo ready; while :; do sleep 1; done`)...); r.code != 0 {
				t.Fatalf("%v", r)
			}
			d.waitTaskStatus(t, id, "RUNNING")
			if inVM && len(vmmProcesses(t)) != 1 {
				t.Errorf("VMM processes %v, want one", vmmProcesses(t))
			}
			waitForFile(t, out, "ready\n")
			mustClient(t, d.env, "ctr", "--address", d.sock, "--namespace", ctrNamespace, "task", "kill", id)
			d.waitTaskStatus(t, id, "STOPPED")
			r := d.ctr(t, "task", "delete", id)
			if r.code != 0 || !strings.Contains(r.stderr, "exit code 7") {
				t.Errorf("task delete: want it to report exit code 7\n%v", r)
			}
			if got := readFile(out); got != "ready\ngot-term\n" {
				t.Errorf("the container's output %q, want %q", got, "ready\ngot-term\n")
			}
			mustClient(t, d.env, "ctr", "--address", d.sock, "--namespace", ctrNamespace, "container", "delete", id)
			nothingLeft(t)
		})
	}
}

// waitForFile polls until the file's content is want.
func waitForFile(t *testing.T, path, want string) {
	t.Helper()
	deadline := time.Now().Add(clientTimeout)
	for readFile(path) != want {
		if time.Now().After(deadline) {
			t.Fatalf("%s: %q after %v, want %q", path, readFile(path), clientTimeout, want)
		}
		time.Sleep(200 * time.Millisecond)
	}
}
