package main

import (
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"
)

// netSend sends a TCP stream to addr for d, then half-closes; the
// receiver answers with the bytes it got, which give the rate.
func netSend(addr string, d time.Duration) (*Result, error) {
	c, err := net.DialTimeout("tcp", addr, 30*time.Second)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	buf := make([]byte, 64<<10)
	start := time.Now()
	for time.Since(start) < d {
		if _, err := c.Write(buf); err != nil {
			return nil, fmt.Errorf("send: %w", err)
		}
	}
	if err := c.(*net.TCPConn).CloseWrite(); err != nil {
		return nil, err
	}
	var got [8]byte
	if _, err := io.ReadFull(c, got[:]); err != nil {
		return nil, fmt.Errorf("the receiver's count: %w", err)
	}
	el := time.Since(start).Seconds()
	return &Result{Metrics: map[string]float64{"mb_per_s": float64(binary.BigEndian.Uint64(got[:])) / el / 1e6}}, nil
}

// httpBody is what the HTTP workload serves: a small page.
var httpBody = []byte("<html><body>vessel bench compare</body></html>\n")

// httpServe serves GET / on port until killed.
func httpServe(port int) error {
	h := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/html")
		w.Write(httpBody)
	})
	return http.ListenAndServe(fmt.Sprintf(":%d", port), h)
}
