package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"github.com/vesselvm/vessel/container"
	"github.com/vesselvm/vessel/guest/agentproto"
	"github.com/vesselvm/vessel/guest/cmdline"
	"github.com/vesselvm/vessel/internal/template"
	"github.com/vesselvm/vessel/vmm"
)

// Templates (README "Templates"): the first `vessel run` for a kernel,
// initramfs, VM size and network mode boots a VM up to an agent waiting
// for its first container, snapshots it into the cache, and every later
// run restores that snapshot instead of booting. The image's disk and the
// network's backend are attached to the restored VM (its devices were
// there, empty, when the template was taken); the restored kernel
// reseeds its random numbers (the VM Generation ID), and the agent dials
// the new vessel process.

// templateFormat changes when what a template holds changes.
const templateFormat = 1

// templateMAC is the MAC of a template's user network device. Each
// clone's device and user network get the run's own MAC, which the
// agent gives the guest's interface before the container (macChange).
var templateMAC = net.HardwareAddr{0x52, 0x54, 0x00, 0x76, 0x73, 0x6c}

// templateBuildTimeout bounds the boot of a template VM up to its agent.
const templateBuildTimeout = agentTimeout

// templateBuildLimit bounds a whole template build (boot, snapshot, the
// VM's end), which runs in a process of its own killed at the limit; a
// vessel waiting for another's build of the same template waits as long
// at most (templateLockWait). Past either, the run boots its VM.
var (
	templateBuildLimit = templateBuildTimeout + time.Minute
	templateLockWait   = templateBuildLimit + 30*time.Second
)

// templateBuildCommand is the hidden command a template is built by.
const templateBuildCommand = "template-build"

// wireTemplate is a templateSpec on its way to the build process.
type wireTemplate struct {
	Kernel, Initrd string
	CPUs           int
	Memory         uint64
	User           bool
}

// templateBuilder is the executable that builds templates: vessel.
var templateBuilder = os.Executable

// buildTemplateProcess builds the template for s in dir in a process of
// its own (buildTemplate, run by the hidden template-build command),
// killed if it is not done within limit: a build that hangs (a guest
// that never answers, a device that does not stop) neither keeps this
// run nor, through the lock, any other.
func buildTemplateProcess(s templateSpec, dir string, limit time.Duration) error {
	self, err := templateBuilder()
	if err != nil {
		return err
	}
	in, err := json.Marshal(wireTemplate{Kernel: s.kernel, Initrd: s.initrd, CPUs: s.cpus, Memory: s.memory, User: s.user})
	if err != nil {
		return err
	}
	return template.BuildProcess(self, []string{templateBuildCommand, dir}, in, nil, limit)
}

func newTemplateBuild() *cobra.Command {
	return &cobra.Command{
		Use:    templateBuildCommand + " DIR",
		Hidden: true,
		Args:   cobra.ExactArgs(1),
		RunE: func(_ *cobra.Command, args []string) error {
			var w wireTemplate
			if err := json.NewDecoder(io.LimitReader(os.Stdin, 64<<10)).Decode(&w); err != nil {
				return usageErr("%s is vessel's own template builder, not a command: %v", templateBuildCommand, err)
			}
			s := templateSpec{kernel: w.Kernel, initrd: w.Initrd, cpus: w.CPUs, memory: w.Memory, user: w.User}
			if err := buildTemplate(s, args[0]); err != nil {
				return runErr("%v", err)
			}
			return nil
		},
	}
}

// templateSpec is what a template is made for; its key names the cache
// entry.
type templateSpec struct {
	kernel, initrd string
	cpus           int
	memory         uint64
	user           bool // a user network device (else no network)
}

// key hashes everything the restored VM depends on: vessel's version and
// executable, the kernel's and initramfs's files, the VM's size and
// network mode. A change to any gives another key, so a stale template
// is never used; old ones stay until the cache is cleared.
func (s templateSpec) key() (string, error) {
	self, err := os.Executable()
	if err != nil {
		return "", err
	}
	return template.Key(fmt.Sprintf("vessel %s template %d\ncpus %d memory %d user %v\ncmdline %s\n",
		version(), templateFormat, s.cpus, s.memory, s.user, DefaultCmdline), self, s.kernel, s.initrd)
}

// templateFor returns the snapshot directory of the template for s,
// building it first if the cache has none (template.For, the build in a
// process of its own killed at templateBuildLimit). One build runs at a
// time per key; a second vessel waits for it, at most templateLockWait,
// and uses its result.
func templateFor(s templateSpec) (string, error) {
	key, err := s.key()
	if err != nil {
		return "", err
	}
	root, err := template.Root()
	if err != nil {
		return "", err
	}
	return template.For(root, key, templateLockWait, func(dir string) error {
		return buildTemplateProcess(s, dir, templateBuildLimit)
	})
}

// buildTemplate boots the template VM in dir and snapshots it into
// dir/snapshot once its agent is up and has run its warm-up container
// (template.Build).
func buildTemplate(s templateSpec, dir string) error {
	slot := filepath.Join(dir, "image-slot")
	if err := os.WriteFile(slot, nil, 0o600); err != nil {
		return err
	}
	sockDir, err := os.MkdirTemp("", container.RunDirPrefix)
	if err != nil {
		return err
	}
	defer os.RemoveAll(sockDir)
	uds := filepath.Join(sockDir, "vsock")
	ln, err := net.Listen("unix", fmt.Sprintf("%s_%d", uds, agentproto.Port))
	if err != nil {
		return err
	}
	defer ln.Close()
	var nets []vmm.Net
	var guestNets []cmdline.Net
	if s.user {
		nets = []vmm.Net{{MAC: templateMAC, User: &vmm.UserNet{}}}
		guestNets = []cmdline.Net{userGuestNet(templateMAC)}
	}
	extra, err := cmdline.Encode(cmdline.Spec{Argv: []string{"vesselagent"}, Control: true, Net: guestNets})
	if err != nil {
		return err
	}
	cfg := vmm.Config{
		Kernel: s.kernel, Initrd: s.initrd, Cmdline: DefaultCmdline + " " + extra,
		CPUs: s.cpus, Memory: s.memory, Console: io.Discard, Log: io.Discard,
		Disks:   []vmm.Disk{{Path: slot, ReadOnly: true, Serial: imageDiskSerial}},
		Nets:    nets,
		Vsock:   &vmm.Vsock{CID: 3, Path: uds},
		Balloon: vmm.FreePageReporting(),
	}
	return template.Build(cfg, ln, dir, version(), templateBuildTimeout)
}
