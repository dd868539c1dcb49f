package broker

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestParseUsers(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    []User
		wantErr string
	}{
		{name: "empty", in: "", want: nil},
		{name: "devices and admin", in: "# accounts\n\ndev-1 pw1\n  dev-2\tpw2  \nops s3cret admin\n",
			want: []User{{Name: "dev-1", Password: "pw1"}, {Name: "dev-2", Password: "pw2"}, {Name: "ops", Password: "s3cret", Admin: true}}},
		{name: "admin name need not be a thing", in: "ops@example pw admin\n", want: []User{{Name: "ops@example", Password: "pw", Admin: true}}},
		{name: "one field", in: "dev-1\n", wantErr: "line 1"},
		{name: "bad role", in: "dev-1 pw root\n", wantErr: `third field must be "admin"`},
		{name: "four fields", in: "a b c d\n", wantErr: "4 fields"},
		{name: "device not a thing", in: "\n\ndev/1 pw\n", wantErr: "line 3"},
		{name: "duplicate", in: "a pw\na pw2\n", wantErr: "twice"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseUsers(strings.NewReader(tt.in))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("ParseUsers() error = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Fatalf("(-want +got):\n%s", diff)
			}
		})
	}
}

func TestParseUsersNoPasswordInErrors(t *testing.T) {
	_, err := ParseUsers(strings.NewReader("bad/name Sup3rSecret\n"))
	if err == nil || strings.Contains(err.Error(), "Sup3rSecret") {
		t.Fatalf("error %v", err)
	}
}

func TestReadUsersFile(t *testing.T) {
	p := filepath.Join(t.TempDir(), "users")
	if err := os.WriteFile(p, []byte("dev-1 pw\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	u, err := ReadUsersFile(p)
	if err != nil || len(u) != 1 || u[0].Name != "dev-1" {
		t.Fatalf("ReadUsersFile = %v, %v", u, err)
	}
	if _, err := ReadUsersFile(p + ".missing"); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("missing file: %v", err)
	}
}

func FuzzParseUsers(f *testing.F) {
	f.Add("dev-1 pw\nops pw admin\n")
	f.Add("# c\n\n a\tb \n")
	f.Add("a b c\n")
	f.Add("a b\na b\n")
	f.Fuzz(func(t *testing.T, in string) {
		users, err := ParseUsers(strings.NewReader(in))
		if err != nil {
			return
		}
		seen := map[string]bool{}
		for _, u := range users {
			if err := checkUser(u); err != nil {
				t.Fatalf("accepted an invalid user: %v", err)
			}
			if strings.ContainsAny(u.Name+u.Password, " \t\n") || seen[u.Name] {
				t.Fatalf("accepted %+v", u)
			}
			seen[u.Name] = true
		}
		if _, err := New(Config{Users: users}); err != nil {
			t.Fatalf("parsed users refused by New: %v", err)
		}
	})
}
