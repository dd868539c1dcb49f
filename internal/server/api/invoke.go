package api

import (
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"time"
)

// OpError is an API error returned by Invoke: the status, code and message
// the HTTP API would have answered.
type OpError struct {
	Status        int
	Code, Message string
}

func (e *OpError) Error() string { return e.Code + ": " + e.Message }

// Invoke runs the API operation op (an X-Amz-Target name such as
// "OpenTunnel") with a JSON request body, in process, for a caller already
// authenticated as principal (an access key ID), and returns the JSON
// response body. It is the same operation code ServeHTTP runs after the
// signature check; via names the caller in the log ("console"). Errors are
// *OpError; a store failure is an OpError with 503 ServiceUnavailable, its cause
// logged.
func (s *Server) Invoke(ctx context.Context, op string, body []byte, principal, via string) ([]byte, error) {
	start := time.Now()
	reqID := newUUID()
	attrs := []slog.Attr{
		slog.String("request_id", reqID),
		slog.String("op", op),
		slog.String("via", via),
		slog.String("access_key_id", principal),
	}
	fn := operations[op]
	var out any
	var tunnelID string
	var err error
	if fn == nil {
		err = errorf(CodeUnknownOperation, http.StatusBadRequest, "Unknown operation %q", shorten(op))
	} else {
		out, tunnelID, err = fn(s, ctx, body)
	}
	attrs = append(attrs, slog.Duration("duration", time.Since(start)))
	if tunnelID != "" {
		attrs = append(attrs, slog.String("tunnel_id", tunnelID))
	}
	var b []byte
	if err == nil {
		b, err = json.Marshal(out)
	}
	level := slog.LevelDebug
	switch op {
	case "OpenTunnel", "CloseTunnel", "RotateTunnelAccessToken", "TagResource", "UntagResource":
		level = slog.LevelInfo
	}
	if ae := s.logResult(ctx, reqID, level, attrs, err); ae != nil {
		return nil, &OpError{Status: ae.status, Code: ae.code, Message: ae.message}
	}
	return b, nil
}
