#include "textflag.h"

// func xchg16(p *uint16, v uint16)
//
// XCHG with a memory operand is locked: one atomic 16-bit store that
// writes only its two bytes and is a full barrier, and that no concurrent
// write can make retry.
TEXT ·xchg16(SB), NOSPLIT, $0-10
	MOVQ p+0(FP), BX
	MOVW v+8(FP), AX
	XCHGW AX, 0(BX)
	RET
