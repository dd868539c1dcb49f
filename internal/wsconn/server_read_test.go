package wsconn

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/gorilla/websocket"
)

// clientFrame builds a masked client frame.
func clientFrame(fin bool, rsv, op byte, payload []byte, key [4]byte) []byte {
	b0 := op | rsv<<4
	if fin {
		b0 |= 0x80
	}
	f := []byte{b0}
	switch n := len(payload); {
	case n <= 125:
		f = append(f, 0x80|byte(n))
	case n <= 0xffff:
		f = append(f, 0x80|126, byte(n>>8), byte(n))
	default:
		f = append(f, 0x80|127)
		f = binary.BigEndian.AppendUint64(f, uint64(n))
	}
	f = append(f, key[:]...)
	for i, c := range payload {
		f = append(f, c^key[i&3])
	}
	return f
}

// serverFrame builds an unmasked server frame.
func serverFrame(fin bool, rsv, op byte, payload []byte) []byte {
	b0 := op | rsv<<4
	if fin {
		b0 |= 0x80
	}
	f := []byte{b0}
	switch n := len(payload); {
	case n <= 125:
		f = append(f, byte(n))
	case n <= 0xffff:
		f = append(f, 126, byte(n>>8), byte(n))
	default:
		f = append(f, 127)
		f = binary.BigEndian.AppendUint64(f, uint64(n))
	}
	return append(f, payload...)
}

// refEnd is how a reference parse of a client stream ends.
type refEnd struct {
	kind string // "more" (input ended), "text", "toobig", "protocol", "close"
	code int    // close
}

// refParse is a plain reference of the frame parser of a connection of
// the given role (a server reads masked frames, a client unmasked ones):
// the binary payload delivered and how the stream ends, and the control
// frames seen (their opcode and payload) before it.
func refParse(s []byte, role Role) (payload []byte, ctls []string, end refEnd) {
	masked := role == RoleServer
	inMsg := false
	msgLen := 0
	for {
		if len(s) < 2 {
			return payload, ctls, refEnd{kind: "more"}
		}
		b0, b1 := s[0], s[1]
		fin, rsv, op := b0&0x80 != 0, b0&0x70, b0&0x0f
		if rsv != 0 || (b1&0x80 != 0) != masked {
			return payload, ctls, refEnd{kind: "protocol"}
		}
		switch op {
		case 8, 9, 10:
			if !fin || b1&0x7f > 125 {
				return payload, ctls, refEnd{kind: "protocol"}
			}
		case 0:
			if !inMsg {
				return payload, ctls, refEnd{kind: "protocol"}
			}
		case 1, 2:
			if inMsg {
				return payload, ctls, refEnd{kind: "protocol"}
			}
		default:
			return payload, ctls, refEnd{kind: "protocol"}
		}
		hl := 2
		if masked {
			hl += 4
		}
		switch b1 & 0x7f {
		case 126:
			hl += 2
		case 127:
			hl += 8
		}
		if len(s) < hl {
			return payload, ctls, refEnd{kind: "more"}
		}
		var n uint64
		switch b1 & 0x7f {
		case 126:
			n = uint64(binary.BigEndian.Uint16(s[2:]))
		case 127:
			n = binary.BigEndian.Uint64(s[2:])
			if n>>63 != 0 {
				return payload, ctls, refEnd{kind: "protocol"}
			}
		default:
			n = uint64(b1 & 0x7f)
		}
		if op == 1 {
			return payload, ctls, refEnd{kind: "text"}
		}
		if op == 2 {
			msgLen = 0
		}
		if op <= 2 {
			if n > MaxMessageSize || uint64(msgLen)+n > MaxMessageSize {
				return payload, ctls, refEnd{kind: "toobig"}
			}
			msgLen += int(n)
			inMsg = !fin
		}
		key := []byte{0, 0, 0, 0}
		if masked {
			key = s[hl-4 : hl]
		}
		s = s[hl:]
		avail := min(uint64(len(s)), n)
		data := make([]byte, avail)
		for i := range data {
			data[i] = s[i] ^ key[i%4]
		}
		s = s[avail:]
		if op <= 2 {
			payload = append(payload, data...)
			if avail < n {
				return payload, ctls, refEnd{kind: "more"}
			}
			continue
		}
		if avail < n {
			return payload, ctls, refEnd{kind: "more"}
		}
		if op != 8 {
			ctls = append(ctls, string(rune('0'+op))+string(data))
			continue
		}
		code := 1005
		if len(data) == 1 {
			return payload, ctls, refEnd{kind: "protocol"}
		}
		if len(data) >= 2 {
			code = int(binary.BigEndian.Uint16(data))
			if !validCloseCode(code) || !utf8.Valid(data[2:]) {
				return payload, ctls, refEnd{kind: "protocol"}
			}
		}
		return payload, ctls, refEnd{kind: "close", code: code}
	}
}

// runFrameReader feeds s to a frameReader in chunks whose sizes come from
// splits (cycled; 0 means 1), the way Read does, and reports what
// refParse reports.
func runFrameReader(s, splits []byte, role Role) (payload []byte, ctls []string, end refEnd) {
	r := frameReader{role: role}
	buf := bytes.Clone(s) // parsed in place
	pos := 0
	for i := 0; pos < len(buf); i++ {
		size := len(buf) - pos
		if len(splits) > 0 {
			size = min(size, max(1, int(splits[i%len(splits)])*int(splits[i%len(splits)])))
		}
		chunk := buf[pos : pos+size]
		pos += size
		out, in := 0, 0
		for in < len(chunk) {
			var ev frameEvent
			var err error
			out, in, ev, err = r.parse(chunk, out, in, len(chunk))
			if err != nil {
				if !errors.Is(err, ErrProtocol) {
					panic("error not wrapping ErrProtocol: " + err.Error())
				}
				return append(payload, chunk[:out]...), ctls, refEnd{kind: "protocol"}
			}
			switch ev {
			case evText:
				return append(payload, chunk[:out]...), ctls, refEnd{kind: "text"}
			case evTooBig:
				return append(payload, chunk[:out]...), ctls, refEnd{kind: "toobig"}
			case evControl:
				p := r.ctl[:r.nctl]
				if r.op == opClose {
					code, _, err := closePayload(p)
					payload = append(payload, chunk[:out]...)
					if err != nil {
						return payload, ctls, refEnd{kind: "protocol"}
					}
					return payload, ctls, refEnd{kind: "close", code: code}
				}
				ctls = append(ctls, string(rune('0'+r.op))+string(p))
			}
		}
		payload = append(payload, chunk[:out]...)
	}
	return payload, ctls, refEnd{kind: "more"}
}

// seedStreams are valid and invalid streams for a connection of role
// (client frames for a server, server frames for a client): the fuzz
// corpus's seeds and the table of TestFrameReader.
func seedStreams(role Role) map[string][]byte {
	k := [4]byte{1, 2, 3, 4}
	clientFrame := clientFrame
	unmasked := []byte{0x82, 0x01, 'x'}
	lengthMSB := []byte{0x82, 0xff, 0x80, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4}
	if role == RoleClient {
		clientFrame = func(fin bool, rsv, op byte, payload []byte, _ [4]byte) []byte {
			return serverFrame(fin, rsv, op, payload)
		}
		unmasked = []byte{0x82, 0x81, 1, 2, 3, 4, 'x' ^ 1} // masked, here
		lengthMSB = []byte{0x82, 0x7f, 0x80, 0, 0, 0, 0, 0, 0, 0}
	}
	big := bytes.Repeat([]byte("0123456789abcdef"), 4200) // 67200 bytes: 64-bit length
	cat := func(fs ...[]byte) []byte { return bytes.Join(fs, nil) }
	return map[string][]byte{
		"binary":       clientFrame(true, 0, opBinary, []byte("hello"), k),
		"empty":        clientFrame(true, 0, opBinary, nil, k),
		"two":          cat(clientFrame(true, 0, opBinary, []byte("ab"), k), clientFrame(true, 0, opBinary, []byte("cde"), [4]byte{9, 8, 7, 6})),
		"16-bit":       clientFrame(true, 0, opBinary, bytes.Repeat([]byte{7}, 300), k),
		"64-bit":       clientFrame(true, 0, opBinary, big, k),
		"largest":      clientFrame(true, 0, opBinary, make([]byte, MaxMessageSize), k),
		"fragmented":   cat(clientFrame(false, 0, opBinary, []byte("frag"), k), clientFrame(false, 0, opContinuation, nil, k), clientFrame(true, 0, opContinuation, []byte("ment"), k)),
		"ping inside":  cat(clientFrame(false, 0, opBinary, []byte("fr"), k), clientFrame(true, 0, opPing, []byte("p"), k), clientFrame(true, 0, opContinuation, []byte("ag"), k)),
		"pong":         cat(clientFrame(true, 0, opPong, []byte("x"), k), clientFrame(true, 0, opBinary, []byte("y"), k)),
		"close":        cat(clientFrame(true, 0, opBinary, []byte("z"), k), clientFrame(true, 0, opClose, []byte{3, 232, 'b', 'y', 'e'}, k), clientFrame(true, 0, opBinary, []byte("after"), k)),
		"close empty":  clientFrame(true, 0, opClose, nil, k),
		"close 1 byte": clientFrame(true, 0, opClose, []byte{3}, k),
		"close 1005":   clientFrame(true, 0, opClose, []byte{3, 237}, k),
		"close utf8":   clientFrame(true, 0, opClose, []byte{3, 232, 0xff}, k),
		"text":         cat(clientFrame(true, 0, opBinary, []byte("ok"), k), clientFrame(true, 0, opText, []byte("hi"), k)),
		"too big":      clientFrame(true, 0, opBinary, make([]byte, MaxMessageSize+1), k),
		"too big frag": cat(clientFrame(false, 0, opBinary, make([]byte, 70000), k), clientFrame(true, 0, opContinuation, make([]byte, 70000), k)),
		"unmasked":     unmasked,
		"rsv1":         clientFrame(true, 4, opBinary, []byte("x"), k),
		"opcode 3":     clientFrame(true, 0, 3, []byte("x"), k),
		"cont alone":   clientFrame(true, 0, opContinuation, []byte("x"), k),
		"new in frag":  cat(clientFrame(false, 0, opBinary, []byte("a"), k), clientFrame(true, 0, opBinary, []byte("b"), k)),
		"frag ping":    clientFrame(false, 0, opPing, []byte("x"), k),
		"long ping":    clientFrame(true, 0, opPing, make([]byte, 126), k),
		"length msb":   lengthMSB,
		"partial":      clientFrame(true, 0, opBinary, []byte("partial payload"), k)[:12],
	}
}

func TestFrameReader(t *testing.T) {
	want := map[string]string{
		"binary": "more", "empty": "more", "two": "more", "16-bit": "more", "64-bit": "more",
		"largest": "more", "fragmented": "more", "ping inside": "more", "pong": "more",
		"close": "close", "close empty": "close", "close 1 byte": "protocol", "close 1005": "protocol",
		"close utf8": "protocol", "text": "text", "too big": "toobig", "too big frag": "toobig",
		"unmasked": "protocol", "rsv1": "protocol", "opcode 3": "protocol", "cont alone": "protocol",
		"new in frag": "protocol", "frag ping": "protocol", "long ping": "protocol",
		"length msb": "protocol", "partial": "more",
	}
	for _, role := range []Role{RoleServer, RoleClient} {
		for name, s := range seedStreams(role) {
			refP, refC, refE := refParse(s, role)
			if refE.kind != want[name] {
				t.Errorf("%v, %s: reference ends with %q, want %q", role, name, refE.kind, want[name])
			}
			for _, splits := range [][]byte{nil, {1}, {2, 3}, {5}, {40, 1, 7}} {
				p, c, e := runFrameReader(s, splits, role)
				if !bytes.Equal(p, refP) || e != refE || !equalStrings(c, refC) {
					t.Errorf("%v, %s, splits %v: %d bytes, controls %q, end %+v; want %d bytes, %q, %+v", role, name, splits, len(p), c, e, len(refP), refC, refE)
				}
			}
		}
	}
}

func equalStrings(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// FuzzServerFrames: the one frame parser, fed the stream in chunks of
// fuzzed sizes, agrees with the plain reference parser on the payload
// delivered, the control frames and how the stream ends, for both roles
// (each input is parsed as a server's input and as a client's).
func FuzzServerFrames(f *testing.F) {
	for _, role := range []Role{RoleServer, RoleClient} {
		for _, s := range seedStreams(role) {
			if len(s) < 4096 {
				f.Add(s, []byte{3, 1, 7})
			}
		}
	}
	f.Fuzz(func(t *testing.T, s, splits []byte) {
		for _, role := range []Role{RoleServer, RoleClient} {
			refP, refC, refE := refParse(s, role)
			p, c, e := runFrameReader(s, splits, role)
			if !bytes.Equal(p, refP) || e != refE || !equalStrings(c, refC) {
				t.Fatalf("%v, splits %v: %d bytes, controls %q, end %+v; want %d bytes, %q, %+v", role, splits, len(p), c, e, len(refP), refC, refE)
			}
		}
	})
}

// Protocol errors on a server connection end Read with ErrProtocol and
// close 1002 to the client; a fragmented message with a ping inside is
// read whole and the ping answered.
func TestServerProtocolErrors(t *testing.T) {
	k := [4]byte{5, 6, 7, 8}
	tests := []struct {
		name   string
		frames []byte
		code   int // the close code the client gets
		err    error
	}{
		{"unmasked", []byte{0x82, 0x01, 'x'}, CloseProtocolError, ErrProtocol},
		{"rsv1", clientFrame(true, 4, opBinary, []byte("x"), k), CloseProtocolError, ErrProtocol},
		{"opcode 3", clientFrame(true, 0, 3, []byte("x"), k), CloseProtocolError, ErrProtocol},
		{"continuation alone", clientFrame(true, 0, opContinuation, []byte("x"), k), CloseProtocolError, ErrProtocol},
		{"long ping", clientFrame(true, 0, opPing, make([]byte, 126), k), CloseProtocolError, ErrProtocol},
		{"close code 1005", clientFrame(true, 0, opClose, []byte{3, 237}, k), CloseProtocolError, ErrProtocol},
		{"close", clientFrame(true, 0, opClose, []byte{3, 233, 'x'}, k), CloseGoingAway, &CloseError{Code: CloseGoingAway, Reason: "x"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := make(chan error, 1)
			u := serve(t, func(c *Conn) {
				c.SetLiveness(5 * time.Second)
				_, err := io.ReadAll(c)
				got <- err
				c.Close(CloseNormal, "")
			})
			ctx, ws := dialRaw(t, u)
			ws.NetConn().SetDeadline(time.Now().Add(5 * time.Second))
			if _, err := ws.NetConn().Write(tc.frames); err != nil {
				t.Fatal(err)
			}
			select {
			case err := <-got:
				var ce *CloseError
				if errors.As(tc.err, &ce) {
					var gce *CloseError
					if !errors.As(err, &gce) || *gce != *ce {
						t.Fatalf("server read: %v, want %v", err, tc.err)
					}
				} else if !errors.Is(err, tc.err) {
					t.Fatalf("server read: %v, want %v", err, tc.err)
				}
			case <-ctx.Done():
				t.Fatal("server read did not end")
			}
			if _, _, err := ws.ReadMessage(); !websocket.IsCloseError(err, tc.code) {
				t.Fatalf("client got %v, want close %d", err, tc.code)
			}
		})
	}
	t.Run("fragmented with ping", func(t *testing.T) {
		got := make(chan []byte, 1)
		u := serve(t, func(c *Conn) {
			c.SetLiveness(5 * time.Second)
			b := make([]byte, 6)
			if _, err := io.ReadFull(c, b); err != nil {
				b = []byte(err.Error())
			}
			got <- b
			io.Copy(io.Discard, c) // until the client's close
			c.Close(CloseNormal, "")
		})
		ctx, ws := dialRaw(t, u)
		pongs := make(chan string, 1)
		ws.SetPongHandler(func(d string) error { pongs <- d; return nil })
		ws.NetConn().SetDeadline(time.Now().Add(5 * time.Second))
		stream := bytes.Join([][]byte{
			clientFrame(false, 0, opBinary, []byte("fr"), k),
			clientFrame(true, 0, opPing, []byte("ping!"), k),
			clientFrame(false, 0, opContinuation, []byte("agm"), k),
			clientFrame(true, 0, opContinuation, []byte("t"), k),
		}, nil)
		// Byte by byte: every header and payload split across reads.
		for i := range stream {
			if _, err := ws.NetConn().Write(stream[i : i+1]); err != nil {
				t.Fatal(err)
			}
		}
		if b := <-got; string(b) != "fragmt" {
			t.Fatalf("server read %q", b)
		}
		go ws.ReadMessage() // runs the pong handler
		select {
		case p := <-pongs:
			if p != "ping!" {
				t.Fatalf("pong %q", p)
			}
		case <-ctx.Done():
			t.Fatal("no pong")
		}
		ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(CloseNormal, ""), time.Now().Add(time.Second))
	})
}

// A client that drops the connection without a close frame ends the
// server's stream with a *CloseError 1006, as gorilla's reader reported
// it, after the data it sent.
func TestServerReadEOF(t *testing.T) {
	got := make(chan error, 1)
	data := make(chan []byte, 1)
	u := serve(t, func(c *Conn) {
		c.SetLiveness(5 * time.Second)
		b, err := io.ReadAll(c)
		data <- b
		got <- err
		c.Close(CloseNormal, "")
	})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ws, _, err := websocket.DefaultDialer.DialContext(ctx, u, nil)
	if err != nil {
		t.Fatal(err)
	}
	ws.WriteMessage(websocket.BinaryMessage, []byte("last words"))
	ws.NetConn().Close()
	select {
	case err := <-got:
		var ce *CloseError
		if !errors.As(err, &ce) || ce.Code != websocket.CloseAbnormalClosure {
			t.Fatalf("server read: %v, want close 1006", err)
		}
		if b := <-data; string(b) != "last words" {
			t.Fatalf("server read %q before the end", b)
		}
	case <-ctx.Done():
		t.Fatal("server read did not end")
	}
}
