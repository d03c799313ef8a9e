package benchutil

import (
	"archive/tar"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"

	"github.com/vesselvm/vessel/internal/proctree"
)

// ExtractImage writes img's file system to dir. The image is the one bbimage
// built (trusted): directories, files and symlinks.
func ExtractImage(img v1.Image, dir string) error {
	rc := mutate.Extract(img)
	defer rc.Close()
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		p := filepath.Join(dir, filepath.Clean("/"+h.Name))
		switch h.Typeflag {
		case tar.TypeDir:
			err = os.MkdirAll(p, os.FileMode(h.Mode).Perm()|0o700)
		case tar.TypeSymlink:
			os.MkdirAll(filepath.Dir(p), 0o755)
			err = os.Symlink(h.Linkname, p)
		case tar.TypeReg:
			os.MkdirAll(filepath.Dir(p), 0o755)
			var f *os.File
			if f, err = os.OpenFile(p, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, os.FileMode(h.Mode).Perm()); err == nil {
				_, err = io.Copy(f, tr)
				f.Close()
			}
		}
		if err != nil {
			return fmt.Errorf("extract %s: %w", h.Name, err)
		}
	}
}

// ProcMemory returns a process's resident and proportional set sizes in
// MiB.
func ProcMemory(pid int) (rss, pss float64, err error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps_rollup", pid))
	if err != nil {
		return 0, 0, err
	}
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) < 2 {
			continue
		}
		kb, _ := strconv.ParseFloat(f[1], 64)
		switch f[0] {
		case "Rss:":
			rss = kb / 1024
		case "Pss:":
			pss = kb / 1024
		}
	}
	return rss, pss, nil
}

// RuncPid waits up to within for runc (with state directory root) to
// report container id running, and returns its process ID, or 0 if it
// never did or ctx ended.
func RuncPid(ctx context.Context, runc, root, id string, within time.Duration) int {
	var st struct {
		Pid    int    `json:"pid"`
		Status string `json:"status"`
	}
	for deadline := time.Now().Add(within); time.Now().Before(deadline) && ctx.Err() == nil; time.Sleep(100 * time.Millisecond) {
		js, err := exec.Command(runc, "--root", root, "state", id).Output()
		if err == nil && json.Unmarshal(js, &st) == nil && st.Status == "running" && st.Pid > 0 {
			return st.Pid
		}
	}
	return 0
}

// FirstLine is the first line of a command's output, trimmed, passing
// over the docker CLI's "WARNING:" lines (an image's platform, say),
// which come before the error that says what failed.
func FirstLine(b []byte) string {
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	for _, l := range lines {
		if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "WARNING:") {
			return l
		}
	}
	return strings.TrimSpace(lines[0])
}

// TreeMemory sums ProcMemory over pid and its descendants (a vessel
// process, its jailed VMM and its network helper, say), in MiB.
func TreeMemory(pid int) (rss, pss float64, err error) {
	tree, err := proctree.Tree(pid)
	if err != nil {
		return 0, 0, err
	}
	for i, p := range tree {
		r, s, err := ProcMemory(p)
		if err != nil && (i == 0 || !errors.Is(err, os.ErrNotExist)) {
			return 0, 0, err
		}
		rss, pss = rss+r, pss+s
	}
	return rss, pss, nil
}
