package virtio

import (
	"errors"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestDialSocket: a guest's connection reaches a listening socket (its
// path longer than sun_path holds, too), and not one behind a symbolic
// link another user could plant beside the vsock path (session 9
// review, F14), nor a file that is no socket.
func TestDialSocket(t *testing.T) {
	dir := t.TempDir()
	long := filepath.Join(dir, strings.Repeat("d", 100))
	if err := os.Mkdir(long, 0o700); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(long, "v.sock_5000")
	// sun_path is too short for the long name: bound through the
	// directory's descriptor.
	d, err := os.Open(long)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	ln, err := net.Listen("unix", "/proc/self/fd/"+strconv.Itoa(int(d.Fd()))+"/v.sock_5000")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Write([]byte("hi"))
			c.Close()
		}
	}()
	c, err := DialSocket(sock)
	if err != nil {
		t.Fatalf("DialSocket(%d-byte path): %v", len(sock), err)
	}
	b := make([]byte, 2)
	if _, err := c.Read(b); err != nil || string(b) != "hi" {
		t.Errorf("read %q, %v", b, err)
	}
	c.Close()
	link := filepath.Join(dir, "v.sock_5001")
	if err := os.Symlink(sock, link); err != nil {
		t.Fatal(err)
	}
	if c, err := DialSocket(link); err == nil {
		c.Close()
		t.Error("DialSocket followed a symbolic link")
	}
	file := filepath.Join(dir, "v.sock_5002")
	os.WriteFile(file, nil, 0o600)
	if _, err := DialSocket(file); !errors.Is(err, ErrNotSocket) {
		t.Errorf("DialSocket of a file: %v, want ErrNotSocket", err)
	}
}
