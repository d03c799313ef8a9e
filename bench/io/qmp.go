package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"time"
)

// A minimal QMP (QEMU Machine Protocol) client: enough to learn when the
// guest stopped, read KVM's vCPU counters through QEMU (query-stats, the
// same KVM_GET_STATS_FD counters vessel's --metrics sums) and quit.

// qmpMsg is any message QEMU sends: the greeting, a command's reply or an
// asynchronous event.
type qmpMsg struct {
	QMP    json.RawMessage `json:"QMP,omitempty"`
	Return json.RawMessage `json:"return,omitempty"`
	Error  *qmpError       `json:"error,omitempty"`
	Event  string          `json:"event,omitempty"`
	Data   json.RawMessage `json:"data,omitempty"`
}

// qmpError is a command's failure.
type qmpError struct {
	Class string `json:"class"`
	Desc  string `json:"desc"`
}

func (e *qmpError) Error() string { return e.Class + ": " + e.Desc }

// qmpClient is one QMP connection after capabilities negotiation.
type qmpClient struct {
	conn    net.Conn
	replies chan qmpMsg
	events  chan qmpMsg
}

// qmpTimeout bounds one command's round trip (the platform is slow).
const qmpTimeout = 60 * time.Second

// newQMP takes over conn: it reads the greeting and enters command mode.
func newQMP(conn net.Conn) (*qmpClient, error) {
	q := &qmpClient{conn: conn, replies: make(chan qmpMsg, 4), events: make(chan qmpMsg, 64)}
	go q.read()
	select {
	case m, ok := <-q.replies:
		if !ok || m.QMP == nil {
			return nil, errors.New("qmp: no greeting")
		}
	case <-time.After(qmpTimeout):
		return nil, errors.New("qmp: no greeting within a minute")
	}
	if _, err := q.execute("qmp_capabilities", nil); err != nil {
		return nil, err
	}
	return q, nil
}

// read sorts incoming messages into events and everything else.
func (q *qmpClient) read() {
	dec := json.NewDecoder(q.conn)
	defer close(q.replies)
	defer close(q.events)
	for {
		var m qmpMsg
		if err := dec.Decode(&m); err != nil {
			return
		}
		if m.Event != "" {
			select {
			case q.events <- m:
			default: // nobody needs old events
			}
			continue
		}
		q.replies <- m
	}
}

// execute runs one command and returns its "return" value.
func (q *qmpClient) execute(cmd string, args any) (json.RawMessage, error) {
	req := map[string]any{"execute": cmd}
	if args != nil {
		req["arguments"] = args
	}
	b, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}
	q.conn.SetWriteDeadline(time.Now().Add(qmpTimeout))
	if _, err := q.conn.Write(append(b, '\n')); err != nil {
		return nil, fmt.Errorf("qmp %s: %w", cmd, err)
	}
	select {
	case m, ok := <-q.replies:
		if !ok {
			return nil, fmt.Errorf("qmp %s: connection closed", cmd)
		}
		if m.Error != nil {
			return nil, fmt.Errorf("qmp %s: %w", cmd, m.Error)
		}
		return m.Return, nil
	case <-time.After(qmpTimeout):
		return nil, fmt.Errorf("qmp %s: no reply within a minute", cmd)
	}
}

// shutdownReason returns the reason of a SHUTDOWN event ("guest-shutdown",
// "guest-reset", "guest-panic", ...), or "" for any other event.
func shutdownReason(m qmpMsg) string {
	if m.Event != "SHUTDOWN" {
		return ""
	}
	var d struct {
		Reason string `json:"reason"`
	}
	json.Unmarshal(m.Data, &d)
	if d.Reason == "" {
		return "unknown"
	}
	return d.Reason
}

// vcpuStats asks for KVM's vCPU counters, summed over vCPUs.
func (q *qmpClient) vcpuStats() (map[string]uint64, error) {
	raw, err := q.execute("query-stats", map[string]any{"target": "vcpu", "providers": []map[string]string{{"provider": "kvm"}}})
	if err != nil {
		return nil, err
	}
	return parseVCPUStats(raw)
}

// parseVCPUStats sums the numeric KVM counters of a query-stats reply
// (one entry per vCPU) by name, as vessel's --metrics sums its vCPUs';
// histograms (lists) and booleans are left out, and so are zeros.
func parseVCPUStats(raw json.RawMessage) (map[string]uint64, error) {
	var res []struct {
		Provider string `json:"provider"`
		Stats    []struct {
			Name  string          `json:"name"`
			Value json.RawMessage `json:"value"`
		} `json:"stats"`
	}
	if err := json.Unmarshal(raw, &res); err != nil {
		return nil, fmt.Errorf("query-stats reply: %w", err)
	}
	sum := map[string]uint64{}
	found := false
	for _, r := range res {
		if r.Provider != "kvm" {
			continue
		}
		found = true
		for _, s := range r.Stats {
			v := bytes.TrimSpace(s.Value)
			if len(v) == 0 || v[0] < '0' || v[0] > '9' {
				continue
			}
			var n uint64
			if err := json.Unmarshal(v, &n); err != nil {
				return nil, fmt.Errorf("query-stats %s: %w", s.Name, err)
			}
			if n != 0 {
				sum[s.Name] += n
			}
		}
	}
	if !found {
		return nil, errors.New("query-stats: no KVM vCPU statistics")
	}
	return sum, nil
}
