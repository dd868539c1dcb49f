//go:build js && wasm

// Command wasm is the browser terminal's SSH client (package webssh)
// compiled to WebAssembly: the console's terminal page loads it as
// /console/static/sshclient.wasm. It sets the global sectunSSH:
//
//	sectunSSH.connect({
//	  url,                 // wss://host/tunnel?local-proxy-mode=source
//	  service,             // optional service ID
//	  headers,             // optional, Node only (undici's WebSocket)
//	  user, password, privateKey, passphrase, cols, rows,
//	  onStatus(text), onData(Uint8Array), onHostKey(type, fp) -> Promise<bool>,
//	  onEnd(message, isError),
//	}) -> {write(string|Uint8Array), resize(cols, rows), close()}
//
// The access token goes in the awsiot-tunnel-token cookie, set by the
// page before connect (a browser cannot set WebSocket headers).
//
// Rebuild with go generate ./internal/console (scripts/build-wasm.sh).
package main

import (
	"errors"
	"fmt"
	"sync"
	"syscall/js"

	"github.com/sectun/sectun/internal/console/webssh"
)

// subprotocols are offered highest first; the relay picks one.
var subprotocols = []any{"aws.iot.securetunneling-3.0", "aws.iot.securetunneling-2.0", "aws.iot.securetunneling-1.0"}

func main() {
	js.Global().Set("sectunSSH", js.ValueOf(map[string]any{
		"connect": js.FuncOf(connect),
		"ready":   true,
	}))
	select {}
}

// wsTransport is a browser WebSocket as a webssh.Transport.
type wsTransport struct {
	ws    js.Value
	mu    sync.Mutex
	queue [][]byte
	wake  chan struct{}
	err   error
	funcs []js.Func
}

func newTransport(url string, headers js.Value) (*wsTransport, string, error) {
	t := &wsTransport{wake: make(chan struct{}, 1)}
	ctor := js.Global().Get("WebSocket")
	if headers.Truthy() {
		t.ws = ctor.New(url, js.ValueOf(map[string]any{"protocols": subprotocols, "headers": headers}))
	} else {
		t.ws = ctor.New(url, js.ValueOf(subprotocols))
	}
	t.ws.Set("binaryType", "arraybuffer")
	opened := make(chan error, 1)
	t.on("open", func(js.Value) { opened <- nil })
	t.on("message", func(ev js.Value) {
		d := ev.Get("data")
		if d.Type() == js.TypeString {
			t.fail(errors.New("the relay sent a text message"))
			return
		}
		u := js.Global().Get("Uint8Array").New(d)
		b := make([]byte, u.Get("length").Int())
		js.CopyBytesToGo(b, u)
		t.mu.Lock()
		t.queue = append(t.queue, b)
		t.mu.Unlock()
		t.signal()
	})
	t.on("close", func(ev js.Value) {
		code, reason := ev.Get("code").Int(), ev.Get("reason").String()
		msg := fmt.Sprintf("the tunnel's WebSocket closed (code %d)", code)
		if reason != "" {
			msg = fmt.Sprintf("the tunnel's WebSocket closed: %s (code %d)", reason, code)
		}
		err := errors.New(msg)
		select {
		case opened <- err:
		default:
		}
		t.fail(err)
	})
	t.on("error", func(js.Value) {})
	if err := <-opened; err != nil {
		t.release()
		return nil, "", fmt.Errorf("could not connect to the tunnel (token used, rotated or wrong, tunnel closed, or the relay is unreachable): %w", err)
	}
	return t, t.ws.Get("protocol").String(), nil
}

func (t *wsTransport) on(name string, fn func(js.Value)) {
	f := js.FuncOf(func(_ js.Value, args []js.Value) any {
		fn(args[0])
		return nil
	})
	t.funcs = append(t.funcs, f)
	t.ws.Call("addEventListener", name, f)
}

func (t *wsTransport) signal() {
	select {
	case t.wake <- struct{}{}:
	default:
	}
}

func (t *wsTransport) fail(err error) {
	t.mu.Lock()
	if t.err == nil {
		t.err = err
	}
	t.mu.Unlock()
	t.signal()
}

func (t *wsTransport) Send(b []byte) error {
	t.mu.Lock()
	err := t.err
	t.mu.Unlock()
	if err != nil {
		return err
	}
	u := js.Global().Get("Uint8Array").New(len(b))
	js.CopyBytesToJS(u, b)
	t.ws.Call("send", u)
	return nil
}

func (t *wsTransport) Recv() ([]byte, error) {
	for {
		t.mu.Lock()
		if len(t.queue) > 0 {
			b := t.queue[0]
			t.queue[0] = nil
			t.queue = t.queue[1:]
			t.mu.Unlock()
			return b, nil
		}
		err := t.err
		t.mu.Unlock()
		if err != nil {
			return nil, err
		}
		<-t.wake
	}
}

func (t *wsTransport) Close() error {
	t.ws.Call("close", 1000, "closed by the user")
	return nil
}

func (t *wsTransport) release() {
	for _, f := range t.funcs {
		f.Release()
	}
}

// jsWriter passes output to onData.
type jsWriter struct{ fn js.Value }

func (w jsWriter) Write(p []byte) (int, error) {
	u := js.Global().Get("Uint8Array").New(len(p))
	js.CopyBytesToJS(u, p)
	w.fn.Invoke(u)
	return len(p), nil
}

func versionOf(proto string) int {
	switch proto {
	case "aws.iot.securetunneling-3.0":
		return 3
	case "aws.iot.securetunneling-2.0":
		return 2
	}
	return 1
}

// await waits for a JS promise's value (false when it rejects).
func await(p js.Value) js.Value {
	ch := make(chan js.Value, 1)
	var ok, fail js.Func
	ok = js.FuncOf(func(_ js.Value, a []js.Value) any { ch <- a[0]; return nil })
	fail = js.FuncOf(func(_ js.Value, a []js.Value) any { ch <- js.ValueOf(false); return nil })
	p.Call("then", ok, fail)
	v := <-ch
	ok.Release()
	fail.Release()
	return v
}

type session struct {
	input chan []byte // keystrokes, written in order by one goroutine
	mu    sync.Mutex
	shell *webssh.Shell
	st    *webssh.Stream
	ended bool
}

func connect(_ js.Value, args []js.Value) any {
	o := args[0]
	str := func(k string) string {
		if v := o.Get(k); v.Truthy() {
			return v.String()
		}
		return ""
	}
	intOf := func(k string) int {
		if v := o.Get(k); v.Truthy() {
			return v.Int()
		}
		return 0
	}
	status := func(s string) {
		if f := o.Get("onStatus"); f.Truthy() {
			f.Invoke(s)
		}
	}
	s := &session{input: make(chan []byte, 4096)}
	end := func(msg string, isErr bool) {
		s.mu.Lock()
		done := s.ended
		s.ended = true
		s.mu.Unlock()
		if !done {
			o.Get("onEnd").Invoke(msg, isErr)
		}
	}
	go func() {
		status("Connecting to the tunnel…")
		t, proto, err := newTransport(str("url"), o.Get("headers"))
		if err != nil {
			end(err.Error(), true)
			return
		}
		v := versionOf(proto)
		status(fmt.Sprintf("Connected to the relay (protocol V%d); opening the stream…", v))
		st, err := webssh.Open(t, webssh.Options{Version: v, Service: str("service")})
		if err != nil {
			t.Close()
			end(err.Error(), true)
			return
		}
		s.mu.Lock()
		s.st = st
		s.mu.Unlock()
		status("Stream open; SSH handshake with the device…")
		sh, err := webssh.StartShell(st, webssh.SSHConfig{
			User: str("user"), Password: str("password"), PrivateKey: []byte(str("privateKey")), Passphrase: str("passphrase"),
			Cols: intOf("cols"), Rows: intOf("rows"),
			HostKey: func(typ, fp string) bool {
				status("Waiting for you to confirm the host key…")
				return await(o.Get("onHostKey").Invoke(typ, fp)).Truthy()
			},
		}, jsWriter{o.Get("onData")})
		if err != nil {
			st.Close()
			end(err.Error(), true)
			return
		}
		s.mu.Lock()
		s.shell = sh
		closed := s.ended
		s.mu.Unlock()
		if closed {
			sh.Close()
			return
		}
		status(fmt.Sprintf("Connected (V%d, host key %s)", v, sh.HostKeyFingerprint))
		go func() {
			for {
				select {
				case b := <-s.input:
					if _, err := sh.Write(b); err != nil {
						return
					}
				case <-sh.Done():
					return
				}
			}
		}()
		<-sh.Done()
		st.Close()
		if err := sh.Err(); err != nil {
			end("The SSH session ended: "+err.Error(), true)
		} else {
			end("The SSH session ended.", false)
		}
	}()
	return js.ValueOf(map[string]any{
		"write": js.FuncOf(func(_ js.Value, a []js.Value) any {
			s.mu.Lock()
			sh := s.shell
			s.mu.Unlock()
			if sh == nil || len(a) == 0 {
				return nil
			}
			var b []byte
			if a[0].Type() == js.TypeString {
				b = []byte(a[0].String())
			} else {
				b = make([]byte, a[0].Get("length").Int())
				js.CopyBytesToGo(b, a[0])
			}
			select {
			case s.input <- b:
			default: // 4096 writes behind: the session is stuck
			}
			return nil
		}),
		"resize": js.FuncOf(func(_ js.Value, a []js.Value) any {
			s.mu.Lock()
			sh := s.shell
			s.mu.Unlock()
			if sh != nil && len(a) == 2 {
				go sh.Resize(a[0].Int(), a[1].Int())
			}
			return nil
		}),
		"close": js.FuncOf(func(js.Value, []js.Value) any {
			s.mu.Lock()
			sh, st := s.shell, s.st
			s.mu.Unlock()
			go func() {
				if sh != nil {
					sh.Close()
				}
				if st != nil {
					st.Close()
				}
				end("Disconnected.", false)
			}()
			return nil
		}),
	})
}
