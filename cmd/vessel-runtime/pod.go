package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/vesselvm/vessel/container"
	"github.com/vesselvm/vessel/guest/agentproto"
	"github.com/vesselvm/vessel/internal/fdpass"
)

// Pods. containerd's CRI marks a Kubernetes pod's containers with
// annotations: the sandbox (the pod's infrastructure container) has
// container-type "sandbox"; each later container of the pod has
// container-type "container" and the sandbox's ID. vessel-runtime boots
// one VM for the sandbox, and creates every other container of the pod
// in that VM, as runsc does: the pod shares one kernel, network and
// IPC, as its containers share them under runc.
//
// A pod container's files reach the running VM through the pod share:
// a 9P share, made when the sandbox's VM boots, whose root is a small
// tmpfs in the sandbox VMM process's mount namespace. Its create
// detaches a copy of the container's rootfs and bind sources with
// open_tree(2) and passes them to that VMM process, which attaches them
// below the share (move_mount(2)): they are seen by the guest, in that
// namespace alone, and gone with the process.
//
// A pod container has a process of its own on the host, its member
// process (`vessel-runtime member ID`): the PID create reports, holding
// the container's stdio (passed to the sandbox's VMM process), serving
// the container's control socket by forwarding to that VMM process, and
// exiting with the container's exit status, as a VMM process does for a
// container with a VM of its own.
const (
	annotationContainerType = "io.kubernetes.cri.container-type"
	annotationSandboxID     = "io.kubernetes.cri.sandbox-id"
	containerTypeSandbox    = "sandbox"
	containerTypeContainer  = "container"
)

// podTag is the mount tag of a sandbox VM's pod share.
const podTag = "vessel-pod"

// podDir is the pod share's directory in the sandbox's state directory.
const podDir = "pod"

// isSandbox reports whether the spec is a pod's sandbox.
func isSandbox(s *specs.Spec) bool {
	return s.Annotations[annotationContainerType] == containerTypeSandbox
}

// sandboxOf returns the sandbox ID of a pod's (non-sandbox) container,
// or "".
func sandboxOf(s *specs.Spec) string {
	if s.Annotations[annotationContainerType] != containerTypeContainer {
		return ""
	}
	return s.Annotations[annotationSandboxID]
}

// memberRequest asks a sandbox's VMM process to create a container in
// its VM. It comes with file descriptors (SCM_RIGHTS): the container's
// stdin, stdout and stderr, then one detached mount tree per entry of
// Trees, in order.
type memberRequest struct {
	Spec *specs.Spec `json:"spec"`
	// Trees name the trees: "root" for the rootfs, then one per bind
	// mount, in Volumes' order.
	Trees []memberTree `json:"trees"`
	// Volumes are the bind mounts, their Tag and Path set by the VMM.
	Volumes []agentproto.Volume `json:"volumes,omitempty"`
}

// memberTree is one detached mount tree of a member request.
type memberTree struct {
	Name string `json:"name"` // root, b0, b1...
	File bool   `json:"file,omitempty"`
}

// maxMemberTrees bounds the trees of one request (the rootfs and bind
// mounts): SCM_RIGHTS carries at most 253 descriptors.
const maxMemberTrees = 128

// openTree detaches a copy of the mount tree at path (open_tree(2) with
// OPEN_TREE_CLONE|AT_RECURSIVE), read-only if asked, without set-ID
// bits or devices.
func openTree(path string, readOnly bool) (*os.File, error) {
	fd, err := unix.OpenTree(unix.AT_FDCWD, path, unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC|unix.AT_RECURSIVE)
	if err != nil {
		return nil, fmt.Errorf("open_tree %s: %w", path, err)
	}
	attr := unix.MountAttr{Attr_set: unix.MOUNT_ATTR_NOSUID | unix.MOUNT_ATTR_NODEV}
	if readOnly {
		attr.Attr_set |= unix.MOUNT_ATTR_RDONLY
	}
	if err := unix.MountSetattr(fd, "", unix.AT_EMPTY_PATH|unix.AT_RECURSIVE, &attr); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("mount_setattr %s: %w", path, err)
	}
	return os.NewFile(uintptr(fd), path), nil
}

// memberTrees detaches the bundle's rootfs and bind sources, for a
// member request.
func memberTrees(b *bundle) (req memberRequest, files []*os.File, err error) {
	defer func() {
		if err != nil {
			for _, f := range files {
				f.Close()
			}
			files = nil
		}
	}()
	if len(b.binds)+1 > maxMemberTrees {
		return req, nil, errorf("a pod's container takes at most %d bind mounts", maxMemberTrees-1)
	}
	if b.spec.Root.Readonly {
		if err := b.makeMountpoints(); err != nil {
			return req, nil, errorf("%v", err)
		}
	}
	f, err := openTree(b.rootfs, b.spec.Root.Readonly)
	if err != nil {
		return req, nil, errorf("rootfs: %v", err)
	}
	files = append(files, f)
	req.Trees = append(req.Trees, memberTree{Name: "root"})
	for i, bd := range b.binds {
		f, err := openTree(bd.source, bd.vol.ReadOnly)
		if err != nil {
			return req, files, errorf("bind mount at %s: %v", bd.vol.Destination, err)
		}
		files = append(files, f)
		req.Trees = append(req.Trees, memberTree{Name: fmt.Sprintf("b%d", i), File: bd.file})
		vol := bd.vol
		vol.Tag, vol.Path = "", ""
		req.Volumes = append(req.Volumes, vol)
	}
	req.Spec = b.guestSpec()
	return req, files, nil
}

// checkMemberNamespaces accepts the namespace paths a pod's container
// has under containerd's CRI: the sandbox's network (its netns path or
// /proc/PID/ns/net), ipc, uts and pid namespaces through the sandbox's
// PID. Any other path cannot be joined from a VM. The network namespace
// must be the sandbox's, named by path, as the CRI always names it: the
// annotations that make a container a pod's member are the caller's
// word (podman copies an image's annotations into the spec), the
// namespace is proof that the caller put it in that pod.
func checkMemberNamespaces(s *specs.Spec, sandboxPid int, sandboxNetns string) error {
	joined := false
	if s.Linux != nil {
		for _, ns := range s.Linux.Namespaces {
			if ns.Path == "" {
				continue
			}
			want := fmt.Sprintf("/proc/%d/ns/%s", sandboxPid, nsFile(ns.Type))
			if ns.Path == want || ns.Type == specs.NetworkNamespace && sandboxNetns != "" && ns.Path == sandboxNetns {
				switch ns.Type {
				case specs.NetworkNamespace:
					joined = true
					continue
				case specs.IPCNamespace, specs.UTSNamespace, specs.PIDNamespace:
					continue
				}
			}
			return fmt.Errorf("%s namespace path %q: a pod's container can join only its sandbox's network, ipc, uts and pid namespaces", ns.Type, ns.Path)
		}
	}
	if !joined {
		return fmt.Errorf("a pod's container must join its sandbox's network namespace (by path), as the CRI has it do")
	}
	return nil
}

// nsFile is a namespace type's name in /proc/PID/ns.
func nsFile(t specs.LinuxNamespaceType) string {
	switch t {
	case specs.NetworkNamespace:
		return "net"
	case specs.MountNamespace:
		return "mnt"
	}
	return string(t)
}

// podShare makes the sandbox's pod share: an empty read-only tmpfs.
func podShare(dir string) (string, error) {
	share := filepath.Join(dir, podDir)
	if err := os.Mkdir(share, 0o700); err != nil {
		return "", fmt.Errorf("pod share: %w", err)
	}
	if err := unix.Mount("tmpfs", share, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC|unix.MS_RDONLY, "mode=0755,size=64k,nr_inodes=4096"); err != nil {
		return "", fmt.Errorf("pod share: mount tmpfs on %s: %w", share, err)
	}
	return share, nil
}

// member is a pod container the sandbox's VMM process runs.
type member struct {
	id     string
	conn   *net.UnixConn // the member process's connection
	files  []*os.File    // its stdio
	dir    *memberDir    // its directory in the pod share and what is attached there
	mu     sync.Mutex
	status string
	code   int // exit status, once stopped
	gone   chan struct{}
	// killed is closed when SIGKILL ended the container without the
	// guest (its agent did not confirm the signal: see kill).
	killed   chan struct{}
	killOnce sync.Once
}

// podState is a sandbox VMM process's pod.
type podState struct {
	mu      sync.Mutex // serializes changes to the share
	share   string
	members map[string]*member
}

// A memberDir is a member's directory in the pod share and the trees
// attached there. The guest may rename things in the share while it is
// writable (attach and removeMember make it so), so the directory is held
// by a descriptor and each tree by its mount ID: nothing is unmounted
// or removed by a path the guest could have pointed at another member's
// trees (which hold its host volumes).
type memberDir struct {
	id    string
	dfd   int      // the directory, O_PATH; -1 once removed
	names []string // the trees, in attach order
	mnts  []uint64 // their mount IDs
}

// attach attaches the trees below share/id.
func (ps *podState) attach(id string, trees []memberTree, fds []*os.File) (md *memberDir, err error) {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	const flags = unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC
	// The share's root is this process's mount point: the guest cannot
	// swap it. While it is writable, the guest may rename or replace
	// what is below it, so everything below is made and reached through
	// descriptors (no path is resolved twice, no symlink followed): a
	// swap moves things around inside the tmpfs and no further.
	root, err := unix.Open(ps.share, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("pod share: %w", err)
	}
	defer unix.Close(root)
	if err := unix.Mount("", ps.share, "", unix.MS_REMOUNT|flags, ""); err != nil {
		return nil, fmt.Errorf("pod share: remount read-write: %w", err)
	}
	defer unix.Mount("", ps.share, "", unix.MS_REMOUNT|unix.MS_RDONLY|flags, "")
	if err := unix.Mkdirat(root, id, 0o755); err != nil {
		return nil, fmt.Errorf("pod share: mkdir %s: %w", id, err)
	}
	dfd, err := unix.Openat(root, id, unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		unix.Unlinkat(root, id, unix.AT_REMOVEDIR)
		return nil, fmt.Errorf("pod share: %s: %w", id, err)
	}
	md = &memberDir{id: id, dfd: dfd}
	defer func() {
		if err != nil {
			md.detach()
			md.remove(root)
		}
	}()
	for i, t := range trees {
		if t.File {
			var fd int
			if fd, err = unix.Openat(dfd, t.Name, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o644); err == nil {
				unix.Close(fd)
			}
		} else {
			err = unix.Mkdirat(dfd, t.Name, 0o755)
		}
		if err != nil {
			return md, fmt.Errorf("pod share: make %s/%s: %w", id, t.Name, err)
		}
		md.names = append(md.names, t.Name)
		md.mnts = append(md.mnts, 0) // made, nothing attached yet
		tfd, err := unix.Openat(dfd, t.Name, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err != nil {
			return md, fmt.Errorf("pod share: %s/%s: %w", id, t.Name, err)
		}
		err = unix.MoveMount(int(fds[i].Fd()), "", tfd, "", unix.MOVE_MOUNT_F_EMPTY_PATH|unix.MOVE_MOUNT_T_EMPTY_PATH)
		unix.Close(tfd)
		if err != nil {
			return md, fmt.Errorf("pod share: move_mount to %s/%s: %w", id, t.Name, err)
		}
		// The mount now at the name: its ID, for detach to check.
		if md.mnts[i], err = mountIDAt(dfd, t.Name); err != nil {
			unmountAt(dfd, t.Name) // just moved there: ours
			return md, fmt.Errorf("pod share: %s/%s: %w", id, t.Name, err)
		}
	}
	return md, nil
}

// mountIDAt is the ID of the mount at name below the directory dfd,
// reached without following a symlink.
func mountIDAt(dfd int, name string) (uint64, error) {
	var stx unix.Statx_t
	if err := unix.Statx(dfd, name, unix.AT_SYMLINK_NOFOLLOW, unix.STATX_MNT_ID, &stx); err != nil {
		return 0, err
	}
	if stx.Mask&unix.STATX_MNT_ID == 0 {
		return 0, errors.New("no mount ID from statx")
	}
	return stx.Mnt_id, nil
}

// detach unmounts the member's trees, last first: each one only if the
// mount at its name below the member's directory is still the one attach
// made.
func (md *memberDir) detach() {
	if md == nil || md.dfd < 0 {
		return
	}
	for i := len(md.names) - 1; i >= 0; i-- {
		if md.mnts[i] == 0 {
			continue
		}
		if id, err := mountIDAt(md.dfd, md.names[i]); err == nil && id == md.mnts[i] {
			unmountAt(md.dfd, md.names[i])
		}
	}
}

// remove removes what attach made in the member's directory and the
// directory itself, one entry at a time through its descriptor: an entry
// still mounted on (EBUSY) stays, and nothing is walked into. The
// directory goes only if share/id is still it (the guest may have
// renamed it: it then stays, in the tmpfs, until the sandbox ends).
func (md *memberDir) remove(root int) {
	if md == nil || md.dfd < 0 {
		return
	}
	for _, name := range md.names {
		if unix.Unlinkat(md.dfd, name, unix.AT_REMOVEDIR) != nil {
			unix.Unlinkat(md.dfd, name, 0)
		}
	}
	var here, there unix.Stat_t
	if unix.Fstat(md.dfd, &here) == nil && unix.Fstatat(root, md.id, &there, unix.AT_SYMLINK_NOFOLLOW) == nil &&
		here.Dev == there.Dev && here.Ino == there.Ino {
		unix.Unlinkat(root, md.id, unix.AT_REMOVEDIR)
	}
	unix.Close(md.dfd)
	md.dfd = -1
}

// unmountAt detaches the mount at name below the directory dfd, reached
// without following a symlink.
func unmountAt(dfd int, name string) {
	fd, err := unix.Openat(dfd, name, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return
	}
	defer unix.Close(fd)
	unix.Unmount(fmt.Sprintf("/proc/self/fd/%d", fd), unix.MNT_DETACH)
}

// removeMember detaches member md's trees and removes its directory.
func (ps *podState) removeMember(md *memberDir) {
	if md == nil {
		return
	}
	ps.mu.Lock()
	defer ps.mu.Unlock()
	md.detach()
	const flags = unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC
	root, err := unix.Open(ps.share, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return
	}
	defer unix.Close(root)
	if unix.Mount("", ps.share, "", unix.MS_REMOUNT|flags, "") == nil {
		md.remove(root)
		unix.Mount("", ps.share, "", unix.MS_REMOUNT|unix.MS_RDONLY|flags, "")
	}
}

// memberCreate creates a pod container in the sandbox's VM, on the
// member process's connection c, which stays open: the container's exit
// status is written to it when the container has stopped.
func (p *vmmProc) memberCreate(c *net.UnixConn, id string, req *memberRequest, fds []*os.File) {
	reply := func(r ctlReply) { json.NewEncoder(c).Encode(r) }
	closeAll := func() {
		for _, f := range fds {
			f.Close()
		}
	}
	if p.pod == nil {
		closeAll()
		reply(ctlReply{Error: fmt.Sprintf("container %s is not a pod sandbox", p.id)})
		return
	}
	if !validID(id) || req.Spec == nil || req.Spec.Process == nil || len(req.Trees) == 0 ||
		len(req.Trees) != len(req.Volumes)+1 || len(fds) != 3+len(req.Trees) {
		closeAll()
		reply(ctlReply{Error: "malformed pod container request"})
		return
	}
	p.pod.mu.Lock()
	if p.pod.members[id] != nil || id == p.id {
		p.pod.mu.Unlock()
		closeAll()
		reply(ctlReply{Error: fmt.Sprintf("container with id %q already exists in the pod", id)})
		return
	}
	m := &member{id: id, conn: c, files: fds[:3], status: statusCreating, gone: make(chan struct{}), killed: make(chan struct{})}
	p.pod.members[id] = m
	p.pod.mu.Unlock()

	fail := func(err error) {
		p.pod.mu.Lock()
		delete(p.pod.members, id)
		p.pod.mu.Unlock()
		p.pod.removeMember(m.dir)
		closeAll()
		reply(ctlReply{Error: err.Error()})
	}
	md, err := p.pod.attach(id, req.Trees, fds[3:])
	for _, f := range fds[3:] {
		f.Close()
	}
	m.dir = md
	if err != nil {
		fail(err)
		return
	}
	vols := req.Volumes
	for i := range vols {
		vols[i].Tag, vols[i].Path = podTag, id+"/"+req.Trees[i+1].Name
	}
	// handlerTimeout, not the connection's own deadline: a guest that
	// stopped answering reaches the member process as an error naming
	// it, with the VM's state (agentError), not as the connection's end.
	ctx, cancel := context.WithTimeout(context.Background(), handlerTimeout)
	defer cancel()
	terminal := req.Spec.Process.Terminal
	pio := &agentproto.ProcessIO{Stdin: true}
	if terminal {
		pio = &agentproto.ProcessIO{Terminal: true}
	}
	if _, err := p.ag.Call(ctx, agentproto.Request{Op: agentproto.OpCreate, Container: id,
		IO: pio,
		Create: &agentproto.Create{Spec: req.Spec, RootShare: podTag, RootPath: id + "/root",
			Volumes: vols, Sandbox: p.id}}); err != nil {
		var se *container.StartError
		if errors.As(err, &se) {
			err = fmt.Errorf("create in the guest: %s", se.Msg)
		} else {
			err = p.agentError("create in the guest", err)
		}
		fail(err)
		return
	}
	var outputs outputSet
	attach := func() error { return p.attachStdio(ctx, id, m.files[0], m.files[1], m.files[2], &outputs) }
	if terminal {
		// m.files are the host pty's slave; the member process sends
		// later sizes (SIGWINCH), this is the one the client set.
		attach = func() error {
			if err := p.joinTTY(ctx, id, m.files[0], m.files[1], &outputs); err != nil {
				return err
			}
			if box, ok := winSize(int(m.files[0].Fd())); ok {
				p.ag.Call(ctx, agentproto.Request{Op: agentproto.OpResize, Container: id, Size: box})
			}
			return nil
		}
	}
	if err := attach(); err != nil {
		p.ag.Call(ctx, agentproto.Request{Op: agentproto.OpDelete, Container: id})
		fail(err)
		return
	}
	m.setStatus(statusCreated)
	reply(ctlReply{Status: statusCreated})

	// The container's end, or its member process's: whichever first.
	type end struct {
		code int
		err  error // why the guest's wait failed (code 255)
	}
	exited := make(chan end, 1)
	wctx, wcancel := context.WithCancel(context.Background())
	defer wcancel() // the wait ends with the member
	// failed reports why the container ends with 255, as for a
	// container alone (vmmProc.failed), on its own stderr: the member
	// process's, which it passed on.
	errOut := m.files[2]
	if terminal {
		errOut = m.files[1] // the terminal
	}
	failed := func(err error) { p.report(err, &outputs, wctx.Done(), errOut) }
	go func() {
		s, err := p.ag.Wait(wctx, id, "")
		if err != nil {
			exited <- end{err: err} // waitFailed tells why
			return
		}
		if !waitOutputs(&outputs, wctx.Done(), p.ended) {
			p.logf("container %s: its output streams did not end within %v of its exit (the guest holds them open); it ends without the rest", id, outputsWait)
		}
		exited <- end{code: exitStatus(s)}
	}()
	hangup := make(chan struct{})
	go func() {
		io.Copy(io.Discard, c)
		close(hangup)
	}()
	// The container's exit, a SIGKILL the guest did not confirm
	// (killMember), or the pod's VM's end (255, as for a container
	// alone: it cannot outlive its VM) stops it; the member process's
	// hangup leaves it as it is.
	killed := func() bool {
		select {
		case <-m.killed:
			return true
		default:
			return false
		}
	}
	status := func(e end) int {
		if e.err != nil {
			return p.waitFailed(id, "its pod's VM", e.err, killed, failed)
		}
		return e.code
	}
	code, stopped := 0, true
	select {
	case e := <-exited:
		code = status(e)
	case <-m.killed:
		code = 128 + int(unix.SIGKILL)
	case <-hangup:
		stopped = false
	case <-p.ended:
		select {
		case e := <-exited:
			code = status(e)
		case <-time.After(vmEndGrace):
			code = p.waitFailed(id, "its pod's VM", errNoExit, killed, failed)
		}
	}
	if stopped {
		m.mu.Lock()
		m.status, m.code = statusStopped, code
		m.mu.Unlock()
		json.NewEncoder(c).Encode(ctlReply{Status: statusStopped, Exit: &code})
		select {
		case <-hangup:
		case <-p.ended:
		}
	}
	// The member process is gone or the container was deleted: remove
	// it from the VM.
	dctx, dcancel := context.WithTimeout(context.Background(), teardownTimeout)
	defer dcancel()
	select {
	case <-p.ended: // no guest left to ask
	default:
		p.ag.Call(dctx, agentproto.Request{Op: agentproto.OpDelete, Container: id})
	}
	p.pod.mu.Lock()
	delete(p.pod.members, id)
	p.pod.mu.Unlock()
	p.pod.removeMember(m.dir)
	for _, f := range m.files {
		f.Close()
	}
	close(m.gone)
	c.Close()
}

func (m *member) setStatus(s string) {
	m.mu.Lock()
	m.status = s
	m.mu.Unlock()
}

func (m *member) getStatus() string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.status
}

// handleMember carries out a control request for a pod container.
func (p *vmmProc) handleMember(req ctlRequest) ctlReply {
	if p.pod == nil {
		return ctlReply{Error: fmt.Sprintf("container %s is not a pod sandbox", p.id)}
	}
	p.pod.mu.Lock()
	m := p.pod.members[req.Container]
	p.pod.mu.Unlock()
	if m == nil {
		return ctlReply{Status: statusStopped, Error: fmt.Sprintf("container %q is not in the pod", req.Container)}
	}
	st := m.getStatus()
	fail := func(format string, args ...any) ctlReply {
		return ctlReply{Status: st, Error: fmt.Sprintf(format, args...)}
	}
	ctx, cancel := context.WithTimeout(context.Background(), handlerTimeout)
	defer cancel()
	switch req.Op {
	case opState:
		return ctlReply{Status: st}
	case opStart:
		return p.startIn(ctx, m.id, m)
	case opKill:
		if req.Signal <= 0 || req.Signal > 64 {
			return fail("invalid signal %d", req.Signal)
		}
		if req.Signal == int(unix.SIGKILL) && req.Exec == "" {
			return p.killMember(m, st)
		}
		return p.signalIn(ctx, m.id, req.Exec, st, req.Signal)
	case opResize:
		return p.handleIO(ctx, req, st, m.id)
	case opStats:
		return p.statsIn(ctx, m.id, st)
	case opUpdate:
		// The container's cgroup in the VM, within the VM's size (the
		// sandbox's, which the pod's containers share).
		if st != statusCreated && st != statusRunning {
			return fail("cannot update a container that is %s", st)
		}
		if err := checkUpdate(req.Resources, p.vmCPUs, p.vmMemory); err != nil {
			return fail("update: %v", err)
		}
		if _, err := p.ag.Call(ctx, agentproto.Request{Op: agentproto.OpUpdate, Container: m.id, Resources: req.Resources}); err != nil {
			return fail("%v", p.agentError("update", err))
		}
		return ctlReply{Status: st}
	case opDelete:
		// Closing the member's connection ends it (see memberCreate).
		m.conn.CloseRead()
		m.conn.Close()
		select {
		case <-m.gone:
		case <-ctx.Done():
			return fail("delete: the container did not go")
		}
		return ctlReply{Status: statusStopped}
	}
	return fail("unknown operation %q", req.Op)
}

// killMember sends SIGKILL to pod container m's process (status st).
// When the guest does not confirm it within killConfirmTimeout, the
// container is ended without the guest: its member process is told
// status 137, and the container is removed from the VM as far as the
// guest still answers (memberCreate). The pod's VM runs on for its
// other containers.
func (p *vmmProc) killMember(m *member, st string) ctlReply {
	if st != statusCreated && st != statusRunning {
		return ctlReply{Status: st, Error: "container not running"}
	}
	if p.getStatus() == statusPaused {
		// The pod's VM is paused: its processes are frozen, and die of
		// SIGKILL (cgroup v2); the guest cannot be asked now.
		m.killOnce.Do(func() { close(m.killed) })
		return ctlReply{Status: st}
	}
	rep, ok := p.sigkillIn(m.id, st, "container "+m.id+" is ended without the guest")
	if !ok {
		m.killOnce.Do(func() { close(m.killed) })
	}
	return rep
}

// readCtl reads one control request and the descriptors that came with
// it (a member request's stdio and trees, at most 3+maxMemberTrees): its
// first message carries them (fdpass.Recv), the rest of the JSON may follow,
// at most maxCtl bytes in all. A peer that stops sending meets the
// control deadline.
func readCtl(c *net.UnixConn) (ctlRequest, []*os.File, error) {
	var req ctlRequest
	c.SetReadDeadline(time.Now().Add(ctlTimeout))
	defer c.SetReadDeadline(time.Time{})
	first, files, err := fdpass.Recv(c, maxCtl, 3+maxMemberTrees)
	if err != nil {
		return req, nil, err
	}
	rest := io.LimitReader(c, int64(maxCtl-len(first)))
	if err := json.NewDecoder(io.MultiReader(bytes.NewReader(first), rest)).Decode(&req); err != nil {
		fdpass.Close(files)
		return req, nil, fmt.Errorf("control request: %w", err)
	}
	return req, files, nil
}
