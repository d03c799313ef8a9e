package virtio

import (
	"fmt"
	"sync"

	"golang.org/x/sys/unix"
)

// RNG is virtio-rng, the entropy device (virtio 1.2 §5.4), fed from the
// host's getrandom(2) so the guest's CRNG is ready at boot.
type RNG struct {
	mu sync.Mutex
	w  *workers
}

// rngMaxRequest caps the bytes one request gets; Linux asks for at most a
// page at a time.
const rngMaxRequest = 64 << 10

// NewRNG returns an entropy device.
func NewRNG() *RNG { return &RNG{} }

// Type implements Device.
func (r *RNG) Type() uint32 { return TypeRNG }

// Features implements Device: virtio-rng has no feature bits.
func (r *RNG) Features() uint64 { return 0 }

// QueueMaxSizes implements Device: one request queue.
func (r *RNG) QueueMaxSizes() []uint16 { return []uint16{256} }

// ReadConfig implements Device: there is no configuration space.
func (r *RNG) ReadConfig(uint64, []byte) {}

// WriteConfig implements Device.
func (r *RNG) WriteConfig(uint64, []byte) {}

// Activate implements Device.
func (r *RNG) Activate(q *Queues) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.w = &workers{q: q}
	r.w.serve(0, handleRNG)
	return nil
}

// Reset implements Device.
func (r *RNG) Reset() {
	r.mu.Lock()
	w := r.w
	r.w = nil
	r.mu.Unlock()
	if w != nil {
		w.shutdown()
	}
}

// handleRNG fills the writable part of the request with random bytes.
func handleRNG(c *Chain) (uint32, error) {
	w := c.Writer()
	bufs, err := w.Buffers(rngMaxRequest)
	if err != nil {
		return 0, err
	}
	for _, b := range bufs {
		for len(b) > 0 {
			n, err := unix.Getrandom(b, 0)
			if err == unix.EINTR {
				continue
			}
			if err != nil {
				return 0, fmt.Errorf("virtio rng: getrandom: %w", err)
			}
			b = b[n:]
		}
	}
	return w.Written(), nil
}
