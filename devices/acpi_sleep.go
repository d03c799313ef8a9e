package devices

// ACPISleep is the hardware-reduced ACPI sleep control/status register
// pair (ACPI 6.4 section 4.8.3.7), one byte of port I/O that the FADT
// points both registers at. Writing SLP_EN with SLP_TYP equal to the
// platform's \_S5 value is the guest's soft-off: it calls onPowerOff.
// Reads return 0 (WAK_STS clear); other writes, such as Linux clearing
// WAK_STS, are ignored.
type ACPISleep struct {
	s5Type     uint8
	onPowerOff func()
}

// ACPI sleep control register fields.
const (
	ACPISleepEnable    = 1 << 5 // SLP_EN
	ACPISleepTypeShift = 2      // SLP_TYP is bits 4:2
	ACPISleepTypeMask  = 0x7
)

// NewACPISleep returns the register pair; s5Type is the SLP_TYP value the
// DSDT's \_S5 object declares.
func NewACPISleep(s5Type uint8, onPowerOff func()) *ACPISleep {
	return &ACPISleep{s5Type: s5Type, onPowerOff: onPowerOff}
}

// Read implements Device: the sleep status register reads as zero.
func (a *ACPISleep) Read(offset uint64, data []byte) { clear(data) }

// Write implements Device.
func (a *ACPISleep) Write(offset uint64, data []byte) {
	if offset != 0 || len(data) == 0 {
		return
	}
	v := data[0]
	if v&ACPISleepEnable != 0 && (v>>ACPISleepTypeShift)&ACPISleepTypeMask == a.s5Type && a.onPowerOff != nil {
		a.onPowerOff()
	}
}
