package compare

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"time"
)

// network measures a TCP stream from the environment to a socket on the
// host's loopback: the host process and runc's container reach it
// directly, vessel's guest through its user network.
func (r *runner) network(ctx context.Context, e env, w workload) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		r.fail(w, e.name(), err.Error())
		return
	}
	defer ln.Close()
	go sink(ln)
	lim := r.limits(w)
	lim.Network = true
	port := ln.Addr().(*net.TCPAddr).Port
	r.record(ctx, e, w, []string{"net-send", "-addr", e.hostAddr(port), "-time", r.sz.Time}, lim)
	if c := r.cell(w.Name, "mb_per_s", e.name()); e.name() == EnvVessel {
		c.Info = "the guest's user network (NAT in the vessel-usernet helper)"
	}
}

// sink counts what each connection sends and, at its end, answers with
// the count (8 bytes, big-endian).
func sink(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			n, _ := io.Copy(io.Discard, c)
			var b [8]byte
			binary.BigEndian.PutUint64(b[:], uint64(n))
			c.Write(b[:])
		}()
	}
}

// freePort returns a TCP port free on the host's loopback just now.
func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// http starts the workload's HTTP server in the environment, published
// on the host's loopback, and loads it with keep-alive GETs.
func (r *runner) http(ctx context.Context, e env, w workload) {
	port, err := freePort()
	if err != nil {
		r.fail(w, e.name(), err.Error())
		return
	}
	lim := r.limits(w)
	lim.Publish = port
	in, err := e.start(ctx, lim, []string{"http-serve", "-port", strconv.Itoa(port)})
	if err != nil {
		if !r.interrupted(ctx) {
			r.fail(w, e.name(), err.Error())
		}
		return
	}
	defer in.stop()
	url := fmt.Sprintf("http://127.0.0.1:%d/", port)
	if err := waitHTTP(ctx, url, 3*time.Minute); err != nil {
		if !r.interrupted(ctx) {
			r.fail(w, e.name(), err.Error())
		}
		return
	}
	d, _ := time.ParseDuration(r.sz.Time)
	m, err := load(ctx, url, r.sz.Clients, d)
	if err != nil {
		if !r.interrupted(ctx) {
			msg := err.Error()
			// A request that failed mid-load: where was the VM?
			if in.describe != nil {
				if d := in.describe(); d != "" {
					msg += " (" + d + ")"
				}
			}
			r.fail(w, e.name(), msg)
		}
		return
	}
	r.add(w, e.name(), m, "")
	if e.name() == EnvVessel {
		r.cell(w.Name, "requests_per_s", e.name()).Info = "published with -p through the user network"
	}
}

// waitHTTP polls url until it answers.
func waitHTTP(ctx context.Context, url string, within time.Duration) error {
	deadline := time.Now().Add(within)
	c := &http.Client{Timeout: 5 * time.Second}
	for {
		resp, err := c.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			err = fmt.Errorf("status %s", resp.Status)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the HTTP server did not answer within %v: %v", within, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// load runs clients keep-alive clients against url for d and returns
// the request rate and the median and 99th percentile latencies.
func load(ctx context.Context, url string, clients int, d time.Duration) (map[string]float64, error) {
	tr := &http.Transport{MaxIdleConnsPerHost: clients}
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr, Timeout: 30 * time.Second}
	var mu sync.Mutex
	var lat []float64
	var firstErr error
	var wg sync.WaitGroup
	start := time.Now()
	for i := 0; i < clients; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Since(start) < d && ctx.Err() == nil {
				t := time.Now()
				resp, err := c.Get(url)
				if err == nil {
					_, err = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
				mu.Lock()
				if err != nil {
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
					return
				}
				lat = append(lat, float64(time.Since(t).Microseconds())/1000)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	el := time.Since(start).Seconds()
	if firstErr != nil {
		return nil, firstErr
	}
	if len(lat) == 0 {
		return nil, fmt.Errorf("no request completed in %v", d)
	}
	slices.Sort(lat)
	pct := func(p float64) float64 { return lat[min(len(lat)-1, int(p*float64(len(lat))))] }
	return map[string]float64{"requests_per_s": float64(len(lat)) / el, "p50_ms": pct(0.5), "p99_ms": pct(0.99)}, nil
}
