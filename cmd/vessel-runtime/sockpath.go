package main

import (
	"fmt"
	"path/filepath"
	"sync"

	"golang.org/x/sys/unix"
)

// maxSockPath is the longest path a Unix socket address holds
// (sockaddr_un's 108 bytes, less the terminating NUL).
const maxSockPath = 107

// longestSockName is the longest socket name in a state directory: the
// vsock device's host side for the highest port.
const longestSockName = vsockBase + "_4294967295"

var (
	shortMu   sync.Mutex
	shortDirs = map[string]string{}
)

// sockDir returns a name for the state directory dir short enough for
// its sockets: dir itself when it is, else /proc/self/fd/N of a
// descriptor of dir this process keeps open. A --root deep in a
// temporary directory, with containerd's 64-character IDs, would
// otherwise make bind and connect fail.
func sockDir(dir string) (string, error) {
	if len(filepath.Join(dir, longestSockName)) <= maxSockPath {
		return dir, nil
	}
	shortMu.Lock()
	defer shortMu.Unlock()
	if d, ok := shortDirs[dir]; ok {
		return d, nil
	}
	fd, err := unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return "", fmt.Errorf("state directory: %w", err)
	}
	d := fmt.Sprintf("/proc/self/fd/%d", fd)
	shortDirs[dir] = d
	return d, nil
}

// sockPath is the socket name in state directory dir, short enough to
// bind or connect to.
func sockPath(dir, name string) (string, error) {
	d, err := sockDir(dir)
	if err != nil {
		return "", err
	}
	return filepath.Join(d, name), nil
}
