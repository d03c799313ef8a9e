package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/vesselvm/vessel/guest/cmdline"
	"github.com/vesselvm/vessel/vmm"
)

// VMM names, in the order each measurement runs them.
const (
	vmmVessel = "vessel"
	vmmQEMU   = "qemu"
)

// allVMMs lists the VMMs benchio knows.
var allVMMs = []string{vmmVessel, vmmQEMU}

// vmmTitle is a VMM's name in the report.
var vmmTitle = map[string]string{vmmVessel: "vessel", vmmQEMU: "QEMU microvm"}

// Guest settings every VMM gets alike.
const (
	guestMemMiB = 512
	guestMAC    = "52:54:00:be:0c:01"
	// QEMU's user network (slirp) defaults: the guest's address, the
	// host as seen from the guest, and slirp's name server.
	slirpGuest = "10.0.2.15/24"
	slirpHost  = "10.0.2.2"
	slirpDNS   = "10.0.2.3"
	// powerDownLine is what the guest kernel prints (at KERN_EMERG, so
	// even under loglevel=3) when it powers off without ACPI.
	powerDownLine = "reboot: Power down"
)

// vmDevices is what one workload attaches, described once for every VMM.
type vmDevices struct {
	Disk string // raw image file (virtio-blk)
	// Tap is a host TAP device the guest gets with address TapAddr
	// (CIDR) and gateway TapGW.
	Tap, TapAddr, TapGW string
	// UserPort, when non-zero, asks for a user network (vessel's own,
	// QEMU's slirp) forwarding host 127.0.0.1:UserPort to the guest's
	// guestPort.
	UserPort int
	// VsockUDS is vessel's hybrid vsock socket; VsockCID QEMU's guest
	// CID (vhost-vsock). Either asks for a vsock device.
	VsockUDS string
	VsockCID uint32
}

// vesselArgs returns vessel vm run's device flags for d.
func vesselArgs(d vmDevices) []string {
	var a []string
	if d.Disk != "" {
		a = append(a, "--disk", d.Disk)
	}
	if d.Tap != "" {
		a = append(a, "--net", fmt.Sprintf("tap=%s,ip=%s,gw=%s,mac=%s", d.Tap, d.TapAddr, d.TapGW, guestMAC))
	}
	if d.UserPort != 0 {
		// host-loopback: the guest reaches the host's 127.0.0.1 as
		// host.vessel.internal, as slirp's guest reaches it at 10.0.2.2.
		a = append(a, "--net", fmt.Sprintf("user,publish=127.0.0.1:%d:%d,mac=%s,host-loopback", d.UserPort, guestPort, guestMAC))
	}
	if d.VsockUDS != "" {
		a = append(a, "--vsock", d.VsockUDS)
	}
	return a
}

// qemuOpts are the QEMU choices the flags make.
type qemuOpts struct {
	Kernel, Initrd string
	ACPI           string // on or off
	AIO            string // -drive aio=: threads, io_uring or native
	Cache          string // -drive cache=
}

// qemuEscape doubles commas, QEMU's escape inside an option value.
func qemuEscape(s string) string { return strings.ReplaceAll(s, ",", ",,") }

// qemuArgs returns QEMU microvm's arguments for d: the same kernel,
// initramfs, command line, vCPU count and memory as vessel's runs, the
// console on stdout, and QMP on qmpSock (QEMU waits for the client before
// it starts the guest, and stays after the guest powers off or resets so
// that its counters can be read).
func qemuArgs(o qemuOpts, d vmDevices, cl, qmpSock string) []string {
	a := []string{
		"-M", "microvm,x-option-roms=off,rtc=off,isa-serial=on,acpi=" + o.ACPI,
		"-accel", "kvm", "-cpu", "host", "-m", strconv.Itoa(guestMemMiB), "-smp", "1",
		"-nodefaults", "-no-user-config", "-nographic", "-no-reboot", "-no-shutdown",
		"-serial", "stdio",
		"-qmp", "unix:" + qemuEscape(qmpSock) + ",server=on,wait=on",
		"-kernel", o.Kernel, "-initrd", o.Initrd, "-append", cl,
	}
	if d.Disk != "" {
		a = append(a,
			"-drive", fmt.Sprintf("file=%s,format=raw,if=none,id=d0,cache=%s,aio=%s", qemuEscape(d.Disk), o.Cache, o.AIO),
			"-device", "virtio-blk-device,drive=d0")
	}
	if d.Tap != "" {
		a = append(a,
			"-netdev", fmt.Sprintf("tap,id=n0,ifname=%s,script=no,downscript=no", qemuEscape(d.Tap)),
			"-device", "virtio-net-device,netdev=n0,mac="+guestMAC)
	}
	if d.UserPort != 0 {
		a = append(a,
			"-netdev", fmt.Sprintf("user,id=n1,hostfwd=tcp:127.0.0.1:%d-:%d", d.UserPort, guestPort),
			"-device", "virtio-net-device,netdev=n1,mac="+guestMAC)
	}
	if d.VsockCID != 0 {
		a = append(a, "-device", fmt.Sprintf("vhost-vsock-device,guest-cid=%d", d.VsockCID))
	}
	return a
}

// qemuGuestNets is what the guest init configures under QEMU: vessel
// passes the same settings for its own devices (vessel.net).
func qemuGuestNets(d vmDevices) []cmdline.Net {
	var n []cmdline.Net
	if d.Tap != "" {
		n = append(n, cmdline.Net{MAC: guestMAC, Addr: d.TapAddr, Gateway: d.TapGW})
	}
	if d.UserPort != 0 {
		n = append(n, cmdline.Net{MAC: guestMAC, Addr: slirpGuest, Gateway: slirpHost, DNS: []string{slirpDNS}})
	}
	return n
}

// qemuCmdline is vessel's default command line plus what vessel appends
// for the guest command (vessel.cmd, vessel.tty=0, vessel.net), without
// vessel's control port, which QEMU does not have.
func qemuCmdline(argv []string, nets []cmdline.Net) (string, error) {
	extra, err := cmdline.Encode(cmdline.Spec{Argv: argv, TTY: false, Net: nets})
	if err != nil {
		return "", fmt.Errorf("encode the guest command: %w", err)
	}
	return strings.TrimSpace(vmm.DefaultCmdline + " " + extra), nil
}

// qemuACPI resolves -qemu-acpi auto as bench-boot does: ACPI the guest
// does not turn off (vessel's default command line does not).
func qemuACPI(flag string) string {
	if flag != "auto" {
		return flag
	}
	for _, f := range strings.Fields(vmm.DefaultCmdline) {
		if f == "acpi=off" {
			return "off"
		}
	}
	return "on"
}

// errPlatform marks a failure the emulated platform is known to cause now
// and then (a guest reset or triple fault, a run that never ended): such
// a run is retried once.
var errPlatform = errors.New("platform flake")

// qemuOnce boots QEMU microvm with d running `/benchio guest args...`.
func (b *bench) qemuOnce(d vmDevices, args []string, onListen func()) (*guestRun, error) {
	argv := append([]string{"/benchio", "guest"}, args...)
	cl, err := qemuCmdline(argv, qemuGuestNets(d))
	if err != nil {
		return nil, err
	}
	sock := filepath.Join(b.dir, "qmp.sock")
	os.Remove(sock)
	opts := qemuOpts{Kernel: b.cfg.Kernel, Initrd: b.initrd, ACPI: qemuACPI(b.cfg.QEMUACPI), AIO: b.cfg.QEMUAIO, Cache: b.cfg.QEMUCache}
	ctx, cancel := context.WithTimeout(context.Background(), b.cfg.VMTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, b.cfg.QEMU, qemuArgs(opts, d, cl, sock)...)
	var stderr bytes.Buffer
	out := &watch{line: listeningLine, f: onListen, endLine: powerDownLine, ended: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = out, &stderr
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", b.cfg.QEMU, err)
	}
	var waitErr error
	exited := make(chan struct{})
	go func() {
		waitErr = cmd.Wait()
		close(exited)
	}()
	fail := func(err error) (*guestRun, error) {
		cmd.Process.Kill()
		<-exited
		return nil, fmt.Errorf("qemu %s: %w\n%s%s", strings.Join(args, " "), err, out.String(), stderr.String())
	}
	conn, err := dialUnix(ctx, sock, exited)
	if err != nil {
		return fail(err)
	}
	defer conn.Close()
	q, err := newQMP(conn)
	if err != nil {
		return fail(err)
	}
	// The guest is done when it powers off: an ACPI power-off is a
	// SHUTDOWN event, without ACPI the kernel says so and halts.
	var reason string
wait:
	for {
		select {
		case m, ok := <-q.events:
			if !ok {
				return fail(errors.New("QMP connection closed before the guest powered off"))
			}
			if reason = shutdownReason(m); reason != "" {
				break wait
			}
		case <-out.ended:
			reason = "guest-shutdown"
			break wait
		case <-exited:
			if ctx.Err() != nil {
				return fail(fmt.Errorf("%w: no power-off within %v", errPlatform, b.cfg.VMTimeout))
			}
			return fail(errors.New("QEMU exited before the guest powered off"))
		case <-ctx.Done():
			return fail(fmt.Errorf("%w: no power-off within %v", errPlatform, b.cfg.VMTimeout))
		}
	}
	if reason != "guest-shutdown" {
		return fail(fmt.Errorf("%w: guest stopped with %s (a reset is a triple fault or a reboot after a panic)", errPlatform, reason))
	}
	stats, err := q.vcpuStats()
	if err != nil {
		return fail(err)
	}
	q.execute("quit", nil)
	select {
	case <-exited:
	case <-time.After(qmpTimeout):
		return fail(errors.New("QEMU did not quit"))
	}
	if waitErr != nil {
		return nil, fmt.Errorf("qemu %s: exit: %w\n%s", strings.Join(args, " "), waitErr, stderr.String())
	}
	r := &guestRun{stdout: out.String(), kvm: stats}
	if r.results, err = parseResults(r.stdout); err != nil {
		return nil, err
	}
	if r.irqs, err = parseIRQs(r.stdout); err != nil {
		return nil, err
	}
	if args[0] != "idle" && len(r.results) == 0 {
		return nil, fmt.Errorf("qemu %s: the guest printed no result\n%s%s", strings.Join(args, " "), r.stdout, stderr.String())
	}
	return r, nil
}

// dialUnix connects to the Unix socket path once it exists, giving up when
// stop closes or ctx ends.
func dialUnix(ctx context.Context, path string, stop <-chan struct{}) (net.Conn, error) {
	for {
		c, err := net.Dial("unix", path)
		if err == nil {
			return c, nil
		}
		select {
		case <-stop:
			return nil, fmt.Errorf("dial %s: the process ended: %w", path, err)
		case <-ctx.Done():
			return nil, fmt.Errorf("dial %s: %w", path, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// vesselOnce boots vessel with d running `/benchio guest args...`.
func (b *bench) vesselOnce(d vmDevices, args []string, onListen func()) (*guestRun, error) {
	mfile := filepath.Join(b.dir, "metrics.json")
	os.Remove(mfile)
	cmdArgs := append([]string{"vm", "run", "--kernel", b.cfg.Kernel, "--initrd", b.initrd,
		"--cpus", "1", "--memory", fmt.Sprintf("%dM", guestMemMiB), "--metrics", mfile}, vesselArgs(d)...)
	cmdArgs = append(cmdArgs, "--")
	cmdArgs = append(cmdArgs, append([]string{"/benchio", "guest"}, args...)...)
	ctx, cancel := context.WithTimeout(context.Background(), b.cfg.VMTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, b.cfg.Vessel, cmdArgs...)
	// SIGUSR2: vessel describes the hung VM's state (vCPUs, rings) on
	// stderr before it stops, so the failure says where it hung.
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGUSR2) }
	cmd.WaitDelay = 30 * time.Second
	var stderr bytes.Buffer
	out := &watch{line: listeningLine, f: onListen}
	cmd.Stdout, cmd.Stderr = out, &stderr
	if err := cmd.Run(); err != nil {
		if ctx.Err() != nil {
			err = fmt.Errorf("%w: no exit within %v", errPlatform, b.cfg.VMTimeout)
		} else if strings.Contains(stderr.String()+out.String(), "triple fault") {
			err = fmt.Errorf("%w: %v (triple fault)", errPlatform, err)
		}
		return nil, fmt.Errorf("vessel %s: %w\n%s%s", strings.Join(args, " "), err, out.String(), stderr.String())
	}
	r := &guestRun{stdout: out.String()}
	var err error
	if r.results, err = parseResults(r.stdout); err != nil {
		return nil, err
	}
	if r.irqs, err = parseIRQs(r.stdout); err != nil {
		return nil, err
	}
	if args[0] != "idle" && len(r.results) == 0 {
		return nil, fmt.Errorf("vessel %s: the guest printed no result\n%s%s", strings.Join(args, " "), r.stdout, stderr.String())
	}
	mb, err := os.ReadFile(mfile)
	if err != nil {
		return nil, fmt.Errorf("vessel metrics: %w", err)
	}
	var m metrics
	if err := json.Unmarshal(mb, &m); err != nil {
		return nil, fmt.Errorf("vessel metrics: %w", err)
	}
	r.vessel, r.kvm = &m, m.KVMStats
	return r, nil
}
