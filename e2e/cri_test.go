//go:build e2e

package e2e

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/vesselvm/vessel/internal/bbimage"
)

var criCaptures = flag.Bool("e2e.cri-captures", false,
	"TestCRI: print the OCI runtime calls containerd's shim made (argv, the bundle's config.json, the runtime's --log) "+
		"at the end as a base64 tar.gz between "+criCapturesBegin+" and "+criCapturesEnd+" lines")

const (
	criCapturesBegin = "CRI-CAPTURES-BEGIN"
	criCapturesEnd   = "CRI-CAPTURES-END"

	// criPauseImage is the pods' sandbox image: bbimage's busybox
	// waiting forever.
	criPauseImage = "vessel.test/pause:1"
	// criImage is the containers' image: bbimage's busybox as is.
	criImage = "vessel.test/busybox:1"
	// criBridge is the CNI bridge, criSubnet its network.
	criBridge = "vcri0"
	criSubnet = "10.88.77.0/24"
	// criPath is containerd's PATH: its shim and runc are Debian's.
	criPath = "/usr/sbin:/usr/bin:/sbin:/bin"
	// criTimeout bounds one crictl command (a VM boot under the nested
	// platform included).
	criTimeout = 4 * time.Minute
)

// crictlBin is cri-tools' crictl, which `make test-e2e` builds into
// build/peers (it is not in Debian 12).
func crictlBin(t *testing.T) string {
	t.Helper()
	root, err := repoRoot()
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(root, "build", "peers", "crictl")
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("crictl: %v (make test-e2e builds it; or `make crictl`)", err)
	}
	return p
}

// criDaemon is a containerd with its CRI plugin that a test started,
// all its state in a directory of its own.
type criDaemon struct {
	dir     string // root, state, sockets, config, CNI configuration, log
	sock    string
	cmd     *exec.Cmd
	exited  chan struct{}
	logPath string
	crictl  string
	trace   string            // the runtime calls' records
	roots   map[string]string // runtime handler to its --root
}

// criRuntimeScript records a runtime call (argv, the bundle's
// config.json on create, the runtime's --log after it) in @TRACE@ and
// runs @REAL@ with --debug. It does not exec the runtime: a process
// create leaves behind is reparented to the shim (a subreaper) anyway.
const criRuntimeScript = `#!/bin/sh
n=$(date +%s%N)-$$
d=@TRACE@/calls/$n
mkdir -p "$d"
printf '%s\n' "$@" >"$d/argv"
bundle= log= prev=
for a in "$@"; do
	case "$prev" in
	--bundle|-b) bundle=$a ;;
	--log) log=$a ;;
	esac
	prev=$a
done
[ -n "$bundle" ] && cp "$bundle/config.json" "$d/config.json" 2>/dev/null
@REAL@ --debug "$@"
rc=$?
echo "$rc" >"$d/rc"
[ -n "$log" ] && cp "$log" "$d/log" 2>/dev/null
exit $rc
`

// criConfig is containerd's config.toml: everything below dir, the CRI
// plugin with runc and vessel as runtime handlers, CNI from Debian's
// plugins with a configuration of the test's.
const criConfig = `version = 2
root = "@DIR@/root"
state = "@DIR@/state"
plugin_dir = ""
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]

[grpc]
  address = "@DIR@/containerd.sock"
[ttrpc]
  address = "@DIR@/containerd.sock.ttrpc"
[debug]
  level = "debug"

[plugins."io.containerd.internal.v1.opt"]
  path = "@DIR@/opt"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "` + criPauseImage + `"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  disable_apparmor = true
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "@SNAPSHOTTER@"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = "@DIR@/runtime-runc"
        Root = "@RUNCROOT@"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.vessel]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.vessel.options]
        BinaryName = "@DIR@/runtime-vessel"
        Root = "@VESSELROOT@"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "@DIR@/cni"
    max_conf_num = 1
`

// criCNI is the pods' network: a bridge with the gateway on the outer
// VM, host-local addresses, no masquerading (the pods talk to the outer
// VM only).
const criCNI = `{
  "cniVersion": "0.4.0",
  "name": "vessel-cri",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "` + criBridge + `",
      "isGateway": true,
      "ipMasq": false,
      "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": "` + criSubnet + `"}]],
        "routes": [{"dst": "0.0.0.0/0"}],
        "dataDir": "@DIR@/ipam"
      }
    }
  ]
}
`

// overlayWorks reports whether overlayfs mounts on dir's file system,
// as containerd's overlayfs snapshotter needs.
func overlayWorks(dir string) bool {
	p := filepath.Join(dir, "overlay-probe")
	for _, d := range []string{"lower", "upper", "work", "merged"} {
		if err := os.MkdirAll(filepath.Join(p, d), 0o755); err != nil {
			return false
		}
	}
	defer os.RemoveAll(p)
	opts := fmt.Sprintf("lowerdir=%s/lower,upperdir=%s/upper,workdir=%s/work", p, p, p)
	if err := unix.Mount("overlay", filepath.Join(p, "merged"), "overlay", 0, opts); err != nil {
		return false
	}
	unix.Unmount(filepath.Join(p, "merged"), unix.MNT_DETACH)
	return true
}

// startContainerd starts containerd with the CRI plugin and the runc
// and vessel runtime handlers, waits until crictl reaches it, and stops
// it and cleans up when the test ends.
func startCRIContainerd(t *testing.T) *criDaemon {
	t.Helper()
	for _, p := range []string{"/usr/bin/containerd", "/usr/bin/ctr", "/usr/bin/containerd-shim-runc-v2", "/usr/sbin/runc"} {
		if _, err := os.Stat(p); err != nil {
			t.Fatalf("Debian's containerd and runc (make deps installs them): %v", err)
		}
	}
	for _, p := range []string{"bridge", "host-local", "loopback"} {
		if _, err := os.Stat(filepath.Join("/usr/lib/cni", p)); err != nil {
			t.Fatalf("Debian's containernetworking-plugins (make deps installs it): %v", err)
		}
	}
	if _, err := netlink.LinkByName(criBridge); err == nil {
		t.Fatalf("a %s bridge exists already: TestCRI's pods would share it", criBridge)
	}
	d := &criDaemon{dir: t.TempDir(), exited: make(chan struct{}), crictl: crictlBin(t)}
	d.sock = filepath.Join(d.dir, "containerd.sock")
	d.logPath = filepath.Join(d.dir, "containerd.log")
	d.trace = filepath.Join(d.dir, "trace")
	// The runtimes' state goes in a short directory: vessel-runtime's
	// sockets are below --root (the shim's Root plus /k8s.io) and a
	// container's 64-character ID, and a socket's path has at most 107
	// bytes (containerd's default, /run/containerd/runc, leaves 9 spare).
	short, err := os.MkdirTemp("/run", "vcri")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(short) })
	d.roots = map[string]string{"runc": filepath.Join(short, "runc"), "vessel": filepath.Join(short, "vessel")}
	if strings.ContainsAny(d.dir, "'\"\n ") {
		t.Fatalf("temporary directory %q cannot be quoted", d.dir)
	}
	snapshotter := "native"
	if overlayWorks(d.dir) {
		snapshotter = "overlayfs"
	}
	t.Logf("containerd: %s snapshotter, state in %s", snapshotter, d.dir)
	repl := strings.NewReplacer("@DIR@", d.dir, "@SNAPSHOTTER@", snapshotter, "@RUNCROOT@", d.roots["runc"], "@VESSELROOT@", d.roots["vessel"])
	for n, real := range map[string]string{"runc": "/usr/sbin/runc", "vessel": runtimeBin(t)} {
		script := strings.NewReplacer("@TRACE@", d.trace, "@REAL@", real).Replace(criRuntimeScript)
		if err := os.WriteFile(filepath.Join(d.dir, "runtime-"+n), []byte(script), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, sub := range []string{"cni", "trace/calls", "logs"} {
		if err := os.MkdirAll(filepath.Join(d.dir, sub), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	files := map[string]string{
		"config.toml":                repl.Replace(criConfig),
		"cni/10-vessel-cri.conflist": repl.Replace(criCNI),
		"crictl.yaml":                "runtime-endpoint: unix://" + d.sock + "\nimage-endpoint: unix://" + d.sock + "\ntimeout: 240\n",
	}
	for n, body := range files {
		if err := os.WriteFile(filepath.Join(d.dir, n), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	logf, err := os.Create(d.logPath)
	if err != nil {
		t.Fatal(err)
	}
	d.cmd = exec.Command("/usr/bin/containerd", "--config", filepath.Join(d.dir, "config.toml"))
	d.cmd.Stdout, d.cmd.Stderr = logf, logf
	d.cmd.Env = append(os.Environ(), "PATH="+criPath)
	d.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := d.cmd.Start(); err != nil {
		t.Fatalf("start containerd: %v", err)
	}
	logf.Close()
	go func() { d.cmd.Wait(); close(d.exited) }()
	t.Cleanup(func() { d.stop(t) })
	deadline := time.Now().Add(2 * time.Minute)
	for {
		r := d.run(t, 20*time.Second, "info")
		if r.code == 0 {
			break
		}
		select {
		case <-d.exited:
			t.Fatalf("containerd exited: %s\nlog:\n%s", d.cmd.ProcessState, tailLines(readFile(d.logPath), 40))
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("containerd's CRI did not answer within 2 minutes: %v\nlog:\n%s", r, tailLines(readFile(d.logPath), 40))
		}
		time.Sleep(time.Second)
	}
	return d
}

// criResult is a finished command's outcome.
type criResult struct {
	code           int // exit status, -1 when killed
	stdout, stderr string
	elapsed        time.Duration
}

func (r criResult) String() string {
	return fmt.Sprintf("exit %d after %v, stdout %q, stderr %q", r.code, r.elapsed.Round(time.Millisecond),
		tailLines(r.stdout, 20), tailLines(r.stderr, 20))
}

// run runs crictl against d, killed after timeout.
func (d *criDaemon) run(t *testing.T, timeout time.Duration, args ...string) criResult {
	t.Helper()
	return runCmd(t, timeout, d.crictl, append([]string{"--config", filepath.Join(d.dir, "crictl.yaml")}, args...)...)
}

// ok runs crictl and fails the test unless it succeeds; it returns its
// trimmed stdout.
func (d *criDaemon) ok(t *testing.T, args ...string) string {
	t.Helper()
	r := d.run(t, criTimeout, args...)
	if r.code != 0 {
		t.Fatalf("crictl %s: %v\ncontainerd's log:\n%s\nruntime calls:\n%s", strings.Join(args, " "), r,
			tailLines(readFile(d.logPath), 30), d.calls(true))
	}
	t.Logf("crictl %s: %v", strings.Join(args, " "), r.elapsed.Round(time.Millisecond))
	return strings.TrimSpace(r.stdout)
}

// runCmd runs a command, killed after timeout.
func runCmd(t *testing.T, timeout time.Duration, bin string, args ...string) criResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = append(os.Environ(), "PATH="+criPath)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	err := cmd.Run()
	r := criResult{stdout: stdout.String(), stderr: stderr.String(), elapsed: time.Since(start)}
	var ee *exec.ExitError
	switch {
	case ctx.Err() != nil:
		r.code = -1
		r.stderr += fmt.Sprintf("\n(%s %s killed after %v)", filepath.Base(bin), strings.Join(args, " "), timeout)
		r.stderr += describeVMMs()
	case errors.As(err, &ee):
		r.code = ee.ExitCode()
	case err != nil:
		t.Fatalf("%s %v: %v", bin, args, err)
	}
	return r
}

// importImages writes the pause and busybox images as one
// docker-archive and imports it into the k8s.io namespace, where the
// CRI plugin finds its images.
func (d *criDaemon) importImages(t *testing.T) {
	t.Helper()
	img, err := bbimage.BuildForHost()
	if err != nil {
		t.Fatal(err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	pcf := cf.DeepCopy()
	pcf.Config.Entrypoint, pcf.Config.Cmd, pcf.Config.WorkingDir = nil, []string{"sleep", "2147483647"}, "/"
	pause, err := mutate.ConfigFile(img, pcf)
	if err != nil {
		t.Fatal(err)
	}
	refs := map[name.Reference]v1.Image{}
	for ref, im := range map[string]v1.Image{criPauseImage: pause, criImage: img} {
		tag, err := name.NewTag(ref)
		if err != nil {
			t.Fatal(err)
		}
		refs[tag] = im
	}
	archive := filepath.Join(d.dir, "images.tar")
	if err := tarball.MultiRefWriteToFile(archive, refs); err != nil {
		t.Fatalf("write the image archive: %v", err)
	}
	defer os.Remove(archive)
	r := runCmd(t, 2*time.Minute, "/usr/bin/ctr", "--address", d.sock, "--namespace", "k8s.io", "image", "import", archive)
	if r.code != 0 {
		t.Fatalf("ctr image import: %v", r)
	}
	out := d.ok(t, "images", "-q")
	t.Logf("images: %s", strings.ReplaceAll(out, "\n", " "))
}

// calls summarizes the runtime calls recorded so far: one line each,
// the arguments and exit status, with the runtime's log when it failed
// (or always, with logs).
func (d *criDaemon) calls(logs bool) string {
	ents, _ := os.ReadDir(filepath.Join(d.trace, "calls"))
	var b strings.Builder
	for _, e := range ents {
		dir := filepath.Join(d.trace, "calls", e.Name())
		argv, _ := os.ReadFile(filepath.Join(dir, "argv"))
		rc, _ := os.ReadFile(filepath.Join(dir, "rc"))
		rcs := strings.TrimSpace(string(rc))
		if rcs == "" {
			rcs = "running"
		}
		fmt.Fprintf(&b, "  %s -> %s\n", strings.Join(strings.Fields(string(argv)), " "), rcs)
		if logs || rcs != "0" {
			if l, _ := os.ReadFile(filepath.Join(dir, "log")); len(l) > 0 {
				fmt.Fprintf(&b, "    log: %s\n", strings.ReplaceAll(tailLines(string(l), 10), "\n", "\n    log: "))
			}
		}
	}
	return b.String()
}

// forcedKills returns the runtime's log lines, over every call, that
// say a guest did not confirm SIGKILL and its container was ended
// without it.
func (d *criDaemon) forcedKills() string {
	var b strings.Builder
	seen := map[string]bool{}
	ents, _ := os.ReadDir(filepath.Join(d.trace, "calls"))
	for _, e := range ents {
		l, _ := os.ReadFile(filepath.Join(d.trace, "calls", e.Name(), "log"))
		for _, line := range strings.Split(string(l), "\n") {
			if (strings.Contains(line, "the VM is stopped instead") || strings.Contains(line, "is ended without the guest")) && !seen[line] {
				seen[line] = true
				b.WriteString(line + "\n")
			}
		}
	}
	return b.String()
}

// dumpCaptures prints the trace directory as a base64 tar.gz between
// marker lines (files written in the test platform do not outlive it).
func (d *criDaemon) dumpCaptures(t *testing.T) {
	var buf bytes.Buffer
	gz := gzip.NewWriter(&buf)
	tw := tar.NewWriter(gz)
	filepath.WalkDir(d.trace, func(p string, e fs.DirEntry, err error) error {
		if err != nil || !e.Type().IsRegular() {
			return nil
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return nil
		}
		rel, _ := filepath.Rel(d.trace, p)
		tw.WriteHeader(&tar.Header{Name: rel, Mode: 0o644, Size: int64(len(b)), ModTime: time.Now()})
		tw.Write(b)
		return nil
	})
	// containerd's log too.
	if b, err := os.ReadFile(d.logPath); err == nil {
		tw.WriteHeader(&tar.Header{Name: "containerd.log", Mode: 0o644, Size: int64(len(b)), ModTime: time.Now()})
		tw.Write(b)
	}
	tw.Close()
	gz.Close()
	enc := base64.StdEncoding.EncodeToString(buf.Bytes())
	fmt.Println(criCapturesBegin)
	for len(enc) > 0 {
		n := min(len(enc), 76)
		fmt.Println(enc[:n])
		enc = enc[n:]
	}
	fmt.Println(criCapturesEnd)
}

// stop removes the pods left, stops containerd and its shims, and
// removes what they left (mounts below the directory, the bridge),
// reporting each as an error.
func (d *criDaemon) stop(t *testing.T) {
	if r := d.run(t, time.Minute, "pods", "-q"); r.code == 0 {
		for _, id := range strings.Fields(r.stdout) {
			// A minute each: a pod left is a failure already, and a
			// hung one must not take the block past its time limit,
			// where the test's verdict (and its guest's description)
			// would be lost.
			t.Errorf("pod %s left at the end; removing it", id)
			d.run(t, time.Minute, "stopp", id)
			d.run(t, time.Minute, "rmp", "--force", id)
		}
	}
	if *criCaptures {
		d.dumpCaptures(t)
	}
	d.cmd.Process.Signal(unix.SIGTERM)
	select {
	case <-d.exited:
	case <-time.After(30 * time.Second):
		t.Errorf("containerd did not exit within 30 s of SIGTERM; killing it")
		d.cmd.Process.Kill()
		<-d.exited
	}
	// Shims of this containerd (their -address is its socket) outlive
	// it while they have containers.
	for pid, args := range criProcessesWith(d.sock) {
		t.Errorf("process left: %d %s; killing it", pid, args)
		unix.Kill(pid, unix.SIGKILL)
	}
	for _, m := range mountsBelow(d.dir) {
		t.Errorf("mount left: %s", m)
		unix.Unmount(m, unix.MNT_DETACH)
	}
	if l, err := netlink.LinkByName(criBridge); err == nil {
		netlink.LinkDel(l)
	}
}

// processesWith lists the running processes whose command line has s.
func criProcessesWith(s string) map[int]string {
	return liveProcesses(func(args []string) bool { return strings.Contains(strings.Join(args, "\x00"), s) })
}

// mountsBelow lists the mount points at or below dir, deepest last.
func mountsBelow(dir string) []string {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 {
			continue
		}
		mp := unescapeMount(fields[4])
		if mp == dir || strings.HasPrefix(mp, dir+"/") {
			out = append(out, mp)
		}
	}
	// Unmount the last mounted first.
	for i, j := 0, len(out)-1; i < j; i, j = i+1, j-1 {
		out[i], out[j] = out[j], out[i]
	}
	return out
}

// unescapeMount undoes mountinfo's octal escapes (\040 for a space).
func unescapeMount(s string) string {
	return regexp.MustCompile(`\\[0-7]{3}`).ReplaceAllStringFunc(s, func(m string) string {
		n, _ := strconv.ParseUint(m[1:], 8, 8)
		return string(rune(n))
	})
}

// tailLines is the last n lines of s.
func tailLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// writeJSON writes v as JSON to dir/name and returns its path.
func writeJSON(t *testing.T, dir, name string, v any) string {
	t.Helper()
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestCRI is Kubernetes' way in (issue 10, done-when 4): containerd's
// CRI plugin, driven by crictl, runs a pod of two containers with CNI
// networking, first with runc (proving the harness), then with
// vessel-runtime, where the pod is one VM.
func TestCRI(t *testing.T) {
	d := startCRIContainerd(t)
	d.importImages(t)
	hostBoot := strings.TrimSpace(readFile("/proc/sys/kernel/random/boot_id"))
	for _, rt := range []string{"runc", "vessel"} {
		t.Run(rt, func(t *testing.T) {
			criPod(t, d, rt, hostBoot)
		})
	}
	t.Logf("runtime calls:\n%s", d.calls(false))
}

// bootIDRe is a boot ID as /proc/sys/kernel/random/boot_id has it.
var bootIDRe = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`)

// criPod runs the pod of TestCRI with the runtime handler rt.
func criPod(t *testing.T, d *criDaemon, rt, hostBoot string) {
	dir := t.TempDir()
	pod := writeJSON(t, dir, "pod.json", map[string]any{
		"metadata":      map[string]any{"name": "pod-" + rt, "namespace": "default", "uid": "uid-" + rt, "attempt": 0},
		"hostname":      "pod-" + rt,
		"log_directory": filepath.Join(d.dir, "logs", rt),
		"linux":         map[string]any{},
	})
	container := func(n string, readOnly bool, script string) string {
		return writeJSON(t, dir, n+".json", map[string]any{
			"metadata": map[string]any{"name": n},
			"image":    map[string]any{"image": criImage},
			"command":  []string{"sh", "-c", script},
			"log_path": n + ".log",
			"linux":    map[string]any{"security_context": map[string]any{"readonly_rootfs": readOnly}},
		})
	}
	// c1 serves the image's web root on port 80; c2, whose root is
	// read-only (as the sandbox's is: the image lacks the mount points
	// of /etc/hosts and the like), fetches it over the pod's localhost.
	c1 := container("c1", false, "cat /proc/sys/kernel/random/boot_id; echo c1-serving; exec httpd -f -p 80 -h /www")
	c2 := container("c2", true, "cat /proc/sys/kernel/random/boot_id; "+
		"if touch /probe 2>/dev/null; then echo root-writable; else echo root-read-only; fi; "+
		"for i in $(seq 1 60); do if wget -q -O - http://127.0.0.1:80/; then echo c2-fetched; break; fi; sleep 1; done; "+
		"exec sleep 2147483647")

	podID := d.ok(t, "runp", "--runtime", rt, pod)
	removed := false
	defer func() {
		if !removed {
			d.run(t, criTimeout, "stopp", podID)
			d.run(t, criTimeout, "rmp", "--force", podID)
		}
	}()
	id1 := d.ok(t, "create", "--no-pull", podID, c1, pod)
	id2 := d.ok(t, "create", "--no-pull", podID, c2, pod)
	d.ok(t, "start", id1)
	d.ok(t, "start", id2)

	// Both containers' logs: their boot IDs, c2's fetch over localhost.
	var log1, log2 string
	deadline := time.Now().Add(3 * time.Minute)
	for {
		log1 = d.run(t, time.Minute, "logs", id1).stdout
		log2 = d.run(t, time.Minute, "logs", id2).stdout
		if strings.Contains(log2, "c2-fetched") && strings.Contains(log1, "c1-serving") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("c2 did not fetch c1's page over localhost within 3 minutes: c1's log %q, c2's log %q\nps: %s\nruntime calls:\n%s",
				log1, log2, d.run(t, time.Minute, "ps", "-a").stdout, d.calls(true))
		}
		time.Sleep(2 * time.Second)
	}
	boot1, _, _ := strings.Cut(log1, "\n")
	boot2, _, _ := strings.Cut(log2, "\n")
	if !bootIDRe.MatchString(boot1) || boot1 != boot2 {
		t.Errorf("boot IDs: c1 %q, c2 %q: want one kernel's", boot1, boot2)
	}
	if rt == "runc" && boot1 != hostBoot || rt != "runc" && boot1 == hostBoot {
		t.Errorf("the pod's boot ID %q, the outer VM's %q: want them %s", boot1, hostBoot,
			map[bool]string{true: "equal (runc)", false: "different (a VM)"}[rt == "runc"])
	}
	if !strings.Contains(log2, "root-read-only\n") {
		t.Errorf("c2's log %q: want its read-only root refusing a new file", log2)
	}
	if !strings.Contains(log2, strings.TrimSpace(bbimage.Index)) {
		t.Errorf("c2's log %q: want c1's page %q", log2, bbimage.Index)
	}
	t.Logf("c1's log: %q; c2's log: %q", log1, log2)

	// The pod's IP from the outer VM.
	var insp struct {
		Status struct {
			Network struct {
				IP string `json:"ip"`
			} `json:"network"`
		} `json:"status"`
	}
	if err := json.Unmarshal([]byte(d.ok(t, "inspectp", "-o", "json", podID)), &insp); err != nil {
		t.Fatalf("crictl inspectp: %v", err)
	}
	ip := insp.Status.Network.IP
	if !strings.HasPrefix(ip, "10.88.77.") {
		t.Errorf("the pod's IP %q: want one of %s", ip, criSubnet)
	} else {
		body, err := httpGet("http://"+ip+"/", time.Minute)
		if err != nil || body != bbimage.Index {
			t.Errorf("GET http://%s/ from the outer VM: %q, %v; want %q", ip, body, err, bbimage.Index)
		} else {
			t.Logf("GET http://%s/ from the outer VM: %q", ip, body)
		}
	}

	// exec in c1: the same kernel.
	if r := d.run(t, criTimeout, "exec", id1, "cat", "/proc/sys/kernel/random/boot_id"); r.code != 0 || strings.TrimSpace(r.stdout) != boot1 {
		t.Errorf("crictl exec %s cat boot_id: %v; want %q", id1, r, boot1)
	}

	d.ok(t, "stopp", podID)
	d.ok(t, "rmp", podID)
	removed = true
	if out := d.ok(t, "pods", "-q"); out != "" {
		t.Errorf("pods left after rmp: %q", out)
	}
	if rt == "vessel" {
		checkNothingLeft(t, filepath.Join(d.roots[rt], "k8s.io"))
		// A kill the guest did not confirm ends the container anyway
		// (vessel-runtime stops its VM), and the pod's stop succeeds:
		// the hung guest is still a failure here, with its description
		// (from the runtime's log) for runblock's rules.
		if lines := d.forcedKills(); lines != "" {
			t.Errorf("a guest did not confirm SIGKILL:\n%s", lines)
		}
	}
}

// httpGet fetches url, retrying connection failures for up to wait.
func httpGet(url string, wait time.Duration) (string, error) {
	c := &http.Client{Timeout: 20 * time.Second}
	deadline := time.Now().Add(wait)
	for {
		resp, err := c.Get(url)
		if err == nil {
			b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
			resp.Body.Close()
			return string(b), err
		}
		if time.Now().After(deadline) {
			return "", err
		}
		time.Sleep(time.Second)
	}
}
