package tcptest

import (
	"io"
	"net"
	"sync"
	"testing"
	"time"
)

// Timeout bounds the waits of Dial and of checks whose ctx has no
// deadline: generous for a loaded machine, yet a hang fails rather than
// stalls.
const Timeout = 20 * time.Second

// Server is a TCP server on 127.0.0.1 (or any net.Listener, see Serve) serving each connection with a
// handler on a goroutine of its own; the connection is closed when the
// handler returns. Make it with NewServer.
type Server struct {
	ln     net.Listener
	handle func(net.Conn)

	mu       sync.Mutex
	conns    map[net.Conn]struct{}
	accepted int
	closed   bool
	wg       sync.WaitGroup // the accept loop and one goroutine per connection
	once     sync.Once
}

// NewServer starts a Server on 127.0.0.1:0 that serves connections with
// handle, and registers its Close with t.Cleanup.
func NewServer(t testing.TB, handle func(net.Conn)) *Server {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("tcptest: listen: %v", err)
	}
	return Serve(t, ln, handle)
}

// Serve is NewServer on a listener the caller made (a Unix socket, a
// given address); the Server owns ln and closes it.
func Serve(t testing.TB, ln net.Listener, handle func(net.Conn)) *Server {
	s := &Server{ln: ln, handle: handle, conns: map[net.Conn]struct{}{}}
	s.wg.Add(1)
	go s.serve()
	t.Cleanup(s.Close)
	return s
}

// EchoServer starts a Server that serves every connection with Echo.
func EchoServer(t testing.TB) *Server {
	t.Helper()
	return NewServer(t, Echo)
}

func (s *Server) serve() {
	defer s.wg.Done()
	for {
		c, err := s.ln.Accept()
		if err != nil {
			return // closed (on a loopback listener nothing else is expected)
		}
		s.mu.Lock()
		if s.closed { // accepted just before Close: Close did not see it
			s.mu.Unlock()
			c.Close()
			return
		}
		s.conns[c] = struct{}{}
		s.accepted++
		s.wg.Add(1) // under mu: Close's Wait comes after it took mu
		s.mu.Unlock()
		go func() {
			defer s.wg.Done()
			s.handle(c)
			c.Close()
			s.mu.Lock()
			delete(s.conns, c)
			s.mu.Unlock()
		}()
	}
}

// Addr returns the server's address (host:port for TCP).
func (s *Server) Addr() string { return s.ln.Addr().String() }

// Accepted returns how many connections the server has accepted.
func (s *Server) Accepted() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.accepted
}

// Close stops accepting, closes the connections being served and waits
// for the handlers to return (a handler must return once its connection
// is closed). It is idempotent; t.Cleanup calls it.
func (s *Server) Close() {
	s.once.Do(func() {
		s.ln.Close()
		s.mu.Lock()
		s.closed = true
		for c := range s.conns {
			c.Close()
		}
		s.mu.Unlock()
		s.wg.Wait()
	})
}

// Echo serves c by writing back what it reads until EOF, then half-closes
// c (when it is a TCP connection) so that the peer reads EOF once it has
// the whole echo.
func Echo(c net.Conn) {
	io.Copy(c, c)
	if hc, ok := c.(interface{ CloseWrite() error }); ok {
		hc.CloseWrite()
	}
}

// Dial connects to addr within Timeout and returns the connection with a
// deadline Timeout from now; t.Cleanup closes it.
func Dial(t testing.TB, addr string) *net.TCPConn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, Timeout)
	if err != nil {
		t.Fatalf("tcptest: dial %s: %v", addr, err)
	}
	c.SetDeadline(time.Now().Add(Timeout))
	t.Cleanup(func() { c.Close() })
	return c.(*net.TCPConn)
}
