// Package wire implements the AWS IoT Secure Tunneling wire protocol: the
// protobuf Message exchanged by local proxies and the tunneling service, the
// 2-byte length-prefixed tunnel-frame stream carried inside WebSocket binary
// messages, and the protocol's limits and validity rules.
//
// The codec is hand-written on protowire and produces exactly the bytes that
// protobuf's deterministic encoder produces for the schema
// com.amazonaws.iot.securedtunneling.Message. Decoding accepts exactly what
// protobuf accepts, except fields outside the schema or with the wrong wire
// type (protobuf keeps them as unknown fields) and payloads over
// MaxPayloadSize; both directions are differentially fuzzed against
// protoc-generated code under internal/oraclepb, which only the tests import.
// Decoding never copies the payload: Message.Payload aliases the input, with
// its capacity capped at the field's end. Service IDs must be valid UTF-8
// (proto3 strings): the decoder rejects anything else, the encoder does not
// check.
// The data path (Unmarshal reusing a Message, AppendMarshal into a buffer
// with room, FrameReader.Next, FrameWriter.Write) does not allocate.
//
// FrameReader reads frames from the byte stream of received WebSocket
// messages, whatever their boundaries, through one buffer of
// FrameHeaderSize+MaxMessageSize bytes allocated once; a frame's length is
// checked before its body is read. FrameWriter packs whole frames into
// WebSocket messages of at most MaxWebSocketMessageSize bytes and sends them
// when the next frame would not fit or on Flush.
//
// Message.Validate checks the protocol's per-message rules for a sender:
// the service checks what a local proxy sends with RoleSource or
// RoleDestination; a local proxy checks everything it reads from the service
// (the service's own messages and those relayed from the other end) with
// RoleService.
//
// Concurrency: Message values are plain data. A FrameReader or FrameWriter
// must be used by one goroutine at a time. What FrameReader.Next and
// NextFrame return is valid only until the next call.
//
// Errors: decoding failures and empty frames wrap ErrMalformed; anything over
// the protocol limits wraps ErrTooLarge; FrameReader returns io.EOF at a
// clean end of stream and io.ErrUnexpectedEOF inside a frame, and passes the
// underlying reader's other errors through; rule violations found by
// Message.Validate are *RuleError values that wrap ErrInvalidMessage.
package wire
