//go:build e2e

package e2e

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/rand"
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
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/vesselvm/vessel/internal/bbimage"
)

var dockerTrace = flag.Bool("e2e.docker-trace", false,
	"TestDocker: put a recorder in front of each OCI runtime docker calls (argv, stdio, bundle config.json, exit status) "+
		"and print the records at the end as a base64 tar.gz between "+dockerTraceBegin+" and "+dockerTraceEnd+" lines")

var dockerNoNetwork = flag.Bool("e2e.docker-no-network", false,
	"TestDocker: also run vessel's subtests that need no network with --network none (tells network failures from others)")

const (
	// dockerBin is Debian's docker CLI (docker.io); /usr/local/bin/docker
	// may be another program.
	dockerBin  = "/usr/bin/docker"
	dockerdBin = "/usr/sbin/dockerd"
	// dockerImage is the bbimage busybox image, as docker knows it.
	dockerImage = "vessel-e2e/busybox:latest"
	// dockerPath is dockerd's PATH: its containerd, shim, runc and
	// docker-proxy are Debian's.
	dockerPath = "/usr/sbin:/usr/bin:/sbin:/bin"

	dockerTraceBegin = "DOCKER-TRACE-BEGIN"
	dockerTraceEnd   = "DOCKER-TRACE-END"
)

// dockerRunTimeout bounds one docker command that creates a container
// (a VM boot under the nested platform included).
const dockerRunTimeout = 4 * time.Minute

// dockerRuntime is one entry of daemon.json's "runtimes".
type dockerRuntime struct {
	Path        string   `json:"path"`
	RuntimeArgs []string `json:"runtimeArgs,omitempty"`
}

// dockerDaemon is a dockerd (with the containerd it manages) that a test
// started, all its state in a directory of its own.
type dockerDaemon struct {
	dir      string        // data root, socket, daemon.json, log
	execRoot string        // exec root: a short path, as docker's default
	sock     string        // the API socket
	cmd      *exec.Cmd     // dockerd
	exited   chan struct{} // closed when dockerd has exited
	logPath  string        // dockerd's stdout and stderr
	traceDir string        // the runtime calls' records, or ""
	// before are the daemon-kind processes that ran before dockerd
	// started: any other one left at the end is dockerd's.
	before     map[int]bool
	hadDocker0 bool
}

// dockerProcessNames are the programs dockerd starts, directly or
// through containerd, whose processes must be gone when it has stopped.
var dockerProcessNames = []string{"dockerd", "containerd", "containerd-shim", "containerd-shim-runc-v1",
	"containerd-shim-runc-v2", "docker-proxy", "runc", "vessel-runtime"}

// dockerProcesses lists the running (not zombie) processes of
// dockerProcessNames, PID to command line.
func dockerProcesses() map[int]string {
	return liveProcesses(func(args []string) bool { return slicesContains(dockerProcessNames, filepath.Base(args[0])) })
}

// startDockerd starts dockerd with runtimes added to runc, as PLATFORM.md
// says it runs in the nested platform's outer VM (vfs storage, no
// iptables), waits until it answers, and stops it and cleans up when the
// test ends.
func startDockerd(t *testing.T, runtimes map[string]dockerRuntime) *dockerDaemon {
	t.Helper()
	for _, p := range []string{dockerBin, dockerdBin} {
		if _, err := os.Stat(p); err != nil {
			t.Fatalf("Debian's docker.io (make deps installs it): %v", err)
		}
	}
	_, err := netlink.LinkByName("docker0")
	d := &dockerDaemon{dir: t.TempDir(), exited: make(chan struct{}), before: map[int]bool{}, hadDocker0: err == nil}
	if d.hadDocker0 {
		t.Fatalf("a docker0 bridge exists already (another docker daemon?): TestDocker's dockerd would share it")
	}
	for pid := range dockerProcesses() {
		d.before[pid] = true
	}
	d.execRoot = shortDir(t)
	d.sock = filepath.Join(d.dir, "docker.sock")
	d.logPath = filepath.Join(d.dir, "dockerd.log")
	if *dockerTrace {
		d.traceDir = filepath.Join(d.dir, "trace")
		runtimes = d.traced(t, runtimes)
	}
	cfg := map[string]any{
		"data-root":      filepath.Join(d.dir, "data"),
		"exec-root":      d.execRoot,
		"pidfile":        filepath.Join(d.dir, "dockerd.pid"),
		"hosts":          []string{"unix://" + d.sock},
		"storage-driver": "vfs",
		// The outer VM's kernel has no netfilter: docker-proxy
		// publishes ports instead of NAT rules.
		"iptables": false,
		"runtimes": runtimes,
	}
	if *dockerTrace {
		cfg["log-level"] = "debug"
	}
	b, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	cfgPath := filepath.Join(d.dir, "daemon.json")
	if err := os.WriteFile(cfgPath, b, 0o644); err != nil {
		t.Fatal(err)
	}
	if d.traceDir != "" {
		os.WriteFile(filepath.Join(d.traceDir, "daemon.json"), b, 0o644)
	}
	logf, err := os.Create(d.logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	d.cmd = exec.Command(dockerdBin, "--config-file", cfgPath)
	d.cmd.Env = append(os.Environ(), "PATH="+dockerPath)
	d.cmd.Stdout, d.cmd.Stderr = logf, logf
	d.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	start := time.Now()
	if err := d.cmd.Start(); err != nil {
		t.Fatalf("start dockerd: %v", err)
	}
	go func() { d.cmd.Wait(); close(d.exited) }()
	t.Cleanup(func() { d.stop(t) })

	deadline := time.Now().Add(3 * time.Minute)
	for {
		r := d.docker(t, 30*time.Second, "version", "--format", "{{.Server.Version}}")
		if r.code == 0 {
			t.Logf("dockerd %s answers after %v", strings.TrimSpace(r.stdout), time.Since(start).Round(time.Millisecond))
			break
		}
		select {
		case <-d.exited:
			t.Fatalf("dockerd exited (%v) before answering:\n%s", d.cmd.ProcessState, tail(readFile(d.logPath), 40))
		case <-time.After(500 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("dockerd did not answer within 3 minutes (last: %v):\n%s", r, tail(readFile(d.logPath), 40))
		}
	}
	if d.traceDir != "" {
		// dockerd wraps a runtime that has runtimeArgs in a script of
		// its own: keep it with the records.
		scripts, _ := filepath.Glob(filepath.Join(d.dir, "data", "runtimes", "*"))
		for _, s := range scripts {
			if b, err := os.ReadFile(s); err == nil {
				os.WriteFile(filepath.Join(d.traceDir, "dockerd-runtime-script-"+filepath.Base(s)), b, 0o644)
			}
		}
	}
	return d
}

// traceScript records one call of an OCI runtime in the directory
// @TRACE@ and then runs the runtime @REAL@ with the same arguments, stdio
// and environment, and exits with its status. It runs the runtime as a
// child rather than exec'ing it to record that status; the runtime's
// own children are reparented to the caller's subreaper (the shim) as
// they would be without it.
const traceScript = `#!/bin/sh
T=@TRACE@
REAL=@REAL@
n=$(date +%s.%N)-$$
rec="$T/calls/$n"
fds=$(for f in /proc/$$/fd/*; do echo "  ${f##*/} -> $(readlink "$f")"; done)
{
	echo "time: $(date +%s.%N)"
	echo "runtime: $REAL"
	echo "pid: $$ ppid: $PPID parent: $(tr '\0' ' ' </proc/$PPID/cmdline)"
	echo "cwd: $(pwd)"
	echo "argv:"
	for a in "$@"; do echo "  $a"; done
	echo "fds (the shell's own: 10 and up are its script and saved copies):"
	echo "$fds"
	echo "env (selected):"
	env | grep -E '^(PATH|NOTIFY_SOCKET|XDG_RUNTIME_DIR|HOME|GOMAXPROCS|LISTEN_FDS|_LIBCONTAINER_[A-Z_]*)=' | sed 's/^/  /'
} >"$rec.txt" 2>&1
printf '%s' "$n" >>"$T/argv.log"
for a in "$@"; do printf ' %s' "$a" >>"$T/argv.log"; done
echo >>"$T/argv.log"
prev= bundle= process= log=
for a in "$@"; do
	case "$prev" in
	--bundle|-b) bundle=$a ;;
	--process|-p) process=$a ;;
	--log) log=$a ;;
	esac
	case "$a" in
	--bundle=*) bundle=${a#--bundle=} ;;
	--process=*) process=${a#--process=} ;;
	--log=*) log=${a#--log=} ;;
	esac
	prev=$a
done
if [ -n "$bundle" ]; then
	cp "$bundle/config.json" "$rec.config.json" 2>>"$rec.txt"
	{ echo "bundle: $bundle"; ls -la "$bundle"; echo "mounts under the bundle:"; grep -F " $bundle" /proc/self/mountinfo; } >>"$rec.txt" 2>&1
fi
[ -n "$process" ] && cp "$process" "$rec.process.json" 2>>"$rec.txt"
"$REAL" "$@"
rc=$?
echo "exit: $rc at $(date +%s.%N)" >>"$rec.txt"
echo "$n exit $rc" >>"$T/argv.log"
if [ -n "$log" ] && [ "$rc" != 0 ]; then tail -n 5 "$log" >"$rec.log" 2>&1; fi
exit $rc
`

// traced returns runtimes with each path replaced by a traceScript in
// front of it.
func (d *dockerDaemon) traced(t *testing.T, runtimes map[string]dockerRuntime) map[string]dockerRuntime {
	t.Helper()
	if err := os.MkdirAll(filepath.Join(d.traceDir, "calls"), 0o755); err != nil {
		t.Fatal(err)
	}
	out := map[string]dockerRuntime{}
	for n, rt := range runtimes {
		for _, p := range []string{d.traceDir, rt.Path} {
			if strings.ContainsAny(p, "'\n") {
				t.Fatalf("trace: path %q cannot be quoted", p)
			}
		}
		script := strings.NewReplacer("@TRACE@", "'"+d.traceDir+"'", "@REAL@", "'"+rt.Path+"'").Replace(traceScript)
		p := filepath.Join(d.dir, "trace-"+n)
		if err := os.WriteFile(p, []byte(script), 0o755); err != nil {
			t.Fatal(err)
		}
		out[n] = dockerRuntime{Path: p, RuntimeArgs: rt.RuntimeArgs}
	}
	return out
}

// docker runs the docker CLI against d, killed after timeout.
func (d *dockerDaemon) docker(t *testing.T, timeout time.Duration, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := d.command(ctx, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	err := cmd.Run()
	r := result{stdout: stdout.String(), stderr: stderr.String(), elapsed: time.Since(start)}
	var ee *exec.ExitError
	switch {
	case ctx.Err() != nil:
		r.code = -1
		r.stderr += fmt.Sprintf("\n(docker %s killed after %v)", strings.Join(args, " "), timeout)
		r.stderr += describeVMMs()
	case errors.As(err, &ee):
		r.code = ee.ExitCode()
	case err != nil:
		t.Fatalf("docker %v: %v", args, err)
	}
	return r
}

// command is the docker CLI against d, not started.
func (d *dockerDaemon) command(ctx context.Context, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, dockerBin, append([]string{"--host", "unix://" + d.sock}, args...)...)
	cmd.Env = append(os.Environ(), "PATH="+dockerPath, "DOCKER_CONFIG="+filepath.Join(d.dir, "cli"))
	return cmd
}

// loadImage writes the bbimage busybox image as a docker-archive and
// loads it with `docker load`.
func (d *dockerDaemon) loadImage(t *testing.T) {
	t.Helper()
	img, err := bbimage.BuildForHost()
	if err != nil {
		t.Fatal(err)
	}
	tag, err := name.NewTag(dockerImage)
	if err != nil {
		t.Fatal(err)
	}
	archive := filepath.Join(d.dir, "image.tar")
	if err := tarball.WriteToFile(archive, tag, img); err != nil {
		t.Fatalf("write the image archive: %v", err)
	}
	r := d.docker(t, 2*time.Minute, "load", "-i", archive)
	if r.code != 0 || !strings.Contains(r.stdout, "Loaded image: "+dockerImage) {
		t.Fatalf("docker load: %v", r)
	}
	os.Remove(archive)
}

// stop removes the containers left, stops dockerd, and checks that none
// of its processes, mounts or its bridge remain (removing those it
// finds, by PID and path).
func (d *dockerDaemon) stop(t *testing.T) {
	if r := d.docker(t, time.Minute, "ps", "-aq"); r.code == 0 {
		for _, id := range strings.Fields(r.stdout) {
			t.Errorf("container %s left at the end; removing it", id)
			d.docker(t, 2*time.Minute, "rm", "-f", id)
		}
	}
	start := time.Now()
	d.cmd.Process.Signal(unix.SIGTERM)
	select {
	case <-d.exited:
		t.Logf("dockerd stopped in %v (%v)", time.Since(start).Round(time.Millisecond), d.cmd.ProcessState)
	case <-time.After(2 * time.Minute):
		t.Errorf("dockerd did not stop within 2 minutes of SIGTERM; killing it")
		d.cmd.Process.Kill()
		<-d.exited
	}
	// The managed containerd and any shim end after dockerd: give
	// them a moment, then report and end what is left.
	deadline := time.Now().Add(30 * time.Second)
	var left map[int]string
	for {
		left = map[int]string{}
		for pid, cmdline := range dockerProcesses() {
			if !d.before[pid] {
				left[pid] = cmdline
			}
		}
		if len(left) == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(250 * time.Millisecond)
	}
	for pid, cmdline := range left {
		t.Errorf("process left after dockerd stopped: %d %s; killing it", pid, cmdline)
		unix.Kill(pid, unix.SIGKILL)
	}
	for _, mp := range append(mountsUnder(d.dir), mountsUnder(d.execRoot)...) {
		t.Errorf("mount left after dockerd stopped: %s; unmounting it", mp)
		unix.Unmount(mp, unix.MNT_DETACH)
	}
	if !d.hadDocker0 {
		if l, err := netlink.LinkByName("docker0"); err == nil {
			netlink.LinkDel(l)
		}
	}
	if d.traceDir != "" {
		os.WriteFile(filepath.Join(d.traceDir, "dockerd.log"), []byte(readFile(d.logPath)), 0o644)
		if err := dumpTrace(d.traceDir); err != nil {
			t.Errorf("trace: %v", err)
		}
	}
	if t.Failed() {
		t.Logf("dockerd's log (last lines):\n%s", tail(readFile(d.logPath), 60))
	}
}

// shortDir makes a directory /run/vdNNNN, removed when the test ends.
// dockerd's exec root must be as short as its default /var/run/docker:
// the runtime gets --root EXECROOT/runtime-runc/moby and a 64-character
// container ID, and a runtime's Unix sockets below that must stay within
// the 108 bytes of sun_path.
func shortDir(t *testing.T) string {
	t.Helper()
	for i := 0; i < 100; i++ {
		var b [2]byte
		if _, err := rand.Read(b[:]); err != nil {
			t.Fatal(err)
		}
		dir := fmt.Sprintf("/run/vd%x", b)
		if err := os.Mkdir(dir, 0o700); err != nil {
			if errors.Is(err, fs.ErrExist) {
				continue
			}
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(dir) })
		return dir
	}
	t.Fatal("no free /run/vdNNNN directory")
	return ""
}

// mountsUnder lists the mount points at or below dir, deepest first.
func mountsUnder(dir string) []string {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	var mps []string
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 && (f[4] == dir || strings.HasPrefix(f[4], dir+"/")) {
			mps = append([]string{f[4]}, mps...)
		}
	}
	return mps
}

// dumpTrace prints dir as a base64 gzip'd tar between marker lines on
// stdout, for the host to unpack (the outer VM's files are discarded):
//
//	sed -n '/^DOCKER-TRACE-BEGIN$/,/^DOCKER-TRACE-END$/p' LOG | sed '1d;$d' | base64 -d | tar xz -C DEST
func dumpTrace(dir string) error {
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	tw := tar.NewWriter(zw)
	err := filepath.WalkDir(dir, func(p string, e fs.DirEntry, err error) error {
		if err != nil || !e.Type().IsRegular() {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		if err := tw.WriteHeader(&tar.Header{Name: "docker-trace/" + rel, Mode: 0o644, Size: int64(len(b)), Typeflag: tar.TypeReg}); err != nil {
			return err
		}
		_, err = tw.Write(b)
		return err
	})
	if err != nil {
		return err
	}
	if err := tw.Close(); err != nil {
		return err
	}
	if err := zw.Close(); err != nil {
		return err
	}
	enc := base64.StdEncoding.EncodeToString(buf.Bytes())
	w := bufio.NewWriter(os.Stdout)
	fmt.Fprintln(w, "\n"+dockerTraceBegin)
	for len(enc) > 0 {
		n := min(76, len(enc))
		fmt.Fprintln(w, enc[:n])
		enc = enc[n:]
	}
	fmt.Fprintln(w, dockerTraceEnd)
	return w.Flush()
}

// tail returns the last n lines of s.
func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// bootIDPattern is a kernel boot ID as /proc/sys/kernel/random/boot_id
// gives it.
var bootIDPattern = regexp.MustCompile(`[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}`)

// TestDocker runs Debian's docker 20.10 with vessel-runtime as one of its
// runtimes (issue 10, "Done when" 1): one dockerd for the whole test, the
// busybox image loaded from an archive the test writes, and each feature
// as a subtest, first under runc (proving the harness and the checks)
// and then under vessel-runtime, where the container must run on the
// guest's kernel.
func TestDocker(t *testing.T) {
	if *guestMode {
		t.Skip("host half only")
	}
	bin := runtimeBin(t)
	runtimes := map[string]dockerRuntime{
		"vessel": {Path: bin, RuntimeArgs: []string{
			"--kernel", filepath.Join(guestDir, "bzImage"), "--initramfs", filepath.Join(guestDir, "initramfs.cpio")}},
	}
	runcName := "runc"
	if *dockerTrace {
		// docker's own runc, recorded too: the full sequence of calls
		// that a runtime which implements everything gets.
		runcName = "runc-traced"
		runtimes[runcName] = dockerRuntime{Path: "/usr/sbin/runc"}
	}
	d := startDockerd(t, runtimes)
	d.loadImage(t)
	hostBoot := strings.TrimSpace(readFile("/proc/sys/kernel/random/boot_id"))
	if !bootIDPattern.MatchString(hostBoot) {
		t.Fatalf("this kernel's boot ID: %q", hostBoot)
	}
	groups := []dockerGroup{{"runc", runcName, false, nil}, {"vessel", "vessel", true, nil}}
	if *dockerNoNetwork {
		groups = append(groups, dockerGroup{"vessel-network-none", "vessel", true, []string{"--network", "none"}})
	}
	for _, g := range groups {
		t.Run(g.label, func(t *testing.T) {
			dt := &dockerTest{d: d, runtime: g.name, vm: g.vm, hostBoot: hostBoot, extra: g.extra}
			t.Run("exit-status", dt.exitStatus)
			if dt.extra == nil {
				t.Run("network-none", dt.networkNone)
			}
			t.Run("env-workdir-user", dt.envWorkdirUser)
			t.Run("detached", dt.detached)
			if dt.extra == nil {
				t.Run("publish", dt.publish)
			}
			t.Run("volume", dt.volume)
			t.Run("resources", dt.resources)
			t.Run("interactive", dt.interactive)
			if dt.vm && dt.extra == nil {
				t.Run("vm-ends", dt.vmEnds)
			}
		})
	}
}

// dockerGroup is one group of TestDocker's subtests: a runtime and the
// docker run flags its containers get.
type dockerGroup struct {
	label, name string // the subtest's name, docker's name of the runtime
	vm          bool   // whether containers run in a VM (vessel-runtime)
	extra       []string
}

// dockerTest runs TestDocker's feature subtests under one runtime.
type dockerTest struct {
	d        *dockerDaemon
	runtime  string   // docker's name for it
	vm       bool     // whether containers run in a VM (vessel-runtime)
	hostBoot string   // this (outer) kernel's boot ID
	extra    []string // docker run flags for every container
}

// container returns a container name for the subtest and removes that
// container when it ends, then checks that no VMM process is left.
func (dt *dockerTest) container(t *testing.T) string {
	t.Helper()
	n := strings.ToLower(strings.ReplaceAll(strings.TrimPrefix(t.Name(), "TestDocker/"), "/", "-"))
	t.Cleanup(func() {
		dt.d.docker(t, 2*time.Minute, "rm", "-f", n)
		// docker rm returns once the runtime's delete has; the VMM
		// process may take a moment longer to end.
		deadline := time.Now().Add(30 * time.Second)
		for len(vmmProcesses(t)) > 0 && time.Now().Before(deadline) {
			time.Sleep(250 * time.Millisecond)
		}
		if pids := vmmProcesses(t); len(pids) > 0 {
			t.Errorf("vessel-runtime VMM processes left after docker rm: %v", pids)
			for _, pid := range pids {
				t.Logf("  %d: %s", pid, strings.ReplaceAll(readFile(fmt.Sprintf("/proc/%d/cmdline", pid)), "\x00", " "))
			}
		}
	})
	return n
}

// checkBoot checks a boot ID the container printed: the outer kernel's
// under runc, another one (the guest's) under vessel-runtime.
func (dt *dockerTest) checkBoot(t *testing.T, out string) string {
	t.Helper()
	boot := bootIDPattern.FindString(out)
	switch {
	case boot == "":
		t.Errorf("no boot ID in the container's output %q", out)
	case dt.vm && boot == dt.hostBoot:
		t.Errorf("the container's boot ID is the host's (%s): it did not run on the guest's kernel", boot)
	case !dt.vm && boot != dt.hostBoot:
		t.Errorf("under runc the container's boot ID %s is not the host's %s", boot, dt.hostBoot)
	}
	return boot
}

// runArgs starts a docker run command line for dt's runtime.
func (dt *dockerTest) runArgs() []string {
	return append([]string{"run", "--runtime", dt.runtime}, dt.extra...)
}

func (dt *dockerTest) run(t *testing.T, args ...string) result {
	t.Helper()
	return dt.d.docker(t, dockerRunTimeout, append(dt.runArgs(), args...)...)
}

// exitStatus: docker run --rm returns the container's exit status, and
// the container sees its own kernel.
func (dt *dockerTest) exitStatus(t *testing.T) {
	n := dt.container(t)
	r := dt.run(t, "--rm", "--name", n, dockerImage, "sh", "-c", "echo boot=$(cat /proc/sys/kernel/random/boot_id); exit 3")
	t.Logf("docker run: %v", r.elapsed.Round(time.Millisecond))
	if r.code != 3 {
		t.Fatalf("docker run: %v, want exit status 3", r)
	}
	dt.checkBoot(t, r.stdout)
}

// vmEnds: a container that crashes its VM's kernel (which it may do to
// its own VM) ends with 255, and docker run and docker logs show why:
// vessel-runtime's line on the container's stderr.
func (dt *dockerTest) vmEnds(t *testing.T) {
	n := dt.container(t)
	r := dt.run(t, "--name", n, "--security-opt", "systempaths=unconfined", dockerImage,
		"sh", "-c", "echo before; echo c >/proc/sysrq-trigger; sleep 100")
	const why = "its VM ended before it did"
	if r.code != 255 || r.stdout != "before\n" || !strings.Contains(r.stderr, "vessel-runtime: container ") || !strings.Contains(r.stderr, why) {
		t.Fatalf("docker run of a container that crashes its VM: %v\nwant exit status 255, before, and vessel-runtime's %q", r, why)
	}
	if l := dt.d.docker(t, time.Minute, "logs", n); !strings.Contains(l.stderr, why) {
		t.Errorf("docker logs: %v, want vessel-runtime's %q", l, why)
	}
}

// networkNone: --network none gives the container loopback only (and,
// in docker 20.10, still a libnetwork prestart hook).
func (dt *dockerTest) networkNone(t *testing.T) {
	n := dt.container(t)
	r := dt.run(t, "--rm", "--name", n, "--network", "none", dockerImage, "sh", "-c",
		"echo boot=$(cat /proc/sys/kernel/random/boot_id); echo net=$(ls /sys/class/net); exit 3")
	// Kernels with sit or other tunnels built in add their fallback
	// devices (sit0, ...) to every namespace: only "no eth" is portable.
	if r.code != 3 || !strings.Contains(r.stdout, "\nnet=lo") || strings.Contains(r.stdout, "eth") {
		t.Fatalf("docker run --network none: %v\nwant exit status 3 and loopback, no ethN", r)
	}
	dt.checkBoot(t, r.stdout)
}

// envWorkdirUser: -e, -w and -u reach the process; the image's
// environment is kept.
func (dt *dockerTest) envWorkdirUser(t *testing.T) {
	n := dt.container(t)
	r := dt.run(t, "--rm", "--name", n, "-e", "FLAG_VAR=from-flag", "-w", "/home/app", "-u", "1000:2000",
		dockerImage, "sh", "-c", `echo "$FLAG_VAR $IMAGE_VAR $(pwd) $(id -u):$(id -g)"`)
	if want := "from-flag from-image /home/app 1000:2000\n"; r.code != 0 || r.stdout != want {
		t.Fatalf("docker run: %v\nwant stdout %q", r, want)
	}
}

// detached: run -d, then logs, exec (plain and on a terminal), stop
// (SIGTERM reaches the container, within the grace period), inspect's
// exit code, and rm; each a step of its own. A failed logs or stop step
// ends the sequence (the later steps need a running, then a stopped
// container).
func (dt *dockerTest) detached(t *testing.T) {
	n := dt.container(t)
	const script = `trap 'echo got-TERM; exit 7' TERM; echo started boot=$(cat /proc/sys/kernel/random/boot_id); while :; do sleep 1 & wait; done`
	r := dt.run(t, "-d", "--name", n, dockerImage, "sh", "-c", script)
	if r.code != 0 {
		t.Fatalf("docker run -d: %v", r)
	}
	t.Logf("docker run -d: %v", r.elapsed.Round(time.Millisecond))
	var boot string
	steps := []struct {
		name     string
		required bool
		f        func(t *testing.T)
	}{
		{"logs", true, func(t *testing.T) {
			logs := dt.waitLogs(t, n, "started boot=")
			boot = dt.checkBoot(t, logs)
		}},
		{"exec", false, func(t *testing.T) {
			r := dt.d.docker(t, 2*time.Minute, "exec", "-e", "EXEC_VAR=from-exec", "-w", "/tmp", "-u", "1000", n,
				"sh", "-c", `echo "boot=$(cat /proc/sys/kernel/random/boot_id) $EXEC_VAR $(pwd) $(id -u)"; exit 4`)
			t.Logf("docker exec: %v", r.elapsed.Round(time.Millisecond))
			if want := "boot=" + boot + " from-exec /tmp 1000\n"; r.code != 4 || r.stdout != want {
				t.Fatalf("docker exec: %v\nwant exit status 4 and stdout %q (the container's boot ID)", r, want)
			}
		}},
		{"exec-tty", false, func(t *testing.T) {
			m, s := openPTY(t)
			cmd := dt.d.command(context.Background(), "exec", "-it", n, "sh", "-c", "tty; echo exec-tty-$((6*7)); exit 5")
			p := startOnPTY(t, cmd, m, s)
			wantExit(t, p, 5)
			// The output may still be on its way from the pty.
			for deadline := time.Now().Add(5 * time.Second); !strings.Contains(p.out.String(), "exec-tty-42") && time.Now().Before(deadline); {
				time.Sleep(50 * time.Millisecond)
			}
			if out := p.out.String(); !strings.Contains(out, "exec-tty-42") || !strings.Contains(out, "/dev/pts/") {
				t.Errorf("docker exec -it: output %q, want a /dev/pts/ terminal and exec-tty-42", out)
			}
		}},
		{"stop", true, func(t *testing.T) {
			const grace = 60
			r := dt.d.docker(t, 3*time.Minute, "stop", "-t", strconv.Itoa(grace), n)
			t.Logf("docker stop: %v", r.elapsed.Round(time.Millisecond))
			if r.code != 0 {
				t.Fatalf("docker stop: %v", r)
			}
			if r.elapsed >= grace*time.Second {
				t.Errorf("docker stop took %v, no less than the %ds grace period: SIGTERM did not end the container", r.elapsed, grace)
			}
			if logs := dt.d.docker(t, time.Minute, "logs", n); !strings.Contains(logs.stdout, "got-TERM") {
				t.Errorf("the container did not see SIGTERM: docker logs: %v", logs)
			}
		}},
		{"inspect", false, func(t *testing.T) {
			r := dt.d.docker(t, time.Minute, "inspect", "-f", "{{.State.Status}} {{.State.ExitCode}}", n)
			if want := "exited 7\n"; r.code != 0 || r.stdout != want {
				t.Fatalf("docker inspect: %v\nwant %q (the trap's exit status)", r, want)
			}
		}},
		{"rm", false, func(t *testing.T) {
			if r := dt.d.docker(t, 2*time.Minute, "rm", n); r.code != 0 {
				t.Fatalf("docker rm: %v", r)
			}
			if r := dt.d.docker(t, time.Minute, "ps", "-aq", "--filter", "name=^"+n+"$"); r.code != 0 || r.stdout != "" {
				t.Errorf("after docker rm, docker ps -a: %v", r)
			}
			deadline := time.Now().Add(30 * time.Second)
			for len(vmmProcesses(t)) > 0 && time.Now().Before(deadline) {
				time.Sleep(250 * time.Millisecond)
			}
			if pids := vmmProcesses(t); len(pids) > 0 {
				t.Errorf("VMM processes left after docker rm: %v", pids)
			}
		}},
	}
	for _, s := range steps {
		if !t.Run(s.name, s.f) && s.required {
			return
		}
	}
}

// waitLogs polls docker logs of container n until its stdout shows what.
func (dt *dockerTest) waitLogs(t *testing.T, n, what string) string {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for {
		r := dt.d.docker(t, time.Minute, "logs", n)
		if r.code == 0 && strings.Contains(r.stdout, what) {
			return r.stdout
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %q in docker logs after 2 minutes: %v", what, r)
		}
		time.Sleep(time.Second)
	}
}

// wantExit waits for a command on a pty to exit with status want.
func wantExit(t *testing.T, p *ptyRun, want int) {
	t.Helper()
	select {
	case err := <-p.done:
		code := 0
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatalf("wait: %v", err)
		}
		if code != want {
			t.Errorf("exit status %d, want %d; output:\n%q", code, want, p.out.String())
		}
	case <-time.After(2 * time.Minute):
		t.Fatalf("no exit within 2 minutes; output:\n%q", p.out.String())
	}
}

// publish: -p HOSTPORT:80 reaches busybox httpd in the container from
// this (the docker) host.
func (dt *dockerTest) publish(t *testing.T) {
	n := dt.container(t)
	port := freePort(t)
	r := dt.run(t, "-d", "--name", n, "-p", fmt.Sprintf("%d:80", port), dockerImage, "httpd", "-f", "-p", "80", "-h", "/www")
	if r.code != 0 {
		t.Fatalf("docker run -d -p: %v", r)
	}
	url := fmt.Sprintf("http://127.0.0.1:%d/index.html", port)
	client := &http.Client{Timeout: 10 * time.Second}
	deadline := time.Now().Add(2 * time.Minute)
	var last string
	for {
		resp, err := client.Get(url)
		if err == nil {
			body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK && string(body) == bbimage.Index {
				return
			}
			last = fmt.Sprintf("%s: %q", resp.Status, body)
		} else {
			last = err.Error()
		}
		if time.Now().After(deadline) {
			logs := dt.d.docker(t, time.Minute, "logs", n)
			t.Fatalf("GET %s: no answer from the container's httpd within 2 minutes (last: %s); docker logs: %v", url, last, logs)
		}
		time.Sleep(time.Second)
	}
}

// volume: -v HOSTDIR:/data is read and written.
func (dt *dockerTest) volume(t *testing.T) {
	n := dt.container(t)
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "in"), []byte("from-host\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	r := dt.run(t, "--rm", "--name", n, "-v", dir+":/data", dockerImage, "sh", "-c", "cat /data/in && echo from-container >/data/out")
	if r.code != 0 || r.stdout != "from-host\n" {
		t.Fatalf("docker run -v: %v\nwant stdout %q", r, "from-host\n")
	}
	if b, err := os.ReadFile(filepath.Join(dir, "out")); err != nil || string(b) != "from-container\n" {
		t.Errorf("the file the container wrote: %q, %v", b, err)
	}
}

// resources: --memory 256m and --cpus 2 are visible inside: two CPUs,
// and the container's cgroup limits (v2 or v1 files, whichever the
// kernel that runs it mounts).
func (dt *dockerTest) resources(t *testing.T) {
	n := dt.container(t)
	const script = `echo nproc=$(nproc)
if [ -e /sys/fs/cgroup/memory.max ]; then echo mem=$(cat /sys/fs/cgroup/memory.max); else echo mem=$(cat /sys/fs/cgroup/memory/memory.limit_in_bytes); fi
if [ -e /sys/fs/cgroup/cpu.max ]; then echo cpu=$(cat /sys/fs/cgroup/cpu.max); else echo cpu=$(cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us) $(cat /sys/fs/cgroup/cpu/cpu.cfs_period_us); fi
grep MemTotal /proc/meminfo`
	r := dt.run(t, "--rm", "--name", n, "--memory", "256m", "--cpus", "2", dockerImage, "sh", "-c", script)
	if r.code != 0 {
		t.Fatalf("docker run --memory 256m --cpus 2: %v", r)
	}
	t.Logf("inside: %q", r.stdout)
	for _, want := range []string{"nproc=2\n", "mem=268435456\n", "cpu=200000 100000\n"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("docker run --memory 256m --cpus 2: no %q in the container's output %q", want, r.stdout)
		}
	}
}

// interactiveScript prints the terminal's size once it is set (docker
// 20.10's run -it sends it after the start: at first it is 0x0, for
// which busybox's stty size prints an error and exits 0), then reads a
// line.
const interactiveScript = `for i in $(seq 100); do s=$(stty size 2>/dev/null); case "$s" in [1-9]*) break ;; esac; sleep 0.1; done
echo size=$s; echo ready-$((2*3)); read x; echo got-$x; exit 6`

// interactive: docker run -it through a pty: the terminal's size, typed
// input and the exit status.
func (dt *dockerTest) interactive(t *testing.T) {
	n := dt.container(t)
	m, s := openPTY(t)
	if err := unix.IoctlSetWinsize(int(s.Fd()), unix.TIOCSWINSZ, &unix.Winsize{Row: 33, Col: 101}); err != nil {
		t.Fatal(err)
	}
	cmd := dt.d.command(context.Background(), append(dt.runArgs(), "-it", "--rm", "--name", n, dockerImage,
		"sh", "-c", interactiveScript)...)
	p := startOnPTY(t, cmd, m, s)
	p.waitFor("ready-6")
	m.Write([]byte("typed-line\r"))
	p.waitFor("got-typed-line")
	wantExit(t, p, 6)
	if !strings.Contains(p.out.String(), "size=33 101") {
		t.Errorf("the container's terminal is not 33x101: %q", p.out.String())
	}
}
