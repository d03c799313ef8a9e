package main

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// probe reports what the environment lets its process see: the kernel
// it runs on, the processes, a host file (marker: a confined
// environment must not see it), devices, CPUs and memory.
func probe(marker string) *Result {
	var u unix.Utsname
	unix.Uname(&u)
	procs, _ := filepath.Glob("/proc/[0-9]*")
	devs, _ := os.ReadDir("/dev")
	blocks, _ := os.ReadDir("/sys/block")
	var blockNames []string
	for _, b := range blocks {
		blockNames = append(blockNames, b.Name())
	}
	r := &Result{
		Metrics: map[string]float64{
			"processes": float64(len(procs)),
			"devices":   float64(len(devs)),
			"cpus":      float64(runtime.NumCPU()),
			"mem_mib":   float64(memTotalKiB()) / 1024,
		},
		Info: map[string]string{
			"kernel":        unix.ByteSliceToString(u.Release[:]),
			"block_devices": strings.Join(blockNames, " "),
			"dev_kvm":       strconv.FormatBool(exists("/dev/kvm")),
		},
	}
	if marker != "" {
		r.Info["host_file_visible"] = strconv.FormatBool(exists(marker))
	}
	// A kernel's boot ID is its own: two environments on one kernel
	// show the same.
	if b, err := os.ReadFile("/proc/sys/kernel/random/boot_id"); err == nil {
		r.Info["boot_id"] = strings.TrimSpace(string(b))
	}
	return r
}

func exists(p string) bool { _, err := os.Stat(p); return err == nil }

// memTotalKiB reads MemTotal from /proc/meminfo.
func memTotalKiB() int64 {
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return 0
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		var kb int64
		if _, err := fmt.Sscanf(s.Text(), "MemTotal: %d kB", &kb); err == nil {
			return kb
		}
	}
	return 0
}

// forkbomb starts paused copies of itself until starting one fails or
// max run, reports how many ran and why it stopped, and kills them all.
func forkbomb(max int) (*Result, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	var procs []*exec.Cmd
	defer func() {
		for _, p := range procs {
			p.Process.Kill()
			p.Wait()
		}
	}()
	stop := fmt.Sprintf("max %d reached", max)
	for len(procs) < max {
		c := exec.Command(self, "pause")
		c.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		if err := c.Start(); err != nil {
			stop = "fork failed: " + err.Error()
			break
		}
		procs = append(procs, c)
	}
	return &Result{Metrics: map[string]float64{"processes_started": float64(len(procs))}, Info: map[string]string{"stopped_by": stop}}, nil
}

// memhog allocates and touches memory 16 MiB at a time up to maxMB,
// printing how far it got after each step, so that when a memory limit
// kills it the last line says where.
func memhog(maxMB int) *Result {
	var keep [][]byte
	got := 0
	for got < maxMB {
		b, err := unix.Mmap(-1, 0, 16<<20, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
		if err != nil {
			return &Result{Metrics: map[string]float64{"allocated_mib": float64(got)}, Info: map[string]string{"stopped_by": "mmap: " + err.Error()}}
		}
		for i := 0; i < len(b); i += 4096 {
			b[i] = 1
		}
		keep = append(keep, b)
		got += 16
		fmt.Fprintf(os.Stderr, "memhog: %d MiB\n", got)
	}
	return &Result{Metrics: map[string]float64{"allocated_mib": float64(got)}, Info: map[string]string{"stopped_by": fmt.Sprintf("max %d MiB reached", maxMB)}}
}
