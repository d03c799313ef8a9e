//go:build e2e

package e2e

import (
	"bytes"
	"crypto/md5"
	"errors"
	"fmt"
	"io"
	"log"
	"math/rand"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"golang.org/x/sys/unix"

	"github.com/vesselvm/vessel/internal/bbimage"
)

// runImage is the image the `vessel run` tests use (package bbimage):
// Debian's static busybox, a user "app" (uid 1000), a web root, and a
// config whose defaults the tests check (Env, WorkingDir, Cmd).
const runImage = "vessel-e2e/run:1"

// runImageArchive writes runImage as a `docker save` archive.
func runImageArchive(t *testing.T, path string) {
	t.Helper()
	tag, err := name.NewTag(runImage)
	if err != nil {
		t.Fatal(err)
	}
	if err := tarball.WriteToFile(path, tag, buildRunImage(t)); err != nil {
		t.Fatal(err)
	}
}

// runImageLayout writes runImage as an OCI layout directory, named
// runImageOCI.
func runImageLayout(t *testing.T, dir string) {
	t.Helper()
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.AppendImage(buildRunImage(t), layout.WithAnnotations(map[string]string{
		"org.opencontainers.image.ref.name": runImageOCI})); err != nil {
		t.Fatal(err)
	}
}

// runImageOCI is runImage's name when loaded from an OCI layout.
const runImageOCI = "vessel-e2e/run-oci:1"

// buildRunImage makes runImage (package bbimage).
func buildRunImage(t *testing.T) v1.Image {
	t.Helper()
	img, err := bbimage.Build()
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// runEnv loads runImage into a private image store, from a docker
// archive and (as runImageOCI) from an OCI layout, and returns the
// environment vessel runs with: that store, and the guest artifacts.
func runEnv(t *testing.T) []string {
	t.Helper()
	data := t.TempDir()
	archive, dir := filepath.Join(t.TempDir(), "run.tar"), filepath.Join(t.TempDir(), "layout")
	runImageArchive(t, archive)
	runImageLayout(t, dir)
	env := append(os.Environ(), "XDG_DATA_HOME="+data, "XDG_RUNTIME_DIR="+t.TempDir(), "VESSEL_GUEST_DIR="+guestDir)
	for _, src := range []string{archive, dir} {
		load := exec.Command(vesselBin, "image", "load", src)
		load.Env = env
		if out, err := load.CombinedOutput(); err != nil {
			t.Fatalf("vessel image load %s: %v\n%s", src, err, out)
		}
	}
	return env
}

// vesselRun runs `vessel run ARGS...` with env and stdin.
func vesselRun(t *testing.T, env []string, stdin string, args ...string) result {
	t.Helper()
	return vesselCmd(t, func(c *exec.Cmd) {
		c.Env = env
		c.Stdin = strings.NewReader(stdin)
	}, append([]string{"run"}, args...)...)
}

// TestRun: `vessel run` runs a container from an image in a microVM with
// docker run's semantics.
func TestRun(t *testing.T) {
	if *guestMode {
		t.Skip("host half only")
	}
	env := runEnv(t)
	hostRelease := func() string {
		var u syscall.Utsname
		syscall.Uname(&u)
		var b []byte
		for _, c := range u.Release {
			if c == 0 {
				break
			}
			b = append(b, byte(c))
		}
		return string(b)
	}()

	t.Run("echo", func(t *testing.T) {
		r := vesselRun(t, env, "", runImage, "echo", "hello")
		if r.code != 0 || r.stdout != "hello\n" {
			t.Fatalf("want exactly hello:\n%v", r)
		}
	})
	t.Run("exit status", func(t *testing.T) {
		if r := vesselRun(t, env, "", runImage, "sh", "-c", "echo to-stderr >&2; exit 42"); r.code != 42 || r.stderr != "to-stderr\n" {
			t.Fatalf("want status 42 and the stderr line:\n%v", r)
		}
	})
	t.Run("image defaults", func(t *testing.T) {
		r := vesselRun(t, env, "", runImage)
		if want := "IMAGE_VAR=from-image cwd=/srv home=/root\n"; r.code != 0 || r.stdout != want {
			t.Fatalf("want %q:\n%v", want, r)
		}
	})
	t.Run("flags and isolation", func(t *testing.T) {
		envFile := filepath.Join(t.TempDir(), "env")
		os.WriteFile(envFile, []byte("# comment\nFROM_FILE=file\n\nIMAGE_VAR=overridden\n"), 0o644)
		script := `echo "env=$IMAGE_VAR,$FROM_FLAG,$FROM_FILE cwd=$(pwd) id=$(id -u):$(id -g):$(id -G) home=$HOME"
echo "kernel=$(uname -r) host=$(hostname) cmdline=$(cat /proc/cmdline)"
echo "procs=$(ls -d /proc/[0-9]* | wc -l)"
echo "cpus=$(nproc) memkb=$(grep MemTotal /proc/meminfo | tr -s ' ' | cut -d' ' -f2)"
echo "stdin=$(cat)"
echo "$(grep -E '^(Seccomp|NoNewPrivs|CapEff):' /proc/self/status | tr -s '\t' ' ' | tr '\n' ' ')"
touch /tmp/w && echo writable`
		r := vesselRun(t, env, "piped in\n", "-i", "--cpus", "2", "-m", "384M", "-e", "FROM_FLAG=flag", "--env-file", envFile, "-w", "/home/app", "-u", "app",
			"--hostname", "ctr-1", runImage, "sh", "-c", script)
		if r.code != 0 {
			t.Fatalf("run failed:\n%v", r)
		}
		for _, want := range []string{
			"env=overridden,flag,file cwd=/home/app id=1000:1000:1000 2000 home=/home/app",
			"host=ctr-1",
			"stdin=piped in",
			// The guest is a layer of its own: runc there applies
			// docker's default seccomp profile (filter mode) and
			// capabilities (a user's effective set is empty).
			"Seccomp: 2 ",
			"CapEff: 0000000000000000 ",
			"writable",
		} {
			if !strings.Contains(r.stdout, want) {
				t.Errorf("output lacks %q:\n%v", want, r)
			}
		}
		// The container runs on the guest's kernel: its command line is
		// the one vessel booted (the host's, on the nested platform the
		// same kernel build, has no vessel.cmd), and it sees only its own
		// processes (the shell, ls, wc and a command substitution).
		if !strings.Contains(r.stdout, "kernel=6.1.") || !strings.Contains(r.stdout, "vessel.cmd=") {
			t.Errorf("the container does not run on the guest's kernel:\n%v", r)
		}
		if strings.Contains(r.stdout, "kernel="+hostRelease+" ") && !onEmulatedSVM() {
			t.Errorf("the container reports the host's kernel %s:\n%v", hostRelease, r)
		}
		var procs, cpus, memKB int
		for _, l := range strings.Split(r.stdout, "\n") {
			fmt.Sscanf(l, "procs=%d", &procs)
			fmt.Sscanf(l, "cpus=%d memkb=%d", &cpus, &memKB)
		}
		// --cpus and -m size the VM the container runs in.
		if cpus != 2 || memKB < 300<<10 || memKB > 384<<10 {
			t.Errorf("the container sees %d CPUs and %d KiB of memory, want 2 and a little under 384 MiB:\n%v", cpus, memKB, r)
		}
		if procs == 0 || procs > 5 {
			t.Errorf("the container sees %d processes, want only its own few:\n%v", procs, r)
		}
	})
	t.Run("volumes", func(t *testing.T) {
		rw, ro := t.TempDir(), t.TempDir()
		// A host directory beside the share, with a file only the host
		// may read, and host-made symlinks to it in the share: absolute,
		// relative, to the directory and to the file.
		outside := t.TempDir()
		secret := filepath.Join(outside, "secret")
		const secretText = "host-only secret\n"
		os.WriteFile(secret, []byte(secretText), 0o600)
		os.Symlink(outside, filepath.Join(rw, "hostabs"))
		os.Symlink(filepath.Join("..", filepath.Base(outside)), filepath.Join(rw, "hostrel"))
		os.Symlink(secret, filepath.Join(rw, "hostfile"))
		os.WriteFile(filepath.Join(rw, "hello"), []byte("from the host\n"), 0o644)
		os.WriteFile(filepath.Join(rw, "delete-me"), nil, 0o644)
		os.WriteFile(filepath.Join(ro, "ro-file"), []byte("read-only content\n"), 0o644)
		big := make([]byte, 3<<20+123)
		rand.New(rand.NewSource(1)).Read(big)
		os.WriteFile(filepath.Join(ro, "big"), big, 0o644)
		script := `cat /rw/hello
echo from-guest > /rw/new && chown 1000:1000 /rw/new
mkdir /rw/sub && echo nested > /rw/sub/f
ln -s / /rw/escape
ln -s "$OUT/secret" /rw/escape-file
# Symlinks resolve in the container: the guest-made one to the
# container's root, the host-made ones to paths the container lacks.
test -d /rw/escape/rw/sub && echo escape-is-the-container-root
for p in "/rw/escape$OUT/secret" /rw/escape-file /rw/hostabs/secret /rw/hostrel/secret /rw/hostfile; do
  cat "$p" 2>/dev/null && echo "read $p"
done
ls /rw/hostabs/ /rw/hostrel/ 2>/dev/null
for p in "/rw/escape$OUT/planted" /rw/hostabs/planted /rw/hostrel/planted /rw/hostfile /rw/escape-file; do
  echo planted 2>/dev/null > "$p" && echo "wrote $p"
done
# Given the host file's path, writing through the symlinks reaches the
# container's own copy.
mkdir -p "$OUT" && echo container-side > /rw/escape-file && echo "hostfile=$(cat /rw/hostfile)"
rm /rw/delete-me
dd if=/dev/urandom of=/rw/written bs=64k count=40 2>/dev/null
echo "written=$(md5sum /rw/written | cut -d' ' -f1)"
echo "big=$(md5sum /ro/big | cut -d' ' -f1)"
cat /ro/ro-file
if touch /ro/nope 2>/dev/null; then echo ro-writable; else echo ro-refused; fi
ls /rw | sort | tr '\n' ' '; echo`
		r := vesselRun(t, env, "", "-v", rw+":/rw", "-v", ro+":/ro:ro", "-e", "OUT="+outside, runImage, "sh", "-c", script)
		if r.code != 0 {
			t.Fatalf("run failed:\n%v", r)
		}
		for _, want := range []string{
			"from the host\n",
			fmt.Sprintf("big=%x\n", md5.Sum(big)),
			"read-only content\nro-refused\n",
			"escape escape-file hello hostabs hostfile hostrel new sub written \n",
			"escape-is-the-container-root\n",
			"hostfile=container-side\n",
		} {
			if !strings.Contains(r.stdout, want) {
				t.Errorf("output lacks %q:\n%v", want, r)
			}
		}
		// Nothing outside the share was read or written.
		for _, bad := range []string{"secret", "read ", "wrote "} {
			if strings.Contains(r.stdout, bad) {
				t.Errorf("output has %q: the container went through a symlink on the host:\n%v", bad, r)
			}
		}
		if entries, _ := os.ReadDir(outside); len(entries) != 1 {
			t.Errorf("the directory outside the share changed: %v", entries)
		}
		if st, err := os.Stat(secret); err != nil || st.Mode() != 0o600 {
			t.Errorf("the host file outside the share: %v %v", st, err)
		}
		if b, err := os.ReadFile(secret); err != nil || string(b) != secretText {
			t.Errorf("the host file outside the share reads %q %v", b, err)
		}
		for name, want := range map[string]string{"hostabs": outside, "hostrel": filepath.Join("..", filepath.Base(outside)), "hostfile": secret} {
			if target, err := os.Readlink(filepath.Join(rw, name)); err != nil || target != want {
				t.Errorf("%s: %q %v, want the host's symlink to %q", name, target, err, want)
			}
		}
		// What the container wrote is on the host.
		if b, err := os.ReadFile(filepath.Join(rw, "new")); err != nil || string(b) != "from-guest\n" {
			t.Errorf("host reads new: %q %v", b, err)
		}
		if st, err := os.Stat(filepath.Join(rw, "new")); err == nil && os.Geteuid() == 0 {
			if sys := st.Sys().(*syscall.Stat_t); sys.Uid != 1000 || sys.Gid != 1000 {
				t.Errorf("new is owned by %d:%d after chown 1000:1000", sys.Uid, sys.Gid)
			}
		}
		if b, err := os.ReadFile(filepath.Join(rw, "sub", "f")); err != nil || string(b) != "nested\n" {
			t.Errorf("host reads sub/f: %q %v", b, err)
		}
		if target, err := os.Readlink(filepath.Join(rw, "escape")); err != nil || target != "/" {
			t.Errorf("escape: %q %v", target, err)
		}
		if target, err := os.Readlink(filepath.Join(rw, "escape-file")); err != nil || target != secret {
			t.Errorf("escape-file: %q %v", target, err)
		}
		if _, err := os.Stat(filepath.Join(rw, "delete-me")); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("delete-me is still there: %v", err)
		}
		written, err := os.ReadFile(filepath.Join(rw, "written"))
		if want := fmt.Sprintf("written=%x\n", md5.Sum(written)); err != nil || len(written) != 40<<16 || !strings.Contains(r.stdout, want) {
			t.Errorf("written: %d bytes on the host (%v), want %d and %q:\n%v", len(written), err, 40<<16, want, r)
		}
		if entries, _ := os.ReadDir(ro); len(entries) != 2 {
			t.Errorf("the read-only directory changed: %v", entries)
		}
	})
	t.Run("disk size", func(t *testing.T) {
		// The writable layer on a 64 MiB scratch disk: 100 MiB do not
		// fit, though the VM's memory would hold them; 30 MiB do.
		script := `dd if=/dev/zero of=/big bs=1M count=100 2>&1 | grep -o "No space left on device" | head -1
rm -f /big; sync
dd if=/dev/zero of=/fits bs=1M count=30 2>/dev/null && echo "fits=$(wc -c < /fits)"`
		r := vesselRun(t, env, "", "--disk-size", "64M", "-m", "1G", runImage, "sh", "-c", script)
		var data string
		for _, kv := range env {
			if v, ok := strings.CutPrefix(kv, "XDG_DATA_HOME="); ok {
				data = v
			}
		}
		if want := "No space left on device\nfits=31457280\n"; r.code != 0 || r.stdout != want {
			// The host's room, for telling a full host file system
			// (the scratch disk's file) from a guest's fault.
			t.Errorf("want %q (host: %s):\n%v", want, hostRoom(data), r)
		}
		if left, _ := filepath.Glob(filepath.Join(data, "vessel", "scratch", "*")); len(left) != 0 {
			t.Errorf("scratch disks left behind: %v", left)
		}
	})
	t.Run("command not found", func(t *testing.T) {
		if r := vesselRun(t, env, "", runImage, "no-such-command"); r.code != 127 || !strings.Contains(r.stderr, "no-such-command") {
			t.Fatalf("want status 127 naming the command:\n%v", r)
		}
	})
	t.Run("two at once", func(t *testing.T) {
		// Two containers, each in its own VM, from the archive's image and
		// the OCI layout's; each sees only its own host name.
		for i, img := range []string{runImage, runImageOCI} {
			t.Run(img, func(t *testing.T) {
				t.Parallel()
				r := vesselRun(t, env, "", "--hostname", fmt.Sprintf("twin%d", i), img, "sh", "-c", "sleep 1; hostname")
				if want := fmt.Sprintf("twin%d\n", i); r.code != 0 || r.stdout != want {
					t.Errorf("want %q:\n%v", want, r)
				}
			})
		}
	})
	t.Run("pull", func(t *testing.T) {
		// From go-containerregistry's in-process registry, over the
		// host's loopback.
		srv := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
		defer srv.Close()
		ref := strings.TrimPrefix(srv.URL, "http://") + "/e2e/pulled:1"
		tag, _ := name.NewTag(ref)
		if err := remote.Write(tag, buildRunImage(t)); err != nil {
			t.Fatal(err)
		}
		if r := vesselRun(t, env, "", ref, "echo", "pulled"); r.code != 0 || r.stdout != "pulled\n" {
			t.Fatalf("run of a pulled image:\n%v", r)
		}
	})
	t.Run("publish and signal", func(t *testing.T) {
		port := freePort(t)
		cmd := exec.Command(vesselBin, "run", "-p", fmt.Sprintf("127.0.0.1:%d:80", port), runImage,
			"sh", "-c", `trap 'echo got TERM; exit 7' TERM; httpd -f -p 80 -h /www & wait`)
		cmd.Env = env
		var stdout, stderr syncBuffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		client := &http.Client{Timeout: 10 * time.Second}
		body, err := "", error(nil)
		deadline := time.Now().Add(3 * time.Minute)
		for time.Now().Before(deadline) {
			var resp *http.Response
			if resp, err = client.Get(fmt.Sprintf("http://127.0.0.1:%d/", port)); err == nil {
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				body = string(b)
				break
			}
			select {
			case err := <-done:
				t.Fatalf("vessel run ended before serving: %v\n%s\n%s", err, stdout.String(), stderr.String())
			case <-time.After(time.Second):
			}
		}
		if body != bbimage.Index {
			t.Errorf("GET through the published port: %q, %v", body, err)
		}
		// SIGTERM reaches the container's first process. (That process
		// is PID 1 of the container's PID namespace, which, as with
		// docker, gets only the signals it handles: the shell traps it.)
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(2 * time.Minute):
			cmd.Process.Signal(syscall.SIGQUIT)
			<-done
			t.Fatalf("vessel run did not end after SIGTERM:\n%s\n%s", stdout.String(), stderr.String())
		}
		if code := cmd.ProcessState.ExitCode(); code != 7 || stdout.String() != "got TERM\n" {
			t.Errorf("exit status %d after SIGTERM, want the trap's 7 and its line:\n%s\n%s", code, stdout.String(), stderr.String())
		}
	})
}

// TestRunBadInput: every bad input to `vessel run` gets one line and
// docker's status 125, before any VM boots and any container state is
// made.
func TestRunBadInput(t *testing.T) {
	if *guestMode {
		t.Skip("host half only")
	}
	env := runEnv(t)
	nulEnv := filepath.Join(t.TempDir(), "env")
	if err := os.WriteFile(nulEnv, []byte("A=x\x00y\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"unknown image", []string{"--pull", "never", "no/such-image:1", "true"}, "unable to find image"},
		{"unknown image, no registry", []string{"127.0.0.1:1/no/such-image:1", "true"}, "pull failed"},
		{"bad pull policy", []string{"--pull", "sometimes", runImage, "true"}, "--pull"},
		{"no image", nil, "requires at least 1 argument"},
		{"bad publish", []string{"-p", "80", runImage, "true"}, "-p 80"},
		{"bad publish port", []string{"-p", "1:99999", runImage, "true"}, "guest port"},
		{"bad network", []string{"--network", "bridge", runImage, "true"}, "--network"},
		{"bad memory", []string{"-m", "lots", runImage, "true"}, "--memory"},
		{"bad name", []string{"--name", "a/b", runImage, "true"}, "invalid container name"},
		{"unknown flag", []string{"--frobnicate", runImage}, "unknown flag"},
		{"relative workdir", []string{"-w", "rel", runImage, "true"}, "absolute"},
		{"missing env file", []string{"--env-file", "/nonexistent/env", runImage, "true"}, "--env-file"},
		{"bad volume", []string{"-v", "/tmp", runImage, "true"}, "HOSTDIR:PATH"},
		{"named volume", []string{"-v", "data:/data", runImage, "true"}, "no named volumes"},
		{"missing volume", []string{"-v", "/nonexistent/dir:/data", runImage, "true"}, "does not exist"},
		{"volume option", []string{"-v", "/tmp:/data:rx", runImage, "true"}, "unknown option"},
		{"bad disk size", []string{"--disk-size", "1M", runImage, "true"}, "--disk-size"},
		{"tiny memory", []string{"--memory", "1K", runImage, "true"}, "--memory"},
		{"too many cpus", []string{"--cpus", "100000", runImage, "true"}, "--cpus"},
		{"negative pids limit", []string{"--pids-limit", "-5", runImage, "true"}, "--pids-limit"},
		{"NUL in env file", []string{"--env-file", nulEnv, runImage, "true"}, "NUL"},
		{"ro and rw", []string{"-v", "/tmp:/data:ro,rw", runImage, "true"}, "ro or rw"},
		{"bad log size", []string{"--log-opt", "max-size=lots", runImage, "true"}, "max-size"},
		{"unknown log option", []string{"--log-opt", "compress=true", runImage, "true"}, "unknown option"},
	} {
		cmd := exec.Command(vesselBin, append([]string{"run"}, tc.args...)...)
		cmd.Env = env
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		err := cmd.Run()
		code := cmd.ProcessState.ExitCode()
		lines := strings.Split(strings.TrimSpace(stderr.String()), "\n")
		if code != 125 || len(lines) != 1 || !strings.Contains(lines[0], tc.want) || stdout.Len() != 0 {
			t.Errorf("%s: exit %d (%v), stderr %q, stdout %q; want 125 and one line with %q", tc.name, code, err, stderr.String(), stdout.String(), tc.want)
		}
	}
	runtimeDir := ""
	for _, kv := range env { // the last one is runEnv's
		if v, ok := strings.CutPrefix(kv, "XDG_RUNTIME_DIR="); ok {
			runtimeDir = v
		}
	}
	if ents, _ := os.ReadDir(filepath.Join(runtimeDir, "vessel", "containers")); len(ents) != 0 {
		t.Errorf("refused runs left %d container states", len(ents))
	}
}

// TestRunDetached: a container run with -d keeps running after vessel
// run returns, and ps, logs, exec, stop and rm manage it; --rm leaves
// nothing behind.
func TestRunDetached(t *testing.T) {
	if *guestMode {
		t.Skip("host half only")
	}
	env := runEnv(t)
	runtimeDir := ""
	for _, kv := range env {
		if v, ok := strings.CutPrefix(kv, "XDG_RUNTIME_DIR="); ok {
			runtimeDir = v
		}
	}
	port := freePort(t)
	r := vesselRun(t, env, "", "-d", "--name", "web", "-p", fmt.Sprintf("127.0.0.1:%d:80", port), runImage,
		"sh", "-c", `echo started; trap 'echo stopping; exit 3' TERM; httpd -f -p 80 -h /www & wait`)
	id := strings.TrimSpace(r.stdout)
	if r.code != 0 || len(id) != 64 {
		t.Fatalf("vessel run -d: want the container ID:\n%v", r)
	}
	defer cli(t, env, "", "rm", "-f", "web")
	if r := cli(t, env, "", "ps"); r.code != 0 || !strings.Contains(r.stdout, id[:12]) || !strings.Contains(r.stdout, "web") {
		t.Errorf("ps does not list the running container:\n%v", r)
	}
	client := &http.Client{Timeout: 10 * time.Second}
	var body string
	for deadline := time.Now().Add(2 * time.Minute); time.Now().Before(deadline) && body == ""; time.Sleep(time.Second) {
		if resp, err := client.Get(fmt.Sprintf("http://127.0.0.1:%d/", port)); err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			body = string(b)
		}
	}
	if body != bbimage.Index {
		t.Errorf("GET through the published port of the detached container: %q", body)
	}
	if r := cli(t, env, "", "exec", "web", "sh", "-c", "echo exec-out; echo exec-err >&2; hostname; exit 5"); r.code != 5 ||
		r.stdout != "exec-out\n"+id[:12]+"\n" || r.stderr != "exec-err\n" {
		t.Errorf("exec: want status 5, its output and the container's host name:\n%v", r)
	}
	if r := cli(t, env, "piped\n", "exec", "-i", "-u", "app", "-w", "/tmp", "web", "sh", "-c", "echo $(cat) $(id -u) $(pwd)"); r.code != 0 || r.stdout != "piped 1000 /tmp\n" {
		t.Errorf("exec -i -u -w:\n%v", r)
	}
	if r := cli(t, env, "", "exec", "web", "no-such-command"); r.code != 127 {
		t.Errorf("exec of a missing command: want 127:\n%v", r)
	}
	if r := cli(t, env, "", "logs", "web"); r.code != 0 || r.stdout != "started\n" {
		t.Errorf("logs: want the container's first line:\n%v", r)
	}
	if r := cli(t, env, "", "rm", "web"); r.code != 1 {
		t.Errorf("rm of a running container without -f: want status 1:\n%v", r)
	}
	if r := cli(t, env, "", "stop", "web"); r.code != 0 {
		t.Errorf("stop:\n%v", r)
	}
	if r := cli(t, env, "", "ps", "-a"); !strings.Contains(r.stdout, "Exited (3)") {
		t.Errorf("ps -a after stop: want Exited (3) (the trap's status):\n%v", r)
	}
	if r := cli(t, env, "", "logs", id[:8]); r.stdout != "started\nstopping\n" {
		t.Errorf("logs by ID prefix after stop:\n%v", r)
	}
	if r := cli(t, env, "", "rm", "web"); r.code != 0 {
		t.Errorf("rm:\n%v", r)
	}
	if r := cli(t, env, "", "ps", "-a", "-q"); r.stdout != "" && strings.Contains(r.stdout, id[:12]) {
		t.Errorf("ps -a lists the removed container:\n%v", r)
	}
	for _, args := range [][]string{{"logs", "web"}, {"stop", "web"}, {"rm", "web"}} {
		if r := cli(t, env, "", args...); r.code != 1 || strings.Count(strings.TrimSpace(r.stderr), "\n") != 0 {
			t.Errorf("vessel %v of a removed container: want status 1 and one line:\n%v", args, r)
		}
	}
	if r := cli(t, env, "", "exec", "web", "true"); r.code != 125 {
		t.Errorf("exec in a removed container: want 125:\n%v", r)
	}

	// --rm: nothing is left in the state root or the temporary directory.
	tmpBefore, _ := filepath.Glob(filepath.Join(os.TempDir(), "vessel-run-*"))
	if r := vesselRun(t, env, "", "--rm", runImage, "true"); r.code != 0 {
		t.Fatalf("run --rm:\n%v", r)
	}
	states, _ := os.ReadDir(filepath.Join(runtimeDir, "vessel", "containers"))
	if len(states) != 0 {
		t.Errorf("%d container states left after run --rm and rm", len(states))
	}
	if tmpAfter, _ := filepath.Glob(filepath.Join(os.TempDir(), "vessel-run-*")); len(tmpAfter) > len(tmpBefore) {
		t.Errorf("temporary directories left: %v", tmpAfter)
	}
}

// TestRunTTY: vessel run -it gives the container a terminal of the host
// terminal's size, passes typed input through the raw host terminal, and
// passes a window size change on.
func TestRunTTY(t *testing.T) {
	if *guestMode {
		t.Skip("host half only")
	}
	env := runEnv(t)
	m, s := openPTY(t)
	setSize := func(rows, cols uint16) {
		if err := unix.IoctlSetWinsize(int(m.Fd()), unix.TIOCSWINSZ, &unix.Winsize{Row: rows, Col: cols}); err != nil {
			t.Fatal(err)
		}
	}
	setSize(40, 120)
	cmd := exec.Command(vesselBin, "run", "-it", "--name", "tty", runImage, "sh", "-c",
		`echo size=$(stty size) tty=$(tty); read x; echo got-$x; read y; echo size=$(stty size); exit 3`)
	cmd.Env = env
	r := startOnPTY(t, cmd, m, s)
	wait, done, out := r.waitFor, r.done, &r.out
	wait("size=40 120 tty=/dev/pts/")
	m.Write([]byte("typed\r"))
	wait("got-typed")
	setSize(50, 100) // SIGWINCH to vessel, a resize to the container's terminal
	time.Sleep(2 * time.Second)
	m.Write([]byte("go\r"))
	wait("size=50 100")
	select {
	case <-done:
	case <-time.After(time.Minute):
		t.Fatalf("vessel did not end with the container:\n%q", out.String())
	}
	if code := cmd.ProcessState.ExitCode(); code != 3 {
		t.Errorf("exit status %d, want the container's 3:\n%q", code, out.String())
	}
}

// TestRunDiagnosis: with VESSEL_DEBUG set, a run that gives up on its
// guest describes the VM below its error: each vCPU, the interrupt
// controllers and every virtio queue, read from the real guest. The
// test stops the VM the way vessel does when the guest stops answering
// (the jailed VMM process's diagnosis signal).
func TestRunDiagnosis(t *testing.T) {
	if *guestMode {
		t.Skip("host half only")
	}
	env := append(runEnv(t), "VESSEL_DEBUG=1")
	cmd := exec.Command(vesselBin, "run", "--rm", runImage, "sh", "-c", "echo up; sleep 600")
	cmd.Env = env
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr syncBuffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	if !waitLine(t, out, "up", 4*time.Minute) {
		// vessel run describes a guest that stops answering itself
		// (VESSEL_DEBUG).
		t.Fatalf("vessel run's stderr:\n%s", stderr.String())
	}
	// This run's jailed VMM: the child of its vessel process (a VM an
	// earlier test left to a crashed outer kernel may still be there).
	vmm := childVMM(cmd.Process.Pid)
	if vmm == 0 {
		t.Fatalf("no jailed VMM process under vessel run (%d)", cmd.Process.Pid)
	}
	expectDiagnosis(t, cmd, &stderr, vmm, "the VM's state when vessel gave up on it:", "vCPU 0: ", "rip 0x", "cr3 0x", "stack [", "lapic irr [",
		"IOAPIC: irr", "vsock status 0xf", "q0 avail", "block status 0xf")
	// A vCPU stopped in the kernel has a backtrace; one stopped in a
	// user process (rip 0x40f2ea in a CI run) has no kernel addresses
	// on its stack.
	if d := stderr.String(); strings.Contains(d, "rip 0xffffffff") && !strings.Contains(d, "stack [0xffffffff") {
		t.Errorf("a vCPU in the kernel without a backtrace:\n%s", d)
	}
}

// expectDiagnosis sends pid (cmd's process, or its jailed VMM) the
// diagnosis signal and wants cmd to end within a minute with exit status
// 125 and every one of wants in its stderr: the VM's description.
func expectDiagnosis(t *testing.T, cmd *exec.Cmd, stderr *syncBuffer, pid int, wants ...string) {
	t.Helper()
	if err := syscall.Kill(pid, syscall.SIGUSR2); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case <-done:
	case <-time.After(time.Minute):
		t.Fatalf("vessel did not end within a minute of SIGUSR2; stderr:\n%s", stderr.String())
	}
	if code := cmd.ProcessState.ExitCode(); code != 125 {
		t.Errorf("exit status %d, want 125", code)
	}
	msg := stderr.String()
	for _, want := range wants {
		if !strings.Contains(msg, want) {
			t.Errorf("the diagnosis lacks %q:\n%s", want, msg)
		}
	}
	// A healthy guest's page-table root is in its RAM: the flag is kept
	// for another machine's state in a vCPU (see platformFlake).
	if strings.Contains(msg, "outside guest RAM") {
		t.Errorf("the diagnosis of a healthy guest says its CR3 is outside guest RAM:\n%s", msg)
	}
	t.Logf("vessel's report:\n%s", msg)
}

// hostRoom describes the free space of the file system holding dir and
// the host's available memory.
func hostRoom(dir string) string {
	var st unix.Statfs_t
	free := "unknown"
	if unix.Statfs(dir, &st) == nil {
		free = fmt.Sprintf("%d MiB", st.Bavail*uint64(st.Bsize)>>20)
	}
	avail := "unknown"
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, "MemAvailable:"); ok {
				avail = strings.TrimSpace(v)
			}
		}
	}
	return fmt.Sprintf("%s free under %s, memory available %s", free, dir, avail)
}
