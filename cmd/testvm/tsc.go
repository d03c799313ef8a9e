package main

import (
	"errors"
	"fmt"
	"slices"
	"time"

	"golang.org/x/sys/unix"
)

// rdtsc reads the time-stamp counter (tsc_amd64.s).
func rdtsc() uint64

// errNoTSC is returned when the host's TSC rate cannot be measured.
var errNoTSC = errors.New("testvm: cannot measure the host's TSC rate")

// tscKHz measures the host's TSC rate against CLOCK_MONOTONIC_RAW.
//
// Why: under TCG, QEMU's guest TSC is the host's TSC (cpu_get_host_ticks),
// but the outer kernel calibrates it against an emulated PIT whose timing
// jitters with host load. When that calibration fails, the outer kernel
// runs with tsc_khz = 0, and its KVM then loops forever in
// KVM_REQ_CLOCK_UPDATE (kvm_guest_time_update gives up on a zero rate)
// without ever entering the nested guest: the inner VM never runs an
// instruction. Passing the measured rate as tsc_early_khz= skips the
// calibration.
func tscKHz() (uint64, error) {
	// The median of a few short samples: preemption between a clock read
	// and the counter read skews one sample, not the median.
	var samples []uint64
	for i := 0; i < 5; i++ {
		t0, c0 := monoRaw(), rdtsc()
		time.Sleep(20 * time.Millisecond)
		t1, c1 := monoRaw(), rdtsc()
		ns := t1 - t0
		if ns <= 0 || c1 <= c0 {
			continue
		}
		samples = append(samples, uint64(float64(c1-c0)/float64(ns)*1e6))
	}
	if len(samples) == 0 {
		return 0, errNoTSC
	}
	slices.Sort(samples)
	best := samples[len(samples)/2]
	if best < 100_000 || best > 20_000_000 { // 100 MHz .. 20 GHz
		return 0, fmt.Errorf("%w: measured %d kHz", errNoTSC, best)
	}
	return best, nil
}

func monoRaw() int64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC_RAW, &ts); err != nil {
		return 0
	}
	return ts.Nano()
}
