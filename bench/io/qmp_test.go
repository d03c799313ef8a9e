package main

import (
	"encoding/json"
	"net"
	"reflect"
	"strings"
	"testing"
)

func TestParseVCPUStats(t *testing.T) {
	tests := []struct {
		name string
		raw  string
		want map[string]uint64
		bad  bool
	}{
		{
			name: "two vCPUs summed, histograms and booleans left out",
			raw: `[{"provider":"kvm","qom-path":"/machine/unattached/device[0]","stats":[{"name":"exits","value":10},{"name":"halt_poll_fail_hist","value":[1,2]},{"name":"guest_mode","value":false},{"name":"io_exits","value":0}]},` +
				`{"provider":"kvm","qom-path":"/machine/unattached/device[1]","stats":[{"name":"exits","value":5},{"name":"mmio_exits","value":3}]}]`,
			want: map[string]uint64{"exits": 15, "mmio_exits": 3},
		},
		{name: "other providers only", raw: `[{"provider":"other","stats":[]}]`, bad: true},
		{name: "not a list", raw: `{"exits":1}`, bad: true},
		{name: "negative", raw: `[{"provider":"kvm","stats":[{"name":"x","value":-1}]}]`, want: map[string]uint64{}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseVCPUStats(json.RawMessage(tc.raw))
			if (err != nil) != tc.bad {
				t.Fatalf("err %v", err)
			}
			if !tc.bad && !reflect.DeepEqual(got, tc.want) {
				t.Errorf("parseVCPUStats = %v, want %v", got, tc.want)
			}
		})
	}
}

func TestShutdownReason(t *testing.T) {
	tests := []struct {
		msg  qmpMsg
		want string
	}{
		{qmpMsg{Event: "SHUTDOWN", Data: json.RawMessage(`{"guest":true,"reason":"guest-shutdown"}`)}, "guest-shutdown"},
		{qmpMsg{Event: "SHUTDOWN", Data: json.RawMessage(`{"guest":true,"reason":"guest-reset"}`)}, "guest-reset"},
		{qmpMsg{Event: "SHUTDOWN"}, "unknown"},
		{qmpMsg{Event: "STOP"}, ""},
	}
	for _, tc := range tests {
		if got := shutdownReason(tc.msg); got != tc.want {
			t.Errorf("shutdownReason(%+v) = %q, want %q", tc.msg, got, tc.want)
		}
	}
}

// fakeQEMU answers QMP on one end of a pipe: the greeting, then each
// command with reply(cmd), after sending events first.
func fakeQEMU(t *testing.T, c net.Conn, events []string, reply func(cmd string) string) {
	t.Helper()
	go func() {
		defer c.Close()
		c.Write([]byte(`{"QMP": {"version": {}, "capabilities": []}}` + "\n"))
		dec := json.NewDecoder(c)
		for {
			var req struct {
				Execute string `json:"execute"`
			}
			if err := dec.Decode(&req); err != nil {
				return
			}
			for _, e := range events {
				c.Write([]byte(e + "\n"))
			}
			events = nil
			c.Write([]byte(reply(req.Execute) + "\n"))
		}
	}()
}

func TestQMPClient(t *testing.T) {
	a, b := net.Pipe()
	fakeQEMU(t, b, []string{`{"event":"SHUTDOWN","data":{"guest":true,"reason":"guest-shutdown"}}`}, func(cmd string) string {
		switch cmd {
		case "qmp_capabilities":
			return `{"return":{}}`
		case "query-stats":
			return `{"return":[{"provider":"kvm","stats":[{"name":"exits","value":7}]}]}`
		}
		return `{"error":{"class":"CommandNotFound","desc":"The command ` + cmd + ` has not been found"}}`
	})
	q, err := newQMP(a)
	if err != nil {
		t.Fatal(err)
	}
	if r := shutdownReason(<-q.events); r != "guest-shutdown" {
		t.Errorf("event reason %q", r)
	}
	st, err := q.vcpuStats()
	if err != nil || st["exits"] != 7 {
		t.Errorf("vcpuStats = %v, %v", st, err)
	}
	if _, err := q.execute("nonsense", nil); err == nil || !strings.Contains(err.Error(), "CommandNotFound") {
		t.Errorf("an unknown command: %v", err)
	}
	a.Close()
	if _, err := q.execute("quit", nil); err == nil {
		t.Error("a closed connection answered")
	}
}
