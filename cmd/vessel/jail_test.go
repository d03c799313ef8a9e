package main

import (
	"errors"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"testing"
)

func TestJailIDs(t *testing.T) {
	for _, tc := range []struct {
		in       string
		uid, gid int
		ok       bool
	}{
		{"65534:65534", 65534, 65534, true},
		{"1000", 1000, 1000, true},
		{"1000:2000", 1000, 2000, true},
		{"0", 0, 0, false}, // root is no jail user
		{"1000:0", 0, 0, false},
		{"-1", 0, 0, false},
		{"nobody", 0, 0, false},
		{"1:2:3", 0, 0, false},
		{"", 0, 0, false},
		{"4294967295", 0, 0, false},
	} {
		uid, gid, err := jailFlags{user: tc.in}.ids()
		if (err == nil) != tc.ok || tc.ok && (uid != tc.uid || gid != tc.gid) {
			t.Errorf("ids(%q) = %d, %d, %v; want %d, %d, ok %v", tc.in, uid, gid, err, tc.uid, tc.gid, tc.ok)
		}
	}
}

// TestVsockBroker: the jailed VMM's dials of <uds>_<port> go through
// vessel, which passes back the connection, or says nobody listens.
func TestVsockBroker(t *testing.T) {
	dir := t.TempDir()
	uds := filepath.Join(dir, "v.sock")
	ln, err := net.Listen("unix", uds+"_5")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ours, theirs, err := dialPair()
	if err != nil {
		t.Fatal(err)
	}
	go serveVsockDials(ours, uds)
	b, err := newVsockBroker(theirs)
	if err != nil {
		t.Fatal(err)
	}
	defer b.c.Close()
	for _, tc := range []struct {
		port   uint32
		listen bool
	}{{5, true}, {6, false}, {5, true}} {
		c, err := b.dial(tc.port)
		if !tc.listen {
			if !errors.Is(err, errNoListener) {
				t.Errorf("dial(%d) with nobody listening: %v, want errNoListener", tc.port, err)
			}
			continue
		}
		if err != nil {
			t.Fatalf("dial(%d): %v", tc.port, err)
		}
		s, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprint(c, "hello")
		c.CloseWrite()
		got, err := io.ReadAll(s)
		if err != nil || string(got) != "hello" {
			t.Errorf("through the passed connection: %q, %v", got, err)
		}
		c.Close()
		s.Close()
	}
}
