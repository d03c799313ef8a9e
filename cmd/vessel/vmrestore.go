package main

import (
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/vesselvm/vessel/vmm"
)

// restoreConflicts are the `vessel vm run` flags that describe a VM to
// boot, which a restore takes from its snapshot instead.
var restoreConflicts = []string{"kernel", "initrd", "cmdline", "cpus", "memory", "disk", "balloon", "jail"}

// vmRestore is `vessel vm run --restore DIR`: the VM of a snapshot
// resumes where it was paused, with the console on this terminal.
func vmRestore(cmd *cobra.Command, f vmRunFlags, argv []string) error {
	for _, name := range restoreConflicts {
		if cmd.Flags().Changed(name) {
			return usageErr("--restore: --%s comes from the snapshot", name)
		}
	}
	if len(argv) > 0 {
		return usageErr("--restore: the guest command comes from the snapshot")
	}
	o := vmm.RestoreOptions{
		Version: version(), Console: os.Stdout, Log: os.Stderr,
		AllowPVM: os.Getenv("VESSEL_ALLOW_PVM") == "1",
	}
	if f.vsock != "" {
		// A clone of a snapshot gets its own CID with cid=N; the
		// guest reads it again when told of the transport's reset.
		vs, err := parseVsock(f.vsock, 0)
		if err != nil {
			return usageErr("--vsock %s: %v", f.vsock, err)
		}
		o.Vsock = vs
	}
	if len(f.nets) > 0 {
		// New backends for the snapshot's network devices, one each;
		// the guest keeps its MACs and its address configuration.
		nets, _, err := parseNets(f.nets)
		if err != nil {
			return err
		}
		o.Nets = nets
	}
	if f.metrics != "" {
		mf, err := os.OpenFile(f.metrics, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
		if err != nil {
			return usageErr("--metrics: %v", err)
		}
		mf.Close()
	}
	// The snapshot is checked before anything is made: a corrupt or
	// foreign one leaves no socket behind.
	if err := vmm.ReadSnapshot(f.restore, o.Version); err != nil {
		return classify(err)
	}
	interactive := term.IsTerminal(int(os.Stdin.Fd())) && term.IsTerminal(int(os.Stdout.Fd()))
	vm, err := vmm.Restore(f.restore, o)
	if err != nil {
		return classify(err)
	}
	defer vm.Close()
	var restore func()
	if interactive {
		if old, err := term.MakeRaw(int(os.Stdin.Fd())); err == nil {
			restore = func() { term.Restore(int(os.Stdin.Fd()), old) }
			defer restore()
		}
		setInput(vm, "escape")
	} else {
		setInput(vm, "stdin")
	}
	if f.api != "" {
		srv, err := serveAPI(f.api, vm)
		if err != nil {
			return err
		}
		defer srv.Close()
	}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	defer signal.Stop(sigs)
	var hostSig os.Signal
	go func() {
		if s, ok := <-sigs; ok {
			hostSig = s
			vm.Stop()
		}
	}()
	if err := sandboxVMM(); err != nil {
		return err
	}
	res := vm.Run()
	if restore != nil {
		restore()
	}
	if f.metrics != "" {
		if err := writeMetrics(f.metrics, res); err != nil {
			fmt.Fprintf(os.Stderr, "vessel: --metrics: %v\n", err)
		}
	}
	return resultErr(res, hostSig)
}
