package rootfs

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
)

// blockSize is ext4's block size as tar2ext4 writes it, the unit of the
// holes left in the disk file.
const blockSize = 4096

var zeroBlock [blockSize]byte

// sparseFile is the io.ReadWriteSeeker tar2ext4 writes a disk through.
// tar2ext4 writes every byte of the file system, the zeros of a sparse
// file's holes and of unused space included; sparseFile skips each block
// of zeros at or beyond the end of what the file holds so far (where it
// reads as zeros anyway), so those blocks stay holes in the host file.
// Zeros written over data already there are written. finish sets the
// file's length to the furthest offset written.
type sparseFile struct {
	f    *os.File
	pos  int64 // the writer's offset
	size int64 // the file's length: the end of the data written
	end  int64 // the furthest offset written, zeros included
}

// Write writes p at the current offset, leaving out the blocks of zeros
// beyond the file's length, and coalescing the rest into few writes.
func (s *sparseFile) Write(p []byte) (int, error) {
	done := 0
	runStart, runLen := s.pos, 0 // bytes of p[done-runLen:done] to write at runStart
	flush := func() error {
		if runLen == 0 {
			return nil
		}
		if _, err := s.f.WriteAt(p[done-runLen:done], runStart); err != nil {
			return err
		}
		s.size = max(s.size, runStart+int64(runLen))
		runLen = 0
		return nil
	}
	for done < len(p) {
		n := min(blockSize-int(s.pos%blockSize), len(p)-done)
		chunk := p[done : done+n]
		if runLen == 0 {
			runStart = s.pos
		}
		// The file's length once the pending run is written.
		length := s.size
		if runLen > 0 {
			length = max(length, runStart+int64(runLen))
		}
		if s.pos >= length && bytes.Equal(chunk, zeroBlock[:n]) {
			if err := flush(); err != nil {
				return done, err
			}
		} else {
			runLen += n
		}
		done += n
		s.pos += int64(n)
		s.end = max(s.end, s.pos)
	}
	if err := flush(); err != nil {
		return done - runLen, err
	}
	return done, nil
}

// Read reads at the current offset; the holes left at the end read as
// zeros, up to the furthest offset written.
func (s *sparseFile) Read(p []byte) (int, error) {
	n, err := s.f.ReadAt(p, s.pos)
	if n < len(p) && errors.Is(err, io.EOF) && s.pos+int64(n) < s.end {
		z := min(int64(len(p)-n), s.end-s.pos-int64(n))
		clear(p[n : n+int(z)])
		n += int(z)
		err = nil
	}
	s.pos += int64(n)
	return n, err
}

// Seek sets the offset; io.SeekEnd is relative to the furthest offset
// written.
func (s *sparseFile) Seek(off int64, whence int) (int64, error) {
	switch whence {
	case io.SeekStart:
	case io.SeekCurrent:
		off += s.pos
	case io.SeekEnd:
		off += s.end
	default:
		return s.pos, fmt.Errorf("rootfs: seek: whence %d", whence)
	}
	if off < 0 {
		return s.pos, fmt.Errorf("rootfs: seek to %d", off)
	}
	s.pos = off
	return off, nil
}

// finish extends the file over the holes left at its end.
func (s *sparseFile) finish() error {
	if s.end > s.size {
		if err := s.f.Truncate(s.end); err != nil {
			return fmt.Errorf("rootfs: %w", err)
		}
		s.size = s.end
	}
	return nil
}
