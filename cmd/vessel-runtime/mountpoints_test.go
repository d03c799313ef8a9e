package main

import (
	"os"
	"path/filepath"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/vesselvm/vessel/guest/agentproto"
)

func TestMakeMountpoints(t *testing.T) {
	for _, tc := range []struct {
		name   string
		mounts []specs.Mount
		binds  []bind
		// want maps paths below the rootfs to "file", "dir" or "" (absent).
		want map[string]string
		// outside are paths below the test's directory (beside the
		// rootfs) that must not appear.
		outside []string
		wantErr bool
	}{
		{
			name: "containerd's CRI sandbox",
			mounts: []specs.Mount{
				{Destination: "/proc", Type: "proc"},
				{Destination: "/dev", Type: "tmpfs"},
				{Destination: "/dev/shm", Type: "bind", Options: []string{"rbind", "ro"}},
				{Destination: "/etc/resolv.conf", Type: "bind", Options: []string{"rbind", "ro"}},
				{Destination: "/run/secrets/x", Type: "bind", Options: []string{"rbind"}},
			},
			binds: []bind{
				{vol: agentproto.Volume{Destination: "/dev/shm"}},
				{file: true, vol: agentproto.Volume{Destination: "/etc/resolv.conf"}},
				{vol: agentproto.Volume{Destination: "/run/secrets/x"}},
			},
			want: map[string]string{"proc": "dir", "dev": "dir", "dev/shm": "", "etc/resolv.conf": "file",
				"run/secrets/x": "dir"},
		},
		{
			name:   "an existing mount point is left as it is",
			mounts: []specs.Mount{{Destination: "/etc/hosts", Type: "bind"}},
			binds:  []bind{{vol: agentproto.Volume{Destination: "/etc/hosts"}}},
			want:   map[string]string{"etc/hosts": "file"},
		},
		{
			name:    "an absolute symbolic link resolves in the rootfs",
			mounts:  []specs.Mount{{Destination: "/abs/escaped", Type: "bind"}},
			binds:   []bind{{file: true, vol: agentproto.Volume{Destination: "/abs/escaped"}}},
			want:    map[string]string{"escaped": "file"},
			outside: []string{"escaped"},
		},
		{
			name:    "a relative symbolic link cannot climb out",
			mounts:  []specs.Mount{{Destination: "/up/escaped", Type: "tmpfs"}},
			want:    map[string]string{"escaped": "dir"},
			outside: []string{"escaped"},
		},
		{
			name:    "a symbolic link as the mount point is not followed",
			mounts:  []specs.Mount{{Destination: "/dangling", Type: "bind"}},
			binds:   []bind{{file: true, vol: agentproto.Volume{Destination: "/dangling"}}},
			outside: []string{"created-through-link"},
			wantErr: true,
		},
		{
			name:   "below a mount that covers the rootfs",
			mounts: []specs.Mount{{Destination: "/", Type: "tmpfs"}, {Destination: "/x", Type: "tmpfs"}},
			want:   map[string]string{"x": ""},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			top := t.TempDir()
			rootfs := filepath.Join(top, "rootfs")
			for _, d := range []string{"proc", "dev", "etc"} {
				if err := os.MkdirAll(filepath.Join(rootfs, d), 0o755); err != nil {
					t.Fatal(err)
				}
			}
			os.WriteFile(filepath.Join(rootfs, "etc/hosts"), []byte("kept\n"), 0o644)
			os.Symlink("/", filepath.Join(rootfs, "abs"))
			os.Symlink("../..", filepath.Join(rootfs, "up"))
			os.Symlink(filepath.Join(top, "created-through-link"), filepath.Join(rootfs, "dangling"))
			b := &bundle{rootfs: rootfs, spec: &specs.Spec{Root: &specs.Root{Path: "rootfs", Readonly: true},
				Mounts: tc.mounts}, binds: tc.binds}
			err := b.makeMountpoints()
			if (err != nil) != tc.wantErr {
				t.Fatalf("makeMountpoints: %v, want error %v", err, tc.wantErr)
			}
			for p, want := range tc.want {
				fi, err := os.Lstat(filepath.Join(rootfs, p))
				got := ""
				switch {
				case err != nil:
				case fi.IsDir():
					got = "dir"
				case fi.Mode().IsRegular():
					got = "file"
				default:
					got = fi.Mode().String()
				}
				if got != want {
					t.Errorf("%s: %q, want %q", p, got, want)
				}
			}
			for _, p := range tc.outside {
				if _, err := os.Lstat(filepath.Join(top, p)); err == nil {
					t.Errorf("%s was created outside the rootfs", p)
				}
			}
			if b, _ := os.ReadFile(filepath.Join(rootfs, "etc/hosts")); string(b) != "kept\n" {
				t.Errorf("etc/hosts: %q, want it kept", b)
			}
		})
	}
}
