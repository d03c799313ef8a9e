package main

import (
	"bufio"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"
)

// words make the compress workload's text: compressible as prose is.
var words = []string{"the", "virtual", "machine", "container", "kernel", "isolation", "of", "and", "a",
	"benchmark", "memory", "disk", "network", "process", "namespace", "hypervisor", "guest", "host",
	"performance", "to", "in", "is", "with", "throughput", "latency"}

// compress writes a text file of size bytes in dir, then gzips it
// (level 6, as gzip's default) and reports the input rate in MB/s.
func compress(dir string, size int64) (*Result, error) {
	path := filepath.Join(dir, "compress.in")
	defer os.Remove(path)
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	w := bufio.NewWriterSize(f, 1<<20)
	rng := rand.New(rand.NewPCG(1, 2))
	var n int64
	for n < size {
		k, _ := w.WriteString(words[rng.IntN(len(words))])
		w.WriteByte(' ')
		n += int64(k) + 1
	}
	if err := w.Flush(); err != nil {
		f.Close()
		return nil, err
	}
	if err := f.Close(); err != nil {
		return nil, err
	}
	in, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer in.Close()
	start := time.Now()
	cw := &countWriter{}
	zw, _ := gzip.NewWriterLevel(cw, 6)
	if _, err := io.Copy(zw, bufio.NewReaderSize(in, 1<<20)); err != nil {
		return nil, err
	}
	zw.Close()
	el := time.Since(start).Seconds()
	return &Result{Metrics: map[string]float64{"mb_per_s": float64(n) / el / 1e6, "seconds": el, "ratio": float64(n) / float64(cw.n)}}, nil
}

type countWriter struct{ n int64 }

func (c *countWriter) Write(p []byte) (int, error) { c.n += int64(len(p)); return len(p), nil }

// record sizes of the disk workload.
const (
	seqRecord  = 1 << 20
	randRecord = 4 << 10
)

// disk writes a file of size bytes in dir sequentially in 1 MiB records
// and syncs it, reads it back, then does random 4 KiB reads and writes
// for d each. It uses O_DIRECT, so the page cache of the environment's
// kernel is not measured, where the file system supports it; elsewhere
// it falls back to cached I/O and says so.
func disk(dir string, size int64, d time.Duration) (*Result, error) {
	size = size / seqRecord * seqRecord
	if size == 0 {
		return nil, errors.New("size below 1 MiB")
	}
	buf, err := unix.Mmap(-1, 0, seqRecord, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return nil, err
	}
	defer unix.Munmap(buf) // page-aligned, as O_DIRECT needs
	rng := rand.New(rand.NewPCG(3, 4))
	for i := range buf {
		buf[i] = byte(rng.Uint32())
	}
	path := filepath.Join(dir, "disk.data")
	defer os.Remove(path)
	f, direct, err := openDirect(path, buf)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	r := &Result{Metrics: map[string]float64{}, Info: map[string]string{"io": "O_DIRECT"}}
	if !direct {
		r.Info["io"] = "cached (the file system has no O_DIRECT)"
	}

	start := time.Now()
	for off := int64(0); off < size; off += seqRecord {
		if _, err := f.WriteAt(buf, off); err != nil {
			return nil, fmt.Errorf("write: %w", err)
		}
	}
	if err := f.Sync(); err != nil {
		return nil, err
	}
	r.Metrics["seq_write_mb_per_s"] = float64(size) / time.Since(start).Seconds() / 1e6
	start = time.Now()
	for off := int64(0); off < size; off += seqRecord {
		if _, err := f.ReadAt(buf, off); err != nil {
			return nil, fmt.Errorf("read: %w", err)
		}
	}
	r.Metrics["seq_read_mb_per_s"] = float64(size) / time.Since(start).Seconds() / 1e6
	blocks := size / randRecord
	small := buf[:randRecord]
	for _, op := range []string{"read", "write"} {
		ops := 0
		start = time.Now()
		for time.Since(start) < d {
			off := rng.Int64N(blocks) * randRecord
			if op == "read" {
				_, err = f.ReadAt(small, off)
			} else {
				_, err = f.WriteAt(small, off)
			}
			if err != nil {
				return nil, fmt.Errorf("random %s: %w", op, err)
			}
			ops++
		}
		r.Metrics["rand_"+op+"_iops"] = float64(ops) / time.Since(start).Seconds()
	}
	return r, nil
}

// openDirect creates path for O_DIRECT I/O if the file system takes it
// (some accept the flag and fail the I/O: one record is tried), else for
// cached I/O.
func openDirect(path string, buf []byte) (*os.File, bool, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_TRUNC|unix.O_DIRECT, 0o644)
	if err == nil {
		if _, err = f.WriteAt(buf, 0); err == nil {
			return f, true, nil
		}
		f.Close()
	}
	f, err = os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o644)
	return f, false, err
}
