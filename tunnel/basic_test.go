package tunnel

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

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

// TestNegotiatedOlderVersions: two sessions through a service that only
// speaks V2 or V1.
func TestNegotiatedOlderVersions(t *testing.T) {
	for _, v := range []int{2, 1} {
		t.Run(subprotocol(v), func(t *testing.T) {
			opts := fakeservice.Options{Versions: []int{v}}
			service := ""
			if v == 2 {
				opts.Services = []string{"SSH1"}
				service = "SSH1"
			}
			svc, src, dst := pair(t, opts, nil)
			if src.Version() != v || dst.Version() != v {
				t.Fatalf("versions %d and %d, want %d", src.Version(), dst.Version(), v)
			}
			// Without SERVICE_IDS (V1) Connect cannot know when the service
			// has registered the destination.
			if err := svc.WaitConnected(testCtx(t), fakeservice.Destination, true); err != nil {
				t.Fatal(err)
			}
			for range 3 { // one connection at a time, each a new stream
				a, b := dialAccept(t, src, dst, service)
				if b.ServiceID() != service {
					t.Fatalf("service %q", b.ServiceID())
				}
				writeAll(t, a, []byte("ping"))
				readN(t, b, 4)
				writeAll(t, b, []byte("pong"))
				readN(t, a, 4)
				a.Close()
				if _, err := readAll(t, b); err != nil {
					t.Fatal(err)
				}
			}
		})
	}
}

// TestChurn opens and closes many short connections concurrently and
// checks that the sessions end up holding none.
func TestChurn(t *testing.T) {
	_, src, dst := pair(t, fakeservice.Options{Services: []string{"SSH1", "HTTP1"}}, nil)
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
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 40 {
				svc := []string{"SSH1", "HTTP1"}[(g+i)%2]
				c, err := src.Dial(testCtx(t), svc)
				if err != nil {
					errs <- err
					return
				}
				msg := []byte(fmt.Sprintf("%d/%d", g, i))
				c.Write(msg)
				got := make([]byte, len(msg))
				c.SetReadDeadline(time.Now().Add(testTimeout))
				if _, err := io.ReadFull(c, got); err != nil || !bytes.Equal(got, msg) {
					errs <- fmt.Errorf("%s: %q, %v", msg, got, err)
					c.Close()
					return
				}
				c.Close()
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	deadline := time.Now().Add(testTimeout)
	for _, s := range []*Session{src, dst} {
		for {
			s.mu.Lock()
			n, ns := s.nconns, 0
			for _, st := range s.streams {
				ns += len(st.conns)
			}
			s.mu.Unlock()
			if n == 0 && ns == 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%v still holds %d connections (%d in streams)", s.cfg.Mode, n, ns)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
}
