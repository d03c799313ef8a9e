package main

import (
	"bytes"
	"errors"
	"os"
	"strings"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/vesselvm/vessel/internal/fdpass"
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
				fdpass.Send(a, tc.first, files...)
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
			fdpass.Close(fds)
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

// TestCheckMemberNamespaces: a pod's container joins its sandbox's
// network namespace by path (the netns file or the sandbox PID's), and
// may join its ipc, uts and pid namespaces; annotations with no joined
// network namespace, or any other path, are refused.
func TestCheckMemberNamespaces(t *testing.T) {
	const pid, netns = 42, "/run/netns/cni-1"
	ns := func(typ specs.LinuxNamespaceType, path string) specs.LinuxNamespace {
		return specs.LinuxNamespace{Type: typ, Path: path}
	}
	for _, tc := range []struct {
		name    string
		sbNetns string
		nss     []specs.LinuxNamespace
		want    string // "" for accepted
	}{
		{"cri", netns, []specs.LinuxNamespace{ns(specs.PIDNamespace, ""), ns(specs.MountNamespace, ""),
			ns(specs.NetworkNamespace, netns), ns(specs.IPCNamespace, "/proc/42/ns/ipc"), ns(specs.UTSNamespace, "/proc/42/ns/uts")}, ""},
		{"sandbox pid's netns", "", []specs.LinuxNamespace{ns(specs.NetworkNamespace, "/proc/42/ns/net")}, ""},
		{"annotations alone", netns, []specs.LinuxNamespace{ns(specs.PIDNamespace, ""), ns(specs.NetworkNamespace, "")}, "must join its sandbox's network namespace"},
		{"no namespaces", netns, nil, "must join its sandbox's network namespace"},
		{"other netns", netns, []specs.LinuxNamespace{ns(specs.NetworkNamespace, "/run/netns/other")}, `network namespace path "/run/netns/other"`},
		{"empty sandbox netns is no match", "", []specs.LinuxNamespace{ns(specs.NetworkNamespace, "")}, "must join"},
		{"other pid's ipc", netns, []specs.LinuxNamespace{ns(specs.NetworkNamespace, netns), ns(specs.IPCNamespace, "/proc/43/ns/ipc")}, `ipc namespace path`},
		{"sandbox's mount namespace", netns, []specs.LinuxNamespace{ns(specs.NetworkNamespace, netns), ns(specs.MountNamespace, "/proc/42/ns/mnt")}, `mount namespace path`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := &specs.Spec{Linux: &specs.Linux{Namespaces: tc.nss}}
			if tc.nss == nil {
				s.Linux = nil
			}
			err := checkMemberNamespaces(s, pid, tc.sbNetns)
			switch {
			case tc.want == "" && err != nil:
				t.Errorf("refused: %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Errorf("got %v, want an error with %q", err, tc.want)
			}
		})
	}
}
