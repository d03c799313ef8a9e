//go:build e2e

package e2e

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vesselvm/vessel/internal/bbimage"
)

// podmanEnv is rootful podman (Debian's 4.3) with a configuration of the
// test's own: containers.conf and storage.conf in a temporary directory,
// image store, run and temporary directories under it.
type podmanEnv struct {
	dir string
	env []string
}

// newPodman writes the configuration. vessel-runtime is the runtime
// "vessel", which podman drives as it drives runc (JSON log, the
// runtime's default --root), with KVM; conmon passes VESSEL_GUEST_DIR
// on to it.
func newPodman(t *testing.T) *podmanEnv {
	t.Helper()
	for _, bin := range []string{"podman", "conmon"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Fatalf("%s: %v (make deps installs it)", bin, err)
		}
	}
	p := &podmanEnv{dir: t.TempDir()}
	sub := func(n string) string { return filepath.Join(p.dir, n) }
	// This host lacks CAP_SYS_RESOURCE: podman's default ulimits
	// (nofile 1048576) would make the runtime fail (PLATFORM.md).
	conf := fmt.Sprintf(`[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]

[network]
network_backend = "cni"
cni_plugin_dirs = ["/usr/lib/cni"]
network_config_dir = %q

[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = %q
tmp_dir = %q
static_dir = %q
volume_path = %q
conmon_env_vars = ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "VESSEL_GUEST_DIR=%s"]
runtime_supports_json = ["runc", "crun", "vessel"]
runtime_supports_kvm = ["vessel"]

[engine.runtimes]
vessel = [%q]
`, sub("cni"), sub("events.log"), sub("tmp"), sub("static"), sub("volumes"), guestDir, runtimeBin(t))
	storage := fmt.Sprintf(`[storage]
driver = "vfs"
graphroot = %q
runroot = %q
`, sub("graph"), sub("run"))
	for name, body := range map[string]string{"containers.conf": conf, "storage.conf": storage} {
		if err := os.WriteFile(sub(name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	p.env = clientEnv(t, "CONTAINERS_CONF="+sub("containers.conf"), "CONTAINERS_STORAGE_CONF="+sub("storage.conf"))
	t.Cleanup(func() {
		// Containers a failed test left: their mounts would keep the
		// temporary directory from being removed.
		runClient(t, p.env, "podman", "rm", "--all", "--force", "--time", "0")
	})
	return p
}

// podman runs podman with the runtime rt.
func (p *podmanEnv) podman(t *testing.T, rt string, args ...string) clientResult {
	t.Helper()
	return runClient(t, p.env, append([]string{"podman", "--runtime", rt}, args...)...)
}

// podmanRun runs `podman --runtime rt run args...` with --cidfile cid,
// retried once on a fault of the nested platform (runClientRetry).
func (p *podmanEnv) podmanRun(t *testing.T, rt, cid string, args ...string) clientResult {
	t.Helper()
	undo := func() {
		if id := strings.TrimSpace(readFile(cid)); len(id) == 64 {
			runClient(t, p.env, "podman", "rm", "--force", "--time", "0", id)
		}
		os.Remove(cid)
	}
	return runClientRetry(t, p.env, undo, append([]string{"podman", "--runtime", rt, "run", "--cidfile", cid}, args...)...)
}

// runtimeRoots are the runtimes' default state directories, where podman
// (which passes no --root) leaves them.
var runtimeRoots = map[string]string{"runc": "/run/runc", "vessel": "/run/vessel-runtime"}

// cidFile is a file for podman run's --cidfile.
func cidFile(t *testing.T) string {
	t.Helper()
	return filepath.Join(t.TempDir(), "cid")
}

// mustPodman is podman for a command that must succeed.
func (p *podmanEnv) mustPodman(t *testing.T, rt string, args ...string) clientResult {
	t.Helper()
	r := p.podman(t, rt, args...)
	if r.code != 0 {
		t.Fatalf("%v", r)
	}
	return r
}

// TestPodman runs containers through rootful podman 4.3 and conmon:
// first with runc, the harness's baseline, then with vessel-runtime
// (`podman --runtime vessel`). Published ports go through podman's CNI
// network (bridge, portmap with iptables).
func TestPodman(t *testing.T) {
	p := newPodman(t)
	archive := filepath.Join(t.TempDir(), "busybox.tar")
	clientImageArchive(t, archive)
	runClient(t, p.env, "podman", "load", "--input", archive)
	if r := mustClient(t, p.env, "podman", "images", "--format", "{{.Repository}}:{{.Tag}}"); !strings.Contains(r.stdout, clientImage) {
		t.Fatalf("podman load: %s is not in the image list:\n%v", clientImage, r)
	}

	for _, rt := range []string{"runc", "vessel"} {
		inVM := rt == "vessel"
		// nothingLeft checks that podman has no container left, that no
		// VMM process runs, and that the runtime keeps no state for the
		// container whose ID is in the cidfile.
		nothingLeft := func(t *testing.T, cidfile string) {
			t.Helper()
			if r := p.podman(t, rt, "ps", "--all", "--quiet"); r.code != 0 || r.stdout != "" {
				t.Errorf("containers left:\n%v", r)
			}
			if pids := vmmProcesses(t); len(pids) > 0 {
				t.Errorf("VMM processes left: %v", pids)
			}
			id := strings.TrimSpace(readFile(cidfile))
			if len(id) != 64 {
				t.Errorf("--cidfile: %q, want a container ID", id)
				return
			}
			if _, err := os.Lstat(filepath.Join(runtimeRoots[rt], id)); err == nil || !os.IsNotExist(err) {
				t.Errorf("the runtime's state for %s: %v, want none", id, err)
			}
		}

		// Without a network (--network none) the runtime creates the
		// container's network namespace itself; with podman's default
		// CNI network it joins the namespace podman made (a path).
		t.Run(rt+"/exit-status", func(t *testing.T) {
			cid := cidFile(t)
			r := p.podmanRun(t, rt, cid, "--rm", "--network", "none", clientImage, "sh", "-c", "cat /proc/sys/kernel/random/boot_id; exit 3")
			if r.code != 3 {
				t.Errorf("podman run: exit %d, want the container's 3\n%v", r.code, r)
			}
			checkBootID(t, r.stdout, inVM)
			nothingLeft(t, cid)
		})

		t.Run(rt+"/detached", func(t *testing.T) {
			name, cid := rt+"-detached", cidFile(t)
			// The shell is the container's init: exit status 0 after
			// podman stop shows SIGTERM reached it (podman's SIGKILL
			// after the timeout would make it 137).
			if r := p.podmanRun(t, rt, cid, "--detach", "--name", name, "--network", "none", clientImage,
				"sh", "-c", `trap 'echo got-term; exit 0' TERM; echo started; while :; do sleep 1; done`); r.code != 0 {
				t.Fatalf("%v", r)
			}
			if inVM && len(vmmProcesses(t)) != 1 {
				t.Errorf("VMM processes %v, want one", vmmProcesses(t))
			}
			r := p.podman(t, rt, "exec", name, "sh", "-c", "echo in-exec; cat /proc/sys/kernel/random/boot_id; exit 4")
			if f := strings.SplitN(r.stdout, "\n", 2); r.code != 4 || f[0] != "in-exec" || len(f) != 2 {
				t.Errorf("podman exec: want in-exec, a boot ID and exit status 4\n%v", r)
			} else {
				checkBootID(t, f[1], inVM)
			}
			stopAndRemove(t, p, rt, name, "started\n")
			nothingLeft(t, cid)
		})

		t.Run(rt+"/publish", func(t *testing.T) {
			name, cid := rt+"-web", cidFile(t)
			port := freePort(t)
			if r := p.podmanRun(t, rt, cid, "--detach", "--name", name, "--publish", fmt.Sprintf("%d:80", port), clientImage,
				"sh", "-c", `trap 'echo got-term; exit 0' TERM; echo started; httpd -f -h /www -p 80 & wait`); r.code != 0 {
				t.Fatalf("%v", r)
			}
			url := fmt.Sprintf("http://127.0.0.1:%d/", port)
			body, err := httpGetRetry(url, clientTimeout)
			if err != nil || body != bbimage.Index {
				t.Errorf("GET %s (the published port): %q, %v; want %q", url, body, err, bbimage.Index)
			}
			stopAndRemove(t, p, rt, name, "started\n")
			nothingLeft(t, cid)
		})
	}
}

// stopAndRemove checks a running container's log, stops it (its TERM
// handler prints got-term and exits 0), checks its exit code and log,
// and removes it.
func stopAndRemove(t *testing.T, p *podmanEnv, rt, name, log string) {
	t.Helper()
	if r := p.podman(t, rt, "logs", name); r.code != 0 || r.stdout != log {
		t.Errorf("podman logs: want %q\n%v", log, r)
	}
	p.mustPodman(t, rt, "stop", "--time", "60", name)
	if r := p.podman(t, rt, "inspect", "--format", "{{.State.ExitCode}}", name); r.code != 0 || strings.TrimSpace(r.stdout) != "0" {
		t.Errorf("podman inspect: want exit code 0 (the TERM handler's)\n%v", r)
	}
	if r := p.podman(t, rt, "logs", name); r.code != 0 || r.stdout != log+"got-term\n" {
		t.Errorf("podman logs after stop: want %q\n%v", log+"got-term\n", r)
	}
	p.mustPodman(t, rt, "rm", name)
}

// httpGetRetry gets url until it answers 200 or the time is up.
func httpGetRetry(url string, limit time.Duration) (string, error) {
	c := &http.Client{Timeout: 10 * time.Second}
	deadline := time.Now().Add(limit)
	for {
		resp, err := c.Get(url)
		if err == nil {
			b, rerr := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
			resp.Body.Close()
			if rerr == nil && resp.StatusCode == http.StatusOK {
				return string(b), nil
			}
			err = fmt.Errorf("%s (%v)", resp.Status, rerr)
		}
		if time.Now().After(deadline) {
			return "", fmt.Errorf("after %v: %w", limit, err)
		}
		time.Sleep(time.Second)
	}
}
