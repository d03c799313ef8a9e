package guestmem

// xchg16 atomically stores v at p (store16_unsafe_amd64.s). Safe because
// its callers pass a 2-aligned pointer into a mapping of guest RAM from
// Slice, which the store stays inside.
//
//go:noescape
func xchg16(p *uint16, v uint16)

// storeUint16 atomically writes the 16-bit field at p with one locked
// instruction: unlike a compare-and-swap of the containing 32-bit word,
// it does not depend on the other half of the word, which the guest owns
// and could keep changing to make the host retry for ever.
func storeUint16(p *uint16, v uint16) { xchg16(p, v) }
