package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vesselvm/vessel/vmm"
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

// TestWireFromHostileVMM: what a guest-owned jailed VMM process sends
// vessel is bounded (an endless message fails to decode, it does not grow
// vessel's memory) and its text reaches the user cleaned: no escape
// sequences, at most maxTailLines console lines.
func TestWireFromHostileVMM(t *testing.T) {
	// An endless result: a console line that never ends.
	endless := io.MultiReader(strings.NewReader(`{"Result":{"ConsoleTail":["`), &repeatReader{b: 'A'})
	var m wireMsg
	if err := wireDecoder(endless).Decode(&m); err == nil {
		t.Fatal("an endless message decoded")
	}
	// A result within bounds, with escape sequences and many lines.
	r := wireResult{Detail: "crash\x1b]0;owned\x07\x1b[2J", ConsoleTail: make([]string, 1000)}
	for i := range r.ConsoleTail {
		r.ConsoleTail[i] = fmt.Sprintf("line %d \x1b[31mred\x1b[0m", i)
	}
	b, err := json.Marshal(wireMsg{Result: &r})
	if err != nil {
		t.Fatal(err)
	}
	m = wireMsg{}
	if err := wireDecoder(bytes.NewReader(b)).Decode(&m); err != nil || m.Result == nil {
		t.Fatalf("decode: %v", err)
	}
	res := m.Result.result()
	if strings.ContainsRune(res.Detail, 0x1b) || strings.ContainsRune(res.Detail, 0x07) {
		t.Errorf("Detail %q keeps control characters", res.Detail)
	}
	if len(res.ConsoleTail) != maxTailLines || !strings.HasPrefix(res.ConsoleTail[maxTailLines-1], "line 999 ") {
		t.Errorf("console tail: %d lines, last %q; want the last %d", len(res.ConsoleTail), res.ConsoleTail[len(res.ConsoleTail)-1], maxTailLines)
	}
	for _, l := range res.ConsoleTail {
		if strings.ContainsRune(l, 0x1b) {
			t.Errorf("console line %q keeps an escape", l)
		}
	}
}

// repeatReader reads b forever.
type repeatReader struct{ b byte }

func (r *repeatReader) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = r.b
	}
	return len(p), nil
}

// A jailed VMM's refused snapshot is vmm.ErrSnapshot on vessel's side (a
// run then drops the template and boots); other errors are not.
func TestWireErrorSnapshot(t *testing.T) {
	refused := (&wireError{Code: exitUsage, Msg: "unusable snapshot: \x1b[2Jcorrupt", Snapshot: true}).err()
	if !errors.Is(refused, vmm.ErrSnapshot) || strings.Contains(refused.Error(), "\x1b") {
		t.Errorf("refused snapshot: %q, Is ErrSnapshot %v", refused, errors.Is(refused, vmm.ErrSnapshot))
	}
	if other := (&wireError{Code: exitInternal, Msg: "unusable snapshot (said the guest)"}).err(); errors.Is(other, vmm.ErrSnapshot) {
		t.Error("an error that only says so is ErrSnapshot")
	}
}
