package main

import (
	"os"
	"strings"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/vesselvm/vessel/vmm"
)

// restoreConflicts are the `vessel vm run` flags that describe a VM to
// boot, which a restore takes from its snapshot instead.
var restoreConflicts = []string{"kernel", "initrd", "cmdline", "cpus", "memory", "disk", "balloon", "hugepages"}

// vmRestore is `vessel vm run --restore DIR`: the VM of a snapshot
// resumes where it was paused, with the console on this terminal, jailed
// as a booted VM is (unless --api).
func vmRestore(cmd *cobra.Command, f vmRunFlags, argv []string) error {
	for _, name := range restoreConflicts {
		if cmd.Flags().Changed(name) {
			return usageErr("--restore: --%s comes from the snapshot", name)
		}
	}
	if len(argv) > 0 {
		return usageErr("--restore: the guest command comes from the snapshot")
	}
	if err := f.jail.check(); err != nil {
		return usageErr("%v", err)
	}
	if f.api != "" && f.jail.jail {
		return usageErr("--api does not work with --jail yet (--api alone runs the VMM unjailed, under its seccomp filter)")
	}
	cfg := vmm.Config{Console: os.Stdout, Log: os.Stderr, AllowPVM: os.Getenv("VESSEL_ALLOW_PVM") == "1"}
	if f.vsock != "" {
		// A clone of a snapshot gets its own CID with cid=N; the
		// guest reads it again when told of the transport's reset.
		vs, err := parseVsock(f.vsock, 0)
		if err != nil {
			return usageErr("--vsock %s: %v", f.vsock, err)
		}
		cfg.Vsock = vs
	}
	if len(f.nets) > 0 {
		// New backends for the snapshot's network devices, one each;
		// the guest keeps its MACs and its address configuration.
		nets, err := restoreNets(f.nets)
		if err != nil {
			return err
		}
		cfg.Nets = nets
	}
	// The snapshot is checked before anything is made: a corrupt or
	// foreign one leaves no socket behind.
	info, err := vmm.ReadSnapshot(f.restore, version())
	if err != nil {
		return classify(err)
	}
	// The jail sizes its limits by the VM's, and serves the snapshot's
	// vsock device and user network as a booted VM's.
	cfg.CPUs, cfg.Memory = info.CPUs, info.Memory
	if cfg.Vsock == nil {
		cfg.Vsock = info.Vsock
	} else if info.Vsock == nil {
		return usageErr("--vsock: the snapshot's VM has no vsock device")
	}
	if cfg.Nets == nil {
		cfg.Nets = info.Nets
	}
	interactive := term.IsTerminal(int(os.Stdin.Fd())) && term.IsTerminal(int(os.Stdout.Fd()))
	return runConsoleVM(cfg, f, f.restore, interactive)
}

// restoreNets parses vm run --restore's --net flags: backends for the
// snapshot's network devices, without MACs, so that each device keeps
// the one its guest knows (vmm.RestoreOptions.Nets); a mac= is refused.
func restoreNets(flags []string) ([]vmm.Net, error) {
	nets, _, err := parseNets(flags)
	if err != nil {
		return nil, err
	}
	for i, s := range flags {
		for _, opt := range strings.Split(s, ",")[1:] {
			if strings.HasPrefix(opt, "mac=") {
				return nil, usageErr("--net %s: a restored VM keeps the MACs its guest knows", s)
			}
		}
		nets[i].MAC = nil
	}
	return nets, nil
}
