// Command vessel-share is the file server of a vessel VM's 9P shares
// (package devices/share/remote starts it; it is not meant to be run by
// hand). It runs package share's server in a process of its own, so that
// the VMM needs neither a file server's system calls nor its
// capabilities, and a guest that took the server over holds no KVM
// descriptor and no guest memory.
//
// It gets its descriptors from its parent: 3 is its end of a
// SOCK_SEQPACKET pair with the VMM, on which each message is one new 9P
// connection: the share's index (4 bytes, little-endian) with the
// connection's stream socket (SCM_RIGHTS); 4 a pipe where it writes "ok"
// once it serves (or one line saying why not, before exiting with status
// 1); 5 onwards the shared directories, one per entry of -read-only, in
// order. It exits when the VMM's end of the pair closes, which happens
// when the VMM ends, however it ends.
package main

import (
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"

	"github.com/hugelgupf/p9/p9"
	"golang.org/x/sys/unix"

	"github.com/vesselvm/vessel/devices/share"
	"github.com/vesselvm/vessel/internal/fdpass"
	"github.com/vesselvm/vessel/internal/jail"
	"github.com/vesselvm/vessel/internal/seccomp"
)

func main() {
	seccomp.RelayMain()
	readOnly := flag.String("read-only", "", "comma-separated true or false for each share (descriptors 5 onwards)")
	chown := flag.Bool("chown", false, "give the guest's files the guest's owners, root's when it names none")
	relayed := flag.Bool("stderr-relayed", false, "the parent relays standard error (seccomp.Relay): start no relay process")
	flag.Parse()
	if *relayed {
		seccomp.ParentRelays()
	}
	ready := os.NewFile(4, "ready")
	ctl, servers, err := setup(*readOnly, *chown)
	if err == nil {
		_, err = ready.WriteString("ok\n")
	}
	if err != nil {
		fmt.Fprintf(ready, "%v\n", err)
		os.Exit(1)
	}
	ready.Close()
	serve(ctl, servers)
}

// setup opens the shares and the control socket, then installs the
// filter: from there on, the file server's calls only.
func setup(readOnly string, chown bool) (*net.UnixConn, []*p9.Server, error) {
	// The terminal's signals are for vessel, which decides what to do
	// with the VM; this process ends with the VM.
	signal.Ignore(syscall.SIGINT, syscall.SIGQUIT, syscall.SIGHUP, syscall.SIGTSTP)
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		lim.Cur = 1024 // Linux's default soft limit
	}
	budget := share.NewFDBudget(share.VMFDs(lim.Cur))
	var servers []*p9.Server
	if readOnly != "" {
		for i, v := range strings.Split(readOnly, ",") {
			ro, err := strconv.ParseBool(v)
			if err != nil {
				return nil, nil, fmt.Errorf("-read-only: %q: %w", v, err)
			}
			fd := 5 + i
			sh, err := share.FromFD(fd, "descriptor "+strconv.Itoa(fd), ro, share.Owner{Chown: chown}, budget)
			if err != nil {
				return nil, nil, err
			}
			servers = append(servers, p9.NewServer(sh))
		}
	}
	fc, err := net.FileConn(os.NewFile(3, "control"))
	if err != nil {
		return nil, nil, fmt.Errorf("control socket: descriptor 3: %w", err)
	}
	ctl, ok := fc.(*net.UnixConn)
	if !ok {
		return nil, nil, fmt.Errorf("control socket: descriptor 3 is a %T, not a Unix socket", fc)
	}
	if err := restrictCaps(chown); err != nil {
		return nil, nil, err
	}
	if err := seccomp.StartRelay(seccomp.Share, "", false); err != nil {
		return nil, nil, err
	}
	if err := seccomp.Install(seccomp.Share); err != nil {
		return nil, nil, err
	}
	return ctl, servers, nil
}

// serve serves each connection the VMM sends until it closes the
// control socket. A message that is not one share's index with one
// socket is dropped, its descriptors closed.
func serve(ctl *net.UnixConn, servers []*p9.Server) {
	for {
		msg, files, err := fdpass.Recv(ctl, 4, 1)
		if errors.Is(err, fdpass.ErrTooMany) {
			continue
		}
		if err != nil || len(msg) == 0 && len(files) == 0 {
			return // the VMM closed it
		}
		if len(msg) != 4 || len(files) != 1 || uint64(binary.LittleEndian.Uint32(msg)) >= uint64(len(servers)) {
			fdpass.Close(files)
			continue
		}
		go servers[binary.LittleEndian.Uint32(msg)].Handle(files[0], files[0])
	}
}

// restrictCaps leaves the process a file server's capabilities when it
// gives files the guest's owners (-chown), else none: as root, or
// started by a jailed VMM with them as ambient capabilities, also in its
// bounding set.
func restrictCaps(chown bool) error {
	var keep []uintptr
	if chown {
		keep = jail.ShareCaps
	}
	return jail.RestrictCaps(keep)
}
