package devices

import "sync/atomic"

// Interrupt is an edge-triggered interrupt line into the guest. The VMM
// backs it with a KVM irqfd; each Trigger is one edge (one pulse), so a
// device calls it when an interrupt condition becomes pending, not while it
// stays pending. Trigger must be safe for concurrent use.
type Interrupt interface {
	Trigger() error
}

// InterruptFunc adapts a function to the Interrupt interface.
type InterruptFunc func() error

// Trigger calls f.
func (f InterruptFunc) Trigger() error { return f() }

// CountingInterrupt is an Interrupt for tests: it counts triggers and
// returns Err (nil by default) from each. The zero value is ready to use
// and safe for concurrent use.
type CountingInterrupt struct {
	n atomic.Uint64
	// Err, if set before use, is returned by every Trigger.
	Err error
}

// Trigger records one edge.
func (c *CountingInterrupt) Trigger() error {
	c.n.Add(1)
	return c.Err
}

// Count returns the number of Trigger calls so far.
func (c *CountingInterrupt) Count() uint64 { return c.n.Load() }

// Reset sets the count back to zero and returns the previous count.
func (c *CountingInterrupt) Reset() uint64 { return c.n.Swap(0) }

// trigger raises irq if it is non-nil. Errors are dropped: a device has no
// one to report them to, and a lost edge only delays the guest driver until
// its next poll or interrupt.
func trigger(irq Interrupt) {
	if irq != nil {
		_ = irq.Trigger()
	}
}
