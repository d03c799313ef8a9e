package vmmproc

import "io"

// escapeReader forwards terminal input to the guest and watches for the
// escape sequence Ctrl-A X (as QEMU's -nographic console does), which
// calls quit and ends the input. Ctrl-A Ctrl-A sends one Ctrl-A.
type escapeReader struct {
	r       io.Reader
	quit    func()
	pending bool // the previous byte was Ctrl-A
	done    bool
}

const ctrlA = 0x01

func (e *escapeReader) Read(p []byte) (int, error) {
	if e.done {
		return 0, io.EOF
	}
	// Read one byte less than p holds: a Ctrl-A pending from the last
	// read may add a byte to the output.
	if len(p) < 2 {
		return 0, nil
	}
	buf := make([]byte, len(p)-1)
	n, err := e.r.Read(buf)
	out := 0
	for _, b := range buf[:n] {
		if e.pending {
			e.pending = false
			switch b {
			case 'x', 'X':
				e.done = true
				e.quit()
				return out, io.EOF
			case ctrlA:
				p[out] = ctrlA
				out++
			default:
				// Not an escape: pass both bytes through.
				p[out], p[out+1] = ctrlA, b
				out += 2
			}
			continue
		}
		if b == ctrlA {
			e.pending = true
			continue
		}
		p[out] = b
		out++
	}
	return out, err
}

var _ io.Reader = (*escapeReader)(nil)
