package vmmproc

import (
	"errors"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"testing"
)

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
	ours, theirs, err := DialPair()
	if err != nil {
		t.Fatal(err)
	}
	go ServeDials(ours, uds)
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
