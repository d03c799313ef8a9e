package devices

import "sync"

// i8042 placement. The controller is one device covering ports 0x60-0x64:
// offset 0 is the data port (0x60) and offset 4 the command/status port
// (0x64). Offsets 1-3 (ports 0x61-0x63) belong to other PC logic, notably
// port 0x61 (system control port B: speaker gate, NMI status), which KVM's
// in-kernel PIT emulates before it ever reaches the VMM; here they read as
// zero and ignore writes. This is Firecracker's layout (base 0x60, size 5).
const (
	// I8042Base is the port I/O base the i8042 is inserted at.
	I8042Base = 0x60
	// I8042Size is the size of its range: ports 0x60 to 0x64.
	I8042Size = 5
	// I8042DataOffset is the offset of the data port, 0x60.
	I8042DataOffset = 0
	// I8042CommandOffset is the offset of the command (write) / status
	// (read) port, 0x64.
	I8042CommandOffset = 4
	// I8042KeyboardIRQ is the keyboard's ISA interrupt line (GSI).
	I8042KeyboardIRQ = 1
	// I8042CmdResetCPU is the controller command that pulses the CPU reset
	// line; Linux's reboot=k writes it to port 0x64.
	I8042CmdResetCPU = 0xFE
)

// Controller commands written to port 0x64.
const (
	i8042CmdReadCTR   = 0x20 // read the controller configuration byte
	i8042CmdWriteCTR  = 0x60 // write it: the next data-port byte
	i8042CmdSelfTest  = 0xAA // controller self-test, answers 0x55
	i8042CmdKbdTest   = 0xAB // keyboard interface test, answers 0x00
	i8042CmdKbdOff    = 0xAD // disable the keyboard interface
	i8042CmdKbdOn     = 0xAE // enable the keyboard interface
	i8042CmdReadOutp  = 0xD0 // read the output port
	i8042CmdWriteOutp = 0xD1 // write it: the next data-port byte
)

// Status register (port 0x64 read) and configuration byte bits.
const (
	i8042StatOBF     = 0x01 // output buffer full: data waits at port 0x60
	i8042StatCmdData = 0x08 // last write was to port 0x64 (a command)
	i8042StatKeylock = 0x10 // keyboard not inhibited (Linux warns if clear)

	i8042CtrKbdInt = 0x01 // keyboard interrupt enabled
	i8042CtrSys    = 0x04 // system flag: POST passed
	i8042CtrKbdDis = 0x10 // keyboard interface disabled

	i8042KbdAck = 0xFA // a PS/2 keyboard's acknowledge byte
)

// I8042 is the minimum of an 8042 PS/2 controller that a Linux guest booted
// with "reboot=k i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd" needs:
// the probe in drivers/input/serio/i8042.c (flush, read/write of the
// configuration byte with 0x20/0x60) succeeds, and the reboot command 0xFE
// calls the reset callback. It behaves like Firecracker's
// devices/legacy/i8042.rs (plus the self-test commands 0xAA/0xAB): the
// input buffer is always empty, a controller reply waits in the one-byte
// output buffer until read from port 0x60, and bytes written to port 0x60 outside
// a two-byte command are keyboard commands, each acknowledged with 0xFA
// (and a keyboard interrupt, if one is set and enabled in the configuration
// byte). There is no keyboard input. Only single-byte accesses are
// decoded; wider ones read as zero and are ignored, as in Firecracker. Safe
// for concurrent use.
type I8042 struct {
	reset func()

	mu     sync.Mutex
	kbdIRQ Interrupt
	status uint8
	ctr    uint8 // configuration ("command") byte
	outp   uint8 // output port
	cmd    uint8 // command awaiting its data byte, if status has CmdData
	out    uint8 // output buffer, valid while status has OBF
}

// NewI8042 returns a controller whose reset command (0xFE on port 0x64)
// calls reset (nil ignores it). reset runs on the writing vCPU's goroutine
// with no device lock held, and may be called more than once: Linux's
// reboot=k pulses the line up to ten times. Make it idempotent and
// non-blocking (e.g. signal the VMM's run loop).
func NewI8042(reset func()) *I8042 {
	return &I8042{
		reset:  reset,
		status: i8042StatKeylock,
		ctr:    i8042CtrSys | i8042CtrKbdInt,
	}
}

// SetKeyboardInterrupt sets the interrupt raised (IRQ 1 on a PC) when a
// keyboard acknowledge is queued; nil, the default, raises none. With
// i8042.dumbkbd Linux sends no keyboard commands, so it is optional.
func (k *I8042) SetKeyboardInterrupt(irq Interrupt) {
	k.mu.Lock()
	k.kbdIRQ = irq
	k.mu.Unlock()
}

// Read implements Device: offset 4 returns the status register, offset 0
// returns the output buffer and empties it (zero when empty).
func (k *I8042) Read(offset uint64, data []byte) {
	clear(data)
	if len(data) != 1 {
		return
	}
	k.mu.Lock()
	switch offset {
	case I8042CommandOffset:
		data[0] = k.status
	case I8042DataOffset:
		if k.status&i8042StatOBF != 0 {
			data[0] = k.out
			k.status &^= i8042StatOBF
		}
	}
	k.mu.Unlock()
}

// Write implements Device: offset 4 takes controller commands, offset 0
// command data or keyboard commands.
func (k *I8042) Write(offset uint64, data []byte) {
	if len(data) != 1 {
		return
	}
	v := data[0]
	k.mu.Lock()
	var irq Interrupt
	doReset := false
	switch offset {
	case I8042CommandOffset:
		switch v {
		case I8042CmdResetCPU:
			doReset = true
		case i8042CmdReadCTR:
			k.reply(k.ctr)
		case i8042CmdReadOutp:
			k.reply(k.outp)
		case i8042CmdWriteCTR, i8042CmdWriteOutp:
			k.flush()
			k.cmd = v
			k.status |= i8042StatCmdData
		case i8042CmdSelfTest:
			k.reply(0x55)
		case i8042CmdKbdTest:
			k.reply(0x00)
		case i8042CmdKbdOff:
			k.ctr |= i8042CtrKbdDis
		case i8042CmdKbdOn:
			k.ctr &^= i8042CtrKbdDis
		}
	case I8042DataOffset:
		if k.status&i8042StatCmdData != 0 {
			switch k.cmd {
			case i8042CmdWriteCTR:
				k.ctr = v
			case i8042CmdWriteOutp:
				k.outp = v
			}
			k.status &^= i8042StatCmdData
			break
		}
		// A command for the keyboard itself: a dumb keyboard acks anything.
		k.reply(i8042KbdAck)
		irq = k.kbdInterrupt()
	}
	k.mu.Unlock()
	trigger(irq)
	if doReset && k.reset != nil {
		k.reset()
	}
}

// reply puts v in the output buffer, replacing anything unread.
func (k *I8042) reply(v uint8) {
	k.out = v
	k.status |= i8042StatOBF
}

// flush discards an unread output byte.
func (k *I8042) flush() { k.status &^= i8042StatOBF }

// kbdInterrupt returns the keyboard interrupt if the configuration byte
// enables it, else nil.
func (k *I8042) kbdInterrupt() Interrupt {
	if k.ctr&i8042CtrKbdInt == 0 {
		return nil
	}
	return k.kbdIRQ
}
