package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// Hook kinds, as runtime-spec's config.md "POSIX-platform Hooks" names
// them. Every hook vessel-runtime runs runs on the host, in the runtime's
// namespaces: createContainer and startContainer hooks would run in the
// container's namespaces, which are inside the VM, and are refused.
const (
	hookCreateRuntime = "createRuntime"
	hookPrestart      = "prestart"
	hookPoststart     = "poststart"
	hookPoststop      = "poststop"
)

// maxHookOutput bounds what is kept of a hook's output for an error.
const maxHookOutput = 4 << 10

// checkHooks refuses the hooks vessel-runtime cannot run where the spec
// says they run, and hooks without a path.
func checkHooks(h *specs.Hooks) error {
	if h == nil {
		return nil
	}
	if len(h.CreateContainer) > 0 || len(h.StartContainer) > 0 {
		return errors.New("createContainer and startContainer hooks run in the container's namespaces, which are inside the VM, where host programs cannot run: not supported by vessel-runtime")
	}
	for _, list := range [][]specs.Hook{h.CreateRuntime, h.Prestart, h.Poststart, h.Poststop} { //nolint:staticcheck // Prestart is deprecated but docker 20.10 uses it
		for _, hk := range list {
			if hk.Path == "" {
				return errors.New("hooks: a hook has no path")
			}
			// runtime-spec: the path MUST be absolute; it is not looked
			// up in the runtime's PATH.
			if !filepath.IsAbs(hk.Path) {
				return fmt.Errorf("hooks: path %q: want an absolute path", hk.Path)
			}
			if hk.Timeout != nil && *hk.Timeout <= 0 {
				return fmt.Errorf("hooks: %s: timeout %d: want more than 0 seconds", hk.Path, *hk.Timeout)
			}
		}
	}
	return nil
}

// hooksOf returns the hooks of one kind.
func hooksOf(h *specs.Hooks, kind string) []specs.Hook {
	if h == nil {
		return nil
	}
	switch kind {
	case hookCreateRuntime:
		return h.CreateRuntime
	case hookPrestart:
		return h.Prestart //nolint:staticcheck // deprecated in runtime-spec, used by docker 20.10
	case hookPoststart:
		return h.Poststart
	case hookPoststop:
		return h.Poststop
	}
	return nil
}

// runHooks runs the hooks of one kind in order, each with the state on
// its stdin, in dir (the bundle, as runc runs them), and stops at the
// first failure: runtime-spec's "runtime MUST generate an error" for
// createRuntime and prestart. Poststart and poststop hooks go through
// runPostHooks instead.
func runHooks(ctx context.Context, h *specs.Hooks, kind, dir string, st ociState) error {
	if errs := eachHook(ctx, h, kind, dir, st, true); len(errs) > 0 {
		return errs[0]
	}
	return nil
}

// runPostHooks runs every poststart or poststop hook, the ones after a
// failed hook too, and returns each failure: runtime-spec (runtime.md,
// "Lifecycle") says a failing poststart or poststop hook gets a warning
// and "the remaining hooks and lifecycle continue as if the hook had
// succeeded".
func runPostHooks(ctx context.Context, h *specs.Hooks, kind, dir string, st ociState) []error {
	return eachHook(ctx, h, kind, dir, st, false)
}

// eachHook runs the hooks of one kind in order and returns their
// failures, only the first when stopAtFirst is set.
func eachHook(ctx context.Context, h *specs.Hooks, kind, dir string, st ociState, stopAtFirst bool) []error {
	list := hooksOf(h, kind)
	if len(list) == 0 {
		return nil
	}
	state, err := json.Marshal(st)
	if err != nil {
		return []error{err}
	}
	var errs []error
	for i, hk := range list {
		if err := runHook(ctx, hk, dir, state); err != nil {
			errs = append(errs, fmt.Errorf("%s hook #%d (%s): %w", kind, i, hk.Path, err))
			if stopAtFirst {
				break
			}
		}
	}
	return errs
}

// runHook runs one hook as runc does: Path with Args (Args[0] is the
// program's name), exactly Env as its environment, the state on stdin,
// killed when its timeout (seconds) passes.
func runHook(ctx context.Context, hk specs.Hook, dir string, state []byte) error {
	if hk.Timeout != nil {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, time.Duration(*hk.Timeout)*time.Second)
		defer cancel()
	}
	// An absolute path (checkHooks): exec does not search PATH for it.
	cmd := exec.CommandContext(ctx, hk.Path)
	if len(hk.Args) > 0 {
		cmd.Args = hk.Args
	} else {
		cmd.Args = []string{hk.Path}
	}
	cmd.Env = hk.Env
	if cmd.Env == nil {
		cmd.Env = []string{} // exactly the hook's: nil would mean ours
	}
	cmd.Dir = dir
	cmd.Stdin = bytes.NewReader(state)
	var out limitedBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	// A hook that forks a daemon keeping our pipe must not hold us.
	cmd.WaitDelay = time.Second
	err := cmd.Run()
	if hk.Timeout != nil && ctx.Err() == context.DeadlineExceeded {
		return fmt.Errorf("timed out after %d s", *hk.Timeout)
	}
	if err != nil {
		if msg := strings.TrimSpace(out.String()); msg != "" {
			return fmt.Errorf("%v: %s", err, oneLine(msg))
		}
		return err
	}
	return nil
}

// limitedBuffer keeps the first maxHookOutput bytes written to it.
type limitedBuffer struct{ bytes.Buffer }

func (b *limitedBuffer) Write(p []byte) (int, error) {
	if room := maxHookOutput - b.Len(); room > 0 {
		b.Buffer.Write(p[:min(len(p), room)])
	}
	return len(p), nil
}
