package template

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/vesselvm/vessel/container"
	"github.com/vesselvm/vessel/guest/agentproto"
	"github.com/vesselvm/vessel/internal/limitio"
	"github.com/vesselvm/vessel/vmm"
)

// Build boots the template VM cfg, whose agent dials ln (cfg's vsock
// listener for agentproto.Port), within timeout, has the agent run one
// throwaway container of vessel run's configuration (the warm-up, see
// agentproto.OpTemplate: every clone's first container then starts
// warm), and snapshots the VM into dir/Snapshot, written by vessel
// version. The VM runs in the calling process, unjailed: a template runs
// only vessel's own kernel, initramfs and agent, nothing of a user's.
func Build(cfg vmm.Config, ln net.Listener, dir, version string, timeout time.Duration) (err error) {
	vm, err := vmm.New(cfg)
	if err != nil {
		return err
	}
	defer vm.Close()
	results := make(chan vmm.Result, 1)
	go func() { results <- vm.Run() }()
	defer func() {
		// A guest that stopped answering is described first (with
		// container.DebugEnv set), as vessel run describes its VMs.
		if err != nil && errors.Is(err, context.DeadlineExceeded) && container.Debugging() {
			vm.StopDiagnosed()
		}
		vm.Stop()
		res := <-results
		switch {
		case err == nil && res.Kind != vmm.ExitStopped:
			err = fmt.Errorf("the template VM ended: %s", res)
		case err != nil && res.Kind != vmm.ExitStopped:
			err = fmt.Errorf("%w (the template VM ended: %s)", err, res)
		}
		if err != nil && res.Diagnosis != "" {
			var b strings.Builder
			container.WriteDiagnosis(&b, res.Diagnosis)
			err = fmt.Errorf("%w\n%s", err, strings.TrimRight(b.String(), "\n"))
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	ag, err := container.Accept(ctx, ln)
	if err != nil {
		return fmt.Errorf("the template's agent did not come up within %v: %w", timeout, err)
	}
	defer ag.Close()
	warm, _, err := container.Spec(v1.Config{Cmd: []string{"/bin/true"}}, container.Options{Hostname: "template"})
	if err != nil {
		return err
	}
	rep, err := ag.Call(ctx, agentproto.Request{Op: agentproto.OpTemplate, Create: &agentproto.Create{Spec: warm}})
	if err != nil {
		return fmt.Errorf("template: %w", err)
	}
	if rep.Pid <= 0 {
		// An agent that ignored the configuration (an older one) would
		// make a template whose clones start cold.
		return errors.New("template: the agent ran no warm-up container")
	}
	if err := vm.Pause(); err != nil {
		return err
	}
	return vm.Snapshot(filepath.Join(dir, Snapshot), vmm.SnapshotOptions{Version: version})
}

// BuildProcess runs path with args, a process that builds a template
// (its caller's hidden build command, which calls Build), with in on its
// stdin and attr its process attributes (nil for none), and kills it if
// it is not done within limit: a build that hangs (a guest that never
// answers, a device that does not stop) neither keeps its caller nor,
// through the key's lock, any other. Its error is the process's output,
// each line cleaned to printable text, without a leading "PROGRAM: ".
func BuildProcess(path string, args []string, in []byte, attr *syscall.SysProcAttr, limit time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	cmd := exec.CommandContext(ctx, path, args...)
	cmd.Stdin = bytes.NewReader(in)
	cmd.SysProcAttr = attr
	var out bytes.Buffer
	w := limitio.Writer(&out, 4096, "")
	cmd.Stdout, cmd.Stderr = w, w
	cmd.WaitDelay = 5 * time.Second
	err := cmd.Run()
	switch {
	case ctx.Err() != nil:
		return fmt.Errorf("the template build took over %v: stopped", limit)
	case err != nil:
		// Each line made printable on its own: a VM's description
		// (container.DebugEnv) has several.
		lines := strings.Split(strings.TrimSpace(out.String()), "\n")
		for i, l := range lines {
			lines[i] = strings.TrimRight(container.CleanText(l), " ")
		}
		msg := strings.Join(lines, "\n")
		if msg == "" {
			return fmt.Errorf("template build: %w", err)
		}
		if prog, rest, ok := strings.Cut(msg, ": "); ok && prog == filepath.Base(path) {
			msg = rest
		}
		return errors.New(msg)
	}
	return nil
}
