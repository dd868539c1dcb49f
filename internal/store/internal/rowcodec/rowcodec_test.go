package rowcodec

import (
	"errors"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/sectun/sectun/internal/store"
)

func TestCursorRoundTrip(t *testing.T) {
	tests := []struct {
		at time.Time
		id string
	}{
		{time.Date(2025, 1, 2, 3, 4, 5, 678901000, time.UTC), "3a1f0c2e-0000-4000-8000-000000000001"},
		{time.Unix(0, 0), "x"},
		{time.Date(1969, 1, 1, 0, 0, 0, 0, time.UTC), "before-epoch"},
		{time.Date(9999, 12, 31, 0, 0, 0, 0, time.UTC), "\u00e9\u6f22 with spaces"},
	}
	for _, tt := range tests {
		c := Cursor(tt.at, tt.id)
		us, id, err := ParseCursor(c)
		if err != nil || us != tt.at.UnixMicro() || id != tt.id {
			t.Errorf("ParseCursor(Cursor(%v, %q)) = %d, %q, %v", tt.at, tt.id, us, id, err)
		}
	}
	for _, bad := range []string{"", "!", "AAAAAAAAAAA", "AAAAAAAAAAA=", "not base64"} {
		if _, _, err := ParseCursor(bad); !errors.Is(err, store.ErrInvalidCursor) {
			t.Errorf("ParseCursor(%q) = %v, want ErrInvalidCursor", bad, err)
		}
	}
}

func FuzzParseCursor(f *testing.F) {
	f.Add(Cursor(time.Unix(1700000000, 123000), "id-1"))
	f.Add("")
	f.Add("AAAAAAAAAAA")
	f.Fuzz(func(t *testing.T, s string) {
		us, id, err := ParseCursor(s)
		if err != nil {
			if !errors.Is(err, store.ErrInvalidCursor) {
				t.Fatalf("error %v does not wrap ErrInvalidCursor", err)
			}
			return
		}
		// What parses re-encodes to a cursor that parses the same.
		us2, id2, err := ParseCursor(Cursor(FromMicro(us), id))
		if err != nil || us2 != us || id2 != id {
			t.Fatalf("re-encoded cursor: %d %q %v, want %d %q", us2, id2, err, us, id)
		}
	})
}

func TestSlicesRoundTrip(t *testing.T) {
	for _, s := range [][]string{nil, {}, {"SSH"}, {"SSH", "RDP", "\"quoted\""}} {
		got, err := ParseServices(Services(s))
		if err != nil {
			t.Fatal(err)
		}
		want := s
		if len(want) == 0 {
			want = nil
		}
		if d := cmp.Diff(want, got); d != "" {
			t.Errorf("services %q (-want +got):\n%s", s, d)
		}
	}
	for _, tags := range [][]store.Tag{nil, {}, {{Key: "k", Value: ""}}, {{Key: "a", Value: "b"}, {Key: "", Value: "\u00e9"}}} {
		got, err := ParseTags(Tags(tags))
		if err != nil {
			t.Fatal(err)
		}
		want := tags
		if len(want) == 0 {
			want = nil
		}
		if d := cmp.Diff(want, got); d != "" {
			t.Errorf("tags %v (-want +got):\n%s", tags, d)
		}
	}
	if _, err := ParseServices([]byte("{")); err == nil {
		t.Error("ParseServices accepted corrupt JSON")
	}
	if _, err := ParseTags([]byte("[1]")); err == nil {
		t.Error("ParseTags accepted corrupt JSON")
	}
}

func TestTime(t *testing.T) {
	in := time.Date(2025, 1, 2, 3, 4, 5, 678901234, time.FixedZone("X", 3600))
	got := Time(in)
	if got.Location() != time.UTC || !got.Equal(in.Truncate(time.Microsecond)) {
		t.Errorf("Time(%v) = %v", in, got)
	}
	if !FromMicro(Micro(in)).Equal(got) {
		t.Errorf("FromMicro(Micro(t)) = %v, want %v (Micro must floor like Truncate)", FromMicro(Micro(in)), got)
	}
	before := time.Date(1969, 12, 31, 23, 59, 59, 999999999, time.UTC)
	if !FromMicro(Micro(before)).Equal(Time(before)) {
		t.Errorf("before epoch: FromMicro(Micro) = %v, Time = %v", FromMicro(Micro(before)), Time(before))
	}
	if !Time(time.Time{}).IsZero() || !FromNullMicro(nil).IsZero() {
		t.Error("zero time not kept")
	}
}
