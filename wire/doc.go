// Package wire implements the AWS IoT Secure Tunneling wire protocol: the
// protobuf Message exchanged by local proxies and the tunneling service, the
// 2-byte length-prefixed tunnel-frame stream carried inside WebSocket binary
// messages, and the protocol's limits and validity rules.
//
// The codec is hand-written on protowire and produces exactly the bytes that
// protobuf's own encoder produces for the schema in
// com.amazonaws.iot.securedtunneling.Message; decoding never copies the
// payload, which aliases the input buffer.
//
// Concurrency: Message values are plain data. A FrameReader or FrameWriter
// must be used by one goroutine at a time.
//
// Errors: decoding failures wrap ErrMalformed; oversized input wraps
// ErrTooLarge; rule violations found by Message.Validate are *RuleError values
// that wrap ErrInvalidMessage.
package wire
