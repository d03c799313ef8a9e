// Package fdpass passes open descriptors between processes over Unix
// sockets, as SCM_RIGHTS control messages (unix(7)): vessel's jail
// broker hands a jailed VMM the connections it dials for it, and
// vessel-runtime passes a container's streams and pty between its
// processes. The receiving side treats the sender as untrusted: it
// takes at most the descriptors it asked for, and a message that
// carries more (or whose control data the kernel truncated) is refused
// with every descriptor that did arrive closed.
package fdpass

import (
	"errors"
	"fmt"
	"net"
	"os"

	"golang.org/x/sys/unix"
)

// ErrTooMany is a message that carried more descriptors than the
// receiver takes.
var ErrTooMany = errors.New("fdpass: more descriptors than asked for")

// Send sends data and the files' descriptors (an *os.File, a pty's
// console.Console) in one message; on a stream socket, data the message
// did not take follows it.
func Send[F interface{ Fd() uintptr }](c *net.UnixConn, data []byte, files ...F) error {
	fds := make([]int, len(files))
	for i, f := range files {
		fds[i] = int(f.Fd())
	}
	oob := unix.UnixRights(fds...)
	n, oobn, err := c.WriteMsgUnix(data, oob, nil)
	if err != nil {
		return fmt.Errorf("fdpass: send: %w", err)
	}
	if oobn != len(oob) {
		return fmt.Errorf("fdpass: sent %d of %d control bytes", oobn, len(oob))
	}
	if n < len(data) {
		if _, err := c.Write(data[n:]); err != nil {
			return fmt.Errorf("fdpass: send: %w", err)
		}
	}
	return nil
}

// Recv reads one message of at most size bytes and the descriptors that
// came with it, at most max of them.
func Recv(c *net.UnixConn, size, max int) ([]byte, []*os.File, error) {
	buf := make([]byte, size)
	// Room for one more than max: a message with more is seen as such
	// rather than only as truncated.
	oob := make([]byte, unix.CmsgSpace(4*(max+1)))
	n, oobn, flags, _, err := c.ReadMsgUnix(buf, oob)
	if err != nil {
		return nil, nil, fmt.Errorf("fdpass: receive: %w", err)
	}
	var files []*os.File
	msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
	for i := range msgs {
		fds, ferr := unix.ParseUnixRights(&msgs[i])
		if ferr != nil {
			// Not SCM_RIGHTS (credentials were not asked for).
			err = errors.Join(err, ferr)
			continue
		}
		for _, fd := range fds {
			files = append(files, os.NewFile(uintptr(fd), "received"))
		}
	}
	if err == nil && (flags&unix.MSG_CTRUNC != 0 || len(files) > max) {
		err = fmt.Errorf("%w (%d)", ErrTooMany, max)
	}
	if err != nil {
		Close(files)
		return nil, nil, fmt.Errorf("fdpass: receive: %w", err)
	}
	return buf[:n], files, nil
}

// Close closes the files.
func Close(files []*os.File) {
	for _, f := range files {
		f.Close()
	}
}
