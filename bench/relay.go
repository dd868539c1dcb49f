package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"regexp"
	"sync"
	"syscall"
	"time"
)

// relayMain is the hidden "relay" subcommand: one hop of the baseline
// chain. It forwards every connection accepted on 127.0.0.1:0 to -target
// with io.Copy in both directions (half-closing as each side ends) until
// SIGTERM, and prints "relay listening on ADDR" once it accepts.
func relayMain(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("relay", flag.ContinueOnError)
	fs.SetOutput(stderr)
	target := fs.String("target", "", "address to forward to")
	if err := fs.Parse(args); err != nil || *target == "" {
		fmt.Fprintln(stderr, "usage: bench relay -target HOST:PORT")
		return 2
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Fprintln(stderr, "relay:", err)
		return 1
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	go func() {
		<-ctx.Done()
		ln.Close()
	}()
	fmt.Fprintln(stdout, "relay listening on", ln.Addr())
	var wg sync.WaitGroup
	var mu sync.Mutex
	open := map[net.Conn]bool{}
	for {
		c, err := ln.Accept()
		if err != nil {
			break
		}
		mu.Lock()
		open[c] = true
		mu.Unlock()
		wg.Go(func() {
			forward(c, *target)
			mu.Lock()
			delete(open, c)
			mu.Unlock()
		})
	}
	mu.Lock()
	for c := range open {
		c.Close()
	}
	mu.Unlock()
	wg.Wait()
	return 0
}

// forward copies between c and a new connection to target. On Linux
// io.Copy between two TCP sockets uses splice(2): this is the plainest
// relay Go offers.
func forward(c net.Conn, target string) {
	defer c.Close()
	u, err := net.DialTimeout("tcp", target, 10*time.Second)
	if err != nil {
		return
	}
	defer u.Close()
	done := make(chan struct{})
	go func() {
		io.Copy(u, c)
		u.(*net.TCPConn).CloseWrite()
		close(done)
	}()
	io.Copy(c, u)
	c.(*net.TCPConn).CloseWrite()
	<-done
}

var relayLine = regexp.MustCompile(`relay listening on (\S+)`)

// startRelayChain starts hops relay processes chained in front of target
// and returns them, first hop first, and the first hop's address.
func startRelayChain(ctx context.Context, ps *procs, target string, hops int) ([]*proc, string, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, "", err
	}
	chain := make([]*proc, hops)
	next := target
	for i := hops - 1; i >= 0; i-- {
		p, err := startProc(fmt.Sprintf("relay%d", i+1), exe, nil, "relay", "-target", next)
		if err != nil {
			return nil, "", err
		}
		ps.add(p)
		m, err := p.waitLine(ctx, relayLine, 30*time.Second)
		if err != nil {
			return nil, "", err
		}
		chain[i] = p
		next = m[1]
	}
	return chain, next, nil
}
