//go:build e2e

package e2e

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"math/rand/v2"
	"strings"
	"sync/atomic"
)

// The traffic tests (network and vsock) move checksummed streams: the
// sender writes deterministic pseudo-random bytes and closes its write
// side, the receiver hashes everything up to EOF and answers the hash on
// one line, and the sender compares it with its own.

// halfConn is a stream connection whose write side closes on its own
// (net.TCPConn, net.UnixConn, vsock.Conn).
type halfConn interface {
	io.ReadWriter
	CloseWrite() error
}

// sendStream writes n deterministic pseudo-random bytes (seeded by seed)
// to w, counting them in sent (if not nil), and returns their SHA-256.
func sendStream(w io.Writer, seed byte, n int, sent *atomic.Int64) (string, error) {
	src := rand.NewChaCha8([32]byte{seed})
	h := sha256.New()
	buf := make([]byte, 64<<10)
	for n > 0 {
		b := buf[:min(n, len(buf))]
		src.Read(b)
		h.Write(b)
		k, err := w.Write(b)
		if sent != nil {
			sent.Add(int64(k))
		}
		if err != nil {
			return "", err
		}
		n -= len(b)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// sendChecked sends a stream of n bytes on c, closes the write side and
// checks the hash the peer answers. The peer must not have sent anything
// else that is still unread.
func sendChecked(c halfConn, seed byte, n int, sent *atomic.Int64) error {
	want, err := sendStream(c, seed, n, sent)
	if err != nil {
		return fmt.Errorf("send: %w", err)
	}
	if err := c.CloseWrite(); err != nil {
		return fmt.Errorf("close the write side: %w", err)
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return fmt.Errorf("no hash from the peer: %w", err)
	}
	if got := strings.TrimSpace(line); got != want {
		return fmt.Errorf("peer hashed %s, %d bytes sent hash to %s", got, n, want)
	}
	return nil
}

// answerHash reads c to EOF, counting the bytes in got (if not nil), and
// answers their SHA-256. It returns how many bytes it read.
func answerHash(c io.ReadWriter, got *atomic.Int64) (int64, error) {
	h := sha256.New()
	var w io.Writer = h
	if got != nil {
		w = io.MultiWriter(h, counter{got})
	}
	n, err := io.Copy(w, c)
	if err != nil {
		return n, err
	}
	_, err = fmt.Fprintf(c, "%s\n", hex.EncodeToString(h.Sum(nil)))
	return n, err
}

// counter counts the bytes written through it.
type counter struct{ n *atomic.Int64 }

func (c counter) Write(p []byte) (int, error) {
	c.n.Add(int64(len(p)))
	return len(p), nil
}
