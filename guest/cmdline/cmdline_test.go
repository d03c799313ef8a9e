package cmdline

import (
	"encoding/base64"
	"errors"
	"reflect"
	"strings"
	"testing"
)

// b64 encodes s as vessel.cmd and vessel.net carry it.
func b64(s string) string { return base64.RawURLEncoding.EncodeToString([]byte(s)) }

func TestRoundTrip(t *testing.T) {
	for _, s := range []Spec{
		{},
		{TTY: true},
		{Argv: []string{"uname", "-a"}},
		{Argv: []string{"true"}, Control: true},
		{TTY: true, Control: true},
		{Argv: []string{"sh", "-c", "exit 7"}, TTY: false},
		{Argv: []string{"echo", `a "quoted" arg`, "x=y", "tab\there", "ünïcode", ""}},
		{Control: true, Net: []Net{{MAC: "52:54:00:12:34:56"}}},
		{Net: []Net{{MAC: "52:54:00:12:34:56", MTU: 68}, {MAC: "52:54:00:12:34:57", MTU: 65535}}},
		{Net: []Net{
			{MAC: "52:54:00:12:34:56", Addr: "172.16.0.2/24", Gateway: "172.16.0.1", DNS: []string{"1.1.1.1", "2001:db8::1"}, MTU: 9000},
			{MAC: "52:54:00:12:34:57"},
		}},
		{Net: []Net{{MAC: "52:54:00:12:34:56", Addr: "2001:db8::2/64", Gateway: "fe80::1", DNS: []string{"2001:db8::53"}}}},
		{Argv: []string{"ping", "-c", "1", "10.0.0.1"}, Net: []Net{{MAC: "52:54:00:ab:cd:ef", Addr: "10.0.0.2/32", Gateway: "10.0.0.1"}}},
		{Net: []Net{{MAC: "52:54:00:12:34:56", Addr: "10.88.0.5/16", Addrs: []string{"10.89.0.5/16", "2001:db8::5/64"},
			Gateway: "10.88.0.1", Routes: []Route{{Dst: "169.254.1.1/32"}, {Dst: "::/0", Gateway: "2001:db8::1"}, {Dst: "192.168.0.0/16", Gateway: "169.254.1.1"}}, MTU: 1450}}},
		{Net: []Net{{MAC: "52:54:00:12:34:56", Static: true}}},
	} {
		enc, err := Encode(s)
		if err != nil {
			t.Fatal(err)
		}
		got, err := Decode("console=ttyS0 quiet " + enc + " panic=-1")
		if err != nil {
			t.Fatalf("Decode(%q): %v", enc, err)
		}
		if len(s.Argv) == 0 {
			s.Argv = nil
		}
		if !reflect.DeepEqual(got, s) {
			t.Errorf("round trip of %+v gave %+v", s, got)
		}
	}
}

// TestWireFormat pins what the host writes: vessel.net is the unpadded
// base64url of the JSON array, with empty fields left out.
func TestWireFormat(t *testing.T) {
	for _, tc := range []struct {
		spec Spec
		want string
	}{
		{Spec{}, "vessel.tty=0"},
		{Spec{Net: []Net{}}, "vessel.tty=0"},
		{
			Spec{Net: []Net{{MAC: "52:54:00:12:34:56"}}},
			"vessel.tty=0 vessel.net=" + b64(`[{"mac":"52:54:00:12:34:56"}]`),
		},
		{
			Spec{Argv: []string{"true"}, Control: true, Net: []Net{
				{MAC: "52:54:00:12:34:56", Addr: "10.0.0.2/24", Gateway: "10.0.0.1", DNS: []string{"10.0.0.1"}, MTU: 1400},
				{MAC: "52:54:00:12:34:57"},
			}},
			"vessel.cmd=" + b64(`["true"]`) + " vessel.tty=0 vessel.ctl=1 vessel.net=" +
				b64(`[{"mac":"52:54:00:12:34:56","addr":"10.0.0.2/24","gw":"10.0.0.1","dns":["10.0.0.1"],"mtu":1400},{"mac":"52:54:00:12:34:57"}]`),
		},
	} {
		got, err := Encode(tc.spec)
		if err != nil {
			t.Fatalf("Encode(%+v): %v", tc.spec, err)
		}
		if got != tc.want {
			t.Errorf("Encode(%+v) = %q, want %q", tc.spec, got, tc.want)
		}
	}
}

// TestDecodeEmpty checks that empty lists decode as nil, as Encode leaves
// them out (so a decoded Spec encodes and decodes to itself).
func TestDecodeEmpty(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Spec
	}{
		{"vessel.cmd=" + b64(`[]`), Spec{}},
		{"vessel.cmd=" + b64(`null`), Spec{}},
		{"vessel.cmd=" + b64(`["ls"]`) + " vessel.cmd=" + b64(`[]`), Spec{}},
		{"vessel.net=" + b64(`[]`), Spec{}},
		{"vessel.net=" + b64(`null`), Spec{}},
		{"vessel.net=" + b64(`[{"mac":"52:54:00:12:34:56","dns":[]}]`), Spec{Net: []Net{{MAC: "52:54:00:12:34:56"}}}},
		// Unknown fields are ignored (a newer host, an older init).
		{"vessel.net=" + b64(`[{"mac":"52:54:00:12:34:56","future":true}]`), Spec{Net: []Net{{MAC: "52:54:00:12:34:56"}}}},
		{"vessel.net=" + b64(`[{"mac":"52:54:00:12:34:56","addrs":[],"routes":[]}]`), Spec{Net: []Net{{MAC: "52:54:00:12:34:56"}}}},
		// The last vessel.net wins.
		{"vessel.net=" + b64(`[{"mac":"52:54:00:12:34:56"}]`) + " vessel.net=" + b64(`[{"mac":"52:54:00:12:34:57"}]`), Spec{Net: []Net{{MAC: "52:54:00:12:34:57"}}}},
	} {
		got, err := Decode(tc.in)
		if err != nil {
			t.Errorf("Decode(%q): %v", tc.in, err)
			continue
		}
		if !reflect.DeepEqual(got, tc.want) {
			t.Errorf("Decode(%q) = %#v, want %#v", tc.in, got, tc.want)
		}
	}
}

func TestDecodeMalformed(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   string
		want error
	}{
		{"cmd not base64", "vessel.cmd=!!!", ErrBadCmd},
		{"cmd object", "vessel.cmd=" + b64(`{}`), ErrBadCmd},
		{"cmd numbers", "vessel.cmd=" + b64(`[1,2]`), ErrBadCmd},
		{"cmd padded", "vessel.cmd=" + base64.URLEncoding.EncodeToString([]byte(`["ls","-l"]`)), ErrBadCmd},

		{"net not base64", "vessel.net=***", ErrBadNet},
		{"net padded", "vessel.net=" + base64.URLEncoding.EncodeToString([]byte(`[{"mac":"52:54:00:12:34:56"}]`)), ErrBadNet},
		{"net standard alphabet", "vessel.net=" + base64.RawStdEncoding.EncodeToString([]byte(`[{"mac":"52:54:00:12:34:56","x":"~~~?"}]`)), ErrBadNet},
		{"net not JSON", "vessel.net=" + b64(`mac=52:54:00:12:34:56`), ErrBadNet},
		{"net object", "vessel.net=" + b64(`{"mac":"52:54:00:12:34:56"}`), ErrBadNet},
		{"net truncated", "vessel.net=" + b64(`[{"mac":"52:54:00:12:34:56"`), ErrBadNet},
		{"mac missing", "vessel.net=" + b64(`[{}]`), ErrBadNet},
		{"null element", "vessel.net=" + b64(`[null]`), ErrBadNet},
		{"mac not a string", "vessel.net=" + b64(`[{"mac":1}]`), ErrBadNet},
		{"mac malformed", "vessel.net=" + b64(`[{"mac":"x"}]`), ErrBadNet},
		{"mac short", "vessel.net=" + b64(`[{"mac":"52:54:00:12:34"}]`), ErrBadNet},
		{"addr without prefix", "vessel.net=" + b64(`[{"mac":"52:54:00:12:34:56","addr":"10.0.0.2"}]`), ErrBadNet},
		{"addr prefix too long", "vessel.net=" + b64(`[{"mac":"52:54:00:12:34:56","addr":"10.0.0.2/33"}]`), ErrBadNet},
		{"addr a name", "vessel.net=" + b64(`[{"mac":"52:54:00:12:34:56","addr":"host/24"}]`), ErrBadNet},
		{"gw a name", "vessel.net=" + b64(`[{"mac":"52:54:00:12:34:56","addr":"10.0.0.2/24","gw":"gw"}]`), ErrBadNet},
		{"gw with prefix", "vessel.net=" + b64(`[{"mac":"52:54:00:12:34:56","addr":"10.0.0.2/24","gw":"10.0.0.1/24"}]`), ErrBadNet},
		{"dns short", "vessel.net=" + b64(`[{"mac":"52:54:00:12:34:56","dns":["1.1.1"]}]`), ErrBadNet},
		{"dns empty", "vessel.net=" + b64(`[{"mac":"52:54:00:12:34:56","dns":[""]}]`), ErrBadNet},
		{"dns not a list", "vessel.net=" + b64(`[{"mac":"52:54:00:12:34:56","dns":"1.1.1.1"}]`), ErrBadNet},
		{"mtu 67", "vessel.net=" + b64(`[{"mac":"52:54:00:12:34:56","mtu":67}]`), ErrBadNet},
		{"mtu 65536", "vessel.net=" + b64(`[{"mac":"52:54:00:12:34:56","mtu":65536}]`), ErrBadNet},
		{"mtu negative", "vessel.net=" + b64(`[{"mac":"52:54:00:12:34:56","mtu":-1}]`), ErrBadNet},
		{"mtu not a number", "vessel.net=" + b64(`[{"mac":"52:54:00:12:34:56","mtu":"1500"}]`), ErrBadNet},
		{"addrs not a prefix", "vessel.net=" + b64(`[{"mac":"52:54:00:12:34:56","addrs":["10.0.0.2"]}]`), ErrBadNet},
		{"addrs not a list", "vessel.net=" + b64(`[{"mac":"52:54:00:12:34:56","addrs":"10.0.0.2/24"}]`), ErrBadNet},
		{"route dst missing", "vessel.net=" + b64(`[{"mac":"52:54:00:12:34:56","routes":[{"gw":"10.0.0.1"}]}]`), ErrBadNet},
		{"route dst an address", "vessel.net=" + b64(`[{"mac":"52:54:00:12:34:56","routes":[{"dst":"10.1.0.0"}]}]`), ErrBadNet},
		{"route gw a name", "vessel.net=" + b64(`[{"mac":"52:54:00:12:34:56","routes":[{"dst":"10.1.0.0/16","gw":"router"}]}]`), ErrBadNet},
		{"route gw of the other family", "vessel.net=" + b64(`[{"mac":"52:54:00:12:34:56","routes":[{"dst":"::/0","gw":"10.0.0.1"}]}]`), ErrBadNet},
		{"too many addrs", "vessel.net=" + b64(`[{"mac":"52:54:00:12:34:56","addrs":[`+strings.Repeat(`"10.0.0.2/24",`, MaxAddrs)+`"10.0.0.3/24"]}]`), ErrBadNet},
		{"too many routes", "vessel.net=" + b64(`[{"mac":"52:54:00:12:34:56","routes":[`+strings.Repeat(`{"dst":"10.1.0.0/16"},`, MaxRoutes)+`{"dst":"10.2.0.0/16"}]}]`), ErrBadNet},
		{"second interface bad", "vessel.net=" + b64(`[{"mac":"52:54:00:12:34:56"},{"mac":"52:54:00:12:34:57","addr":"10.0.0.2"}]`), ErrBadNet},
	} {
		spec, err := Decode("console=ttyS0 " + tc.in + " vessel.tty=1")
		if !errors.Is(err, tc.want) {
			t.Errorf("%s: Decode(%q) = %+v, %v; want %v", tc.name, tc.in, spec, err, tc.want)
		}
	}
}

func TestEncodeInvalid(t *testing.T) {
	const mac = "52:54:00:12:34:56"
	for _, tc := range []struct {
		name string
		net  Net
	}{
		{"mac malformed", Net{MAC: "nope"}},
		{"mac missing", Net{Addr: "10.0.0.2/24"}},
		{"addr without prefix", Net{MAC: mac, Addr: "10.0.0.2"}},
		{"gw a name", Net{MAC: mac, Addr: "10.0.0.2/24", Gateway: "gw"}},
		{"dns short", Net{MAC: mac, DNS: []string{"1.1.1.1", "1.1.1"}}},
		{"mtu 67", Net{MAC: mac, MTU: 67}},
		{"addrs without prefix", Net{MAC: mac, Addrs: []string{"10.0.0.2/24", "10.0.0.3"}}},
		{"route gw of the other family", Net{MAC: mac, Routes: []Route{{Dst: "10.1.0.0/16", Gateway: "2001:db8::1"}}}},
		{"mtu 65536", Net{MAC: mac, MTU: 65536}},
	} {
		if _, err := Encode(Spec{Net: []Net{{MAC: "52:54:00:00:00:01"}, tc.net}}); !errors.Is(err, ErrBadNet) {
			t.Errorf("%s: Encode(%+v) = %v, want ErrBadNet", tc.name, tc.net, err)
		}
	}
}

// FuzzDecode checks that Decode never panics, and that whatever it
// accepts encodes and decodes to itself.
func FuzzDecode(f *testing.F) {
	f.Add("vessel.cmd=WyJscyJd vessel.tty=1")
	f.Add("console=ttyS0 vessel.tty=0 vessel.ctl=1 vessel.net=" + b64(`[{"mac":"52:54:00:12:34:56"}]`))
	f.Add("vessel.net=" + b64(`[{"mac":"52:54:00:12:34:56","addr":"10.0.0.2/24","gw":"10.0.0.1","dns":["10.0.0.1","2001:db8::1"],"mtu":1400},{"mac":"52:54:00:12:34:57"}]`))
	f.Add("vessel.net=" + b64(`[{"mac":"52:54:00:12:34:56","dns":[]}]`))
	f.Add("vessel.net=" + b64(`[null]`))
	f.Add("vessel.net=" + b64(`[{"mac":"52:54:00:12:34:56","addrs":["2001:db8::2/64"],"static":true,"routes":[{"dst":"::/0","gw":"2001:db8::1"},{"dst":"169.254.1.1/32"}]}]`))
	f.Add("vessel.net=" + b64(`[{"mac":"52:54:00:12:34:56","mtu":65536}]`))
	f.Fuzz(func(t *testing.T, s string) {
		spec, err := Decode(s)
		if err != nil {
			if !errors.Is(err, ErrBadCmd) && !errors.Is(err, ErrBadNet) {
				t.Fatalf("Decode(%q): error %v wraps neither sentinel", s, err)
			}
			return
		}
		enc, err := Encode(spec)
		if err != nil {
			t.Fatalf("Encode of decoded %+v: %v", spec, err)
		}
		again, err := Decode(enc)
		if err != nil || !reflect.DeepEqual(again, spec) {
			t.Fatalf("re-decode of %q: %+v, %v; want %+v", enc, again, err, spec)
		}
	})
}
