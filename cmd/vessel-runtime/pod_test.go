package main

import (
	"bytes"
	"os"
	"strings"
	"testing"
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
