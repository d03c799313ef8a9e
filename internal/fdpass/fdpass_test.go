package fdpass

import (
	"bytes"
	"errors"
	"net"
	"os"
	"testing"

	"golang.org/x/sys/unix"
)

// pair is a connected pair of Unix sockets of the type.
func pair(t *testing.T, typ int) (*net.UnixConn, *net.UnixConn) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, typ|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	conn := func(fd int) *net.UnixConn {
		f := os.NewFile(uintptr(fd), "pair")
		defer f.Close()
		c, err := net.FileConn(f)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c.(*net.UnixConn)
	}
	return conn(fds[0]), conn(fds[1])
}

// openFds counts this process's open descriptors.
func openFds(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// TestSendRecv: the data and the descriptors arrive together; a sender
// that passes more descriptors than the receiver takes (a hostile peer
// filling the receiver's descriptor table) is refused, and none of its
// descriptors stays open in the receiver.
func TestSendRecv(t *testing.T) {
	for _, tc := range []struct {
		name    string
		typ     int
		send    int
		max     int
		wantErr error
	}{
		{"none", unix.SOCK_STREAM, 0, 3, nil},
		{"one", unix.SOCK_STREAM, 1, 3, nil},
		{"three", unix.SOCK_STREAM, 3, 3, nil},
		{"one more", unix.SOCK_STREAM, 4, 3, ErrTooMany},
		{"many more", unix.SOCK_STREAM, 64, 1, ErrTooMany},
		{"seqpacket", unix.SOCK_SEQPACKET, 1, 1, nil},
		{"seqpacket, too many", unix.SOCK_SEQPACKET, 2, 1, ErrTooMany},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, b := pair(t, tc.typ)
			var files []*os.File
			for i := 0; i < tc.send; i++ {
				r, w, err := os.Pipe()
				if err != nil {
					t.Fatal(err)
				}
				defer r.Close()
				defer w.Close()
				files = append(files, w)
			}
			before := openFds(t)
			data := []byte(`{"exec":"exec1"}` + "\n")
			if err := Send(a, data, files...); err != nil {
				t.Fatal(err)
			}
			got, recv, err := Recv(b, 4096, tc.max)
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("Recv: %v, want %v", err, tc.wantErr)
				}
				if n := openFds(t); n != before {
					t.Errorf("%d descriptors open after a refused message, %d before", n, before)
				}
				return
			}
			if err != nil {
				t.Fatalf("Recv: %v", err)
			}
			defer Close(recv)
			if !bytes.Equal(got, data) || len(recv) != tc.send {
				t.Errorf("got %q and %d descriptors, want %q and %d", got, len(recv), data, tc.send)
			}
		})
	}
}

// TestRecvNotRights: a control message that is not SCM_RIGHTS (a
// sender's credentials, which the receiver did not ask for) is refused.
func TestRecvNotRights(t *testing.T) {
	a, b := pair(t, unix.SOCK_SEQPACKET)
	f, err := b.File()
	if err != nil {
		t.Fatal(err)
	}
	err = unix.SetsockoptInt(int(f.Fd()), unix.SOL_SOCKET, unix.SO_PASSCRED, 1)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.Write([]byte{0}); err != nil {
		t.Fatal(err)
	}
	if _, files, err := Recv(b, 1, 1); err == nil {
		Close(files)
		t.Fatal("Recv took a credentials message")
	}
}
