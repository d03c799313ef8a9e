//go:build e2e

package e2e

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mdlayher/vsock"
)

// The core cases of issue 11's "Done when": `vessel vm run` with a disk,
// vsock and the user network; `vessel image load`; `vessel run` with -p
// and -v. TestUnprivileged runs them as an ordinary user in the group
// owning /dev/kvm, TestJail as root with --jail, where they also check,
// while the VM runs, what the VMM process sees and is.

// Users of the two tests.
const (
	unprivUID = 1000 // an ordinary user, in a group owning /dev/kvm
	nobodyID  = 65534
)

// coreDiskMarker starts the disk the core vm run case attaches.
const coreDiskMarker = "vessel-core-disk\n"

// coreVsockPort is the host port the core guest half dials over vsock.
const coreVsockPort = 5001

// coreEnv is where the core cases run: a directory every user can walk,
// holding copies of vessel's binaries and the guest artifacts (the
// checkout's and root's cache may be closed to others), and how the
// vessel commands run.
type coreEnv struct {
	dir       string
	vessel    string
	guestDir  string
	env       []string
	cred      *syscall.Credential // nil: as this process (root)
	extra     []string            // flags for vm run and run (--jail)
	runtime   string              // XDG_RUNTIME_DIR
	inspectVM func(t *testing.T, pid int, shares bool)
}

// newCoreEnv makes the directory; uid owns the home and runtime
// directories in it.
func newCoreEnv(t *testing.T, uid int) *coreEnv {
	t.Helper()
	dir, err := os.MkdirTemp("", "vessel-core-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	c := &coreEnv{dir: dir, guestDir: filepath.Join(dir, "guest")}
	bin := filepath.Join(dir, "bin")
	for _, d := range []string{bin, c.guestDir} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	copyFile(t, vesselBin, filepath.Join(bin, "vessel"), 0o755)
	for _, helper := range []string{"vessel-vmm", "vessel-usernet", "vessel-share"} {
		copyFile(t, filepath.Join(filepath.Dir(vesselBin), helper), filepath.Join(bin, helper), 0o755)
	}
	for _, f := range []string{"bzImage", "initramfs.cpio"} {
		copyFile(t, filepath.Join(guestDir, f), filepath.Join(c.guestDir, f), 0o644)
	}
	c.vessel = filepath.Join(bin, "vessel")
	home, runtime := filepath.Join(dir, "home"), filepath.Join(dir, "runtime")
	for _, d := range []string{home, runtime} {
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(d, uid, uid); err != nil {
			t.Fatal(err)
		}
	}
	c.runtime = runtime
	c.env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "HOME=" + home, "XDG_RUNTIME_DIR=" + runtime, "VESSEL_GUEST_DIR=" + c.guestDir}
	return c
}

func copyFile(t *testing.T, src, dst string, mode os.FileMode) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, b, mode); err != nil {
		t.Fatal(err)
	}
}

// command is vessel with args as the env's user.
func (c *coreEnv) command(args ...string) *exec.Cmd {
	cmd := exec.Command(c.vessel, args...)
	cmd.Env = c.env
	if c.cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: c.cred}
	}
	return cmd
}

// run runs vessel with args to the end.
func (c *coreEnv) run(t *testing.T, args ...string) result {
	t.Helper()
	cmd := c.command(args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	err := cmd.Run()
	r := result{stdout: stdout.String(), stderr: stderr.String(), code: cmd.ProcessState.ExitCode(), elapsed: time.Since(start)}
	if err != nil && cmd.ProcessState == nil {
		t.Fatalf("vessel %v: %v", args, err)
	}
	t.Logf("vessel %s: exit %d in %v", strings.Join(args, " "), r.code, r.elapsed.Round(time.Millisecond))
	return r
}

// owned makes a directory that the user running vessel owns.
func (c *coreEnv) owned(t *testing.T, name string) string {
	t.Helper()
	d := filepath.Join(c.dir, name)
	if err := os.Mkdir(d, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(d, c.cmdUID(), c.cmdUID()); err != nil {
		t.Fatal(err)
	}
	return d
}

// vmRun is the core vm run case: a disk, vsock both ways of the guest's
// dial, the user network; the guest half waits for the host's word, so
// that inspectVM sees the VMM while the guest runs.
func (c *coreEnv) vmRun(t *testing.T) {
	disk := filepath.Join(c.dir, "disk.img")
	img := make([]byte, 1<<20)
	copy(img, coreDiskMarker)
	if err := os.WriteFile(disk, img, 0o644); err != nil {
		t.Fatal(err)
	}
	initrd := guestInitrd(t)
	copyFile(t, initrd, filepath.Join(c.guestDir, "core.cpio"), 0o644)
	// Guest connections to the host reach PATH_<port> as the user
	// running vessel (dialled by vessel for a jailed VMM).
	vdir := c.owned(t, "vsock")
	uds := filepath.Join(vdir, "v.sock")
	ln, err := net.Listen("unix", fmt.Sprintf("%s_%d", uds, coreVsockPort))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if err := os.Chown(ln.Addr().String(), c.cmdUID(), c.cmdUID()); err != nil {
		t.Fatal(err)
	}
	args := append([]string{"vm", "run"}, c.extra...)
	args = append(args, "--kernel", filepath.Join(c.guestDir, "bzImage"), "--initrd", filepath.Join(c.guestDir, "core.cpio"),
		"--memory", "384M", "--disk", disk+",ro", "--vsock", uds, "--net", "user",
		"--", "/e2e.test", "-e2e.guest", "-test.run", "^TestGuestCore$", "-test.v")
	cmd := c.command(args...)
	var stdout, stderr syncBuffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	// A killed vessel's jailed VMM may hold the output pipes a while:
	// the wait for them is bounded (a CI run hung here until the
	// block's time limit).
	cmd.WaitDelay = 10 * time.Second
	start := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	defer func() {
		cmd.Process.Kill()
		<-exited
	}()
	conn := make(chan net.Conn, 1)
	go func() {
		if cn, err := ln.Accept(); err == nil {
			conn <- cn
		}
	}()
	var cn net.Conn
	select {
	case cn = <-conn:
	case err := <-exited:
		exited <- err
		t.Fatalf("vessel vm run ended (%v) before the guest connected:\n%s\n%s", err, stdout.String(), stderr.String())
	case <-time.After(bootTimeout):
		t.Fatalf("the guest did not connect within %v:\n%s\n%s", bootTimeout, stdout.String(), stderr.String())
	}
	defer cn.Close()
	cn.SetDeadline(time.Now().Add(bootTimeout))
	line, err := bufio.NewReader(cn).ReadString('\n')
	if err != nil || line != "ready\n" {
		// vessel describes the stalled VM's state on SIGUSR2 and stops
		// it: runblock tells the platform's known faults by it.
		cmd.Process.Signal(diagnoseSignal)
		select {
		case err := <-exited:
			exited <- err
		case <-time.After(time.Minute):
		}
		t.Fatalf("from the guest: %q, %v; vessel's stderr:\n%s", line, err, stderr.String())
	}
	if c.inspectVM != nil {
		c.inspectVM(t, vmmPID(t, cmd.Process.Pid), false)
	}
	fmt.Fprintf(cn, "done\n")
	select {
	case err = <-exited:
		exited <- err
	case <-time.After(bootTimeout):
		t.Fatalf("vessel vm run did not end within %v after the guest was told to", bootTimeout)
	}
	if err != nil || !strings.Contains(stdout.String(), "--- PASS: TestGuestCore") {
		t.Fatalf("vessel vm run: %v after %v:\n%s\n%s", err, time.Since(start).Round(time.Millisecond), stdout.String(), stderr.String())
	}
	t.Logf("vm run: disk, vsock and user network checked in the guest in %v", time.Since(start).Round(time.Millisecond))
}

// TestGuestCore is the guest half of the core vm run case.
func TestGuestCore(t *testing.T) {
	if !*guestMode {
		t.Skip("guest half of TestUnprivileged and TestJail; runs inside the VM")
	}
	f, err := os.Open("/dev/vda")
	if err != nil {
		t.Fatal(err)
	}
	b := make([]byte, len(coreDiskMarker))
	_, err = io.ReadFull(f, b)
	f.Close()
	if err != nil || string(b) != coreDiskMarker {
		t.Fatalf("/dev/vda starts with %q (%v), want %q", b, err, coreDiskMarker)
	}
	eth, err := net.InterfaceByName("eth0")
	if err != nil {
		t.Fatalf("no eth0: %v", err)
	}
	addrs, _ := eth.Addrs()
	found := false
	for _, a := range addrs {
		found = found || strings.HasPrefix(a.String(), "192.168.127.")
	}
	if !found {
		t.Fatalf("eth0 has %v, want an address of the user network (192.168.127.0/24)", addrs)
	}
	c, err := vsock.Dial(vsock.Host, coreVsockPort, nil)
	if err != nil {
		t.Fatalf("vsock to the host: %v", err)
	}
	defer c.Close()
	fmt.Fprintf(c, "ready\n")
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil || line != "done\n" {
		t.Fatalf("from the host: %q, %v", line, err)
	}
}

// vmmPID finds the process that holds the VM (a KVM VM descriptor):
// vessel's own, or with --jail its VMM child.
func vmmPID(t *testing.T, vessel int) int {
	t.Helper()
	for _, pid := range append([]int{vessel}, childrenOf(vessel)...) {
		fds, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
		for _, fd := range fds {
			if l, _ := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name())); l == "anon_inode:kvm-vm" {
				return pid
			}
		}
	}
	t.Fatalf("no process of vessel %d holds a KVM VM", vessel)
	return 0
}

// childrenOf lists the processes whose parent is pid.
func childrenOf(pid int) []int {
	var kids []int
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		n, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		stat, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", n))
		i := bytes.LastIndexByte(stat, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(string(stat[i+1:]))
		if len(f) > 1 && f[1] == strconv.Itoa(pid) {
			kids = append(kids, n)
		}
	}
	return kids
}

// imageAndRun is the core image load and run case: load the run image,
// run a detached web server publishing a port, with a volume it reads
// and writes, and remove it.
func (c *coreEnv) imageAndRun(t *testing.T, wantOwner int) {
	archive := filepath.Join(c.dir, "run.tar")
	runImageArchive(t, archive)
	os.Chmod(archive, 0o644)
	if r := c.run(t, "image", "load", archive); r.code != 0 {
		t.Fatalf("image load:\n%v", r)
	}
	if r := c.run(t, "image", "ls"); r.code != 0 || !strings.Contains(r.stdout, "vessel-e2e/run") {
		t.Fatalf("image ls after load:\n%v", r)
	}
	vol := c.owned(t, "vol")
	if err := os.WriteFile(filepath.Join(vol, "in"), []byte("from-the-host\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	port := freePort(t)
	args := append([]string{"run"}, c.extra...)
	args = append(args, "-d", "--name", "core", "-p", fmt.Sprintf("127.0.0.1:%d:80", port), "-v", vol+":/data", runImage,
		"sh", "-c", "cp /data/in /www/in.txt && echo from-the-guest > /data/out && exec httpd -f -p 80 -h /www")
	r := c.run(t, args...)
	if r.code != 0 {
		t.Fatalf("vessel run -d:\n%v", r)
	}
	defer func() {
		if t.Failed() {
			c.run(t, "rm", "-f", "core")
		}
	}()
	client := &http.Client{Timeout: 10 * time.Second}
	var body string
	for deadline := time.Now().Add(bootTimeout); time.Now().Before(deadline) && body == ""; time.Sleep(time.Second) {
		if resp, err := client.Get(fmt.Sprintf("http://127.0.0.1:%d/in.txt", port)); err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				body = string(b)
			}
		}
	}
	if body != "from-the-host\n" {
		t.Fatalf("GET the volume's file through the published port: %q", body)
	}
	out := filepath.Join(vol, "out")
	if b, err := os.ReadFile(out); err != nil || string(b) != "from-the-guest\n" {
		t.Errorf("the container's file in the volume: %q, %v", b, err)
	}
	if fi, err := os.Lstat(out); err == nil {
		if uid := int(fi.Sys().(*syscall.Stat_t).Uid); uid != wantOwner {
			t.Errorf("the container's file in the volume belongs to uid %d, want %d", uid, wantOwner)
		}
	}
	if c.inspectVM != nil {
		c.inspectVM(t, vmmPID(t, vesselPidOf(t, c)), true)
	}
	if r := c.run(t, "rm", "-f", "core"); r.code != 0 {
		t.Errorf("rm -f:\n%v", r)
	}
}

// cmdUID is the uid the vessel commands run as.
func (c *coreEnv) cmdUID() int {
	if c.cred != nil {
		return int(c.cred.Uid)
	}
	return 0
}

// vesselPidOf is the vessel process of the env's only container, from
// its state.
func vesselPidOf(t *testing.T, c *coreEnv) int {
	t.Helper()
	dir := filepath.Join(c.runtime, "vessel", "containers")
	ents, err := os.ReadDir(dir)
	if err != nil || len(ents) != 1 {
		t.Fatalf("container states: %v, %v; want one", ents, err)
	}
	b, err := os.ReadFile(filepath.Join(dir, ents[0].Name(), "state.json"))
	if err != nil {
		t.Fatal(err)
	}
	var st struct {
		Pid int `json:"pid"`
	}
	if err := json.Unmarshal(b, &st); err != nil || st.Pid == 0 {
		t.Fatalf("no pid in the container's state (%v): %s", err, b)
	}
	return st.Pid
}

// checkCoreLeft checks that nothing of the core cases is left: no VMM or
// user network helper, no container state, no jail directory, mount or
// cgroup.
func (c *coreEnv) checkCoreLeft(t *testing.T) {
	t.Helper()
	// A removed container's vessel process ends its VM and its jail
	// after rm returned: give it a bound to.
	ours := func(args []string) bool {
		return strings.HasPrefix(args[0], c.dir) || strings.HasSuffix(args[0], "vessel-usernet")
	}
	for deadline := time.Now().Add(time.Minute); len(liveProcesses(ours)) > 0 && time.Now().Before(deadline); {
		time.Sleep(200 * time.Millisecond)
	}
	if ps := liveProcesses(ours); len(ps) > 0 {
		t.Errorf("processes left: %v", ps)
	}
	ents, _ := os.ReadDir(filepath.Join(c.runtime, "vessel", "containers"))
	for _, e := range ents {
		t.Errorf("container state left: %s", e.Name())
	}
	jails, _ := os.ReadDir(filepath.Join(c.runtime, "vessel", "jails"))
	for _, e := range jails {
		t.Errorf("jail left: %s", e.Name())
	}
	mi, _ := os.ReadFile("/proc/self/mountinfo")
	for _, l := range strings.Split(string(mi), "\n") {
		if strings.Contains(l, c.dir) || strings.Contains(l, "vessel-jail") {
			t.Errorf("mount left: %s", l)
		}
	}
	filepath.WalkDir("/sys/fs/cgroup", func(p string, d os.DirEntry, err error) error {
		if err == nil && d.IsDir() && strings.HasPrefix(d.Name(), "jail-") {
			t.Errorf("cgroup left: %s", p)
		}
		return nil
	})
}

// TestUnprivileged: the core cases as an ordinary user in a group owning
// /dev/kvm, with no capability.
func TestUnprivileged(t *testing.T) {
	if *guestMode {
		t.Skip("host half only")
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root to make the unprivileged user's setting")
	}
	fi, err := os.Stat("/dev/kvm")
	if err != nil {
		t.Fatal(err)
	}
	st := fi.Sys().(*syscall.Stat_t)
	t.Cleanup(func() {
		os.Chown("/dev/kvm", int(st.Uid), int(st.Gid))
		os.Chmod("/dev/kvm", fi.Mode().Perm())
	})
	if err := os.Chown("/dev/kvm", 0, unprivUID); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod("/dev/kvm", 0o660); err != nil {
		t.Fatal(err)
	}
	c := newCoreEnv(t, unprivUID)
	c.cred = &syscall.Credential{Uid: unprivUID, Gid: unprivUID, Groups: []uint32{unprivUID}}
	c.inspectVM = func(t *testing.T, pid int, _ bool) {
		st := procStatus(t, pid)
		if want := ids(unprivUID); st["Uid"] != want || st["Gid"] != want {
			t.Errorf("the VMM runs as Uid %q Gid %q, want %q", st["Uid"], st["Gid"], want)
		}
		if st["CapEff"] != "0000000000000000" {
			t.Errorf("the VMM has capabilities %s", st["CapEff"])
		}
	}
	if r := c.run(t, "vm", "run", "--jail", "--", "true"); r.code != 2 || !strings.Contains(r.stderr, "--jail needs root") {
		t.Errorf("vm run --jail as an ordinary user: want status 2 and why:\n%v", r)
	}
	if r := c.run(t, "vm", "run", "--net", "tap=vesseltest0", "--", "true"); r.code == 0 || strings.Count(strings.TrimSpace(r.stderr), "\n") != 0 ||
		!strings.Contains(r.stderr, "CAP_NET_ADMIN") {
		t.Errorf("vm run with a TAP as an ordinary user: want a failure naming CAP_NET_ADMIN in one line:\n%v", r)
	}
	t.Run("vm run", c.vmRun)
	t.Run("image load and run", func(t *testing.T) { c.imageAndRun(t, unprivUID) })
	c.checkCoreLeft(t)
}

// TestJail: the core cases as root with --jail; while each VM runs, the
// VMM's view: its root holds only the jail's entries, it runs as nobody
// with no_new_privs, no capability (the 9P shares' file capabilities
// with -v), in namespaces of its own and the jail's cgroup.
func TestJail(t *testing.T) {
	c := jailedCoreEnv(t)
	t.Run("vm run", c.vmRun)
	t.Run("image load and run", func(t *testing.T) { c.imageAndRun(t, 0) })
	c.checkCoreLeft(t)
}

// jailedCoreEnv is the core cases' environment as root with --jail, each
// VM's jailed VMM process checked from the outside while it runs
// (inspectJailed).
func jailedCoreEnv(t *testing.T) *coreEnv {
	t.Helper()
	if *guestMode {
		t.Skip("host half only")
	}
	if os.Geteuid() != 0 {
		t.Skip("--jail needs root")
	}
	c := newCoreEnv(t, 0)
	c.extra = []string{"--jail"}
	c.inspectVM = func(t *testing.T, pid int, shares bool) { inspectJailed(t, pid, shares) }
	return c
}

// inspectJailed checks a jailed VMM process from the outside.
func inspectJailed(t *testing.T, pid int, shares bool) {
	t.Helper()
	root := fmt.Sprintf("/proc/%d/root", pid)
	ents, err := os.ReadDir(root)
	if err != nil {
		t.Fatalf("the VMM's root: %v", err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	t.Logf("the VMM's / holds %v", names)
	for _, p := range []string{"etc/passwd", "usr", "bin", "dev/kvm", "work", strings.TrimPrefix(vesselBin, "/"), "sys"} {
		if _, err := os.Lstat(filepath.Join(root, p)); err == nil {
			t.Errorf("the VMM sees /%s", p)
		}
	}
	// Its 9P shares are bound in the jail and opened there.
	want := "proc"
	if shares {
		want = "proc shares"
	}
	if strings.Join(names, " ") != want {
		t.Errorf("the VMM's / holds %v, want %s", names, want)
	}
	if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/mountinfo", pid)); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if f := strings.Fields(l); len(f) > 5 && f[4] == "/proc" && !strings.HasPrefix(f[5], "ro,") {
				t.Errorf("the VMM's /proc is not read-only: %s", l)
			}
		}
	}
	st := procStatus(t, pid)
	if want := ids(nobodyID); st["Uid"] != want || st["Gid"] != want {
		t.Errorf("the VMM runs as Uid %q Gid %q, want %q", st["Uid"], st["Gid"], want)
	}
	if st["Groups"] != "" {
		t.Errorf("the VMM has supplementary groups %q", st["Groups"])
	}
	if st["NoNewPrivs"] != "1" {
		t.Errorf("NoNewPrivs: %q, want 1", st["NoNewPrivs"])
	}
	// No capability, shares or not: the shares' server has those.
	checkCaps(t, "the VMM", st, "0000000000000000")
	if shares {
		inspectShareServer(t, pid, strings.Join(names, " "))
	}
	for _, ns := range []string{"mnt", "pid", "ipc", "uts", "net"} {
		theirs, err1 := os.Readlink(fmt.Sprintf("/proc/%d/ns/%s", pid, ns))
		ours, err2 := os.Readlink("/proc/self/ns/" + ns)
		if err1 != nil || err2 != nil || theirs == ours {
			t.Errorf("%s namespace: the VMM's %q (%v), ours %q (%v): want different", ns, theirs, err1, ours, err2)
		}
	}
	cg, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	path, ok := strings.CutPrefix(strings.TrimSpace(string(cg)), "0::")
	if !ok || !strings.Contains(path, "/vessel-jails/jail-") {
		t.Errorf("the VMM's cgroup is %q, want the jail's", cg)
	} else {
		for _, f := range []string{"memory.max", "pids.max"} {
			if b, err := os.ReadFile(filepath.Join("/sys/fs/cgroup", path, f)); err != nil || strings.TrimSpace(string(b)) == "max" {
				t.Errorf("the jail's %s: %q, %v; want a limit", f, b, err)
			}
		}
	}
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/limits", pid))
	core := ""
	for _, l := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(l, "Max core file size"); ok {
			core = strings.Join(strings.Fields(rest), " ")
		}
	}
	if core != "0 0 bytes" {
		t.Errorf("the VMM's core file size limit: %q, want 0 0 bytes", core)
	}
}

// checkCaps checks a process's capability sets: want as its effective,
// permitted and bounding ones, none inheritable or ambient.
func checkCaps(t *testing.T, who string, st map[string]string, want string) {
	t.Helper()
	for _, k := range []string{"CapEff", "CapPrm", "CapBnd"} {
		if st[k] != want {
			t.Errorf("%s's %s: %s, want %s", who, k, st[k], want)
		}
	}
	if st["CapInh"] != "0000000000000000" || st["CapAmb"] != "0000000000000000" {
		t.Errorf("%s's CapInh %s CapAmb %s, want none", who, st["CapInh"], st["CapAmb"])
	}
}

// inspectShareServer checks the share server (vessel-share) of the jailed
// VMM vmm: in the VMM's jail (its root holds root), as the jail's user,
// under its filter, with a file server's capabilities only, in a network
// namespace of its own.
func inspectShareServer(t *testing.T, vmm int, root string) {
	t.Helper()
	var pid int
	for p := range liveProcesses(func(args []string) bool { return filepath.Base(args[0]) == "vessel-share" }) {
		if procStatus(t, p)["PPid"] == strconv.Itoa(vmm) {
			pid = p
		}
	}
	if pid == 0 {
		t.Fatalf("no vessel-share below the VMM %d", vmm)
	}
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/root", pid))
	if err != nil {
		t.Fatalf("the share server's root: %v", err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	if strings.Join(names, " ") != root {
		t.Errorf("the share server's / holds %v, want the VMM's jail (%s)", names, root)
	}
	st := procStatus(t, pid)
	if want := ids(nobodyID); st["Uid"] != want || st["Gid"] != want || st["Groups"] != "" {
		t.Errorf("the share server runs as Uid %q Gid %q Groups %q, want %q and none", st["Uid"], st["Gid"], st["Groups"], want)
	}
	if st["NoNewPrivs"] != "1" || st["Seccomp"] != "2" {
		t.Errorf("the share server's NoNewPrivs %q Seccomp %q, want 1 and 2", st["NoNewPrivs"], st["Seccomp"])
	}
	// CAP_CHOWN, CAP_DAC_OVERRIDE, CAP_FOWNER, CAP_FSETID.
	checkCaps(t, "the share server", st, "000000000000001b")
	for _, ns := range []string{"mnt", "net"} {
		theirs, err1 := os.Readlink(fmt.Sprintf("/proc/%d/ns/%s", pid, ns))
		vmms, err2 := os.Readlink(fmt.Sprintf("/proc/%d/ns/%s", vmm, ns))
		ours, err3 := os.Readlink("/proc/self/ns/" + ns)
		if err1 != nil || err2 != nil || err3 != nil || theirs == ours || (ns == "mnt") != (theirs == vmms) {
			t.Errorf("%s namespace: the share server's %q, the VMM's %q, ours %q (%v %v %v): want the VMM's mount namespace and a network namespace of its own", ns, theirs, vmms, ours, err1, err2, err3)
		}
	}
}

// procStatus reads /proc/PID/status into a map of its fields.
func procStatus(t *testing.T, pid int) map[string]string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]string{}
	for _, l := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(l, ":"); ok {
			m[k] = strings.Join(strings.Fields(v), " ")
		}
	}
	return m
}

// ids is how /proc/PID/status shows a uid or gid in all four places.
func ids(id int) string {
	s := strconv.Itoa(id)
	return s + " " + s + " " + s + " " + s
}
