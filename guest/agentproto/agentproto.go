// Package agentproto is the protocol between vessel on the host and its
// agent in the guest (guest/vesselagent), carried over vsock.
//
// The agent dials the host (CID 2) on Port; the VMM's hybrid vsock turns
// each such connection into a connection to the host's Unix socket
// UDS_<Port>. Every connection starts with a Hello frame from the agent:
// the first one is the control connection, the others carry one stdio
// stream of one process each (Role "stream"), so every stream gets
// vsock's own flow control and half-close, and nothing is multiplexed.
//
// On the control connection the host sends Requests and the agent sends
// Replies: one per request (same ID), and unsolicited events (ID 0), such
// as a process's exit. A frame is a 4-byte big-endian length and that
// many bytes of JSON, at most MaxFrame (MaxHello for a Hello).
//
// The operations follow the OCI runtime's lifecycle (create, start,
// kill, delete, and exec for extra processes), so that the OCI runtime
// command line, which docker, podman and containerd drive, maps onto them.
package agentproto

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"

	runc "github.com/containerd/go-runc"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/vesselvm/vessel/guest/cmdline"
)

// Version is the protocol version. The host refuses an agent whose Hello
// has another one.
const Version = 1

// Port is the vsock port on the host that the agent dials.
const Port = 1024

// MaxFrame bounds a frame's JSON, so a hostile peer cannot make the other
// side allocate without limit.
const MaxFrame = 4 << 20

// ErrFrame is returned for a frame that is too large or not valid JSON.
var ErrFrame = errors.New("agentproto: malformed frame")

// Connection roles.
const (
	RoleControl = "control"
	RoleStream  = "stream"
)

// Hello opens every connection from the agent.
type Hello struct {
	Version int       `json:"version"`
	Role    string    `json:"role"`
	Stream  *StreamID `json:"stream,omitempty"` // for RoleStream
}

// Stream names.
const (
	Stdin  = "stdin"
	Stdout = "stdout"
	Stderr = "stderr"
	// TTY is a terminal's both directions in one stream.
	TTY = "tty"
)

// StreamID names one stdio stream of one process: the container's own
// process (Exec == "") or one added with OpExec.
type StreamID struct {
	Container string `json:"container"`
	Exec      string `json:"exec,omitempty"`
	Name      string `json:"name"`
}

// Operations.
const (
	// OpCreate prepares a container (Container, Create) without starting
	// its process; the agent first dials the process's streams.
	OpCreate = "create"
	// OpStart starts the created container's process.
	OpStart = "start"
	// OpExec starts another process (Exec, Process) in a running
	// container, with its own streams.
	OpExec = "exec"
	// OpSignal sends Signal to a process (Exec "" is the container's).
	OpSignal = "signal"
	// OpResize sets a process's terminal size.
	OpResize = "resize"
	// OpDelete removes a container whose process exited (or kills it
	// first) and its root file system's writable layer.
	OpDelete = "delete"
	// OpWait replies when a process (Exec "" is the container's) has
	// exited and its output is drained, with its Status; the same
	// moment as its exit event.
	OpWait = "wait"
	// OpShutdown ends the agent, and so the VM.
	OpShutdown = "shutdown"
	// OpUpdate applies Resources to a container's cgroup (runc update).
	// An agent older than it answers "unknown operation".
	OpUpdate = "update"
	// OpTemplate tells an agent that has no container yet that the host
	// is about to snapshot its VM as a template. The agent replies;
	// when its control connection is then reset (a restored clone's
	// vsock transport reset), it dials the host again, says hello, and
	// serves the clone's host as a fresh agent would. With Create.Spec
	// set, the agent first runs one throwaway container of that
	// configuration (its command replaced by /bin/true), so the clones
	// start their first container warm; the reply's Pid is then that of
	// the runc that ran it.
	OpTemplate = "template"
	// OpStats replies with the container's cgroup statistics (Stats) as
	// the guest's runc reports them (runc events --stats). An agent
	// older than it answers "unknown operation".
	OpStats = "stats"
)

// Request is what the host asks of the agent.
type Request struct {
	ID        uint64         `json:"id"`
	Op        string         `json:"op"`
	Container string         `json:"container,omitempty"`
	Exec      string         `json:"exec,omitempty"`
	Create    *Create        `json:"create,omitempty"`
	Process   *specs.Process `json:"process,omitempty"` // for OpExec
	IO        *ProcessIO     `json:"io,omitempty"`      // for OpCreate and OpExec
	Signal    int            `json:"signal,omitempty"`
	// User, for OpExec, is docker's user[:group] to run the process as,
	// resolved in the image; empty means the container's user.
	User string     `json:"user,omitempty"`
	Size *specs.Box `json:"size,omitempty"` // for OpResize
	// Resources, for OpUpdate, are the container's new cgroup limits.
	Resources *specs.LinuxResources `json:"resources,omitempty"`
}

// ProcessIO says which streams a process has. With Terminal, one TTY
// stream carries both directions; otherwise stdout and stderr always
// exist and stdin only when asked for.
type ProcessIO struct {
	Terminal bool `json:"terminal,omitempty"`
	Stdin    bool `json:"stdin,omitempty"`
}

// Create describes a container: its OCI configuration (Root.Path is
// ignored: the agent makes the root), where its image is, and what must
// be resolved inside it.
type Create struct {
	Spec *specs.Spec `json:"spec"`
	// ImageDisk is the serial of the read-only virtio disk that holds the
	// image's file system (an ext4 image, see images/rootfs).
	ImageDisk string `json:"image_disk"`
	// User is docker's user[:group] (names or numbers), resolved against
	// the image's /etc/passwd and /etc/group into Spec.Process.User.
	User string `json:"user,omitempty"`
	// Volumes are host directories to bind into the container.
	Volumes []Volume `json:"volumes,omitempty"`
	// ScratchDisk, if set, is the serial of a writable virtio disk with
	// an empty ext4 file system that holds the container's writable
	// layer; without it, the layer is a tmpfs.
	ScratchDisk string `json:"scratch_disk,omitempty"`
	// RootShare, if set, is the mount tag of a virtio 9P device that
	// holds the container's root file system (an OCI bundle's rootfs on
	// the host, see cmd/vessel-runtime), used instead of ImageDisk and
	// ScratchDisk: it is mounted read-only when Spec.Root.Readonly, and
	// Spec is then taken as it is (its process user; no User resolved,
	// no /etc files added), as runc takes a bundle's config.
	RootShare string `json:"root_share,omitempty"`
	// RootPath, if set, is the root file system's directory inside
	// RootShare (a relative path without ".."), for a share that holds
	// several containers' roots: a pod's share. Such a share is mounted
	// once and stays for the VM's life.
	RootPath string `json:"root_path,omitempty"`
	// Sandbox, if set, is the container of this VM whose namespaces the
	// spec's namespace entries with a path name (a Kubernetes pod's
	// sandbox, whose ipc, uts and pid namespaces the pod's containers
	// join): the agent points them at that container's process. The
	// network namespace is the VM's own for every container of a pod.
	Sandbox string `json:"sandbox,omitempty"`
	// MAC, if set, gives the VM's network interface a new address before
	// the container is made: a VM restored from a template has its
	// template's address until then, and each clone takes its own (the
	// host's network device and backend already use the new one).
	MAC *MACChange `json:"mac,omitempty"`
	// MACs, if set, are further address changes, one per network
	// interface, made in order after MAC: a VM restored from a template
	// whose interfaces have the template's addresses (one per NIC) until
	// then, and take the container's.
	MACs []MACChange `json:"macs,omitempty"`
	// Net, if set, configures interfaces after the MAC changes, in order,
	// as vessel.net on the kernel command line does at boot (the same
	// type; guest/netconf applies both): each gets its MTU, is brought
	// up, and gets its static addresses (IPv6 ones without duplicate
	// address detection), its routes (those on the link first, the
	// default route last) and its name servers (the guest's
	// /etc/resolv.conf, which a container without RootShare gets). This
	// is for a VM restored from a template, which booted with no
	// vessel.net and so has its interfaces down. Each Net names its
	// interface by its final address: with MAC changes, the To of one of
	// them. A Net that would use DHCP (no address and not Static) is
	// refused.
	//
	// An agent older than MACs and Net ignores both (unknown fields):
	// the reply proves they were applied (Reply.Links, StepNet; see
	// CheckNet).
	Net []cmdline.Net `json:"net,omitempty"`
}

// StepNet names the step of a create's reply (Reply.Steps) that applied
// Create.MACs and Create.Net. An agent sends it whenever either is set,
// and an agent older than them never does.
const StepNet = "net"

// ErrNetIgnored is returned (wrapped) by CheckNet for a reply that does
// not prove the create's network configuration was applied.
var ErrNetIgnored = errors.New("agentproto: the agent did not apply the network configuration")

// CheckNet reports whether rep, the successful reply to a create of c,
// proves that the agent applied c.MACs and c.Net: it has a step named
// StepNet and Links is len(c.Net). An agent that predates those fields
// ignores them and replies without either, so the host must check
// before it trusts the guest's network. With neither field set there is
// nothing to prove. The error wraps ErrNetIgnored.
func (c *Create) CheckNet(rep *Reply) error {
	if len(c.MACs) == 0 && len(c.Net) == 0 {
		return nil
	}
	if !slices.ContainsFunc(rep.Steps, func(s Step) bool { return s.Name == StepNet }) {
		return fmt.Errorf("%w: no %q step in the reply (an agent older than Create.MACs and Create.Net?)", ErrNetIgnored, StepNet)
	}
	if rep.Links != len(c.Net) {
		return fmt.Errorf("%w: %d interfaces configured, want %d", ErrNetIgnored, rep.Links, len(c.Net))
	}
	return nil
}

// MACChange moves the network interface that has address From to
// address To; an interface that has To already is left as it is.
type MACChange struct {
	From string `json:"from"`
	To   string `json:"to"`
}

// Volume is a host directory the VM has as a virtio 9P device with mount
// tag Tag: the agent mounts it and binds it at Destination in the
// container, read-only if asked (docker run -v HOSTDIR:PATH[:ro]).
type Volume struct {
	Tag         string `json:"tag"`
	Destination string `json:"destination"`
	ReadOnly    bool   `json:"read_only,omitempty"`
	// Options, if set, are the bind mount's options as an OCI bundle
	// gives them (rbind, ro, propagation...), used instead of vessel
	// run's rbind and ro or rw.
	Options []string `json:"options,omitempty"`
	// Path, if set, names a file or directory in the share (a relative
	// path without "..") to bind at Destination instead of the share
	// itself: a bind mount of a single file (docker's /etc/resolv.conf,
	// say), or one of a pod's bind mounts. Several volumes may then have
	// the same Tag: the share is mounted once.
	Path string `json:"path,omitempty"`
}

// Reply is the agent's answer to a request (ID != 0) or an event (ID 0).
type Reply struct {
	ID    uint64 `json:"id"`
	Error string `json:"error,omitempty"`
	// Code is the exit status docker gives a failure to start the
	// process: 127 for a command that was not found, 126 for one that
	// cannot be run; 0 for other errors.
	Code int `json:"code,omitempty"`
	Pid  int `json:"pid,omitempty"`

	Event     string `json:"event,omitempty"` // EventExit
	Container string `json:"container,omitempty"`
	Exec      string `json:"exec,omitempty"`
	// Status is the process's exit status: its code, or 128+N when
	// signal N killed it.
	Status int `json:"status,omitempty"`
	// Steps, in a create's reply, say where the guest's time went
	// (waiting for the disks, mounts, runc create), for the host's
	// --metrics. The host keeps at most MaxSteps of them.
	Steps []Step `json:"steps,omitempty"`
	// Links, in a create's reply, is how many interfaces the agent
	// configured from Create.Net: all of them, or the create fails. An
	// agent older than Create.Net leaves it 0, so with StepNet it proves
	// the network was set (Create.CheckNet).
	Links int `json:"links,omitempty"`
	// Stats is a stats request's answer: the container's cgroup in the
	// guest, in runc events' JSON (its "data").
	Stats *runc.Stats `json:"stats,omitempty"`
}

// Step is one part of a request's work in the guest and how long it
// took.
type Step struct {
	Name string  `json:"name"`
	MS   float64 `json:"ms"`
}

// MaxSteps bounds the steps a host takes from one reply.
const MaxSteps = 8

// EventExit reports that a process ended and its output streams are
// drained and closed.
const EventExit = "exit"

// Write sends v as one frame.
func Write(w io.Writer, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("agentproto: encode: %w", err)
	}
	if len(b) > MaxFrame {
		return fmt.Errorf("%w: %d bytes, more than %d", ErrFrame, len(b), MaxFrame)
	}
	buf := make([]byte, 4+len(b))
	binary.BigEndian.PutUint32(buf, uint32(len(b)))
	copy(buf[4:], b)
	_, err = w.Write(buf)
	return err
}

// MaxHello bounds a Hello frame: a connection's first frame is read
// before anything is known of the peer, so it gets a small budget.
const MaxHello = 4 << 10

// readChunk is how much of a frame's body Read reads at a time: memory
// grows with the bytes that arrived, not with the length the peer
// declared.
const readChunk = 64 << 10

// Read reads one frame of at most MaxFrame bytes into v. It returns
// io.EOF at a clean end between frames and an error wrapping ErrFrame
// for a malformed one.
func Read(r io.Reader, v any) error {
	return ReadLimit(r, v, MaxFrame)
}

// ReadHello reads a connection's opening Hello, of at most MaxHello
// bytes.
func ReadHello(r io.Reader, h *Hello) error {
	return ReadLimit(r, h, MaxHello)
}

// ReadLimit reads one frame of at most max bytes (and never more than
// MaxFrame) into v, as Read. Its buffer grows as the frame's bytes
// arrive, so a peer that declares a large frame and stalls costs little.
func ReadLimit(r io.Reader, v any, max int) error {
	var hdr [4]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return err
	}
	n := binary.BigEndian.Uint32(hdr[:])
	if n > uint32(min(max, MaxFrame)) {
		return fmt.Errorf("%w: length %d, more than %d", ErrFrame, n, min(max, MaxFrame))
	}
	b := make([]byte, 0, min(int(n), readChunk))
	for len(b) < int(n) {
		if len(b) == cap(b) {
			// Double what arrived, up to the declared length.
			b = slices.Grow(b, min(cap(b), int(n)-len(b)))
		}
		m, err := r.Read(b[len(b):cap(b)])
		b = b[:len(b)+m]
		if err != nil && len(b) < int(n) {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return err
		}
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("%w: %v", ErrFrame, err)
	}
	return nil
}
