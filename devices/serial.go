package devices

import (
	"errors"
	"io"
	"sync"
)

// PC COM1 placement, as the VMM inserts the guest console UART.
const (
	// COM1Base is the port I/O base of COM1.
	COM1Base = 0x3F8
	// COM1IRQ is COM1's ISA interrupt line (GSI).
	COM1IRQ = 4
	// SerialSize is the size of a UART's register window (8 byte-wide
	// registers).
	SerialSize = 8
	// SerialFIFOSize is the depth of the receive FIFO that Enqueue fills.
	// The 16550A has a 16-byte FIFO; 64 bytes (as Firecracker's serial)
	// lets a pasted line through with fewer round trips, and no guest
	// driver depends on the exact depth.
	SerialFIFOSize = 64
)

// ErrRxFull is returned by Serial.Enqueue when the receive FIFO could not
// take all of the input, or when no guest driver listens (IER's receive
// interrupt is off); retry the rest later (see Serial.RxDrained).
var ErrRxFull = errors.New("devices: serial receive FIFO full")

// Register offsets from the UART base (16550A datasheet, table 2; Linux
// include/uapi/linux/serial_reg.h). Offsets 0 and 1 are the divisor latch
// when LCR.DLAB is set.
const (
	regData = 0 // RBR (read) / THR (write); DLL when DLAB=1
	regIER  = 1 // interrupt enable; DLM when DLAB=1
	regIIR  = 2 // interrupt identification (read) / FCR (write)
	regLCR  = 3 // line control
	regMCR  = 4 // modem control
	regLSR  = 5 // line status
	regMSR  = 6 // modem status
	regSCR  = 7 // scratch
)

// Register bits (names as in Linux serial_reg.h).
const (
	ierRDI   = 0x01 // receive data available interrupt
	ierTHRI  = 0x02 // transmitter holding register empty interrupt
	ierRLSI  = 0x04 // receiver line status interrupt
	ierMSI   = 0x08 // modem status interrupt
	ierValid = 0x0f // bits 4-7 are always zero on a 16550A; Linux autoconfig checks this

	iirNoInt  = 0x01 // no interrupt pending
	iirMSI    = 0x00 // modem status changed (lowest priority)
	iirTHRI   = 0x02 // transmitter holding register empty
	iirRDI    = 0x04 // receive data available
	iirRLSI   = 0x06 // receiver line status (highest priority)
	iirFIFOEn = 0xc0 // FIFOs enabled (FCR bit 0): makes Linux detect a 16550A

	fcrEnable  = 0x01 // enable FIFOs
	fcrClearRx = 0x02 // clear receive FIFO
	lcrDLAB    = 0x80 // divisor latch access

	mcrDTR   = 0x01
	mcrRTS   = 0x02
	mcrOut1  = 0x04
	mcrOut2  = 0x08
	mcrLoop  = 0x10
	mcrValid = 0x1f // bits 5-7 read as zero on a 16550A

	lsrDR   = 0x01 // data ready
	lsrOE   = 0x02 // overrun error
	lsrTHRE = 0x20 // transmitter holding register empty
	lsrTEMT = 0x40 // transmitter empty

	msrDCTS = 0x01 // delta CTS
	msrDDSR = 0x02 // delta DSR
	msrTERI = 0x04 // trailing edge of RI
	msrDDCD = 0x08 // delta DCD
	msrCTS  = 0x10
	msrDSR  = 0x20
	msrRI   = 0x40
	msrDCD  = 0x80

	// msrIdle is what the modem lines read outside loopback: a connected
	// terminal (carrier, data set ready, clear to send).
	msrIdle = msrDCD | msrDSR | msrCTS
)

// Serial is an 8250/16550A UART as Linux's 8250 driver sees it on a PC
// (drivers/tty/serial/8250/8250_port.c autoconfig detects it as a 16550A).
// Transmission is instantaneous: THR writes go straight to the output
// writer, so LSR always reports THRE|TEMT. Host input is queued with
// Enqueue into a receive FIFO of SerialFIFOSize bytes.
//
// Interrupts follow the 16550A datasheet ("Interrupt Control Functions"
// table): IIR reports the highest-priority pending, enabled source — line
// status (overrun) 0x06, receive data 0x04, THR empty 0x02, modem status
// 0x00 — or 0x01 for none, with bits 7:6 set while FCR has enabled the
// FIFOs. The THR-empty source is set when IER.THRI goes from 0 to 1 (THR is
// always empty) and after each THR write, and is cleared by reading IIR
// while it is the reported source or by writing THR; Linux's
// serial8250_do_startup tests exactly this ("Real 16550s should always
// reassert this interrupt whenever the transmitter is idle and the
// interrupt is enabled"). The interrupt output is modelled as a level
// (some enabled source pending) and the Interrupt is triggered on each
// rising edge; Linux's handler re-reads IIR until it reads 0x01, so edges
// are enough. MCR.OUT2 does not gate the line (as in QEMU and Firecracker).
//
// Deviations from the chip, none visible to Linux: the receive FIFO is
// SerialFIFOSize deep whether or not FCR enabled FIFOs, the receive
// interrupt is reported as soon as one byte is queued (no trigger levels, no
// character-timeout 0x0C), and baud rate and line settings are stored but
// have no effect.
//
// The last TailLines lines of output are captured for Tail. All methods are
// safe for concurrent use.
type Serial struct {
	irq Interrupt
	out io.Writer

	mu         sync.Mutex // guards the registers below
	ier        uint8
	lcr        uint8
	mcr        uint8
	scr        uint8
	dll, dlm   uint8
	fifoOn     bool  // FCR bit 0
	lsrErr     uint8 // sticky LSR error bits (OE), cleared by reading LSR
	msrIn      uint8 // modem input lines, MSR bits 7:4
	msrDelta   uint8 // MSR bits 3:0, cleared by reading MSR
	thrPending bool  // THR-empty interrupt source latched
	line       bool  // interrupt output level last computed
	rx         [SerialFIFOSize]byte
	rxHead     int
	rxLen      int
	rxDrained  chan struct{}

	outMu sync.Mutex // serialises writes to out and the tail capture
	tail  lineRing
}

// NewSerial returns a UART in its reset state (16550A datasheet, "Reset
// Functions": IER, FCR, LCR, MCR zero; LSR THRE|TEMT; no interrupt pending)
// with the divisor latch at 12 (9600 baud). irq is its interrupt line (nil
// for none); out receives every byte the guest transmits (nil discards).
func NewSerial(irq Interrupt, out io.Writer) *Serial {
	if out == nil {
		out = io.Discard
	}
	return &Serial{
		irq:       irq,
		out:       out,
		dll:       12,
		msrIn:     msrIdle,
		rxDrained: make(chan struct{}, 1),
	}
}

// Read implements Device. The UART's registers are byte-wide, and an ISA
// bus splits a wider access into byte cycles, so byte i of data is read
// from register offset+i (with that register's side effects); bytes beyond
// the register window read 0xff, as an undecoded ISA port would.
func (s *Serial) Read(offset uint64, data []byte) {
	s.mu.Lock()
	raise := false
	for i := range data {
		o := offset + uint64(i)
		if o < offset || o >= SerialSize {
			data[i] = 0xff
			continue
		}
		data[i] = s.readReg(o)
		raise = s.update() || raise
	}
	s.mu.Unlock()
	if raise {
		trigger(s.irq)
	}
}

// Write implements Device. As with Read, byte i of data is written to
// register offset+i; bytes beyond the register window are ignored. A
// transmitted byte is written to the output after the register lock is
// released, and before the THR-empty interrupt is raised.
func (s *Serial) Write(offset uint64, data []byte) {
	var tx [1]byte
	sent := false
	raise := false
	s.mu.Lock()
	for i, v := range data {
		o := offset + uint64(i)
		if o < offset || o >= SerialSize {
			continue
		}
		if o == regData && s.lcr&lcrDLAB == 0 {
			// At most one byte of an access lands on THR.
			tx[0], sent = v, s.transmit(v, &raise)
			continue
		}
		s.writeReg(o, v)
		raise = s.update() || raise
	}
	s.mu.Unlock()
	if sent {
		s.emit(tx[:])
	}
	if raise {
		trigger(s.irq)
	}
}

// readReg performs a one-byte register read with its side effects.
func (s *Serial) readReg(o uint64) uint8 {
	dlab := s.lcr&lcrDLAB != 0
	switch o {
	case regData:
		if dlab {
			return s.dll
		}
		return s.rxPop()
	case regIER:
		if dlab {
			return s.dlm
		}
		return s.ier
	case regIIR:
		id := s.iid()
		if id == iirTHRI {
			// Reading IIR clears a THR-empty interrupt it reports.
			s.thrPending = false
		}
		if s.fifoOn {
			id |= iirFIFOEn
		}
		return id
	case regLCR:
		return s.lcr
	case regMCR:
		return s.mcr
	case regLSR:
		v := s.lsrErr | lsrTHRE | lsrTEMT
		if s.rxLen > 0 {
			v |= lsrDR
		}
		s.lsrErr = 0 // error bits clear on read
		return v
	case regMSR:
		v := s.msrIn | s.msrDelta
		s.msrDelta = 0 // delta bits clear on read
		return v
	case regSCR:
		return s.scr
	}
	return 0xff
}

// writeReg performs a one-byte register write other than THR.
func (s *Serial) writeReg(o uint64, v uint8) {
	dlab := s.lcr&lcrDLAB != 0
	switch o {
	case regData: // DLAB=1; THR is handled by transmit
		s.dll = v
	case regIER:
		if dlab {
			s.dlm = v
			return
		}
		v &= ierValid
		if (s.ier^v)&ierTHRI != 0 {
			// A rising edge of THRI latches THR-empty (THR is always empty);
			// with THRI clear the latch is unused (as QEMU's serial.c).
			s.thrPending = v&ierTHRI != 0
		}
		s.ier = v
	case regIIR: // FCR
		on := v&fcrEnable != 0
		// Changing FCR0 resets both FIFOs; FCR1 clears the receive FIFO.
		if on != s.fifoOn || v&fcrClearRx != 0 {
			s.rxClear()
		}
		s.fifoOn = on
	case regLCR:
		s.lcr = v
	case regMCR:
		s.mcr = v & mcrValid
		s.setModemInputs(s.modemInputs())
	case regLSR, regMSR:
		// Read-only (an LSR write is a factory test mode on the 16550A).
	case regSCR:
		s.scr = v
	}
}

// transmit handles a THR write and reports whether v goes to the output:
// in loopback it goes to the receiver instead. THR empties at once, so
// THR-empty is cleared and, if enabled, set again: a fresh interrupt edge.
func (s *Serial) transmit(v uint8, raise *bool) (send bool) {
	s.thrPending = false
	s.update()
	if s.mcr&mcrLoop != 0 {
		s.rxPushLoop(v)
	} else {
		send = true
	}
	s.thrPending = s.ier&ierTHRI != 0
	*raise = s.update() || *raise
	return send
}

// modemInputs returns the modem input lines (MSR bits 7:4). In loopback the
// 16550A wires them to the MCR outputs: CTS=RTS, DSR=DTR, RI=OUT1,
// DCD=OUT2. Linux's autoconfig writes MCR=LOOP|OUT2|RTS and requires
// MSR&0xf0 == 0x90 (DCD|CTS), or it rejects the port.
func (s *Serial) modemInputs() uint8 {
	if s.mcr&mcrLoop == 0 {
		return msrIdle
	}
	var in uint8
	if s.mcr&mcrRTS != 0 {
		in |= msrCTS
	}
	if s.mcr&mcrDTR != 0 {
		in |= msrDSR
	}
	if s.mcr&mcrOut1 != 0 {
		in |= msrRI
	}
	if s.mcr&mcrOut2 != 0 {
		in |= msrDCD
	}
	return in
}

// setModemInputs updates the input lines and latches the MSR delta bits.
func (s *Serial) setModemInputs(in uint8) {
	ch := s.msrIn ^ in
	if ch&msrCTS != 0 {
		s.msrDelta |= msrDCTS
	}
	if ch&msrDSR != 0 {
		s.msrDelta |= msrDDSR
	}
	if ch&msrRI != 0 && in&msrRI == 0 {
		s.msrDelta |= msrTERI
	}
	if ch&msrDCD != 0 {
		s.msrDelta |= msrDDCD
	}
	s.msrIn = in
}

// iid returns the IIR interrupt identification (bits 3:0) of the
// highest-priority pending source that IER enables.
func (s *Serial) iid() uint8 {
	switch {
	case s.ier&ierRLSI != 0 && s.lsrErr != 0:
		return iirRLSI
	case s.ier&ierRDI != 0 && s.rxLen > 0:
		return iirRDI
	case s.ier&ierTHRI != 0 && s.thrPending:
		return iirTHRI
	case s.ier&ierMSI != 0 && s.msrDelta != 0:
		return iirMSI
	}
	return iirNoInt
}

// update recomputes the interrupt output level and reports a rising edge.
func (s *Serial) update() bool {
	level := s.iid() != iirNoInt
	rose := level && !s.line
	s.line = level
	return rose
}

func (s *Serial) rxPop() uint8 {
	if s.rxLen == 0 {
		return 0
	}
	v := s.rx[s.rxHead]
	s.rxHead = (s.rxHead + 1) % SerialFIFOSize
	s.rxLen--
	if s.rxLen == 0 {
		s.signalDrained()
	}
	return v
}

// rxPushLoop receives a looped-back byte; with the FIFO full the byte is
// lost and LSR.OE is set (16550A datasheet, LSR bit 1).
func (s *Serial) rxPushLoop(v uint8) {
	if s.rxLen == SerialFIFOSize {
		s.lsrErr |= lsrOE
		return
	}
	s.rx[(s.rxHead+s.rxLen)%SerialFIFOSize] = v
	s.rxLen++
}

func (s *Serial) rxClear() {
	if s.rxLen > 0 {
		s.rxLen, s.rxHead = 0, 0
		s.signalDrained()
	}
}

func (s *Serial) signalDrained() {
	select {
	case s.rxDrained <- struct{}{}:
	default:
	}
}

// emit writes transmitted bytes to the output and the tail capture. Write
// errors are dropped: the console is best effort and the guest cannot be
// told.
func (s *Serial) emit(p []byte) {
	s.outMu.Lock()
	defer s.outMu.Unlock()
	_, _ = s.out.Write(p)
	s.tail.write(p)
}

// Enqueue queues bytes received from the host terminal for the guest to
// read from RBR and raises the receive-data interrupt if IER enables it. It
// queues as many bytes as fit in the receive FIFO and returns how many; if
// that is fewer than len(b) it also returns ErrRxFull, and the caller should
// retry the rest after the guest has read some (see RxDrained). While the
// guest has the receive interrupt disabled it takes nothing: a driver
// enables it when it opens the port, and clears the FIFO first, which
// would lose input queued before (typed-ahead input reaches the shell
// once it listens). No byte is ever dropped by Enqueue, so host input
// never causes an overrun. In
// loopback mode the receiver is disconnected from the line, so the input is
// discarded (and reported as consumed), as on the chip.
func (s *Serial) Enqueue(b []byte) (int, error) {
	s.mu.Lock()
	if s.mcr&mcrLoop != 0 {
		s.mu.Unlock()
		return len(b), nil
	}
	if s.ier&ierRDI == 0 {
		// No driver is listening (the port is closed, or its driver has
		// not started it yet and will clear the FIFO when it does):
		// hold the input back, like a peer honouring flow control.
		s.mu.Unlock()
		return 0, ErrRxFull
	}
	n := min(len(b), SerialFIFOSize-s.rxLen)
	for _, v := range b[:n] {
		s.rx[(s.rxHead+s.rxLen)%SerialFIFOSize] = v
		s.rxLen++
	}
	raise := s.update()
	s.mu.Unlock()
	if raise {
		trigger(s.irq)
	}
	if n < len(b) {
		return n, ErrRxFull
	}
	return n, nil
}

// RxDrained returns a channel that receives a value when the guest empties
// the receive FIFO (by reading it or clearing it through FCR). Signals are
// coalesced: the channel holds at most one. An input loop can Enqueue, and
// on ErrRxFull wait on this channel before retrying the remainder; a stale
// signal only causes a harmless extra retry.
func (s *Serial) RxDrained() <-chan struct{} { return s.rxDrained }

// Tail returns up to the last n lines the guest wrote (at most TailLines),
// oldest first, without line terminators; an unfinished last line is
// included. Carriage returns are dropped and lines longer than
// TailMaxLineLen are split. It returns nil for n <= 0.
func (s *Serial) Tail(n int) []string {
	s.outMu.Lock()
	defer s.outMu.Unlock()
	return s.tail.tail(n)
}
