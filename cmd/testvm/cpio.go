package main

import (
	"bufio"
	"fmt"
	"io"
	"strings"
)

// cpioWriter writes the "newc" (SVR4, no CRC) cpio format that the Linux
// kernel unpacks into its initial rootfs: each entry is a 110-byte ASCII
// header ("070701" and thirteen 8-hex-digit fields), the NUL-terminated name
// padded so that the data starts on a 4-byte boundary, then the data padded
// to 4 bytes; the archive ends with an entry named "TRAILER!!!".
type cpioWriter struct {
	w      *bufio.Writer
	off    int64
	ino    uint32
	closed bool
}

// cpio mode bits (the values are the same as the Linux S_IF* constants).
const (
	cpioDir  = 0o040000
	cpioReg  = 0o100000
	cpioChr  = 0o020000
	cpioLink = 0o120000
)

func newCpioWriter(w io.Writer) *cpioWriter {
	return &cpioWriter{w: bufio.NewWriterSize(w, 64<<10), ino: 1}
}

func (c *cpioWriter) write(p []byte) error {
	n, err := c.w.Write(p)
	c.off += int64(n)
	return err
}

func (c *cpioWriter) pad() error {
	if r := c.off % 4; r != 0 {
		return c.write(make([]byte, 4-r))
	}
	return nil
}

// header writes one entry header and name. size is the length of the data
// that follows; rdevMajor/rdevMinor are only meaningful for device nodes.
func (c *cpioWriter) header(name string, mode uint32, size int64, rdevMajor, rdevMinor uint32) error {
	if c.closed {
		return fmt.Errorf("cpio: write after close")
	}
	name = strings.TrimPrefix(name, "/")
	if name == "" || strings.ContainsRune(name, 0) {
		return fmt.Errorf("cpio: bad entry name %q", name)
	}
	if size < 0 || size > 0xffffffff {
		return fmt.Errorf("cpio: %s: size %d does not fit the newc format", name, size)
	}
	nlink := uint32(1)
	if mode&0o170000 == cpioDir {
		nlink = 2
	}
	ino := c.ino
	c.ino++
	if name == "TRAILER!!!" {
		ino, nlink = 0, 1
	}
	hdr := fmt.Sprintf("070701%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x",
		ino, mode, 0, 0, nlink, 0, uint32(size), 0, 0, rdevMajor, rdevMinor, len(name)+1, 0)
	if err := c.write([]byte(hdr)); err != nil {
		return err
	}
	if err := c.write(append([]byte(name), 0)); err != nil {
		return err
	}
	return c.pad()
}

// Dir adds a directory.
func (c *cpioWriter) Dir(name string, perm uint32) error {
	return c.header(name, cpioDir|perm&0o7777, 0, 0, 0)
}

// CharDev adds a character device node.
func (c *cpioWriter) CharDev(name string, perm, major, minor uint32) error {
	return c.header(name, cpioChr|perm&0o7777, 0, major, minor)
}

// Symlink adds a symbolic link to target.
func (c *cpioWriter) Symlink(name, target string) error {
	if err := c.header(name, cpioLink|0o777, int64(len(target)), 0, 0); err != nil {
		return err
	}
	if err := c.write([]byte(target)); err != nil {
		return err
	}
	return c.pad()
}

// File adds a regular file of exactly size bytes read from r.
func (c *cpioWriter) File(name string, perm uint32, size int64, r io.Reader) error {
	if err := c.header(name, cpioReg|perm&0o7777, size, 0, 0); err != nil {
		return err
	}
	n, err := io.Copy(c.w, io.LimitReader(r, size))
	c.off += n
	if err != nil {
		return fmt.Errorf("cpio: %s: %w", name, err)
	}
	if n != size {
		return fmt.Errorf("cpio: %s: got %d bytes, want %d", name, n, size)
	}
	return c.pad()
}

// Close writes the trailer and flushes; it does not close the underlying writer.
func (c *cpioWriter) Close() error {
	if c.closed {
		return nil
	}
	if err := c.header("TRAILER!!!", 0, 0, 0, 0); err != nil {
		return err
	}
	c.closed = true
	return c.w.Flush()
}
