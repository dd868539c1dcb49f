package rowcodec

import (
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/sectun/sectun/internal/store"
)

// valuesRow is a Scanner over column values as a driver would return
// them: nil for NULL, else a value assignable to the destination's
// element (or, for a pointer destination, to the pointed-to type).
type valuesRow []any

func (r valuesRow) Scan(dest ...any) error {
	if len(dest) != len(r) {
		return fmt.Errorf("scan: %d destinations for %d columns", len(dest), len(r))
	}
	for i, d := range dest {
		dv := reflect.ValueOf(d).Elem()
		if r[i] == nil {
			dv.SetZero()
			continue
		}
		v := reflect.ValueOf(r[i])
		if dv.Kind() == reflect.Pointer && dv.Type().Elem() == v.Type() {
			p := reflect.New(v.Type())
			p.Elem().Set(v)
			dv.Set(p)
			continue
		}
		if !v.Type().AssignableTo(dv.Type()) {
			return fmt.Errorf("scan: column %d: %T into %s", i, r[i], dv.Type())
		}
		dv.Set(v)
	}
	return nil
}

// valuesRows is a Rows over several rows, failing with err at the end.
type valuesRows struct {
	rows []valuesRow
	i    int
	err  error
}

func (r *valuesRows) Next() bool             { r.i++; return r.i <= len(r.rows) }
func (r *valuesRows) Scan(dest ...any) error { return r.rows[r.i-1].Scan(dest...) }
func (r *valuesRows) Err() error             { return r.err }

var codecs = []struct {
	name string
	// roundTrip writes t with the codec and reads it back.
	roundTrip func(t *store.Tunnel) (*store.Tunnel, error)
}{
	{"micros", func(t *store.Tunnel) (*store.Tunnel, error) {
		return Micros.Scan(valuesRow(Micros.Values(t)))
	}},
	{"time", func(t *store.Tunnel) (*store.Tunnel, error) {
		c := Codec[time.Time]{Put: func(t time.Time) time.Time { return t }, Get: time.Time.UTC}
		return c.Scan(valuesRow(c.Values(t)))
	}},
}

func fullTunnel() *store.Tunnel {
	at := time.Date(2025, 3, 4, 5, 6, 7, 123456000, time.FixedZone("IST", 5*3600+1800))
	h := func(b byte) []byte { return slices.Repeat([]byte{b}, HashLen) }
	return &store.Tunnel{
		ID: "t1", ARN: "arn:t1", Description: "d \u00e9", Status: store.StatusClosed,
		ThingName: "thing", Services: []string{"SSH", "RDP"}, LifetimeMinutes: 60,
		Tags:      []store.Tag{{Key: "k", Value: "v"}},
		CreatedAt: at, UpdatedAt: at.Add(time.Second), ExpiresAt: at.Add(time.Hour), ClosedAt: at.Add(time.Minute),
		Source:      store.Peer{TokenHash: h(1), ClientTokenHash: h(2), Consumed: true, Connected: true, UpdatedAt: at.Add(2 * time.Second)},
		Destination: store.Peer{TokenHash: h(3), ClientTokenHash: h(4), Consumed: true, UpdatedAt: at.Add(3 * time.Second)},
	}
}

func TestCodecRoundTrip(t *testing.T) {
	empty := &store.Tunnel{ID: "t2", Status: store.StatusOpen, Services: []string{}, Tags: []store.Tag{},
		CreatedAt: time.Unix(1, 0), UpdatedAt: time.Unix(2, 0), ExpiresAt: time.Unix(3, 0),
		Source: store.Peer{TokenHash: []byte{}}}
	for _, c := range codecs {
		for _, in := range []*store.Tunnel{fullTunnel(), empty} {
			t.Run(c.name+"/"+in.ID, func(t *testing.T) {
				if n := len(strings.Split(Columns, ",")); n != NumColumns || len(Micros.Values(in)) != n {
					t.Fatalf("%d columns, %d values, NumColumns %d", n, len(Micros.Values(in)), NumColumns)
				}
				got, err := c.roundTrip(in)
				if err != nil {
					t.Fatal(err)
				}
				want := *in
				Normalize(&want)
				if d := cmp.Diff(&want, got); d != "" {
					t.Errorf("round trip (-want +got):\n%s", d)
				}
			})
		}
	}
}

func TestScanErrors(t *testing.T) {
	noRows := errors.New("no rows")
	if _, err := Micros.Scan(scanErr{noRows}); err != noRows {
		t.Errorf("Scan error = %v, want the row's error as it is", err)
	}
	vals := Micros.Values(fullTunnel())
	vals[5] = []byte("{") // services
	if _, err := Micros.Scan(valuesRow(vals)); err == nil || !strings.Contains(err.Error(), "tunnel t1") {
		t.Errorf("corrupt services: %v, want an error naming the tunnel", err)
	}
	vals = Micros.Values(fullTunnel())
	vals[7] = []byte("[1]") // tags
	if _, err := Micros.Scan(valuesRow(vals)); err == nil || !strings.Contains(err.Error(), "tunnel t1") {
		t.Errorf("corrupt tags: %v, want an error naming the tunnel", err)
	}
}

type scanErr struct{ err error }

func (s scanErr) Scan(...any) error { return s.err }

func TestScanAll(t *testing.T) {
	a, b := fullTunnel(), fullTunnel()
	b.ID = "t2"
	rs := &valuesRows{rows: []valuesRow{Micros.Values(a), Micros.Values(b)}}
	ts, err := Micros.ScanAll(rs)
	if err != nil || len(ts) != 2 || ts[0].ID != "t1" || ts[1].ID != "t2" {
		t.Fatalf("ScanAll = %v, %v", ts, err)
	}
	fail := errors.New("connection lost")
	if _, err := Micros.ScanAll(&valuesRows{rows: []valuesRow{Micros.Values(a)}, err: fail}); err != fail {
		t.Errorf("ScanAll with a failing Rows = %v, want %v", err, fail)
	}
	if ts, err := Micros.ScanAll(&valuesRows{}); err != nil || ts != nil {
		t.Errorf("ScanAll of no rows = %v, %v", ts, err)
	}
}

func TestApply(t *testing.T) {
	fnErr := errors.New("fn failed")
	tests := []struct {
		name    string
		fn      func(*store.Tunnel) error
		wantErr error
	}{
		{"ok", func(t *store.Tunnel) error { t.Source.TokenHash = slices.Repeat([]byte{9}, HashLen); return nil }, nil},
		{"fn error as it is", func(*store.Tunnel) error { return fnErr }, fnErr},
		{"changed ID", func(t *store.Tunnel) error { t.ID = "t0"; return nil }, store.ErrInvalidTunnel},
		{"plaintext token", func(t *store.Tunnel) error { t.Source.TokenHash = []byte("plaintext"); return nil }, store.ErrInvalidTunnel},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tun := fullTunnel()
			src, dst := tun.Source.TokenHash, tun.Destination.TokenHash
			oldSrc, oldDst, err := Apply("t1", tun, tt.fn)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("Apply = %v, want %v", err, tt.wantErr)
				}
				return
			}
			if err != nil || !slices.Equal(oldSrc, src) || !slices.Equal(oldDst, dst) {
				t.Fatalf("Apply = %x, %x, %v; want the hashes from before fn", oldSrc, oldDst, err)
			}
		})
	}
}

func TestModeOf(t *testing.T) {
	tun := fullTunnel()
	if m := ModeOf(tun, tun.Source.TokenHash); m != store.ModeSource {
		t.Errorf("source hash: %s", m)
	}
	if m := ModeOf(tun, tun.Destination.TokenHash); m != store.ModeDestination {
		t.Errorf("destination hash: %s", m)
	}
}

func TestPage(t *testing.T) {
	ts := make([]*store.Tunnel, 4)
	for i := range ts {
		ts[i] = &store.Tunnel{ID: fmt.Sprint(i), CreatedAt: time.Unix(int64(100-i), 0)}
	}
	tests := []struct {
		n, limit int
		wantLen  int
		wantNext bool
	}{
		{4, 0, 4, false},
		{4, -1, 4, false},
		{4, 3, 3, true},
		{3, 3, 3, false},
		{0, 3, 0, false},
	}
	for _, tt := range tests {
		got, next := Page(ts[:tt.n], tt.limit)
		if len(got) != tt.wantLen || (next != "") != tt.wantNext {
			t.Errorf("Page(%d rows, limit %d) = %d rows, next %q", tt.n, tt.limit, len(got), next)
			continue
		}
		if next != "" {
			last := got[len(got)-1]
			us, id, err := ParseCursor(next)
			if err != nil || us != last.CreatedAt.UnixMicro() || id != last.ID {
				t.Errorf("Page cursor = %d %q %v, want the last row's", us, id, err)
			}
		}
	}
}

func TestTokenEdits(t *testing.T) {
	a, b, c := []byte("a"), []byte("b"), []byte("c")
	tests := []struct {
		name           string
		oldSrc, oldDst []byte
		src, dst       []byte
		want           []TokenEdit
	}{
		{"new tunnel", nil, nil, a, b, []TokenEdit{{store.ModeSource, a}, {store.ModeDestination, b}}},
		{"new, no destination", nil, nil, a, nil, []TokenEdit{{store.ModeSource, a}}},
		{"unchanged", a, b, a, b, nil},
		{"rotate source", a, b, c, b, []TokenEdit{{store.ModeSource, nil}, {store.ModeSource, c}}},
		{"swap: deletes first", a, b, b, a, []TokenEdit{{store.ModeSource, nil}, {store.ModeDestination, nil}, {store.ModeSource, b}, {store.ModeDestination, a}}},
		{"cleared", a, b, nil, b, []TokenEdit{{store.ModeSource, nil}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tun := &store.Tunnel{Source: store.Peer{TokenHash: tt.src}, Destination: store.Peer{TokenHash: tt.dst}}
			got := slices.Collect(TokenEdits(tun, tt.oldSrc, tt.oldDst))
			if d := cmp.Diff(tt.want, got); d != "" {
				t.Errorf("edits (-want +got):\n%s", d)
			}
			// Stopping early is allowed.
			for range TokenEdits(tun, tt.oldSrc, tt.oldDst) {
				break
			}
		})
	}
}

func BenchmarkScan(b *testing.B) {
	row := valuesRow(Micros.Values(fullTunnel()))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Micros.Scan(row); err != nil {
			b.Fatal(err)
		}
	}
}
