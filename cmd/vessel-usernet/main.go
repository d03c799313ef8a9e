// Command vessel-usernet is the user network of a vessel VM (package
// devices/usernet starts it; it is not meant to be run by hand). It runs
// the virtual switch of package devices/usernet/gvnet in a process of its
// own, so that the VMM does not carry gVisor's network stack.
//
// It gets its descriptors from its parent: 3 is its end of a
// SOCK_SEQPACKET pair whose other end is the VM's virtio-net device, 4 a
// pipe where it writes "ok" once the network is up (or one line saying
// why not, before exiting with status 1), and 5 onwards the listening
// TCP sockets of the published ports, one per entry of -ports, in order.
// With -stderr-relayed its parent turns its standard error's crash report
// for a call outside its seccomp filter into one line (seccomp.Relay), so
// that it starts no relay of its own.
// It exits when the device's end of the pair closes, which happens when
// the VMM ends, however it ends.
package main

import (
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"

	"github.com/vesselvm/vessel/devices/usernet"
	"github.com/vesselvm/vessel/devices/usernet/gvnet"
	"github.com/vesselvm/vessel/internal/seccomp"
)

func main() {
	seccomp.RelayMain()
	mac := flag.String("mac", "", "the guest interface's MAC address")
	ports := flag.String("ports", "", "comma-separated guest ports of the published host sockets (descriptors 5 onwards)")
	hostLoopback := flag.Bool("host-loopback", false, "make the host's 127.0.0.1 reachable at "+usernet.HostIP)
	relayed := flag.Bool("stderr-relayed", false, "the parent relays standard error (seccomp.Relay): start no relay process")
	flag.Parse()
	if *relayed {
		seccomp.ParentRelays()
	}
	ready := os.NewFile(4, "ready")
	if err := run(*mac, *ports, *hostLoopback, ready); err != nil {
		fmt.Fprintf(ready, "%v\n", err)
		os.Exit(1)
	}
}

func run(macArg, portsArg string, hostLoopback bool, ready *os.File) error {
	// The terminal's signals are for vessel, which decides what to do
	// with the VM; this process ends with the VM.
	signal.Ignore(syscall.SIGINT, syscall.SIGQUIT, syscall.SIGHUP, syscall.SIGTSTP)
	mac, err := net.ParseMAC(macArg)
	if err != nil {
		return fmt.Errorf("-mac: %w", err)
	}
	var ps []gvnet.Port
	if portsArg != "" {
		for i, s := range strings.Split(portsArg, ",") {
			port, err := strconv.ParseUint(s, 10, 16)
			if err != nil {
				return fmt.Errorf("-ports: %q: %w", s, err)
			}
			ln, err := net.FileListener(os.NewFile(uintptr(5+i), "published"))
			if err != nil {
				return fmt.Errorf("published port %d: descriptor %d: %w", port, 5+i, err)
			}
			ps = append(ps, gvnet.Port{Listener: ln, GuestPort: uint16(port)})
		}
	}
	fc, err := net.FileConn(os.NewFile(3, "switch"))
	if err != nil {
		return fmt.Errorf("switch socket: descriptor 3: %w", err)
	}
	conn, ok := fc.(*net.UnixConn)
	if !ok {
		return fmt.Errorf("switch socket: descriptor 3 is a %T, not a Unix socket", fc)
	}
	sw, err := gvnet.New(gvnet.Options{MAC: mac, HostLoopback: hostLoopback})
	if err != nil {
		return err
	}
	// Everything is open: from here on, the network stack's calls only.
	if err := seccomp.StartRelay(seccomp.Usernet, "", false); err != nil {
		return err
	}
	if err := seccomp.Install(seccomp.Usernet); err != nil {
		return err
	}
	if _, err := ready.WriteString("ok\n"); err != nil {
		return err
	}
	ready.Close()
	sw.Serve(conn, ps)
	return nil
}
