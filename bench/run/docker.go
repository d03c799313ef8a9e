package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/vesselvm/vessel/bench/internal/benchutil"
)

// Debian's docker (docker.io); /usr/local/bin/docker may be another
// program.
const (
	dockerBin  = "/usr/bin/docker"
	dockerdBin = "/usr/sbin/dockerd"
)

// dockerd is a docker daemon the benchmark started, with vessel-runtime
// as its runtime "vessel" beside runc.
type dockerd struct {
	sock     string
	execRoot string
	cmd      *exec.Cmd
	log      bytes.Buffer
}

// startDockerd starts dockerd as PLATFORM.md says it runs in the test
// platform's outer VM (vfs storage, no iptables: docker-proxy publishes
// ports), its state in work and a short exec root.
func startDockerd(work, runtime, guestDir string) (*dockerd, error) {
	for _, p := range []string{dockerBin, dockerdBin} {
		if _, err := os.Stat(p); err != nil {
			return nil, fmt.Errorf("Debian's docker.io (make deps installs it): %w", err)
		}
	}
	dir := filepath.Join(work, "docker")
	execRoot, err := os.MkdirTemp("/run", "vb")
	if err != nil {
		return nil, err
	}
	cfg := map[string]any{
		"data-root":      filepath.Join(dir, "data"),
		"exec-root":      execRoot,
		"pidfile":        filepath.Join(dir, "docker.pid"),
		"storage-driver": "vfs",
		"iptables":       false,
		"runtimes": map[string]any{"vessel": map[string]any{"path": runtime,
			"runtimeArgs": []string{"--kernel", filepath.Join(guestDir, "bzImage"), "--initramfs", filepath.Join(guestDir, "initramfs.cpio")}}},
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	b, _ := json.Marshal(cfg)
	if err := os.WriteFile(filepath.Join(dir, "daemon.json"), b, 0o600); err != nil {
		return nil, err
	}
	d := &dockerd{sock: filepath.Join(dir, "docker.sock"), execRoot: execRoot}
	d.cmd = exec.Command(dockerdBin, "--config-file", filepath.Join(dir, "daemon.json"), "-H", "unix://"+d.sock)
	d.cmd.Env = append(os.Environ(), "PATH=/usr/sbin:/usr/bin:/sbin:/bin")
	d.cmd.Stdout, d.cmd.Stderr = &d.log, &d.log
	if err := d.cmd.Start(); err != nil {
		return nil, err
	}
	for deadline := time.Now().Add(2 * time.Minute); ; time.Sleep(500 * time.Millisecond) {
		if _, err := d.docker("info"); err == nil {
			return d, nil
		}
		if time.Now().After(deadline) {
			d.stop()
			return nil, fmt.Errorf("dockerd did not answer within 2 minutes: %s", benchutil.FirstLine(d.log.Bytes()))
		}
	}
}

// docker runs the docker CLI against the daemon.
func (d *dockerd) docker(args ...string) ([]byte, error) {
	out, err := exec.Command(dockerBin, append([]string{"-H", "unix://" + d.sock}, args...)...).CombinedOutput()
	if err != nil {
		return out, fmt.Errorf("docker %s: %v: %s", strings.Join(args, " "), err, benchutil.FirstLine(out))
	}
	return out, nil
}

// timeRun times `docker run --rm --runtime RT IMAGE true`.
func (d *dockerd) timeRun(runtime string) (time.Duration, error) {
	start := time.Now()
	_, err := d.docker("run", "--rm", "--network", "none", "--runtime", runtime, image, "true")
	return time.Since(start), err
}

// idlePSS starts `sleep` detached under runtime and sums the PSS (MiB)
// of every host process that serves it: its containerd shim and the
// container's process (runc: the container's init; vessel: the VMM
// process, guest RAM included).
func (d *dockerd) idlePSS(runtime string) (float64, error) {
	name := "idle-" + runtime
	if _, err := d.docker("run", "-d", "--name", name, "--network", "none", "--runtime", runtime, image, "sleep", "600"); err != nil {
		return 0, err
	}
	defer d.docker("rm", "-f", name)
	out, err := d.docker("inspect", "-f", "{{.Id}} {{.State.Pid}}", name)
	if err != nil {
		return 0, err
	}
	f := strings.Fields(string(out))
	if len(f) != 2 {
		return 0, fmt.Errorf("docker inspect: %q", out)
	}
	pid, _ := strconv.Atoi(f[1])
	time.Sleep(2 * time.Second) // let the guest settle
	pids := []int{pid}
	if shim := shimOf(f[0]); shim > 0 {
		pids = append(pids, shim)
	}
	var sum float64
	for _, p := range pids {
		_, pss, err := benchutil.ProcMemory(p)
		if err != nil {
			return 0, err
		}
		sum += pss
	}
	return sum, nil
}

// shimOf finds the containerd shim serving container id (its command
// line has -id ID).
func shimOf(id string) int {
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		args := strings.Split(string(b), "\x00")
		if len(args) > 2 && strings.HasPrefix(filepath.Base(args[0]), "containerd-shim") {
			for i := 0; i+1 < len(args); i++ {
				if args[i] == "-id" && args[i+1] == id {
					return pid
				}
			}
		}
	}
	return 0
}

// stop stops dockerd and waits for it.
func (d *dockerd) stop() {
	d.cmd.Process.Signal(os.Interrupt)
	done := make(chan struct{})
	go func() { d.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(time.Minute):
		d.cmd.Process.Kill()
		<-done
	}
	os.RemoveAll(d.execRoot)
}

// dockerBench measures docker run with vessel-runtime against runc, on
// one dockerd, and the memory of one idle container under each. The
// image archive is loaded first; each runtime runs once untimed.
func dockerBench(work, runtime, guestDir, archive string, runs int) (times map[string][]float64, pss map[string]float64, err error) {
	d, err := startDockerd(work, runtime, guestDir)
	if err != nil {
		return nil, nil, err
	}
	defer d.stop()
	if _, err := d.docker("load", "-i", archive); err != nil {
		return nil, nil, err
	}
	times, pss = map[string][]float64{}, map[string]float64{}
	rts := []string{"vessel", "runc"}
	for _, rt := range rts {
		if _, err := d.timeRun(rt); err != nil {
			return nil, nil, err
		}
	}
	for i := 0; i < runs; i++ {
		fmt.Fprintf(os.Stderr, "benchrun: docker round %d of %d\n", i+1, runs)
		for _, rt := range rts {
			t, err := d.timeRun(rt)
			if err != nil {
				return nil, nil, err
			}
			times[rt] = append(times[rt], ms(t))
		}
	}
	for _, rt := range rts {
		if pss[rt], err = d.idlePSS(rt); err != nil {
			return nil, nil, err
		}
	}
	return times, pss, nil
}
