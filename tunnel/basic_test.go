package tunnel

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"sync"
	"testing"

	"github.com/sectun/sectun/tunnel/internal/fakeservice"
)

func TestDataBothWays(t *testing.T) {
	_, src, dst := pair(t, fakeservice.Options{Services: []string{"SSH1", "HTTP1"}}, nil)
	if got := src.Services(); fmt.Sprint(got) != "[SSH1 HTTP1]" {
		t.Fatalf("Services = %v", got)
	}
	if v := src.Version(); v != 3 {
		t.Fatalf("Version = %d", v)
	}
	c1, c2 := dialAccept(t, src, dst, "SSH1")
	if c2.ServiceID() != "SSH1" || c2.StreamID() != 1 || c2.ConnectionID() != 1 {
		t.Fatalf("accepted %v", c2.LocalAddr())
	}
	writeAll(t, c1, []byte("hello"))
	if got := readN(t, c2, 5); string(got) != "hello" {
		t.Fatalf("got %q", got)
	}
	writeAll(t, c2, []byte("world!"))
	if got := readN(t, c1, 6); string(got) != "world!" {
		t.Fatalf("got %q", got)
	}
	c1.Close()
	b, err := readAll(t, c2)
	if err != nil || len(b) != 0 {
		t.Fatalf("after close: %q, %v", b, err)
	}
}

// TestManyConns runs several simultaneous connections on several services
// in both directions and checks every byte.
func TestManyConns(t *testing.T) {
	_, src, dst := pair(t, fakeservice.Options{Services: []string{"SSH1", "HTTP1", "VNC"}}, nil)
	const perService = 4
	const size = 300 << 10
	var wg sync.WaitGroup
	errs := make(chan error, 100)
	// Echo every accepted connection.
	go func() {
		for {
			c, err := dst.Accept(testCtx(t))
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				io.Copy(c, c)
			}()
		}
	}()
	for _, svc := range []string{"SSH1", "HTTP1", "VNC"} {
		for i := range perService {
			wg.Add(1)
			go func() {
				defer wg.Done()
				c, err := src.Dial(testCtx(t), svc)
				if err != nil {
					errs <- err
					return
				}
				defer c.Close()
				want := make([]byte, size)
				r := rand.New(rand.NewPCG(uint64(i), 7))
				for j := range want {
					want[j] = byte(r.Uint32())
				}
				go func() {
					c.Write(want)
				}()
				got := make([]byte, size)
				if _, err := io.ReadFull(c, got); err != nil {
					errs <- fmt.Errorf("%s/%d: %w", svc, i, err)
					return
				}
				if !bytes.Equal(got, want) {
					errs <- fmt.Errorf("%s/%d: data differs", svc, i)
				}
			}()
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	_ = errors.New
}
