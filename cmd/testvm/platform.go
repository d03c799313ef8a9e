package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
)

// hostKVM describes what the host's /dev/kvm can do.
type hostKVM struct {
	// Direct is true when /dev/kvm can boot a stock kernel: it exists, it is
	// not PVM (no /sys/module/kvm_pvm) and the CPU has vmx or svm.
	Direct bool
	// Why explains the decision in a few words.
	Why string
}

// detectHost inspects the files under root ("/" on a real system; tests use
// a fake tree): dev/kvm, sys/module/kvm_pvm and proc/cpuinfo.
func detectHost(root string) hostKVM {
	if _, err := os.Stat(filepath.Join(root, "dev/kvm")); err != nil {
		return hostKVM{Why: "host has no /dev/kvm"}
	}
	if _, err := os.Stat(filepath.Join(root, "sys/module/kvm_pvm")); err == nil {
		return hostKVM{Why: "host /dev/kvm is PVM (kvm_pvm), which cannot boot a stock kernel"}
	}
	f, err := os.Open(filepath.Join(root, "proc/cpuinfo"))
	if err != nil {
		return hostKVM{Why: "cannot read /proc/cpuinfo: " + err.Error()}
	}
	defer f.Close()
	flags, err := cpuFlags(f)
	if err != nil {
		return hostKVM{Why: "cannot read /proc/cpuinfo: " + err.Error()}
	}
	switch {
	case flags["vmx"]:
		return hostKVM{Direct: true, Why: "host KVM with VT-x"}
	case flags["svm"]:
		return hostKVM{Direct: true, Why: "host KVM with AMD-V"}
	}
	return hostKVM{Why: "host CPU has no vmx/svm flag"}
}

// cpuFlags returns the set of flags on the first "flags" line of a
// /proc/cpuinfo text.
func cpuFlags(r io.Reader) (map[string]bool, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		key, val, ok := strings.Cut(sc.Text(), ":")
		if !ok || strings.TrimSpace(key) != "flags" {
			continue
		}
		set := map[string]bool{}
		for _, f := range strings.Fields(val) {
			set[f] = true
		}
		return set, nil
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	return nil, errors.New("no flags line")
}

// choosePlatform applies the --platform flag to the detection result.
func choosePlatform(flag string, h hostKVM) (direct bool, err error) {
	switch flag {
	case "auto":
		return h.Direct, nil
	case "direct":
		return true, nil
	case "nested":
		return false, nil
	}
	return false, fmt.Errorf("--platform must be auto, direct or nested, not %q", flag)
}
