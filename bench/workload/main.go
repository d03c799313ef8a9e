// Command vessel-workload is the workload of `vessel bench compare`: one
// static binary that runs unchanged on the host, in a runc container and
// in a vessel microVM, so that only the environment differs. Each run
// does one workload and prints one JSON object (Result) on stdout.
//
//	vessel-workload cpu -max-prime 10000 -threads 1 -time 5s
//	vessel-workload compress -size 64M -dir /work
//	vessel-workload stream -n 4000000
//	vessel-workload disk -size 256M -dir /work -time 5s
//	vessel-workload probe -marker /tmp/host-marker
//	vessel-workload forkbomb -max 2000
//	vessel-workload memhog -max-mb 4096
//	vessel-workload cpulimit -threads 4 -time 3s
//	vessel-workload net-send -addr HOST:PORT -time 5s
//	vessel-workload http-serve -port 8080
//	vessel-workload true | pause
//
// The workloads follow the classic comparison of containers and VMs
// (Potdar et al., 2020): sysbench's cpu test (events, each the primes up
// to a limit by trial division), compressing a file, STREAM's copy,
// scale, add and triad, and sequential and random disk I/O with 1 MiB
// and 4 KiB records.
package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// Result is what one run reports.
type Result struct {
	// Metrics are the measured values, by name (units in the name).
	Metrics map[string]float64 `json:"metrics,omitempty"`
	// Info are facts: a probe's findings, how a workload ran.
	Info map[string]string `json:"info,omitempty"`
}

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: vessel-workload WORKLOAD [flags] (cpu, compress, stream, disk, probe, forkbomb, memhog, cpulimit, net-send, http-serve, true, pause)")
		os.Exit(2)
	}
	r, err := run(os.Args[1], os.Args[2:])
	if err != nil {
		fmt.Fprintf(os.Stderr, "vessel-workload %s: %v\n", os.Args[1], err)
		os.Exit(1)
	}
	if r != nil {
		json.NewEncoder(os.Stdout).Encode(r)
	}
}

// run parses a workload's flags and runs it.
func run(name string, args []string) (*Result, error) {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	d := fs.Duration("time", 5*time.Second, "how long a timed workload runs")
	threads := fs.Int("threads", 1, "threads (cpu, stream, cpulimit)")
	maxPrime := fs.Int("max-prime", 10000, "cpu: each event finds the primes up to this")
	size := fs.String("size", "64M", "compress, disk: file size (K, M, G)")
	dir := fs.String("dir", ".", "compress, disk: directory for the file")
	n := fs.Int("n", 4_000_000, "stream: elements per array")
	marker := fs.String("marker", "", "probe: a host file a confined environment must not see")
	max := fs.Int("max", 2000, "forkbomb: stop after this many processes")
	maxMB := fs.Int("max-mb", 4096, "memhog: stop after this many MiB")
	addr := fs.String("addr", "", "net-send: the receiver, HOST:PORT")
	port := fs.Int("port", 8080, "http-serve: the port to listen on")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	bytes, err := parseSize(*size)
	if err != nil {
		return nil, err
	}
	switch name {
	case "cpu":
		return cpu(*maxPrime, *threads, *d), nil
	case "compress":
		return compress(*dir, bytes)
	case "stream":
		return stream(*n, *threads), nil
	case "disk":
		return disk(*dir, bytes, *d)
	case "probe":
		return probe(*marker), nil
	case "forkbomb":
		return forkbomb(*max)
	case "memhog":
		return memhog(*maxMB), nil
	case "cpulimit":
		return cpulimit(*threads, *d), nil
	case "net-send":
		return netSend(*addr, *d)
	case "http-serve":
		return nil, httpServe(*port)
	case "true":
		return nil, nil
	case "pause":
		for {
			time.Sleep(time.Hour)
		}
	}
	return nil, fmt.Errorf("unknown workload %q", name)
}

// parseSize reads a byte count with an optional K, M or G (powers of 1024).
func parseSize(s string) (int64, error) {
	mult := int64(1)
	switch {
	case strings.HasSuffix(s, "K"):
		mult = 1 << 10
	case strings.HasSuffix(s, "M"):
		mult = 1 << 20
	case strings.HasSuffix(s, "G"):
		mult = 1 << 30
	}
	v, err := strconv.ParseInt(strings.TrimRight(s, "KMG"), 10, 64)
	if err != nil || v <= 0 {
		return 0, errors.New("size " + strconv.Quote(s) + ": want a positive number with K, M or G")
	}
	return v * mult, nil
}
