package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"time"
)

// AWS error codes the API answers with.
const (
	CodeValidation        = "ValidationException"
	CodeResourceNotFound  = "ResourceNotFoundException"
	CodeLimitExceeded     = "LimitExceededException"
	CodeUnknownOperation  = "UnknownOperationException"
	CodeSerialization     = "SerializationException"
	CodeRequestTooLarge   = "RequestEntityTooLargeException"
	CodeInternalFailure   = "InternalFailure"
	CodeUnavailable       = "ServiceUnavailable"
	contentTypeAmzJSON11  = "application/x-amz-json-1.1"
	targetPrefix          = "IoTSecuredTunneling."
	headerRequestID       = "X-Amzn-RequestId"
	headerErrorType       = "X-Amzn-ErrorType"
	headerTarget          = "X-Amz-Target"
	maxValueInMessage     = 100
	maxValidationMessages = 10
)

// apiError is an error answered to the client.
type apiError struct {
	code    string
	status  int
	message string
}

func (e *apiError) Error() string { return e.code + ": " + e.message }

func errorf(code string, status int, format string, args ...any) *apiError {
	return &apiError{code: code, status: status, message: fmt.Sprintf(format, args...)}
}

func notFound(id string) *apiError {
	return errorf(CodeResourceNotFound, http.StatusBadRequest, "Tunnel %s not found", id)
}

// epochTime is a timestamp on the wire: epoch seconds with a fractional
// part (the JSON protocol's default timestamp format).
type epochTime time.Time

func (t epochTime) MarshalJSON() ([]byte, error) {
	ms := time.Time(t).UnixMilli()
	sign := ""
	if ms < 0 {
		sign, ms = "-", -ms
	}
	return fmt.Appendf(nil, "%s%d.%03d", sign, ms/1000, ms%1000), nil
}

// Request shapes. Pointers tell "absent or null" from zero values, since
// the model distinguishes them (required members, min lengths).

type tagIn struct {
	Key   *string `json:"key"`
	Value *string `json:"value"`
}

type destinationConfigIn struct {
	ThingName *string  `json:"thingName"`
	Services  []string `json:"services"`
}

type timeoutConfigIn struct {
	MaxLifetimeTimeoutMinutes *int `json:"maxLifetimeTimeoutMinutes"`
}

type openTunnelIn struct {
	Description       *string              `json:"description"`
	Tags              []tagIn              `json:"tags"`
	DestinationConfig *destinationConfigIn `json:"destinationConfig"`
	TimeoutConfig     *timeoutConfigIn     `json:"timeoutConfig"`
}

type tunnelIDIn struct {
	TunnelID *string `json:"tunnelId"`
}

type closeTunnelIn struct {
	TunnelID *string `json:"tunnelId"`
	Delete   *bool   `json:"delete"`
}

type listTunnelsIn struct {
	ThingName  *string `json:"thingName"`
	MaxResults *int    `json:"maxResults"`
	NextToken  *string `json:"nextToken"`
}

type rotateIn struct {
	TunnelID          *string              `json:"tunnelId"`
	ClientMode        *string              `json:"clientMode"`
	DestinationConfig *destinationConfigIn `json:"destinationConfig"`
}

type tagResourceIn struct {
	ResourceArn *string `json:"resourceArn"`
	Tags        []tagIn `json:"tags"`
}

type untagResourceIn struct {
	ResourceArn *string   `json:"resourceArn"`
	TagKeys     *[]string `json:"tagKeys"`
}

type listTagsIn struct {
	ResourceArn *string `json:"resourceArn"`
}

// Response shapes.

type tagOut struct {
	Key   string `json:"key"`
	Value string `json:"value"`
}

type destinationConfigOut struct {
	ThingName string   `json:"thingName,omitempty"`
	Services  []string `json:"services"`
}

type timeoutConfigOut struct {
	MaxLifetimeTimeoutMinutes int `json:"maxLifetimeTimeoutMinutes"`
}

type connectionStateOut struct {
	Status        string    `json:"status"`
	LastUpdatedAt epochTime `json:"lastUpdatedAt"`
}

type tunnelOut struct {
	TunnelID                   string                `json:"tunnelId"`
	TunnelArn                  string                `json:"tunnelArn"`
	Status                     string                `json:"status"`
	SourceConnectionState      *connectionStateOut   `json:"sourceConnectionState"`
	DestinationConnectionState *connectionStateOut   `json:"destinationConnectionState"`
	Description                string                `json:"description,omitempty"`
	DestinationConfig          *destinationConfigOut `json:"destinationConfig,omitempty"`
	TimeoutConfig              *timeoutConfigOut     `json:"timeoutConfig"`
	Tags                       []tagOut              `json:"tags,omitempty"`
	CreatedAt                  epochTime             `json:"createdAt"`
	LastUpdatedAt              epochTime             `json:"lastUpdatedAt"`
}

type tunnelSummaryOut struct {
	TunnelID      string    `json:"tunnelId"`
	TunnelArn     string    `json:"tunnelArn"`
	Status        string    `json:"status"`
	Description   string    `json:"description,omitempty"`
	CreatedAt     epochTime `json:"createdAt"`
	LastUpdatedAt epochTime `json:"lastUpdatedAt"`
}

type openTunnelOut struct {
	TunnelID               string `json:"tunnelId"`
	TunnelArn              string `json:"tunnelArn"`
	SourceAccessToken      string `json:"sourceAccessToken"`
	DestinationAccessToken string `json:"destinationAccessToken"`
}

type describeTunnelOut struct {
	Tunnel tunnelOut `json:"tunnel"`
}

type listTunnelsOut struct {
	TunnelSummaries []tunnelSummaryOut `json:"tunnelSummaries"`
	NextToken       string             `json:"nextToken,omitempty"`
}

type rotateOut struct {
	TunnelArn              string `json:"tunnelArn"`
	SourceAccessToken      string `json:"sourceAccessToken,omitempty"`
	DestinationAccessToken string `json:"destinationAccessToken,omitempty"`
}

type listTagsOut struct {
	Tags []tagOut `json:"tags"`
}

type emptyOut struct{}

// decode parses a request body into v. An empty body is an empty object;
// anything but one JSON object is a SerializationException. Unknown
// members are ignored, as AWS does.
func decode(body []byte, v any) error {
	if len(bytes.TrimSpace(body)) == 0 {
		return nil
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	if err := dec.Decode(v); err != nil {
		return serializationError(err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return errorf(CodeSerialization, http.StatusBadRequest, "Unexpected content after the JSON object")
	}
	return nil
}

func serializationError(err error) *apiError {
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) {
		if te.Field == "" {
			return errorf(CodeSerialization, http.StatusBadRequest, "Expected a JSON object, found %s", te.Value)
		}
		return errorf(CodeSerialization, http.StatusBadRequest, "Unexpected %s at '%s' (expected %s)", te.Value, te.Field, jsonKind(te.Type.String()))
	}
	var se *json.SyntaxError
	if errors.As(err, &se) {
		return errorf(CodeSerialization, http.StatusBadRequest, "Malformed JSON at offset %d: %s", se.Offset, se.Error())
	}
	if errors.Is(err, io.ErrUnexpectedEOF) {
		return errorf(CodeSerialization, http.StatusBadRequest, "Truncated JSON body")
	}
	return errorf(CodeSerialization, http.StatusBadRequest, "Malformed JSON body")
}

func jsonKind(goType string) string {
	switch goType {
	case "int", "*int":
		return "an integer"
	case "string", "*string":
		return "a string"
	case "bool", "*bool":
		return "a boolean"
	}
	if len(goType) > 2 && goType[:2] == "[]" || len(goType) > 3 && goType[:3] == "*[]" {
		return "a list"
	}
	return "an object"
}

// writeJSON answers 200 with v.
func writeJSON(w http.ResponseWriter, v any) {
	b, err := json.Marshal(v)
	if err != nil { // our own shapes always marshal
		writeError(w, errorf(CodeInternalFailure, http.StatusInternalServerError, "encoding the response failed"))
		return
	}
	h := w.Header()
	h.Set("Content-Type", contentTypeAmzJSON11)
	h.Set("Content-Length", strconv.Itoa(len(b)))
	w.WriteHeader(http.StatusOK)
	w.Write(b)
}

// writeError answers an error the AWS JSON way.
func writeError(w http.ResponseWriter, e *apiError) {
	b, _ := json.Marshal(struct {
		Type    string `json:"__type"`
		Message string `json:"message"`
	}{e.code, e.message})
	h := w.Header()
	h.Set("Content-Type", contentTypeAmzJSON11)
	h.Set(headerErrorType, e.code)
	h.Set("Content-Length", strconv.Itoa(len(b)))
	w.WriteHeader(e.status)
	w.Write(b)
}

// storeFailure is what a client gets when an operation failed for a reason
// of ours (the store unreachable, PostgreSQL down): 503 ServiceUnavailable,
// which the AWS SDKs and CLI retry, with the request ID; the log gets the
// cause.
func storeFailure(reqID string) *apiError {
	return errorf(CodeUnavailable, http.StatusServiceUnavailable, "Service unavailable (request %s): retry later", reqID)
}
