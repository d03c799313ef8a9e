package main

import (
	"bytes"
	"debug/buildinfo"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/vesselvm/vessel/bench/internal/benchutil"
	"golang.org/x/sys/unix"
)

// Platform describes where the benchmark ran.
type Platform struct {
	// Kind names the platform in a few words, e.g. "nested KVM in QEMU
	// TCG (software emulation)" or "direct hardware KVM".
	Kind         string `json:"kind"`
	CPUModel     string `json:"cpu_model"`
	CPUs         int    `json:"cpus"`
	KVMModule    string `json:"kvm_module"`
	HostKernel   string `json:"host_kernel"` // the kernel running the VMMs
	GuestKernel  string `json:"guest_kernel"`
	VesselRev    string `json:"vessel_rev,omitempty"`
	GokvmVersion string `json:"gokvm_version,omitempty"`
	QEMUVersion  string `json:"qemu_version,omitempty"`
}

// detectPlatform inspects the machine benchboot runs on.
func detectPlatform(cfg *config) Platform {
	p := Platform{}
	cpu := benchutil.ReadCPU("/proc/cpuinfo")
	p.CPUModel, p.CPUs = cpu.Model, cpu.Count
	p.KVMModule = benchutil.KVMModule()
	p.Kind = benchutil.Kind(cpu, p.KVMModule)
	var u unix.Utsname
	if err := unix.Uname(&u); err == nil {
		p.HostKernel = unix.ByteSliceToString(u.Release[:]) + " " + unix.ByteSliceToString(u.Version[:])
	}
	if v, err := bzImageVersion(cfg.Kernel); err == nil {
		p.GuestKernel = v
	} else {
		p.GuestKernel = "unknown (" + err.Error() + ")"
	}
	p.VesselRev = gitRevision(filepath.Dir(cfg.Vessel))
	if bi, err := buildinfo.ReadFile(cfg.Gokvm); err == nil {
		p.GokvmVersion = bi.Main.Path + " " + bi.Main.Version
	}
	if out, err := exec.Command(cfg.QEMU, "--version").Output(); err == nil {
		p.QEMUVersion, _, _ = strings.Cut(string(out), "\n")
	}
	return p
}

// bzImageVersion reads the kernel version string a bzImage's setup header
// points to (boot protocol 2.00+: kernel_version at 0x20E, relative to
// 0x200).
func bzImageVersion(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	hdr := make([]byte, 0x210)
	if _, err := io.ReadFull(f, hdr); err != nil {
		return "", fmt.Errorf("read setup header: %w", err)
	}
	if string(hdr[0x202:0x206]) != "HdrS" {
		return "", errors.New("not a bzImage (no HdrS)")
	}
	off := int64(binary.LittleEndian.Uint16(hdr[0x20E:])) + 0x200
	buf := make([]byte, 256)
	n, err := f.ReadAt(buf, off)
	if n == 0 {
		return "", fmt.Errorf("read version string: %w", err)
	}
	buf = buf[:n]
	if i := bytes.IndexByte(buf, 0); i >= 0 {
		buf = buf[:i]
	}
	return string(buf), nil
}

// gitRevision describes the checkout dir lies in, or returns "".
func gitRevision(dir string) string {
	out, err := exec.Command("git", "-C", dir, "describe", "--always", "--dirty").Output()
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(out))
}
