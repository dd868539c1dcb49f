package api

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"io"
	"log/slog"
	"mime"
	"net/http"
	"strings"
	"time"

	"github.com/sectun/sectun/internal/server/sigv4"
)

// operation handles one decoded API call. It returns the output shape (or
// an error) and the tunnel it acted on, for logs.
type operation func(s *Server, ctx context.Context, body []byte) (out any, tunnelID string, err error)

var operations = map[string]operation{
	"OpenTunnel":              (*Server).openTunnel,
	"CloseTunnel":             (*Server).closeTunnel,
	"DescribeTunnel":          (*Server).describeTunnel,
	"ListTunnels":             (*Server).listTunnels,
	"RotateTunnelAccessToken": (*Server).rotateTunnelAccessToken,
	"TagResource":             (*Server).tagResource,
	"UntagResource":           (*Server).untagResource,
	"ListTagsForResource":     (*Server).listTagsForResource,
}

// ServeHTTP answers one API request: POST / with X-Amz-Target
// "IoTSecuredTunneling.<Op>" and a JSON body, signed with SigV4 unless
// NoAuth.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	reqID := newUUID()
	w.Header().Set(headerRequestID, reqID)
	op, akid, tunnelID, err := s.serve(w, r)

	attrs := []slog.Attr{
		slog.String("request_id", reqID),
		slog.String("op", op),
		slog.Duration("duration", time.Since(start)),
	}
	if akid != "" {
		attrs = append(attrs, slog.String("access_key_id", akid))
	}
	if tunnelID != "" {
		attrs = append(attrs, slog.String("tunnel_id", tunnelID))
	}
	level := slog.LevelDebug
	switch op {
	case "OpenTunnel", "CloseTunnel", "RotateTunnelAccessToken":
		level = slog.LevelInfo
	}
	if ae := s.logResult(r.Context(), reqID, level, attrs, err); ae != nil {
		writeError(w, ae)
	}
}

// logResult logs the outcome of API request reqID, for ServeHTTP and
// Invoke alike: "api request" at okLevel when err is nil, else "api
// request failed" (at Error for a 5xx) with the code and status, and it
// returns the error the caller must answer. An error that is not an
// *apiError is a store or other internal failure: the client gets a
// generic error with the request ID; the log gets the cause.
func (s *Server) logResult(ctx context.Context, reqID string, okLevel slog.Level, attrs []slog.Attr, err error) *apiError {
	if err == nil {
		s.log.LogAttrs(ctx, okLevel, "api request", attrs...)
		return nil
	}
	var ae *apiError
	if !errors.As(err, &ae) {
		ae = storeFailure(reqID)
		attrs = append(attrs, slog.String("error", err.Error()))
	}
	attrs = append(attrs, slog.String("code", ae.code), slog.Int("status", ae.status))
	level := slog.LevelDebug
	if ae.status >= 500 {
		level = slog.LevelError
	} else {
		attrs = append(attrs, slog.String("message", ae.message))
	}
	s.log.LogAttrs(ctx, level, "api request failed", attrs...)
	return ae
}

// serve runs the request and writes a success response; an error is left
// for ServeHTTP to write.
func (s *Server) serve(w http.ResponseWriter, r *http.Request) (op, akid, tunnelID string, err error) {
	if r.URL.Path != "/" {
		return "", "", "", errorf(CodeUnknownOperation, http.StatusNotFound, "No API at path %q: the IoTSecuredTunneling API is POST /", shorten(r.URL.Path))
	}
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		return "", "", "", errorf(CodeUnknownOperation, http.StatusMethodNotAllowed, "Method %s not allowed: the IoTSecuredTunneling API is POST /", shorten(r.Method))
	}
	if r.ContentLength > s.maxBody {
		return "", "", "", s.tooLarge()
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, s.maxBody))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return "", "", "", s.tooLarge()
		}
		return "", "", "", errorf(CodeSerialization, http.StatusBadRequest, "Reading the request body failed")
	}

	if s.verifier != nil {
		akid, err = s.verifier.Verify(r, body, s.now())
		if err != nil {
			var se *sigv4.Error
			if errors.As(err, &se) {
				return "", "", "", &apiError{code: se.Code, status: se.Status, message: se.Message}
			}
			return "", "", "", err
		}
	}

	target := r.Header.Get(headerTarget)
	name, ok := strings.CutPrefix(target, targetPrefix)
	fn := operations[name]
	if !ok || fn == nil {
		return "", akid, "", errorf(CodeUnknownOperation, http.StatusBadRequest, "Unknown operation %q: X-Amz-Target must be IoTSecuredTunneling.<Operation>", shorten(target))
	}
	if ct := r.Header.Get("Content-Type"); ct != "" {
		mt, _, err := mime.ParseMediaType(ct)
		if err != nil || (mt != contentTypeAmzJSON11 && mt != "application/x-amz-json-1.0" && mt != "application/json") {
			return name, akid, "", errorf(CodeSerialization, http.StatusBadRequest, "Content-Type must be %s", contentTypeAmzJSON11)
		}
	}
	out, tunnelID, err := fn(s, r.Context(), body)
	if err != nil {
		return name, akid, tunnelID, err
	}
	writeJSON(w, out)
	return name, akid, tunnelID, nil
}

func (s *Server) tooLarge() *apiError {
	return errorf(CodeRequestTooLarge, http.StatusRequestEntityTooLarge, "Request body larger than %d bytes", s.maxBody)
}

// newUUID returns a random (version 4) UUID.
func newUUID() string {
	var b [16]byte
	rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	var out [36]byte
	hex.Encode(out[0:8], b[0:4])
	out[8] = '-'
	hex.Encode(out[9:13], b[4:6])
	out[13] = '-'
	hex.Encode(out[14:18], b[6:8])
	out[18] = '-'
	hex.Encode(out[19:23], b[8:10])
	out[23] = '-'
	hex.Encode(out[24:], b[10:])
	return string(out[:])
}
