package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/vesselvm/vessel/guest/agentproto"
	"github.com/vesselvm/vessel/guest/cmdline"
	"github.com/vesselvm/vessel/internal/template"
	"github.com/vesselvm/vessel/vmm"
)

// Templates (README "Templates", internal/template): create restores a
// container's VM from a snapshot of a VM booted once up to an agent
// waiting for its first container, as vessel run does, instead of
// booting it. A template is made for a VM size, a number of network
// interfaces and a layout of 9P shares (their tags, in order): its shares
// serve an empty directory and were never mounted, its interfaces are
// down with the template's MACs (templateNetMAC), and its kernel command
// line names no network. A clone gets the container's directories behind
// the same tags, a TAP per interface with the interface's MAC, and the
// agent gives the guest's interfaces their MACs and configuration
// (agentproto.Create's MACs and Net) before it makes the container.
// Anything that keeps a template from being used (not root, another
// create building it, a layout that changed in between) makes create
// boot the VM instead, as --no-template does.

// runtimeTemplateFormat changes when what a runtime template holds
// changes.
const runtimeTemplateFormat = 1

// templateBuildCommand is the hidden command a template is built by.
const templateBuildCommand = "template-build"

// A template's build runs inside the create that needs it, and its
// caller's patience is bounded: kubelet gives a runtime call 2 minutes
// by default (--runtime-request-timeout). templateBootTimeout bounds the
// template VM's boot up to its agent and its warm-up container (under
// 15 s on the nested test platform, under 2 s on hardware), and
// templateBuildLimit the whole build (the snapshot too), in a process of
// its own killed at the limit; a create whose build failed boots its VM,
// and the failure keeps later creates from trying again for a while
// (template.FailureBackoff).
const (
	templateBootTimeout = time.Minute
	templateBuildLimit  = templateBootTimeout + 30*time.Second
)

// runtimeTemplate is what a runtime template is made for; its key names
// the cache entry.
type runtimeTemplate struct {
	Kernel, Initrd string
	CPUs           int
	Memory         uint64
	// Nets is the number of network interfaces.
	Nets int
	// Tags are the 9P shares' mount tags, in device order (shareTags).
	Tags []string
	// Tenant is the Kubernetes namespace of the container's pod
	// (tenantOf), empty outside Kubernetes: pods of two namespaces never
	// share a template.
	Tenant string `json:",omitempty"`
}

// Annotations naming a pod's Kubernetes namespace: containerd's CRI
// plugin's, CRI-O's, and the kubelet's label as CRI-O passes labels on.
var namespaceAnnotations = []string{
	"io.kubernetes.cri.sandbox-namespace",
	"io.kubernetes.cri-o.Namespace",
	"io.kubernetes.pod.namespace",
}

// tenantOf is the tenant a container's VM is built for, for the
// template's key: its pod's Kubernetes namespace, where the CRI names
// one. Clones of one template share what its kernel drew at boot before
// the snapshot (the KASLR offset, the boot ID, the pointer-hashing key,
// the network stack's hash and sequence-number secrets), which one VM
// could learn and use against another over the network: per namespace,
// a tenant's pods share them only with its own. Every annotation counts,
// not the first one set: a CRI runtime sets its own and passes a pod's
// own annotations on beside it, so a pod that names another namespace
// in the other runtime's annotation gets a tenant of its own, never
// that namespace's.
func tenantOf(s *specs.Spec) string {
	var vals []string
	set := false
	for _, a := range namespaceAnnotations {
		v := s.Annotations[a]
		set = set || v != ""
		vals = append(vals, strconv.Quote(v))
	}
	if !set {
		return ""
	}
	return strings.Join(vals, " ")
}

// key hashes everything a clone depends on: vessel-runtime's version
// and executable, the kernel's and initramfs's files, the VM's size, its
// interfaces and shares, and the kernel command line; and its tenant.
func (t runtimeTemplate) key() (string, error) {
	self, err := os.Executable()
	if err != nil {
		return "", err
	}
	line, err := templateCmdline()
	if err != nil {
		return "", err
	}
	return template.Key(fmt.Sprintf("vessel-runtime %s template %d\ncpus %d memory %d nets %d\nshares %s\ncmdline %s\ntenant %q\n",
		gitVersion, runtimeTemplateFormat, t.CPUs, t.Memory, t.Nets, strings.Join(t.Tags, ","), line, t.Tenant), self, t.Kernel, t.Initrd)
}

// templateCmdline is a template VM's kernel command line: the agent, and
// no network (its interfaces stay down until a clone's agent sets them).
func templateCmdline() (string, error) {
	extra, err := cmdline.Encode(cmdline.Spec{Argv: []string{"vesselagent"}, Control: true})
	if err != nil {
		return "", err
	}
	return defaultCmdline + " " + extra, nil
}

// templateNetMAC is the MAC of a template's network interface i, a
// locally administered unicast address.
func templateNetMAC(i int) net.HardwareAddr {
	return net.HardwareAddr{0x02, 0x76, 0x73, 0x6c, 0x74, byte(i)}
}

// vmShares are the 9P shares of b's VM, in device order: the rootfs, a
// pod sandbox's share (directory pod), the single-file binds' share
// (directory files, when b has file binds; bindFiles), and a share per
// directory bind. A template's layout is their tags (shareTags).
func vmShares(b *bundle, pod, files string) []vmm.Share {
	shares := []vmm.Share{{Tag: rootTag, Dir: b.rootfs, ReadOnly: b.spec.Root.Readonly}}
	if isSandbox(b.spec) {
		shares = append(shares, vmm.Share{Tag: podTag, Dir: pod})
	}
	if slices.ContainsFunc(b.binds, func(bd bind) bool { return bd.file }) {
		// Read-write: the tmpfs is read-only itself, each file's bind
		// mount says whether it may be written.
		shares = append(shares, vmm.Share{Tag: filesTag, Dir: files})
	}
	for _, bd := range b.binds {
		if !bd.file {
			shares = append(shares, vmm.Share{Tag: bd.vol.Tag, Dir: bd.source, ReadOnly: bd.vol.ReadOnly})
		}
	}
	return shares
}

// shareTags are the mount tags of the shares of b's VM, in device order
// (vmShares), before their directories exist.
func shareTags(b *bundle) []string {
	var tags []string
	for _, s := range vmShares(b, "", "") {
		tags = append(tags, s.Tag)
	}
	return tags
}

// templateFor returns the snapshot of the template the VM of b's
// container can be restored from, building it first if the cache has
// none; pid is the VMM process, in the container's network namespace,
// whose interfaces the hooks have set up by now. It returns "" without
// an error when no template is to be used (--no-template, not root:
// a template's interfaces need a network namespace of its own to be
// built in), and template.ErrBusy when another create is building it.
func (g *globals) templateFor(b *bundle, pid int) (string, error) {
	if g.noTemplate || os.Geteuid() != 0 {
		return "", nil
	}
	cpus, memory, err := g.vmSize(b.spec)
	if err != nil {
		return "", err
	}
	nets, err := countInterfaces(pid)
	if err != nil {
		return "", err
	}
	t := runtimeTemplate{Kernel: g.kernel, Initrd: g.initramfs, CPUs: cpus, Memory: memory, Nets: nets, Tags: shareTags(b),
		Tenant: tenantOf(b.spec)}
	key, err := t.key()
	if err != nil {
		return "", err
	}
	root := g.templateDir
	if root == "" {
		if root = os.Getenv("VESSEL_TEMPLATE_DIR"); root == "" {
			root = defaultTemplateDir
		}
	}
	built := false
	snap, err := template.For(root, key, 0, func(dir string) error {
		built = true
		return g.buildTemplateProcess(t, dir)
	})
	if err == nil && built {
		// Keys follow what containers ask for (a VM size per memory
		// limit): keep the cache's size bounded.
		template.Prune(root, maxTemplates)
	}
	return snap, err
}

// defaultTemplateDir is where root's vessel-runtime keeps its templates
// without --template-dir or $VESSEL_TEMPLATE_DIR: a fixed place, since
// the daemons that run it (dockerd, containerd under systemd) often have
// no home directory, and one only root can write.
const defaultTemplateDir = "/var/cache/vessel-runtime/templates"

// maxTemplates is how many templates the cache keeps (the most recently
// used; template.Prune). Each holds a sparse memory file the size of its
// VM's RAM, of which the guest touched 100-200 MiB.
const maxTemplates = 16

// countInterfaces counts the interfaces findInterfaces would hand to the
// VM in the network namespace of process pid, from a thread that joins
// it and is never given back to the runtime.
func countInterfaces(pid int) (int, error) {
	ns, err := os.Open(fmt.Sprintf("/proc/%d/ns/net", pid))
	if err != nil {
		return 0, fmt.Errorf("network namespace: %w", err)
	}
	defer ns.Close()
	type result struct {
		n   int
		err error
	}
	c := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		// No UnlockOSThread: the thread ends with this goroutine.
		if err := unix.Setns(int(ns.Fd()), unix.CLONE_NEWNET); err != nil {
			c <- result{err: fmt.Errorf("network namespace: setns: %w", err)}
			return
		}
		ifs, err := findInterfaces()
		c <- result{len(ifs), err}
	}()
	r := <-c
	return r.n, r.err
}

// buildTemplateProcess builds t's template in dir in a process of its
// own (the hidden template-build command), in a network and mount
// namespace of its own (the template's TAP devices are nobody's) and
// killed at templateBuildLimit.
func (g *globals) buildTemplateProcess(t runtimeTemplate, dir string) error {
	self, err := os.Executable()
	if err != nil {
		return err
	}
	in, err := json.Marshal(t)
	if err != nil {
		return err
	}
	// Killed with create too (a caller's timeout): nothing else would
	// wait for it.
	return template.BuildProcess(self, append(g.args(), templateBuildCommand, dir), in,
		&syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNET | syscall.CLONE_NEWNS, Pdeathsig: syscall.SIGKILL}, templateBuildLimit)
}

func newTemplateBuild(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:    templateBuildCommand + " DIR",
		Hidden: true,
		Args:   cobra.ExactArgs(1),
		RunE: func(_ *cobra.Command, args []string) error {
			var t runtimeTemplate
			if err := json.NewDecoder(io.LimitReader(os.Stdin, 64<<10)).Decode(&t); err != nil {
				return errorf("%s is vessel-runtime's own template builder, not a command: %v", templateBuildCommand, err)
			}
			if err := buildTemplate(t, args[0]); err != nil {
				return errorf("%v", err)
			}
			return nil
		},
	}
}

// buildTemplate boots t's template VM and snapshots it into dir
// (template.Build): each share serves an empty read-only directory, each
// network device a TAP of this process's own network namespace.
func buildTemplate(t runtimeTemplate, dir string) error {
	if t.Nets < 0 || t.Nets > maxNets {
		return fmt.Errorf("template: %d network interfaces", t.Nets)
	}
	// The empty directory and the agent's socket live in the build's
	// own directory, which the cache removes if the build is killed,
	// unless the socket's path would be too long there.
	work := filepath.Join(dir, "work")
	if len(work)+len("/"+longestSockName) > maxSockPath {
		var err error
		if work, err = os.MkdirTemp("", "vessel-runtime-template-"); err != nil {
			return err
		}
	} else if err := os.Mkdir(work, 0o700); err != nil {
		return err
	}
	defer os.RemoveAll(work)
	empty := work + "/empty"
	if err := os.Mkdir(empty, 0o555); err != nil {
		return err
	}
	uds := work + "/" + vsockBase
	ln, err := net.Listen("unix", fmt.Sprintf("%s_%d", uds, agentproto.Port))
	if err != nil {
		return err
	}
	defer ln.Close()
	var shares []vmm.Share
	for _, tag := range t.Tags {
		shares = append(shares, vmm.Share{Tag: tag, Dir: empty, ReadOnly: true})
	}
	var nets []vmm.Net
	for i := range t.Nets {
		nets = append(nets, vmm.Net{MAC: templateNetMAC(i), Tap: fmt.Sprintf("vtap%d", i)})
	}
	line, err := templateCmdline()
	if err != nil {
		return err
	}
	cfg := vmm.Config{
		Kernel: t.Kernel, Initrd: t.Initrd, Cmdline: line,
		CPUs: t.CPUs, Memory: t.Memory, Console: io.Discard, Log: io.Discard,
		Shares:  shares,
		Nets:    nets,
		Vsock:   &vmm.Vsock{CID: 3, Path: uds},
		Balloon: vmm.FreePageReporting(),
	}
	return template.Build(cfg, ln, dir, gitVersion, templateBootTimeout)
}

// restoreVM restores the VM cfg describes from the template snapshot
// snap, with cfg's shares, network backends, vsock socket, console and
// log. A template whose VM is not cfg's (its size, interfaces or shares
// changed since create chose it) is refused; one that cannot be
// restored at all (ErrSnapshot: corrupt, or from another vessel or CPU)
// is dropped from the cache, and the next create builds it again.
func restoreVM(snap string, cfg vmm.Config) (*vmm.VM, error) {
	info, err := vmm.ReadSnapshot(snap, gitVersion)
	if err == nil {
		err = templateFits(info, cfg)
	}
	var vm *vmm.VM
	if err == nil {
		vm, err = vmm.Restore(snap, vmm.RestoreOptions{Version: gitVersion, Console: cfg.Console, Log: cfg.Log,
			Nets: cfg.Nets, Shares: cfg.Shares, Vsock: &vmm.Vsock{Path: cfg.Vsock.Path}})
	}
	if errors.Is(err, vmm.ErrSnapshot) {
		template.Drop(snap)
	}
	return vm, err
}

// templateFits reports why a template's VM (info) is not cfg's, if it is
// not: its size, its number of interfaces or its shares' tags.
func templateFits(info vmm.SnapshotInfo, cfg vmm.Config) error {
	if info.CPUs != cfg.CPUs || info.Memory != cfg.Memory {
		return fmt.Errorf("the template is for %d vCPUs and %d bytes, the VM has %d and %d", info.CPUs, info.Memory, cfg.CPUs, cfg.Memory)
	}
	if len(info.Nets) != len(cfg.Nets) {
		return fmt.Errorf("the template has %d network interfaces, the VM %d", len(info.Nets), len(cfg.Nets))
	}
	if len(info.Shares) != len(cfg.Shares) {
		return fmt.Errorf("the template has %d shares, the VM %d", len(info.Shares), len(cfg.Shares))
	}
	for i, s := range info.Shares {
		if s.Tag != cfg.Shares[i].Tag {
			return fmt.Errorf("the template's share %d is %q, the VM's %q", i, s.Tag, cfg.Shares[i].Tag)
		}
	}
	return nil
}

// cloneNet is what the agent of a VM restored from a template is told
// of the network: each interface's change from its template MAC to the
// container's interface's, and its configuration.
func cloneNet(ifs []*ifaceLink) ([]agentproto.MACChange, []cmdline.Net) {
	var macs []agentproto.MACChange
	for i, l := range ifs {
		macs = append(macs, agentproto.MACChange{From: templateNetMAC(i).String(), To: l.link.Attrs().HardwareAddr.String()})
	}
	return macs, guestNets(ifs)
}
