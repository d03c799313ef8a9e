package devices

// TailLines is how many lines of guest console output a Serial keeps for
// Serial.Tail (the VMM shows them when reporting a guest failure).
const TailLines = 40

// TailMaxLineLen bounds one captured line, in bytes: a longer run of output
// without a newline is cut into several lines, so a guest cannot make the
// capture grow without bound.
const TailMaxLineLen = 512

// lineRing keeps the last TailLines complete lines of a byte stream plus the
// line being written. '\r' is dropped (the Linux console ends lines with
// "\r\n"); other bytes are kept as they are. Not safe for concurrent use.
type lineRing struct {
	lines [TailLines]string
	next  int // index the next complete line goes to
	n     int // number of complete lines held, <= TailLines
	cur   []byte
}

func (r *lineRing) write(p []byte) {
	for _, c := range p {
		switch c {
		case '\n':
			r.push()
		case '\r':
		default:
			r.cur = append(r.cur, c)
			if len(r.cur) >= TailMaxLineLen {
				r.push()
			}
		}
	}
}

func (r *lineRing) push() {
	r.lines[r.next] = string(r.cur)
	r.next = (r.next + 1) % TailLines
	if r.n < TailLines {
		r.n++
	}
	r.cur = r.cur[:0]
}

// tail returns up to the last n lines, oldest first; a non-empty unfinished
// line counts as the last one.
func (r *lineRing) tail(n int) []string {
	if n <= 0 {
		return nil
	}
	all := make([]string, 0, r.n+1)
	for i := 0; i < r.n; i++ {
		all = append(all, r.lines[(r.next-r.n+i+TailLines)%TailLines])
	}
	if len(r.cur) > 0 {
		all = append(all, string(r.cur))
	}
	if len(all) > n {
		all = all[len(all)-n:]
	}
	return all
}
