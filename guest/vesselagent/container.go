package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/containerd/console"
	runc "github.com/containerd/go-runc"
	"github.com/mdlayher/vsock"
	"github.com/moby/sys/user"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/vesselvm/vessel/guest/agentproto"
)

// container is one container the agent runs.
type container struct {
	a    *agent
	id   string
	dir  string // stateDir/<id>: bundle/ (config.json, rootfs/), image/, rw/, runc.log
	runc *runc.Runc
	init *process
	// rootfs is the bundle's root; user is the container process's
	// resolved user, which exec'd processes get unless told otherwise.
	rootfs string
	user   specs.User
	// bundle: made from an OCI bundle's spec (Create.RootShare), whose
	// exec'd processes come with their own user, as runc exec's do.
	bundle bool

	// steps time create's parts for its reply (agentproto.Reply.Steps);
	// links is how many interfaces create configured (Reply.Links).
	steps stepTimer
	links int

	// sharedPID: the container has no PID namespace of its own (a
	// pod's container in its sandbox's): its init's exit does not end
	// its other processes, which are killed then (killRest).
	sharedPID bool

	mu     sync.Mutex
	execs  map[string]*process
	mounts []string // mounted by create, unmounted by delete (last first)
}

// ownPIDNamespace reports whether spec gives the container a new PID
// namespace of its own.
func ownPIDNamespace(spec *specs.Spec) bool {
	if spec.Linux == nil {
		return false
	}
	for _, ns := range spec.Linux.Namespaces {
		if ns.Type == specs.PIDNamespace && ns.Path == "" {
			return true
		}
	}
	return false
}

// killRestTimeout bounds killRest's runc kill.
const killRestTimeout = 30 * time.Second

// killRest kills what is left of a container without a PID namespace of
// its own once its init has exited, as containerd's shim has runc do on
// a host (ShouldKillAllOnExit: runc kill of such a stopped container
// signals every process of its cgroup): a pod's container ends whole,
// and its leftovers hold none of its output open.
func (c *container) killRest() {
	ctx, cancel := context.WithTimeout(context.Background(), killRestTimeout)
	defer cancel()
	if err := c.runc.Kill(ctx, c.id, int(unix.SIGKILL), nil); err != nil {
		log.Printf("container %s: kill what its init left: %v", c.id, err)
	}
}

// stepTimer records how long the parts of a request took.
type stepTimer struct {
	last  time.Time
	steps []agentproto.Step
}

// mark ends the step called name, begun at the previous mark (or when
// the timer was set).
func (t *stepTimer) mark(name string) {
	now := time.Now()
	t.steps = append(t.steps, agentproto.Step{Name: name, MS: float64(now.Sub(t.last).Microseconds()) / 1000})
	t.last = now
}

// process is a container's own process or an exec'd one.
type process struct {
	c       *container
	exec    string // "" for the container's own
	pid     int
	exited  chan struct{}
	done    chan struct{} // closed when the exit has been reported; status is set
	status  int
	console console.Console // with a terminal
	copies  sync.WaitGroup  // output streams still being copied
	outs    []*outputCopy   // those copies, set before the process runs
	closers []io.Closer     // stream connections and pipes, closed after exit
}

// startError is a failure to start a process, with the exit status docker
// gives it (126 or 127).
type startError struct {
	code int
	err  error
}

func (e *startError) Error() string { return e.err.Error() }
func (e *startError) Unwrap() error { return e.err }

// validID accepts what docker accepts as a container name.
func validID(id string) bool {
	if id == "" || len(id) > 128 {
		return false
	}
	for i, r := range id {
		ok := r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || i > 0 && strings.ContainsRune("_.-", r)
		if !ok {
			return false
		}
	}
	return true
}

// create makes a container: its root file system (the image disk under an
// overlay whose upper layer is a tmpfs), its bundle, its streams, and then
// `runc create`, which leaves the process waiting for start.
func (a *agent) create(ctx context.Context, id string, cr *agentproto.Create, pio *agentproto.ProcessIO) (_ *container, err error) {
	if !validID(id) {
		return nil, fmt.Errorf("create: invalid container id %q", id)
	}
	steps := stepTimer{last: time.Now()}
	// The network first (Create.MAC, MACs, then Net), all checked before
	// any is applied: the container's etc files take the guest's
	// resolv.conf.
	acts, err := planNet(cr)
	if err != nil {
		return nil, fmt.Errorf("create: %w", err)
	}
	links, err := applyNet(acts, &steps)
	if err != nil {
		return nil, fmt.Errorf("create: %w", err)
	}
	a.mu.Lock()
	if a.containers[id] != nil {
		a.mu.Unlock()
		return nil, fmt.Errorf("create: container %q exists", id)
	}
	c := &container{a: a, id: id, dir: filepath.Join(stateDir, id), execs: map[string]*process{}, steps: steps, links: links}
	a.containers[id] = c
	a.mu.Unlock()
	defer func() {
		if err != nil {
			c.delete(ctx)
			a.mu.Lock()
			delete(a.containers, id)
			a.mu.Unlock()
		}
	}()
	c.runc = &runc.Runc{Log: filepath.Join(c.dir, "runc.log"), LogFormat: runc.JSON}

	spec := *cr.Spec
	// A container with a user namespace of its own: the directories above
	// its rootfs first, traversable by anyone. runc resolves the rootfs
	// path from inside that namespace, where the container's root is
	// another user of the guest with no right to search 0700 directories
	// (containerd makes its bundle directories 0711 for the same reason).
	// Other containers keep them 0700. A pod member's rootfs lies in the
	// pod's share instead (sharePath), below stateDir/shares; the share's
	// own mount point takes the mode of the host directory mounted on it.
	if hasNamespace(&spec, specs.UserNamespace) {
		dirs := []string{stateDir, c.dir, filepath.Join(c.dir, "bundle")}
		if cr.RootPath != "" {
			dirs = append(dirs, filepath.Join(stateDir, "shares"))
		}
		if err = traversableDirs(dirs...); err != nil {
			return nil, fmt.Errorf("create: %w", err)
		}
	}
	c.bundle = cr.RootShare != ""
	if cr.RootShare != "" {
		// An OCI bundle's config: its root, user and mounts as given.
		readOnly := spec.Root != nil && spec.Root.Readonly
		var rootfs string
		if cr.RootPath != "" {
			if err = os.MkdirAll(filepath.Join(c.dir, "bundle"), 0o700); err == nil {
				rootfs, err = a.sharePath(cr.RootShare, cr.RootPath)
			}
		} else {
			rootfs, err = c.mountRootShare(cr.RootShare, readOnly)
		}
		if err != nil {
			return nil, err
		}
		if cr.Sandbox != "" {
			if err := a.joinSandbox(&spec, cr.Sandbox); err != nil {
				return nil, err
			}
		}
		spec.Root = &specs.Root{Path: rootfs, Readonly: readOnly}
		c.rootfs, c.user = rootfs, spec.Process.User
		c.steps.mark("mounts")
	} else {
		dev, rwDev, err := rootfsDisks(cr.ImageDisk, cr.ScratchDisk)
		if err != nil {
			return nil, err
		}
		c.steps.mark("disks")
		rootfs, err := c.mountRootfs(dev, rwDev)
		if err != nil {
			return nil, err
		}
		c.steps.mark("mounts")
		spec.Root = &specs.Root{Path: rootfs}
		if err := resolveUser(spec.Process, rootfs, cr.User); err != nil {
			return nil, &startError{code: 126, err: err}
		}
		c.rootfs, c.user = rootfs, spec.Process.User
		if err := c.etcFiles(&spec); err != nil {
			return nil, err
		}
	}
	if err := netSysctls(&spec); err != nil {
		return nil, err
	}
	if err := a.userNSSysfs(&spec); err != nil {
		return nil, fmt.Errorf("create: %w", err)
	}
	if err := c.mountVolumes(&spec, cr.Volumes); err != nil {
		return nil, err
	}
	bundle := filepath.Join(c.dir, "bundle")
	trimArches(&spec, foreignArches())
	c.sharedPID = !ownPIDNamespace(&spec)
	b, err := json.Marshal(&spec)
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(bundle, "config.json"), b, 0o600); err != nil {
		return nil, err
	}
	c.steps.mark("bundle")

	p := newProcess(c, "")
	// The guest's root is the initramfs, which pivot_root cannot leave:
	// runc moves the root with MS_MOVE and chroots instead, as its
	// documentation says for a root on a ramdisk.
	opts := &runc.CreateOpts{PidFile: filepath.Join(c.dir, "init.pid"), NoPivot: true}
	finish, err := p.setupIO(pio, spec.Process.User, &opts.IO, &opts.ConsoleSocket)
	if err != nil {
		return nil, err
	}
	if err := c.runc.Create(ctx, id, bundle, opts); err != nil {
		p.closeAll()
		return nil, c.runcError("create", err)
	}
	c.steps.mark("runc")
	if p.pid, err = runc.ReadPidFile(opts.PidFile); err != nil {
		p.closeAll()
		return nil, fmt.Errorf("create: %w", err)
	}
	if err := finish(); err != nil {
		p.closeAll()
		return nil, err
	}
	c.init = p
	// The process cannot end before start: watch it now, so the exit is
	// reported even when it comes at once.
	go p.wait(a.reaper.watch(p.pid))
	return c, nil
}

// rootfsDisks finds the image disk (serial) and the scratch disk
// (scratch, if any; rwDev is "" without one).
func rootfsDisks(serial, scratch string) (dev, rwDev string, err error) {
	if dev, err = diskBySerial(serial); err != nil {
		return "", "", err
	}
	if scratch != "" {
		if rwDev, err = diskBySerial(scratch); err != nil {
			return "", "", err
		}
	}
	return dev, rwDev, nil
}

// hasNamespace reports whether spec lists a namespace of type typ.
func hasNamespace(spec *specs.Spec, typ specs.LinuxNamespaceType) bool {
	if spec.Linux == nil {
		return false
	}
	for _, ns := range spec.Linux.Namespaces {
		if ns.Type == typ {
			return true
		}
	}
	return false
}

// sysBind is the agent's bind of the guest's /sys alone, without the
// mounts below it, made once (see userNSSysfs).
var sysBind = filepath.Join(stateDir, "sys")

// userNSSysfs gives a container with a user namespace of its own but
// the VM's network namespace (every container vessel run and
// vessel-runtime create: vessel-runtime and joinSandbox drop the spec's
// network namespace, the VM being the container's network) the guest's
// sysfs as a recursive bind of sysBind in place of each sysfs mount,
// read-only when the mount was. The kernel lets only the owner of a
// network namespace mount sysfs in it, and the VM's is owned by the
// guest's first user namespace (runc fails with EPERM). A bind of /sys
// itself would not do either: in the container's user namespace the
// guest's mounts below /sys (its cgroup hierarchy) are locked, and a
// bind that leaves locked mounts out is refused (EINVAL), while a
// recursive one would show the container the guest's whole cgroup tree.
// sysBind, a plain bind made in the agent's own namespace, has nothing
// below it. runc does the same recursive bind for its rootless specs.
func (a *agent) userNSSysfs(spec *specs.Spec) error {
	if !hasNamespace(spec, specs.UserNamespace) || hasNamespace(spec, specs.NetworkNamespace) {
		return nil
	}
	mounts, changed := sysfsBinds(spec.Mounts, sysBind)
	if !changed {
		return nil
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if !a.sysBound {
		if err := traversableDirs(stateDir, sysBind); err != nil {
			return err
		}
		if err := unix.Mount("/sys", sysBind, "", unix.MS_BIND, ""); err != nil {
			return fmt.Errorf("bind /sys on %s: %w", sysBind, err)
		}
		a.sysBound = true
	}
	spec.Mounts = mounts
	return nil
}

// sysfsBinds returns mounts with each sysfs mount replaced by a recursive
// bind of src, read-only when the mount was, and whether there was one.
// mounts itself is not changed.
func sysfsBinds(mounts []specs.Mount, src string) ([]specs.Mount, bool) {
	out := slices.Clone(mounts)
	changed := false
	for i, m := range out {
		if m.Type != "sysfs" {
			continue
		}
		opts := []string{"rbind", "nosuid", "noexec", "nodev"}
		if slices.Contains(m.Options, "ro") {
			opts = append(opts, "ro")
		}
		out[i] = specs.Mount{Destination: m.Destination, Type: "bind", Source: src, Options: opts}
		changed = true
	}
	return out, changed
}

// traversableDirs makes each directory, in order, if it is missing, and
// sets its mode to 0711: others may pass through it to a path they know,
// not list it.
func traversableDirs(dirs ...string) error {
	for _, d := range dirs {
		if err := os.Mkdir(d, 0o711); err != nil && !errors.Is(err, fs.ErrExist) {
			return err
		}
		if err := os.Chmod(d, 0o711); err != nil {
			return err
		}
	}
	return nil
}

// mountRootfs mounts the image disk dev read-only, the scratch disk
// rwDev (or a tmpfs, if rwDev is "") for the writable layer, and the
// overlay of both as the bundle's rootfs.
func (c *container) mountRootfs(dev, rwDev string) (string, error) {
	rwType, rwOpts := "ext4", ""
	if rwDev == "" {
		rwDev, rwType, rwOpts = "tmpfs", "tmpfs", "mode=0755"
	}
	image := filepath.Join(c.dir, "image")
	if err := os.MkdirAll(image, 0o700); err != nil {
		return "", err
	}
	if err := c.mount(dev, image, "ext4", unix.MS_RDONLY, ""); err != nil {
		return "", err
	}
	return c.mountOverlay(image, rwDev, rwType, rwOpts)
}

// mountOverlay mounts the writable layer (rwDev, a file system of type
// rwType with options rwOpts) on the container's rw directory and the
// overlay of lower and that layer as the bundle's rootfs, whose path it
// returns. delete unmounts both.
func (c *container) mountOverlay(lower, rwDev, rwType, rwOpts string) (string, error) {
	rw, rootfs := filepath.Join(c.dir, "rw"), filepath.Join(c.dir, "bundle", "rootfs")
	for _, d := range []string{rw, rootfs} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return "", err
		}
	}
	if err := c.mount(rwDev, rw, rwType, 0, rwOpts); err != nil {
		return "", err
	}
	for _, d := range []string{"upper", "work"} {
		if err := os.Mkdir(filepath.Join(rw, d), 0o755); err != nil {
			return "", err
		}
	}
	opts := fmt.Sprintf("lowerdir=%s,upperdir=%s/upper,workdir=%s/work", lower, rw, rw)
	if err := c.mount("overlay", rootfs, "overlay", 0, opts); err != nil {
		return "", err
	}
	return rootfs, nil
}

// mountRootShare mounts the 9P share tag (an OCI bundle's rootfs on the
// host) as the bundle's rootfs, read-only if asked.
func (c *container) mountRootShare(tag string, readOnly bool) (string, error) {
	rootfs := filepath.Join(c.dir, "bundle", "rootfs")
	if err := os.MkdirAll(rootfs, 0o700); err != nil {
		return "", err
	}
	var flags uintptr
	if readOnly {
		flags = unix.MS_RDONLY
	}
	if err := c.mount(tag, rootfs, "9p", flags, volumeOptions); err != nil {
		return "", err
	}
	return rootfs, nil
}

// volumeOptions mount a host directory: 9P2000.L over virtio, with
// Linux's largest message for that transport, and permissions checked by
// the guest's kernel against the files' owners and modes, as on a local
// file system (the host serves every request). No cache: the host's
// changes show at once, as with a bind mount.
const volumeOptions = "trans=virtio,version=9p2000.L,access=client,msize=512000,cache=none"

// mountVolumes mounts each host directory and binds it into the
// container after the other mounts.
func (c *container) mountVolumes(spec *specs.Spec, vols []agentproto.Volume) error {
	mounts := slices.Clip(spec.Mounts)
	for i, v := range vols {
		if !filepath.IsAbs(v.Destination) || filepath.Clean(v.Destination) == "/" {
			return fmt.Errorf("create: volume destination %q: want an absolute path other than /", v.Destination)
		}
		opts := []string{"rbind", "rw"}
		if v.ReadOnly {
			opts[1] = "ro"
		}
		if len(v.Options) > 0 {
			opts = v.Options
		}
		var src string
		if v.Path != "" {
			// A file or directory in a share that holds several (single
			// files, a pod's): the share is mounted once, read-write;
			// the host says what may be written.
			var err error
			if src, err = c.a.sharePath(v.Tag, v.Path); err != nil {
				return err
			}
		} else {
			src = filepath.Join(c.dir, "volumes", strconv.Itoa(i))
			if err := os.MkdirAll(src, 0o700); err != nil {
				return err
			}
			var flags uintptr
			if v.ReadOnly {
				flags = unix.MS_RDONLY
			}
			if err := c.mount(v.Tag, src, "9p", flags, volumeOptions); err != nil {
				return err
			}
		}
		mounts = append(mounts, specs.Mount{Destination: v.Destination, Type: "bind", Source: src, Options: opts})
	}
	spec.Mounts = mounts
	return nil
}

func (c *container) mount(src, dst, fstype string, flags uintptr, data string) error {
	if err := unix.Mount(src, dst, fstype, flags, data); err != nil {
		return fmt.Errorf("mount %s on %s: %w", src, dst, err)
	}
	c.mu.Lock()
	c.mounts = append(c.mounts, dst)
	c.mu.Unlock()
	return nil
}

// diskWait bounds the wait for a disk's size to arrive.
const diskWait = 5 * time.Second

// diskBySerial finds the virtio disk whose serial is s. In a VM restored
// from a template the disk was an empty slot until the restore attached
// the image, and the kernel learns its size from a configuration change
// it handles on its own time: an empty disk is waited for, a while.
func diskBySerial(s string) (string, error) {
	if s == "" {
		return "", errors.New("create: no image disk")
	}
	devs, _ := filepath.Glob("/sys/block/vd*")
	for _, d := range devs {
		b, err := os.ReadFile(filepath.Join(d, "serial"))
		if err != nil || strings.TrimSpace(string(b)) != s {
			continue
		}
		for start := time.Now(); ; time.Sleep(5 * time.Millisecond) {
			b, err := os.ReadFile(filepath.Join(d, "size"))
			if err == nil && strings.TrimSpace(string(b)) != "0" {
				break
			}
			if time.Since(start) > diskWait {
				return "", fmt.Errorf("create: disk %q is empty", s)
			}
		}
		return "/dev/" + filepath.Base(d), nil
	}
	return "", fmt.Errorf("create: no disk with serial %q", s)
}

// newProcess makes the record of a process of c.
func newProcess(c *container, exec string) *process {
	return &process{c: c, exec: exec, exited: make(chan struct{}), done: make(chan struct{})}
}

// resolveUser sets the process's uid, gid and groups from docker's
// user[:group] string, looked up in the image's /etc/passwd and
// /etc/group, and HOME when the image did not set it.
func resolveUser(proc *specs.Process, rootfs, userSpec string) error {
	defaults := &user.ExecUser{Uid: 0, Gid: 0, Home: "/"}
	passwd, group := filepath.Join(rootfs, "etc", "passwd"), filepath.Join(rootfs, "etc", "group")
	u, err := user.GetExecUserPath(userSpec, defaults, passwd, group)
	if err != nil {
		return fmt.Errorf("unable to find user %s: %w", userSpec, err)
	}
	pu := &proc.User
	pu.UID, pu.GID = uint32(u.Uid), uint32(u.Gid)
	for _, g := range u.Sgids {
		if g != u.Gid {
			pu.AdditionalGids = append(pu.AdditionalGids, uint32(g))
		}
	}
	for _, e := range proc.Env {
		if strings.HasPrefix(e, "HOME=") {
			return nil
		}
	}
	proc.Env = append(proc.Env, "HOME="+u.Home)
	return nil
}

// etcFiles gives the container the guest's name resolution, as docker
// does: /etc/resolv.conf (the guest's, which its init wrote), and an
// /etc/hosts and /etc/hostname naming the container.
func (c *container) etcFiles(spec *specs.Spec) error {
	host := spec.Hostname
	if host == "" {
		host = "localhost"
	}
	files := map[string]string{
		"hostname": host + "\n",
		"hosts":    "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t" + host + "\n",
	}
	if b, err := os.ReadFile("/etc/resolv.conf"); err == nil {
		files["resolv.conf"] = string(b)
	}
	for _, name := range []string{"hostname", "hosts", "resolv.conf"} {
		text, ok := files[name]
		if !ok {
			continue
		}
		p := filepath.Join(c.dir, name)
		if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
			return err
		}
		spec.Mounts = append(spec.Mounts, specs.Mount{Destination: "/etc/" + name, Type: "bind", Source: p, Options: []string{"rbind", "rprivate"}})
	}
	return nil
}

// runcError turns a failed runc command into an error with runc's own
// message (from its log) and, for a process that could not be started,
// docker's exit status.
func (c *container) runcError(op string, err error) error {
	msg := lastRuncError(c.runc.Log)
	if msg == "" {
		msg = err.Error()
	}
	e := fmt.Errorf("%s: %s", op, msg)
	switch {
	case strings.Contains(msg, "executable file not found"), strings.Contains(msg, "no such file or directory"):
		return &startError{code: 127, err: e}
	case strings.Contains(msg, "permission denied"), strings.Contains(msg, "is a directory"):
		return &startError{code: 126, err: e}
	}
	return e
}

// lastRuncError returns the message of the last error in runc's JSON log.
func lastRuncError(path string) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	last := ""
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		var l struct{ Level, Msg string }
		if json.Unmarshal(sc.Bytes(), &l) == nil && l.Level == "error" {
			last = l.Msg
		}
	}
	return last
}

// start starts the container's process.
func (c *container) start(ctx context.Context) error {
	if err := c.runc.Start(ctx, c.id); err != nil {
		return c.runcError("start", err)
	}
	return nil
}

// exec starts another process in the container, as user (docker's
// user[:group]; "" for the container's own user).
func (c *container) exec(ctx context.Context, id string, ps *specs.Process, userSpec string, pio *agentproto.ProcessIO) (*process, error) {
	if !validID(id) {
		return nil, fmt.Errorf("exec: invalid id %q", id)
	}
	if userSpec != "" {
		if err := resolveUser(ps, c.rootfs, userSpec); err != nil {
			return nil, &startError{code: 126, err: err}
		}
	} else if !c.bundle {
		ps.User = c.user
	}
	c.mu.Lock()
	if c.execs[id] != nil {
		c.mu.Unlock()
		return nil, fmt.Errorf("exec: %q exists in %s", id, c.id)
	}
	p := newProcess(c, id)
	c.execs[id] = p
	c.mu.Unlock()
	pidFile := filepath.Join(c.dir, "exec-"+id+".pid")
	opts := &runc.ExecOpts{PidFile: pidFile, Detach: true}
	finish, err := p.setupIO(pio, ps.User, &opts.IO, &opts.ConsoleSocket)
	if err == nil {
		if err = c.runc.Exec(ctx, c.id, *ps, opts); err != nil {
			err = c.runcError("exec", err)
		}
	}
	if err == nil {
		p.pid, err = runc.ReadPidFile(pidFile)
	}
	if err == nil {
		err = finish()
	}
	if err != nil {
		p.closeAll()
		c.mu.Lock()
		delete(c.execs, id)
		c.mu.Unlock()
		return nil, err
	}
	go p.wait(c.a.reaper.watch(p.pid))
	return p, nil
}

// process returns the container's own process (exec "") or an exec'd one.
func (c *container) process(exec string) *process {
	if exec == "" {
		return c.init
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.execs[exec]
}

// delete kills what still runs, removes the container from runc and
// unmounts its file systems.
func (c *container) delete(ctx context.Context) error {
	var errs []error
	if c.init != nil {
		if err := c.runc.Delete(ctx, c.id, &runc.DeleteOpts{Force: true}); err != nil {
			errs = append(errs, c.runcError("delete", err))
		}
	}
	c.mu.Lock()
	mounts := c.mounts
	c.mounts = nil
	c.mu.Unlock()
	for i := len(mounts) - 1; i >= 0; i-- {
		if err := unix.Unmount(mounts[i], unix.MNT_DETACH); err != nil {
			errs = append(errs, fmt.Errorf("unmount %s: %w", mounts[i], err))
		}
	}
	if err := os.RemoveAll(c.dir); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// setupIO prepares a process's streams: it dials one vsock connection to
// the host per stream, and sets up runc's side (pipes, or the console
// socket for a terminal). finish completes the setup once runc has made
// the process: it closes runc's ends and starts the copying.
func (p *process) setupIO(pio *agentproto.ProcessIO, u specs.User, rio *runc.IO, sock *runc.ConsoleSocket) (finish func() error, err error) {
	if pio == nil {
		pio = &agentproto.ProcessIO{}
	}
	dial := func(name string) (*vsock.Conn, error) {
		c, err := dialHost(agentproto.Hello{Version: agentproto.Version, Role: agentproto.RoleStream,
			Stream: &agentproto.StreamID{Container: p.c.id, Exec: p.exec, Name: name}})
		if err != nil {
			return nil, fmt.Errorf("%s stream: %w", name, err)
		}
		p.closers = append(p.closers, c)
		return c, nil
	}
	if pio.Terminal {
		s, err := runc.NewTempConsoleSocket()
		if err != nil {
			return nil, fmt.Errorf("console socket: %w", err)
		}
		*sock = s
		tty, err := dial(agentproto.TTY)
		if err != nil {
			s.Close()
			return nil, err
		}
		return func() error {
			defer s.Close()
			m, err := s.ReceiveMaster()
			if err != nil {
				return fmt.Errorf("terminal from runc: %w", err)
			}
			p.console = m
			p.closers = append(p.closers, m)
			// The data goes through a pollable file of its own (read
			// deadlines bound it after the exit); m stays for the
			// window size.
			f, err := pollableTerminal(m)
			if err != nil {
				return err
			}
			p.closers = append(p.closers, f)
			go io.Copy(f, tty)
			// Its read ends with EIO once the process and its
			// children closed the terminal.
			p.output(tty, f)
			return nil
		}, nil
	}

	var ioOpts []runc.IOOpt
	if !pio.Stdin {
		ioOpts = append(ioOpts, func(o *runc.IOOption) { o.OpenStdin = false })
	}
	pipes, err := runc.NewPipeIO(int(u.UID), int(u.GID), ioOpts...)
	if err != nil {
		return nil, fmt.Errorf("pipes: %w", err)
	}
	*rio = pipes
	p.closers = append(p.closers, pipes)
	conns := map[string]*vsock.Conn{}
	names := []string{agentproto.Stdout, agentproto.Stderr}
	if pio.Stdin {
		names = append(names, agentproto.Stdin)
	}
	for _, n := range names {
		if conns[n], err = dial(n); err != nil {
			p.closeAll()
			return nil, err
		}
	}
	return func() error {
		if in := conns[agentproto.Stdin]; in != nil {
			go func() {
				io.Copy(pipes.Stdin(), in)
				pipes.Stdin().Close() // the host closed stdin: EOF for the process
			}()
		}
		for n, r := range map[string]io.Reader{agentproto.Stdout: pipes.Stdout(), agentproto.Stderr: pipes.Stderr()} {
			// go-runc's pipes are os.Pipe's: pollable, so read
			// deadlines bound them after the exit.
			f, ok := r.(*os.File)
			if !ok {
				return fmt.Errorf("%s: runc's pipe is a %T, not a file", n, r)
			}
			p.output(conns[n], f)
		}
		return nil
	}, nil
}

// output starts copying one of the process's output streams, src, to
// the host's connection for it, which is half-closed at the end.
func (p *process) output(w *vsock.Conn, src *os.File) {
	o := &outputCopy{src: src, dst: w}
	p.outs = append(p.outs, o)
	p.copies.Add(1)
	go func() {
		defer p.copies.Done()
		o.run()
		w.CloseWrite()
	}()
}

// wait reports the process's exit to the host once its output has been
// passed on: completely, or until each stream still open has been
// silent for outputIdle, outputMax after the exit at the latest.
func (p *process) wait(ch chan runc.Exit) {
	e := <-ch
	close(p.exited)
	if p.exec == "" && p.c.sharedPID {
		p.c.killRest()
	}
	last := time.Now().Add(outputMax)
	for _, o := range p.outs {
		o.exited(last)
	}
	p.copies.Wait()
	p.closeAll()
	p.status = e.Status
	close(p.done)
	p.c.a.send(agentproto.Reply{Event: agentproto.EventExit, Container: p.c.id, Exec: p.exec, Status: e.Status})
}

func (p *process) closeAll() {
	for _, c := range p.closers {
		c.Close()
	}
	p.closers = nil
}

// signal sends sig to the process, unless it has exited.
func (p *process) signal(sig unix.Signal) error {
	select {
	case <-p.exited:
		return nil
	default:
	}
	if err := unix.Kill(p.pid, sig); err != nil && err != unix.ESRCH {
		return fmt.Errorf("signal %d to %d: %w", sig, p.pid, err)
	}
	return nil
}

// resize sets the process's terminal size.
func (p *process) resize(b specs.Box) error {
	if p.console == nil {
		return errors.New("resize: the process has no terminal")
	}
	return p.console.Resize(console.WinSize{Height: uint16(b.Height), Width: uint16(b.Width)})
}

// sharePath mounts the share tag for the VM's life if it is not yet, and
// returns path's place in it.
func (a *agent) sharePath(tag, path string) (string, error) {
	if !filepath.IsLocal(path) {
		return "", fmt.Errorf("create: path %q in share %q: want a relative path without ..", path, tag)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	dir, ok := a.shares[tag]
	if !ok {
		dir = filepath.Join(stateDir, "shares", strconv.Itoa(len(a.shares)))
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return "", err
		}
		if err := unix.Mount(tag, dir, "9p", 0, volumeOptions); err != nil {
			return "", fmt.Errorf("mount %s on %s: %w", tag, dir, err)
		}
		if a.shares == nil {
			a.shares = map[string]string{}
		}
		a.shares[tag] = dir
	}
	return filepath.Join(dir, path), nil
}

// joinSandbox points the spec's namespace entries that have a path at
// the sandbox container's namespaces (the host's paths mean nothing in
// the VM), and drops the network namespace: a pod's containers share
// the VM's network, as the sandbox does.
func (a *agent) joinSandbox(spec *specs.Spec, sandbox string) error {
	a.mu.Lock()
	sb := a.containers[sandbox]
	a.mu.Unlock()
	if sb == nil || sb.init == nil {
		return fmt.Errorf("create: no sandbox container %q in this VM", sandbox)
	}
	if spec.Linux == nil {
		return nil
	}
	var nss []specs.LinuxNamespace
	for _, ns := range spec.Linux.Namespaces {
		if ns.Path != "" {
			switch ns.Type {
			case specs.NetworkNamespace:
				continue
			case specs.IPCNamespace, specs.UTSNamespace, specs.PIDNamespace:
				names := map[specs.LinuxNamespaceType]string{specs.IPCNamespace: "ipc", specs.UTSNamespace: "uts", specs.PIDNamespace: "pid"}
				ns.Path = fmt.Sprintf("/proc/%d/ns/%s", sb.init.pid, names[ns.Type])
			default:
				return fmt.Errorf("create: joining the sandbox's %s namespace is not supported", ns.Type)
			}
		}
		nss = append(nss, ns)
	}
	l := *spec.Linux
	l.Namespaces = nss
	spec.Linux = &l
	return nil
}

// netSysctls applies the spec's net.* sysctls to the VM's own network
// namespace when the container shares it (it has no network namespace
// entry: the VM is the container's network, see cmd/vessel-runtime), and
// takes them out of the spec: runc refuses network sysctls for a
// container in its host's network namespace, as it must on a real host.
// docker sets two on every container (ip_unprivileged_port_start,
// ping_group_range).
func netSysctls(spec *specs.Spec) error {
	if spec.Linux == nil || len(spec.Linux.Sysctl) == 0 {
		return nil
	}
	if hasNamespace(spec, specs.NetworkNamespace) {
		return nil
	}
	rest := map[string]string{}
	for k, v := range spec.Linux.Sysctl {
		if !strings.HasPrefix(k, "net.") {
			rest[k] = v
			continue
		}
		path, err := sysctlPath(k)
		if err != nil {
			return fmt.Errorf("create: %w", err)
		}
		if err := os.WriteFile(path, []byte(v), 0); err != nil {
			return fmt.Errorf("create: sysctl %s=%q: %w", k, v, err)
		}
	}
	l := *spec.Linux
	l.Sysctl = rest
	spec.Linux = &l
	return nil
}

// sysctlPath is a sysctl's file under /proc/sys, as runc names them:
// dots separate the levels, and a slash stands for a dot inside one (an
// interface name such as eth0.100).
func sysctlPath(key string) (string, error) {
	parts := strings.Split(key, ".")
	for i, p := range parts {
		p = strings.ReplaceAll(p, "/", ".")
		if p == "" || p == "." || p == ".." {
			return "", fmt.Errorf("sysctl %q: bad name", key)
		}
		parts[i] = p
	}
	return filepath.Join(append([]string{"/proc/sys"}, parts...)...), nil
}
