package main

import (
	"bytes"
	"errors"
	"os"
	"strings"
	"testing"

	"github.com/vesselvm/vessel/vmm"
)

// TestReadCtl: a control request with its descriptors, split over
// several writes, is read whole; one with too many descriptors, one
// larger than maxCtl, and one cut short are refused, and no descriptor
// it brought stays open.
func TestReadCtl(t *testing.T) {
	devNull := func() *os.File {
		f, err := os.Open(os.DevNull)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.Close() })
		return f
	}
	req := []byte(`{"op":"member","container":"c1","member":{"trees":[{"name":"root"}]}}`)
	for _, tc := range []struct {
		name    string
		first   []byte
		rest    [][]byte
		nfds    int
		wantErr string
	}{
		{"whole", req, nil, 4, ""},
		{"split", req[:10], [][]byte{req[10:40], req[40:]}, 4, ""},
		{"too many descriptors", req, nil, 3 + maxMemberTrees + 1, "descriptors"},
		{"too large", []byte(`{"op":"` + strings.Repeat("x", 100)), [][]byte{bytes.Repeat([]byte("x"), maxCtl)}, 1, "control request"},
		{"cut short", req[:30], nil, 2, "control request"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, b := unixPair(t)
			var files []*os.File
			for i := 0; i < tc.nfds; i++ {
				files = append(files, devNull())
			}
			go func() {
				sendFds(a, tc.first, files)
				for _, r := range tc.rest {
					a.Write(r)
				}
				a.CloseWrite()
			}()
			got, fds, err := readCtl(b)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) || fds != nil {
					t.Errorf("err %v, %d descriptors; want an error with %q and none", err, len(fds), tc.wantErr)
				}
				return
			}
			if err != nil || got.Op != opMember || got.Container != "c1" || got.Member == nil || len(fds) != tc.nfds {
				t.Errorf("%+v, %d descriptors, %v", got, len(fds), err)
			}
			closeFiles(fds)
		})
	}
}

// TestGuestFailureClean: what the guest wrote on its console reaches
// create's error line without control characters or escape sequences.
func TestGuestFailureClean(t *testing.T) {
	p := &vmmProc{ended: make(chan struct{})}
	close(p.ended)
	p.result = vmm.Result{Kind: vmm.ExitPanic, Detail: "Kernel panic\x1b]0;pwned\x07",
		ConsoleTail: []string{"\x1b[2J\x1b[Hlast line\r\x00"}}
	msg := p.guestFailure("boot", errors.New("agent gone")).Error()
	if strings.ContainsAny(msg, "\x1b\x07\r\x00") {
		t.Errorf("error line %q carries the guest's control characters", msg)
	}
	if !strings.Contains(msg, "last line") || !strings.Contains(msg, "Kernel panic") {
		t.Errorf("error line %q lost the guest's words", msg)
	}
}
