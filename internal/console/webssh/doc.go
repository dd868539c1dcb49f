// Package webssh is the browser terminal's SSH client, compiled to
// WebAssembly by ../wasm: the source end of a tunnel over one WebSocket
// (Transport), speaking protocol V1, V2 or V3 to the destination (Open),
// and an SSH session over the stream (StartShell, golang.org/x/crypto/ssh).
// It has no browser code, so it is tested natively against the real relay
// and a real sshd; the wasm bridge only moves bytes between it and the
// page. The SSH password and key stay in this code, in the page: tunneld
// relays the SSH session's ciphertext.
//
// Concurrency: a Stream may be read by one goroutine and written by
// another; Shell methods may be called from any goroutine.
//
// Errors: ErrStreamReset (wrapped) ends a Stream when the destination or
// the relay resets the stream; ErrNoService when the tunnel offers no
// service the client can use.
package webssh
