package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/vesselvm/vessel/container"
	"github.com/vesselvm/vessel/vmm"
)

// apiClientTimeout bounds one API request; a snapshot writes all of
// guest memory.
const apiClientTimeout = 10 * time.Minute

func newVMSnapshot() *cobra.Command {
	var api string
	var resume bool
	cmd := &cobra.Command{
		Use:   "snapshot --api SOCKET [--resume] DIR",
		Short: "Snapshot a running microVM into DIR",
		Long: `Pause the microVM that ` + "`vessel vm run --api SOCKET`" + ` serves, write its snapshot
into DIR (made if missing; it must be empty) and stop it, or with --resume
let it run on. ` + "`vessel vm run --restore DIR`" + ` starts it again, in this or
another vessel process, where it was paused: the same vessel version on the
same host CPU model only. The VM stops by default because its restored copy
opens the same disks (which only one VM may write) and vsock socket.

Exit statuses: 0 done; 2 invalid usage, no VM at SOCKET, or a snapshot the
VM refused (a directory not empty, a share the guest mounted); 125 vessel failure.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if api == "" {
				return usageErr("--api SOCKET is required")
			}
			return vmSnapshot(api, args[0], resume)
		},
	}
	cmd.Flags().StringVar(&api, "api", "", "the API socket of the VM (vessel vm run --api)")
	cmd.Flags().BoolVar(&resume, "resume", false, "let the VM run on after the snapshot instead of stopping it")
	return cmd
}

func vmSnapshot(api, dir string, resume bool) error {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return usageErr("%s: %v", dir, err)
	}
	if _, err := os.Stat(api); err != nil {
		return usageErr("--api %s: %v", api, unwrapPath(err))
	}
	c := apiClient(api)
	if err := c.call(http.MethodPatch, "/vm", apiState{State: "Paused"}); err != nil {
		return err
	}
	if err := c.call(http.MethodPut, "/snapshot/create", apiSnapshot{SnapshotPath: abs}); err != nil {
		// The VM goes on as it was.
		c.call(http.MethodPatch, "/vm", apiState{State: "Resumed"})
		return err
	}
	if resume {
		return c.call(http.MethodPatch, "/vm", apiState{State: "Resumed"})
	}
	return c.call(http.MethodPut, "/actions", apiAction{ActionType: "Stop"})
}

func unwrapPath(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

type apiCaller struct{ hc *http.Client }

func apiClient(path string) apiCaller {
	return apiCaller{hc: &http.Client{
		Timeout: apiClientTimeout,
		Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		}},
	}}
}

// call makes one API request and turns a failure into vessel's exit
// status: 2 for what the VM refused (400) or an unreachable socket, 125
// otherwise.
func (c apiCaller) call(method, path string, body any) error {
	b, err := json.Marshal(body)
	if err != nil {
		return &exitError{code: exitInternal, msg: err.Error()}
	}
	req, err := http.NewRequest(method, "http://vessel"+path, bytes.NewReader(b))
	if err != nil {
		return &exitError{code: exitInternal, msg: err.Error()}
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.hc.Do(req)
	if err != nil {
		return usageErr("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 == 2 {
		return nil
	}
	var f apiFault
	msg, _ := io.ReadAll(io.LimitReader(resp.Body, apiMaxBody))
	if json.Unmarshal(msg, &f) == nil && f.FaultMessage != "" {
		msg = []byte(f.FaultMessage)
	}
	text := strings.TrimSpace(container.CleanText(string(msg)))
	text = strings.TrimPrefix(text, vmm.ErrInvalidConfig.Error()+": ")
	code := exitInternal
	if resp.StatusCode/100 == 4 {
		code = exitUsage
	}
	return &exitError{code: code, msg: fmt.Sprintf("%s %s: %s", method, path, text)}
}
