// Command vessel is a microVM monitor: it boots Linux guests on KVM.
//
//	vessel vm run [flags] [-- COMMAND [ARG...]]
//	vessel run [flags] IMAGE [COMMAND [ARG...]]
//	vessel ps|logs|exec|stop|rm
//	vessel image load|pull|ls|rm|inspect
//	vessel bench compare [flags]
//
// `vessel image` exits 0 on success, 1 for a missing image or an archive it
// cannot read, 2 for invalid usage.
//
// Exit statuses of `vessel vm run`:
//
//	0..255  the guest command's exit status (0 after a plain guest
//	        reboot or poweroff, or Ctrl-A X)
//	2       invalid usage or input: flags, files, or the host's KVM
//	3       the guest crashed: kernel panic or triple fault (the last
//	        console lines are printed)
//	125     vessel itself failed while running the VM
//	130/143 stopped by SIGINT/SIGTERM on the host
//
// `vessel run` and `vessel exec` exit as docker's do: with the command's
// status, 125 when vessel fails, 126 and 127 when the command cannot be
// run or was not found. ps, logs, stop and rm exit 1 when they fail (no
// such container, a running one to rm without -f).
//
// Problems are reported as one line on stderr starting with "vessel:".
package main

import (
	"errors"
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/vesselvm/vessel/internal/seccomp"
)

// Exit statuses (see the package documentation).
const (
	exitOK         = 0
	exitUsage      = 2
	exitGuestCrash = 3
	exitInternal   = 125
)

// exitError carries an exit status and a one-line message to main.
type exitError struct {
	code int
	msg  string
	// cause, if set, is what errors.Is sees through the exit: a jailed
	// VMM's refused snapshot is vmm.ErrSnapshot on this side too.
	cause error
}

func (e *exitError) Error() string { return e.msg }

func (e *exitError) Unwrap() error { return e.cause }

func usageErr(format string, args ...any) error {
	return &exitError{code: exitUsage, msg: fmt.Sprintf(format, args...)}
}

func newRoot() *cobra.Command {
	root := &cobra.Command{
		Use:           "vessel",
		Short:         "vessel boots Linux microVMs on KVM",
		SilenceUsage:  true,
		SilenceErrors: true,
		Version:       version(),
	}
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageErr("%v", err) })
	vm := &cobra.Command{Use: "vm", Short: "Manage microVMs"}
	vm.AddCommand(newVMRun(), newVMSnapshot())
	root.AddCommand(vm, newImage(), newRun(), newPs(), newLogs(), newExec(), newStop(), newRm(), newBench(), newTemplateBuild())
	return root
}

func main() {
	seccomp.RelayMain()
	os.Exit(run(os.Args[1:]))
}

func run(args []string) int {
	root := newRoot()
	root.SetArgs(args)
	err := root.Execute()
	if err == nil {
		return exitOK
	}
	var ee *exitError
	if errors.As(err, &ee) {
		if ee.msg != "" {
			fmt.Fprintln(os.Stderr, "vessel: "+ee.msg)
		}
		return ee.code
	}
	// Errors from cobra itself (unknown command, bad arguments).
	fmt.Fprintln(os.Stderr, "vessel: "+err.Error())
	return exitUsage
}
