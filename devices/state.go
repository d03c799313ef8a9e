package devices

import "fmt"

// SerialState is a UART's register state, for a snapshot: everything
// the guest can observe, the receive FIFO's bytes included. Transmission
// is instantaneous, so there is nothing in flight to save.
type SerialState struct {
	IER, LCR, MCR, SCR uint8
	DLL, DLM           uint8
	FIFOEnabled        bool
	LSRErrors          uint8
	MSRInputs          uint8
	MSRDelta           uint8
	THRPending         bool
	Line               bool   // the interrupt output level
	RxFIFO             []byte `json:",omitempty"` // oldest first, at most SerialFIFOSize
}

// State returns the UART's registers.
func (s *Serial) State() SerialState {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := SerialState{
		IER: s.ier, LCR: s.lcr, MCR: s.mcr, SCR: s.scr, DLL: s.dll, DLM: s.dlm,
		FIFOEnabled: s.fifoOn, LSRErrors: s.lsrErr, MSRInputs: s.msrIn, MSRDelta: s.msrDelta,
		THRPending: s.thrPending, Line: s.line,
	}
	for i := 0; i < s.rxLen; i++ {
		st.RxFIFO = append(st.RxFIFO, s.rx[(s.rxHead+i)%SerialFIFOSize])
	}
	return st
}

// SetState loads registers State returned, before the guest runs. It
// refuses values no UART register can hold (the state file is input),
// and raises no interrupt: the interrupt controller's saved state already
// has the line's last edge.
func (s *Serial) SetState(st SerialState) error {
	switch {
	case st.IER&^ierValid != 0:
		return fmt.Errorf("devices: serial state: IER %#x has reserved bits", st.IER)
	case st.MCR&^mcrValid != 0:
		return fmt.Errorf("devices: serial state: MCR %#x has reserved bits", st.MCR)
	case st.MSRInputs&0x0f != 0 || st.MSRDelta&0xf0 != 0:
		return fmt.Errorf("devices: serial state: modem status %#x/%#x mixes inputs and deltas", st.MSRInputs, st.MSRDelta)
	case st.LSRErrors&^lsrOE != 0:
		return fmt.Errorf("devices: serial state: line status errors %#x", st.LSRErrors)
	case len(st.RxFIFO) > SerialFIFOSize:
		return fmt.Errorf("devices: serial state: %d bytes in a %d-byte receive FIFO", len(st.RxFIFO), SerialFIFOSize)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.ier, s.lcr, s.mcr, s.scr, s.dll, s.dlm = st.IER, st.LCR, st.MCR, st.SCR, st.DLL, st.DLM
	s.fifoOn, s.lsrErr, s.msrIn, s.msrDelta = st.FIFOEnabled, st.LSRErrors, st.MSRInputs, st.MSRDelta
	s.thrPending, s.line = st.THRPending, st.Line
	s.rxHead, s.rxLen = 0, copy(s.rx[:], st.RxFIFO)
	return nil
}

// I8042State is the keyboard controller's state, for a snapshot.
type I8042State struct {
	Status, CTR, OutPort, Cmd, Out uint8
}

// State returns the controller's registers.
func (k *I8042) State() I8042State {
	k.mu.Lock()
	defer k.mu.Unlock()
	return I8042State{Status: k.status, CTR: k.ctr, OutPort: k.outp, Cmd: k.cmd, Out: k.out}
}

// SetState loads registers State returned, before the guest runs.
func (k *I8042) SetState(st I8042State) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.status, k.ctr, k.outp, k.cmd, k.out = st.Status, st.CTR, st.OutPort, st.Cmd, st.Out
}
