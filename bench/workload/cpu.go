package main

import (
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// primes counts the primes up to max by trial division: sysbench cpu's
// event.
func primes(max int) int {
	n := 0
	for c := 3; c <= max; c++ {
		prime := true
		for d := 2; d*d <= c; d++ {
			if c%d == 0 {
				prime = false
				break
			}
		}
		if prime {
			n++
		}
	}
	return n
}

// cpu runs events on threads goroutines (each locked to a thread) for d
// and reports events per second over all of them.
func cpu(maxPrime, threads int, d time.Duration) *Result {
	var events atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	deadline := start.Add(d)
	for i := 0; i < threads; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			runtime.LockOSThread()
			for time.Now().Before(deadline) {
				primes(maxPrime)
				events.Add(1)
			}
		}()
	}
	wg.Wait()
	el := time.Since(start).Seconds()
	return &Result{Metrics: map[string]float64{"events_per_s": float64(events.Load()) / el}}
}

// stream runs STREAM's four kernels over arrays of n float64s, each five
// times, and reports the best rate of each in MB/s (10^6 bytes, counting
// the bytes each kernel reads and writes, as STREAM does). With threads
// > 1 the arrays are split between goroutines.
func stream(n, threads int) *Result {
	a, b, c := make([]float64, n), make([]float64, n), make([]float64, n)
	for i := range a {
		a[i], b[i], c[i] = 1, 2, 0
	}
	const q = 3.0
	kernels := []struct {
		name  string
		words int
		f     func(lo, hi int)
	}{
		{"copy_mb_per_s", 2, func(lo, hi int) { copy(c[lo:hi], a[lo:hi]) }},
		{"scale_mb_per_s", 2, func(lo, hi int) {
			for i := lo; i < hi; i++ {
				b[i] = q * c[i]
			}
		}},
		{"add_mb_per_s", 3, func(lo, hi int) {
			for i := lo; i < hi; i++ {
				c[i] = a[i] + b[i]
			}
		}},
		{"triad_mb_per_s", 3, func(lo, hi int) {
			for i := lo; i < hi; i++ {
				a[i] = b[i] + q*c[i]
			}
		}},
	}
	r := &Result{Metrics: map[string]float64{}}
	for _, k := range kernels {
		best := 0.0
		for it := 0; it < 5; it++ {
			start := time.Now()
			parallel(n, threads, k.f)
			rate := float64(k.words*8*n) / time.Since(start).Seconds() / 1e6
			if rate > best {
				best = rate
			}
		}
		r.Metrics[k.name] = best
	}
	return r
}

// parallel splits [0, n) between threads goroutines.
func parallel(n, threads int, f func(lo, hi int)) {
	if threads <= 1 {
		f(0, n)
		return
	}
	var wg sync.WaitGroup
	for t := 0; t < threads; t++ {
		lo, hi := n*t/threads, n*(t+1)/threads
		wg.Add(1)
		go func() {
			defer wg.Done()
			f(lo, hi)
		}()
	}
	wg.Wait()
}

// cpulimit keeps threads threads busy for d and reports the CPUs the
// process got: its CPU time over the wall time. A CPU limit shows as
// fewer cores than threads.
func cpulimit(threads int, d time.Duration) *Result {
	var before, after unix.Rusage
	unix.Getrusage(unix.RUSAGE_SELF, &before)
	start := time.Now()
	var wg sync.WaitGroup
	var sink atomic.Int64
	for i := 0; i < threads; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			runtime.LockOSThread()
			x := int64(0)
			for time.Since(start) < d {
				for j := 0; j < 100000; j++ {
					x += int64(j)
				}
			}
			sink.Add(x)
		}()
	}
	wg.Wait()
	wall := time.Since(start).Seconds()
	unix.Getrusage(unix.RUSAGE_SELF, &after)
	cpu := tvSeconds(after.Utime) + tvSeconds(after.Stime) - tvSeconds(before.Utime) - tvSeconds(before.Stime)
	return &Result{Metrics: map[string]float64{"cores_used": cpu / wall, "threads": float64(threads)}}
}

func tvSeconds(t unix.Timeval) float64 { return float64(t.Sec) + float64(t.Usec)/1e6 }
