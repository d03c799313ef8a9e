package kvm

import (
	"os"
	"testing"

	"golang.org/x/sys/unix"
)

// TestCloseTwice closes each descriptor-holding type twice, with another
// file given the first one's descriptor number in between, as a busy
// process would: the second Close must leave that file alone. The types
// are built around a pipe, so the test needs no /dev/kvm.
func TestCloseTwice(t *testing.T) {
	for _, tc := range []struct {
		name string
		make func(fd int) interface{ Close() error }
	}{
		{"VCPU", func(fd int) interface{ Close() error } { return &VCPU{fd: fd, id: 0} }},
		{"VM", func(fd int) interface{ Close() error } { return &VM{fd: fd} }},
		{"System", func(fd int) interface{ Close() error } {
			return &System{f: os.NewFile(uintptr(fd), "kvm"), fd: fd}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var p [2]int
			if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
				t.Fatal(err)
			}
			defer unix.Close(p[1])
			c := tc.make(p[0])
			if err := c.Close(); err != nil {
				t.Fatalf("first Close: %v", err)
			}
			// Another file takes the closed descriptor's number.
			other, err := unix.Eventfd(0, unix.EFD_CLOEXEC)
			if err != nil {
				t.Fatal(err)
			}
			if other != p[0] {
				if err := unix.Dup3(other, p[0], unix.O_CLOEXEC); err != nil {
					t.Fatal(err)
				}
				unix.Close(other)
			}
			defer unix.Close(p[0])
			if err := c.Close(); err != nil {
				t.Errorf("second Close: %v, want nil", err)
			}
			if _, err := unix.FcntlInt(uintptr(p[0]), unix.F_GETFD, 0); err != nil {
				t.Fatalf("the second Close closed descriptor %d, now another file's: %v", p[0], err)
			}
		})
	}
}
