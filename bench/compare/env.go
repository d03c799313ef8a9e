package compare

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/vesselvm/vessel/bench/internal/benchutil"
	"github.com/vesselvm/vessel/container"
	"github.com/vesselvm/vessel/devices/usernet"
	"github.com/vesselvm/vessel/internal/bbimage"
	"github.com/vesselvm/vessel/internal/proctree"
)

// limits are what a confined environment gives a workload, and the
// network it needs.
type limits struct {
	CPUs      int
	MemoryMiB int
	Pids      int64
	Disk      int64 // scratch bytes the workload writes (0: none)
	Network   bool  // it connects to the host
	Publish   int   // it listens on this port, reached from the host's loopback at the same port
}

// outcome is how one run of the workload binary ended.
type outcome struct {
	stdout, stderr []byte
	code           int // exit status; 128+N when signal N killed it
}

// instance is an idle workload running in the background.
type instance struct {
	memMiB float64
	stop   func()
	// describe, where the environment can, stops the instance's VM
	// after having it describe its state, and returns the description
	// ("" without one).
	describe func() string
}

// env is one environment the workload runs in.
type env interface {
	name() string
	// dir is where the workload may write, as it sees it.
	dir() string
	// run runs the workload binary with args within lim.
	run(ctx context.Context, args []string, lim limits) (outcome, error)
	// start starts the workload binary with args (an idle instance
	// when nil) in the background within lim, and measures its memory.
	start(ctx context.Context, lim limits, args []string) (*instance, error)
	// hostAddr is how the workload reaches the host's loopback port.
	hostAddr(port int) string
	// close removes what the environment set up.
	close()
}

// Environment names.
const (
	EnvHost   = "host"
	EnvRunc   = "runc"
	EnvVessel = "vessel"
)

// EnvNames lists the environments in report order.
func EnvNames() []string { return []string{EnvHost, EnvRunc, EnvVessel} }

// setup holds what every environment needs.
type setup struct {
	work     string // the private working directory
	workload string // the workload binary on the host
	vessel   string
	runc     string
	marker   string // a host file no confined environment should see
}

// runCmd runs cmd, killing its process group when ctx ends, and returns
// its outcome. An error means it could not start.
func runCmd(ctx context.Context, cmd *exec.Cmd) (outcome, error) {
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return outcome{}, err
	}
	done := make(chan struct{})
	go func() {
		select {
		case <-ctx.Done():
			// A vessel VM still running when the step's time is up is
			// asked to describe itself first, so the failure says why.
			if describeVMs(cmd.Process.Pid) {
				select {
				case <-done:
					return
				case <-time.After(describeWait):
				}
			}
			syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		case <-done:
		}
	}()
	err := cmd.Wait()
	close(done)
	o := outcome{stdout: out.Bytes(), stderr: errb.Bytes()}
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		o.code = ee.ExitCode()
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			o.code = 128 + int(ws.Signal())
		}
	default:
		return o, err
	}
	if ctx.Err() != nil {
		if d := diagnosis(o.stderr); d != "" {
			return o, fmt.Errorf("%w (%s)", context.Cause(ctx), d)
		}
		return o, context.Cause(ctx)
	}
	return o, nil
}

// describeWait bounds the wait for a vessel whose VM was asked to
// describe itself: the VMM reports and stops, and vessel exits with the
// report below its error.
const describeWait = 30 * time.Second

// vmmName is the jailed VMM process's name (cmd/vessel-vmm), which
// describes its VM's state (vCPUs, interrupt controllers, virtio rings)
// and stops it on SIGUSR2. vessel itself passes SIGUSR2 on to the
// container, so the VMM is signalled directly.
const vmmName = "vessel-vmm"

// describeVMs sends SIGUSR2 to every vessel-vmm process below pid and
// reports whether there was one.
func describeVMs(pid int) bool {
	tree, err := proctree.Tree(pid)
	if err != nil {
		return false
	}
	found := false
	for _, p := range tree[1:] {
		comm, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", p))
		if err == nil && strings.TrimSpace(string(comm)) == vmmName && syscall.Kill(p, syscall.SIGUSR2) == nil {
			found = true
		}
	}
	return found
}

// hostEnv runs the workload as a plain host process.
type hostEnv struct {
	s  *setup
	wd string
}

func newHost(s *setup) (env, error) {
	wd := filepath.Join(s.work, "host")
	return &hostEnv{s: s, wd: wd}, os.MkdirAll(wd, 0o755)
}

func (h *hostEnv) name() string { return EnvHost }
func (h *hostEnv) dir() string  { return h.wd }
func (h *hostEnv) close()       {}

func (h *hostEnv) run(ctx context.Context, args []string, _ limits) (outcome, error) {
	cmd := exec.Command(h.s.workload, args...)
	cmd.Dir = h.wd
	return runCmd(ctx, cmd)
}

func (h *hostEnv) hostAddr(port int) string { return fmt.Sprintf("127.0.0.1:%d", port) }

// idleArgs are the workload's arguments for an idle instance.
func idleArgs(args []string) []string {
	if args == nil {
		return []string{"pause"}
	}
	return args
}

func (h *hostEnv) start(ctx context.Context, _ limits, args []string) (*instance, error) {
	cmd := exec.Command(h.s.workload, idleArgs(args)...)
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	stop := func() { cmd.Process.Kill(); cmd.Wait() }
	time.Sleep(500 * time.Millisecond)
	rss, _, err := benchutil.ProcMemory(cmd.Process.Pid)
	if err != nil {
		stop()
		return nil, err
	}
	return &instance{memMiB: rss, stop: stop}, nil
}

// workloadImage is the image of the confined environments: bbimage's
// busybox with the workload binary at /vessel-workload and an empty
// /work.
func workloadImage(bin string) (v1.Image, error) {
	base, err := bbimage.Build()
	if err != nil {
		return nil, err
	}
	data, err := os.ReadFile(bin)
	if err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	tw.WriteHeader(&tar.Header{Name: "work/", Typeflag: tar.TypeDir, Mode: 0o777})
	tw.WriteHeader(&tar.Header{Name: "vessel-workload", Typeflag: tar.TypeReg, Mode: 0o755, Size: int64(len(data))})
	tw.Write(data)
	if err := tw.Close(); err != nil {
		return nil, err
	}
	b := buf.Bytes()
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil })
	if err != nil {
		return nil, err
	}
	return mutate.AppendLayers(base, layer)
}

// runcEnv runs the workload in a container of the host's runc, with the
// same OCI configuration vessel gives its containers (container.Spec),
// the host's network, /work bound to a host directory, and lim as
// cgroup limits.
type runcEnv struct {
	s      *setup
	rootfs string
	data   string // the host directory at /work
	state  string // runc's --root
	seq    atomic.Int64
}

func newRunc(s *setup) (env, error) {
	if _, err := exec.LookPath(s.runc); err != nil {
		return nil, fmt.Errorf("no runc on the host (make deps installs Debian's): %w", err)
	}
	img, err := workloadImage(s.workload)
	if err != nil {
		return nil, err
	}
	r := &runcEnv{s: s, rootfs: filepath.Join(s.work, "runc-rootfs"), data: filepath.Join(s.work, "runc-work"), state: filepath.Join(s.work, "runc-state")}
	if err := benchutil.ExtractImage(img, r.rootfs); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(r.data, 0o777); err != nil {
		return nil, err
	}
	// One run proves runc works here.
	if o, err := r.run(context.Background(), []string{"true"}, limits{}); err != nil || o.code != 0 {
		return nil, fmt.Errorf("runc run: %s", failure(err, o))
	}
	return r, nil
}

func (r *runcEnv) name() string { return EnvRunc }
func (r *runcEnv) dir() string  { return "/work" }
func (r *runcEnv) close()       { os.RemoveAll(r.state) }

// bundle writes a bundle for args within lim and returns its directory.
func (r *runcEnv) bundle(id string, args []string, lim limits) (string, error) {
	spec, _, err := container.Spec(bbimage.Config, container.Options{Args: append([]string{"/vessel-workload"}, args...), Workdir: "/work", Hostname: id, PidsLimit: lim.Pids})
	if err != nil {
		return "", err
	}
	spec.Root = &specs.Root{Path: r.rootfs}
	// vessel's guest raises RLIMIT_NOFILE; a host process may not be
	// allowed to: the container keeps the host's.
	spec.Process.Rlimits = nil
	spec.Mounts = append(spec.Mounts, specs.Mount{Destination: "/work", Type: "bind", Source: r.data, Options: []string{"rbind", "rw"}})
	res := spec.Linux.Resources
	if lim.MemoryMiB > 0 {
		m := int64(lim.MemoryMiB) << 20
		res.Memory = &specs.LinuxMemory{Limit: &m, Swap: &m}
	}
	if lim.CPUs > 0 {
		q, p := int64(lim.CPUs)*100000, uint64(100000)
		res.CPU = &specs.LinuxCPU{Quota: &q, Period: &p}
	}
	js, err := json.Marshal(spec)
	if err != nil {
		return "", err
	}
	dir := filepath.Join(r.s.work, "runc-bundles", id)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	return dir, os.WriteFile(filepath.Join(dir, "config.json"), js, 0o644)
}

func (r *runcEnv) id() string { return fmt.Sprintf("vb%d-%d", os.Getpid(), r.seq.Add(1)) }

func (r *runcEnv) run(ctx context.Context, args []string, lim limits) (outcome, error) {
	id := r.id()
	b, err := r.bundle(id, args, lim)
	if err != nil {
		return outcome{}, err
	}
	defer os.RemoveAll(b)
	// A killed `runc run` leaves its container: delete it in any case.
	defer exec.Command(r.s.runc, "--root", r.state, "delete", "--force", id).Run()
	return runCmd(ctx, exec.Command(r.s.runc, "--root", r.state, "run", "--bundle", b, id))
}

// hostAddr: the container shares the host's network.
func (r *runcEnv) hostAddr(port int) string { return fmt.Sprintf("127.0.0.1:%d", port) }

func (r *runcEnv) start(ctx context.Context, lim limits, args []string) (*instance, error) {
	id := r.id()
	b, err := r.bundle(id, idleArgs(args), lim)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(r.s.runc, "--root", r.state, "run", "--bundle", b, id)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	stop := func() {
		exec.Command(r.s.runc, "--root", r.state, "delete", "--force", id).Run()
		cmd.Wait()
		os.RemoveAll(b)
	}
	pid := benchutil.RuncPid(ctx, r.s.runc, r.state, id, 30*time.Second)
	if pid == 0 {
		stop()
		return nil, fmt.Errorf("the runc container did not run: %s", benchutil.FirstLine(out.Bytes()))
	}
	time.Sleep(500 * time.Millisecond)
	ctr, _, err1 := benchutil.ProcMemory(pid)
	rc, _, err2 := benchutil.ProcMemory(cmd.Process.Pid)
	if err := errors.Join(err1, err2); err != nil {
		stop()
		return nil, err
	}
	return &instance{memMiB: ctr + rc, stop: stop}, nil
}

// vesselEnv runs the workload in a vessel microVM container (`vessel
// run`), with a private image store, no network, and lim as the VM's
// size (and --pids-limit, --disk-size).
type vesselEnv struct {
	s   *setup
	env []string
	seq atomic.Int64
}

// vesselImage is the workload image's name in the private store.
const vesselImage = "vessel-bench/workload:1"

func newVessel(s *setup) (env, error) {
	// With container.DebugEnv, a guest that stops answering the agent's
	// requests is described in vessel's error too (as a step that
	// outlives its limit is, see describeVMs); it changes nothing else.
	v := &vesselEnv{s: s, env: append(os.Environ(), container.DebugEnv+"=1",
		"XDG_DATA_HOME="+filepath.Join(s.work, "vessel-data"), "XDG_RUNTIME_DIR="+filepath.Join(s.work, "vessel-run"))}
	img, err := workloadImage(s.workload)
	if err != nil {
		return nil, err
	}
	archive := filepath.Join(s.work, "workload.tar")
	tag, _ := name.NewTag(vesselImage)
	if err := tarball.WriteToFile(archive, tag, img); err != nil {
		return nil, err
	}
	defer os.Remove(archive)
	if o, err := runCmd(context.Background(), v.cmd("image", "load", archive)); err != nil || o.code != 0 {
		return nil, fmt.Errorf("vessel image load: %s", failure(err, o))
	}
	// The first run builds the image's disk (cached afterwards) and
	// proves VMs boot here.
	if o, err := v.run(context.Background(), []string{"true"}, limits{}); err != nil || o.code != 0 {
		return nil, fmt.Errorf("vessel run: %s", failure(err, o))
	}
	return v, nil
}

func (v *vesselEnv) name() string { return EnvVessel }
func (v *vesselEnv) dir() string  { return "/work" }
func (v *vesselEnv) close()       {}

func (v *vesselEnv) cmd(args ...string) *exec.Cmd {
	c := exec.Command(v.s.vessel, args...)
	c.Env = v.env
	return c
}

// hostAddr: the user network's name for the host's loopback.
func (v *vesselEnv) hostAddr(port int) string {
	return net.JoinHostPort(usernet.HostName, strconv.Itoa(port))
}

// runArgs are `vessel run`'s flags for lim.
func runArgs(lim limits) []string {
	network := "none"
	switch {
	case lim.Network:
		// The network workload's sink is on the host's loopback.
		network = "user,host-loopback"
	case lim.Publish > 0:
		network = "user"
	}
	a := []string{"--network", network, "-w", "/work"}
	if lim.Publish > 0 {
		a = append(a, "-p", fmt.Sprintf("127.0.0.1:%d:%d", lim.Publish, lim.Publish))
	}
	if lim.CPUs > 0 {
		a = append(a, "--cpus", strconv.Itoa(lim.CPUs))
	}
	if lim.MemoryMiB > 0 {
		a = append(a, "-m", strconv.Itoa(lim.MemoryMiB)+"M")
	}
	if lim.Pids > 0 {
		a = append(a, "--pids-limit", strconv.FormatInt(lim.Pids, 10))
	}
	if lim.Disk > 0 {
		a = append(a, "--disk-size", strconv.FormatInt((lim.Disk+1<<20-1)>>20, 10)+"M")
	}
	return a
}

func (v *vesselEnv) run(ctx context.Context, args []string, lim limits) (outcome, error) {
	a := append(append([]string{"run", "--rm"}, runArgs(lim)...), vesselImage, "/vessel-workload")
	return runCmd(ctx, v.cmd(append(a, args...)...))
}

func (v *vesselEnv) start(ctx context.Context, lim limits, args []string) (*instance, error) {
	id := fmt.Sprintf("vb-idle-%d", v.seq.Add(1))
	a := append(append([]string{"run", "-d", "--name", id}, runArgs(lim)...), vesselImage, "/vessel-workload")
	a = append(a, idleArgs(args)...)
	o, err := runCmd(ctx, v.cmd(a...))
	stop := func() { v.cmd("rm", "-f", id).Run() }
	if err != nil || o.code != 0 {
		stop()
		return nil, fmt.Errorf("vessel run -d: %s", failure(err, o))
	}
	st, err := container.Find(filepath.Join(v.s.work, "vessel-run", "vessel", "containers"), id)
	if err != nil {
		stop()
		return nil, err
	}
	time.Sleep(500 * time.Millisecond)
	rss, _, err := benchutil.ProcMemory(st.Pid)
	if err != nil {
		stop()
		return nil, err
	}
	describe := func() string {
		if !describeVMs(st.Pid) {
			return ""
		}
		// The detached vessel process writes its error, the
		// description below it, to vessel.log as its VM ends.
		for end := time.Now().Add(describeWait); time.Now().Before(end); time.Sleep(200 * time.Millisecond) {
			if err := syscall.Kill(st.Pid, 0); errors.Is(err, syscall.ESRCH) {
				break
			}
		}
		b, _ := os.ReadFile(filepath.Join(st.Dir(), "vessel.log"))
		return diagnosis(b)
	}
	return &instance{memMiB: rss, stop: stop, describe: describe}, nil
}
