package virtio

import (
	"sync"
	"sync/atomic"
)

// Handler serves one request and returns how many bytes it wrote into the
// chain. An error means the driver broke the rules: the device fails
// (NEEDS_RESET) and its workers stop. Host-side I/O errors are not
// errors here: they are reported to the driver in the request's status.
type Handler func(c *Chain) (written uint32, err error)

// workers runs one goroutine per served queue, off the vCPU threads.
type workers struct {
	q    *Queues
	wg   sync.WaitGroup
	stop atomic.Bool
}

// serve starts a goroutine that handles every chain the driver makes
// available on queue i, woken by the queue's notification event.
func (w *workers) serve(i int, h Handler) {
	w.wg.Add(1)
	go func() {
		defer w.wg.Done()
		ev := w.q.Notify[i]
		// Buffers made available before activation sent their
		// notification already: look once before waiting.
		for {
			if w.stop.Load() {
				return
			}
			if err := w.drain(i, h); err != nil {
				w.q.Fail(err)
				return
			}
			if _, err := ev.Wait(); err != nil {
				return
			}
		}
	}()
}

// drain serves queue i until the driver has nothing more available, with
// notifications suppressed while it works (virtio 1.2 §2.7.10).
func (w *workers) drain(i int, h Handler) error {
	q := w.q.Queues[i]
	for !w.stop.Load() {
		if err := q.DisableNotify(); err != nil {
			return err
		}
		pushed := false
		for !w.stop.Load() {
			c, err := q.Pop()
			if err != nil {
				return err
			}
			if c == nil {
				break
			}
			n, err := h(c)
			if err != nil {
				return err
			}
			if err := q.Push(c.Head, n); err != nil {
				return err
			}
			pushed = true
		}
		if pushed {
			w.q.UsedBuffers(i)
		}
		if err := q.EnableNotify(); err != nil {
			return err
		}
		// A buffer made available before the driver saw EnableNotify
		// sent no notification: look again.
		if more, err := q.Pending(); err != nil || !more {
			return err
		}
	}
	return nil
}

// shutdown stops the goroutines and waits for them.
func (w *workers) shutdown() {
	w.stop.Store(true)
	for _, e := range w.q.Notify {
		_ = e.Signal()
	}
	w.wg.Wait()
}
