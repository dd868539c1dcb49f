package config

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/sectun/sectun/internal/endpoint"
)

// Settings are the reference local proxy's fine-grained settings: the keys
// under "tunneling.proxy" of the --settings-json file. DefaultSettings
// returns the reference's values; the zero Settings is not usable on its
// own (Parse always starts from DefaultSettings).
type Settings struct {
	// DefaultBindAddress (default_bind_address) is the source listen
	// address when -b is not given. Default "localhost".
	DefaultBindAddress string
	// EndpointFormat (endpoint_format) makes the service host from a
	// region; it holds one %s. Read but never exported by the reference.
	// Default "data.tunneling.iot.%s.amazonaws.com".
	EndpointFormat string
	// RegionEndpointOverrides (region_endpoint_overrides.<region>) maps a
	// region to its service host (China regions are on .amazonaws.com.cn).
	RegionEndpointOverrides map[string]string

	// DataLengthSize (message.data_length_size) is the size of a tunnel
	// frame's length prefix. Only 2 is supported. Default 2.
	DataLengthSize int
	// DataFrameMaxSize (message.data_frame_max_size): length prefix plus
	// largest message. Default 65538.
	DataFrameMaxSize int
	// MaxPayloadSize (message.max_payload_size): the largest DATA payload
	// sent; at most 64512. Default 64512.
	MaxPayloadSize int
	// MessageMaxSize (message.max_size): the largest encoded message.
	// Default 65536.
	MessageMaxSize int

	// TCPConnectionRetryCount (tcp.connection_retry_count): attempts to
	// dial the destination service (destination) or to listen (source)
	// before giving up; -1 = forever. Default 5.
	TCPConnectionRetryCount int
	// TCPConnectionRetryDelay (tcp.connection_retry_delay_ms) between
	// those attempts. Default 2.5 s.
	TCPConnectionRetryDelay time.Duration
	// TCPReadBufferSize (tcp.read_buffer_size). Default 131076.
	TCPReadBufferSize int
	// TCPWriteBufferSize (tcp.write_buffer_size); read but never exported
	// by the reference. Default 131076.
	TCPWriteBufferSize int
	// MaxActiveConnections (tcp.max_active_connections): the most
	// simultaneous TCP connections (the reference aborts beyond it; sectun
	// should refuse the extra connection). Default 128.
	MaxActiveConnections int

	// PingPeriod (websocket.ping_period_ms) between WebSocket pings.
	// Default 20 s.
	PingPeriod time.Duration
	// WebSocketRetryDelay (websocket.retry_delay_ms) between connection
	// attempts to the service. Default 2.5 s.
	WebSocketRetryDelay time.Duration
	// WebSocketConnectRetryCount (websocket.connect_retry_count): attempts
	// to connect to the service outside HTTP 4xx answers; -1 = forever.
	// Default -1.
	WebSocketConnectRetryCount int
	// ReconnectOnDataError (websocket.reconnect_on_data_error): reconnect
	// after an I/O, protocol or parse error instead of exiting. Default true.
	ReconnectOnDataError bool
	// Subprotocol (websocket.subprotocol) offered in the handshake.
	// Default "aws.iot.securetunneling-3.0".
	Subprotocol string
	// WebSocketMaxFrameSize (websocket.max_frame_size). Default 131076.
	WebSocketMaxFrameSize int
	// WebSocketWriteBufferSize (websocket.write_buffer_size). Default 131076.
	WebSocketWriteBufferSize int
	// WebSocketReadBufferSize (websocket.read_buffer_size). Default 131076.
	WebSocketReadBufferSize int

	// MetricsListen (metrics.listen; sectun only, never exported): the
	// address of the metrics listener, as --metrics-listen, which wins.
	// Default "" (none).
	MetricsListen string
}

// DefaultSettings returns the reference local proxy's (v3.3.1) defaults.
func DefaultSettings() Settings {
	return Settings{
		DefaultBindAddress:         "localhost",
		EndpointFormat:             endpoint.DefaultFormat,
		RegionEndpointOverrides:    endpoint.DefaultOverrides(),
		DataLengthSize:             2,
		DataFrameMaxSize:           65538,
		MaxPayloadSize:             64512,
		MessageMaxSize:             65536,
		TCPConnectionRetryCount:    5,
		TCPConnectionRetryDelay:    2500 * time.Millisecond,
		TCPReadBufferSize:          131076,
		TCPWriteBufferSize:         131076,
		MaxActiveConnections:       128,
		PingPeriod:                 20 * time.Second,
		WebSocketRetryDelay:        2500 * time.Millisecond,
		WebSocketConnectRetryCount: -1,
		ReconnectOnDataError:       true,
		Subprotocol:                "aws.iot.securetunneling-3.0",
		WebSocketMaxFrameSize:      131076,
		WebSocketWriteBufferSize:   131076,
		WebSocketReadBufferSize:    131076,
	}
}

type settingKind int

const (
	kindString settingKind = iota
	kindInt
	kindBool
	kindMillis
)

// setting describes one scalar key under tunneling.proxy.
type setting struct {
	path     string // dotted, below tunneling.proxy
	kind     settingKind
	min, max int64 // for kindInt and kindMillis
	exported bool  // written by --export-default-settings
	str      func(*Settings) *string
	num      func(*Settings) *int
	flag     func(*Settings) *bool
	dur      func(*Settings) *time.Duration
}

const maxSize = 1 << 30

// settingsTable lists the scalar keys in the order the reference writes
// them (the insertion order of its property tree: a key joins the object
// its first sibling created).
var settingsTable = []setting{
	{path: "default_bind_address", kind: kindString, exported: true, str: func(s *Settings) *string { return &s.DefaultBindAddress }},
	{path: "endpoint_format", kind: kindString, str: func(s *Settings) *string { return &s.EndpointFormat }},
	{path: "message.data_length_size", kind: kindInt, min: 2, max: 2, exported: true, num: func(s *Settings) *int { return &s.DataLengthSize }},
	{path: "message.data_frame_max_size", kind: kindInt, min: 1, max: maxSize, exported: true, num: func(s *Settings) *int { return &s.DataFrameMaxSize }},
	{path: "message.max_payload_size", kind: kindInt, min: 1, max: 64512, exported: true, num: func(s *Settings) *int { return &s.MaxPayloadSize }},
	{path: "message.max_size", kind: kindInt, min: 1, max: maxSize, exported: true, num: func(s *Settings) *int { return &s.MessageMaxSize }},
	{path: "tcp.connection_retry_count", kind: kindInt, min: -1, max: 1<<31 - 1, exported: true, num: func(s *Settings) *int { return &s.TCPConnectionRetryCount }},
	{path: "tcp.connection_retry_delay_ms", kind: kindMillis, min: 0, max: 1<<32 - 1, exported: true, dur: func(s *Settings) *time.Duration { return &s.TCPConnectionRetryDelay }},
	{path: "tcp.read_buffer_size", kind: kindInt, min: 1, max: maxSize, exported: true, num: func(s *Settings) *int { return &s.TCPReadBufferSize }},
	{path: "tcp.write_buffer_size", kind: kindInt, min: 1, max: maxSize, num: func(s *Settings) *int { return &s.TCPWriteBufferSize }},
	{path: "tcp.max_active_connections", kind: kindInt, min: 1, max: 1<<32 - 1, exported: true, num: func(s *Settings) *int { return &s.MaxActiveConnections }},
	{path: "websocket.ping_period_ms", kind: kindMillis, min: 1, max: 1<<32 - 1, exported: true, dur: func(s *Settings) *time.Duration { return &s.PingPeriod }},
	{path: "websocket.retry_delay_ms", kind: kindMillis, min: 0, max: 1<<32 - 1, exported: true, dur: func(s *Settings) *time.Duration { return &s.WebSocketRetryDelay }},
	{path: "websocket.connect_retry_count", kind: kindInt, min: -1, max: 1<<31 - 1, exported: true, num: func(s *Settings) *int { return &s.WebSocketConnectRetryCount }},
	{path: "websocket.reconnect_on_data_error", kind: kindBool, exported: true, flag: func(s *Settings) *bool { return &s.ReconnectOnDataError }},
	{path: "websocket.subprotocol", kind: kindString, exported: true, str: func(s *Settings) *string { return &s.Subprotocol }},
	{path: "websocket.max_frame_size", kind: kindInt, min: 1, max: maxSize, exported: true, num: func(s *Settings) *int { return &s.WebSocketMaxFrameSize }},
	{path: "websocket.write_buffer_size", kind: kindInt, min: 1, max: maxSize, exported: true, num: func(s *Settings) *int { return &s.WebSocketWriteBufferSize }},
	{path: "websocket.read_buffer_size", kind: kindInt, min: 1, max: maxSize, exported: true, num: func(s *Settings) *int { return &s.WebSocketReadBufferSize }},
	{path: "metrics.listen", kind: kindString, str: func(s *Settings) *string { return &s.MetricsListen }},
}

const overridesKey = "region_endpoint_overrides"

// valueText is a setting's value as the reference writes it.
func (st *setting) valueText(s *Settings) string {
	switch st.kind {
	case kindString:
		return *st.str(s)
	case kindInt:
		return strconv.Itoa(*st.num(s))
	case kindBool:
		return strconv.FormatBool(*st.flag(s))
	default:
		return strconv.FormatInt(int64(*st.dur(s)/time.Millisecond), 10)
	}
}

// ---- writing ----

// jsonNode is an ordered property tree node, as the reference keeps
// settings: a leaf holds a string, an object holds ordered children.
type jsonNode struct {
	key      string
	value    string
	children []*jsonNode
	isObject bool
	isArray  bool // read only: arrays hold no setting
}

// child returns the child with key, adding it (and making n an object)
// when absent.
func (n *jsonNode) child(key string) *jsonNode {
	n.isObject = true
	for _, c := range n.children {
		if c.key == key {
			return c
		}
	}
	c := &jsonNode{key: key}
	n.children = append(n.children, c)
	return c
}

// put sets the leaf at a dotted path, creating objects on the way.
func (n *jsonNode) put(path, value string) {
	parts := strings.Split(path, ".")
	for _, p := range parts[:len(parts)-1] {
		n.isObject = true
		n = n.child(p)
	}
	n.isObject = true
	n.child(parts[len(parts)-1]).value = value
}

// tree builds the property tree the reference would write for s: every
// exported key, plus the unexported ones when they differ from the default
// (so that a written file loads back to s).
func (s *Settings) tree() *jsonNode {
	def := DefaultSettings()
	root := &jsonNode{isObject: true}
	proxy := root.child("tunneling").child("proxy")
	for i := range settingsTable {
		st := &settingsTable[i]
		v := st.valueText(s)
		if st.exported || v != st.valueText(&def) {
			proxy.put(st.path, v)
		}
	}
	if len(s.RegionEndpointOverrides) > 0 {
		ov := proxy.child(overridesKey)
		ov.isObject = true
		// Sorted: the reference's two defaults come out in its order.
		for _, region := range slices.Sorted(maps.Keys(s.RegionEndpointOverrides)) {
			ov.child(region).value = s.RegionEndpointOverrides[region]
		}
	}
	return root
}

// writeNode writes n as Boost.PropertyTree's write_json does in pretty
// mode: 4-space indents, `"key": value`, every leaf a JSON string.
func writeNode(b *bytes.Buffer, n *jsonNode, indent int) {
	if !n.isObject {
		b.WriteByte('"')
		b.WriteString(boostEscape(n.value))
		b.WriteByte('"')
		return
	}
	b.WriteString("{\n")
	for i, c := range n.children {
		b.WriteString(strings.Repeat(" ", 4*(indent+1)))
		b.WriteByte('"')
		b.WriteString(boostEscape(c.key))
		b.WriteString(`": `)
		writeNode(b, c, indent+1)
		if i < len(n.children)-1 {
			b.WriteByte(',')
		}
		b.WriteByte('\n')
	}
	b.WriteString(strings.Repeat(" ", 4*indent))
	b.WriteByte('}')
}

// boostEscape escapes a string as Boost.PropertyTree's JSON writer does:
// printable ASCII and bytes >= 0x80 pass, '"', '\\' and '/' are escaped,
// control characters become \b \f \n \r \t or \u00XX.
func boostEscape(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '"':
			b.WriteString(`\"`)
		case c == '\\':
			b.WriteString(`\\`)
		case c == '/':
			b.WriteString(`\/`)
		case c == '\b':
			b.WriteString(`\b`)
		case c == '\f':
			b.WriteString(`\f`)
		case c == '\n':
			b.WriteString(`\n`)
		case c == '\r':
			b.WriteString(`\r`)
		case c == '\t':
			b.WriteString(`\t`)
		case c < 0x20 || c == 0x7f:
			fmt.Fprintf(&b, `\u%04X`, c)
		default:
			b.WriteByte(c)
		}
	}
	return b.String()
}

// MarshalJSON returns s in the reference's --export-default-settings
// format (see WriteJSON).
func (s Settings) MarshalJSON() ([]byte, error) {
	var b bytes.Buffer
	writeNode(&b, s.tree(), 0)
	b.WriteByte('\n')
	return b.Bytes(), nil
}

// WriteJSON writes s exactly as the reference writes its settings: an
// object "tunneling" -> "proxy" holding nested objects, every value a JSON
// string, 4-space indentation, a final newline. Keys the reference does not
// export (endpoint_format, tcp.write_buffer_size) appear only when they
// differ from the defaults.
func (s Settings) WriteJSON(w io.Writer) error {
	b, _ := s.MarshalJSON()
	_, err := w.Write(b)
	return err
}

// WriteDefaultSettings writes DefaultSettings() in the reference's
// --export-default-settings format.
func WriteDefaultSettings(w io.Writer) error {
	return DefaultSettings().WriteJSON(w)
}

// ---- reading ----

// MaxSettingsFileSize bounds a --settings-json file.
const MaxSettingsFileSize = 1 << 20

const maxJSONDepth = 64

// decodeTree reads one JSON value into an ordered tree. Scalars become
// leaves holding their literal text (strings unquoted), as the reference's
// property tree does; null leaves are marked so they can be skipped.
func decodeTree(dec *json.Decoder, depth int) (*jsonNode, bool, error) {
	if depth > maxJSONDepth {
		return nil, false, errors.New("nested too deeply")
	}
	tok, err := dec.Token()
	if err != nil {
		return nil, false, err
	}
	switch t := tok.(type) {
	case json.Delim:
		n := &jsonNode{}
		if t == '{' {
			n.isObject = true
			for dec.More() {
				kt, err := dec.Token()
				if err != nil {
					return nil, false, err
				}
				key, _ := kt.(string)
				c, isNull, err := decodeTree(dec, depth+1)
				if err != nil {
					return nil, false, err
				}
				if isNull {
					continue
				}
				c.key = key
				n.children = append(n.children, c)
			}
		} else { // '[': arrays carry no setting; skip the elements
			n.isArray = true
			for dec.More() {
				if _, _, err := decodeTree(dec, depth+1); err != nil {
					return nil, false, err
				}
			}
		}
		if _, err := dec.Token(); err != nil { // closing delimiter
			return nil, false, err
		}
		return n, false, nil
	case string:
		return &jsonNode{value: t}, false, nil
	case json.Number:
		return &jsonNode{value: t.String()}, false, nil
	case bool:
		return &jsonNode{value: strconv.FormatBool(t)}, false, nil
	case nil:
		return nil, true, nil
	}
	return nil, false, fmt.Errorf("unexpected token %v", tok)
}

// lookup finds the first child with key (a file with a repeated key uses
// the first, as the reference does).
func (n *jsonNode) lookup(key string) *jsonNode {
	for _, c := range n.children {
		if c.key == key {
			return c
		}
	}
	return nil
}

// lookupPath walks a dotted path below n. It returns the node (nil when
// absent) and, when an intermediate is a scalar or an array, the path of
// that intermediate as notObject.
func (n *jsonNode) lookupPath(path string) (node *jsonNode, key, notObject string) {
	cur := n
	key = "tunneling.proxy"
	for _, p := range strings.Split(path, ".") {
		if !cur.isObject {
			return nil, key, key
		}
		cur = cur.lookup(p)
		key += "." + p
		if cur == nil {
			return nil, key, ""
		}
	}
	return cur, key, ""
}

// LoadSettingsJSON reads a --settings-json document and applies every
// known key found under tunneling.proxy onto into, leaving the others as
// they are; unknown keys are ignored. Values may be JSON strings (as the
// reference writes them) or JSON numbers/booleans. A value of the wrong
// type or range is an error wrapping ErrSettings, and into is then left
// unchanged. Region overrides are merged into the existing map.
func LoadSettingsJSON(r io.Reader, into *Settings) error {
	if err := loadSettings(r, into); err != nil {
		return errorf(ErrSettings, "%v", err)
	}
	return nil
}

// loadSettings is LoadSettingsJSON with errors that name no sentinel.
func loadSettings(r io.Reader, into *Settings) error {
	data, err := io.ReadAll(io.LimitReader(r, MaxSettingsFileSize+1))
	if err != nil {
		return fmt.Errorf("read: %v", err)
	}
	if len(data) > MaxSettingsFileSize {
		return fmt.Errorf("larger than %d bytes: is this a settings file?", MaxSettingsFileSize)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	root, isNull, err := decodeTree(dec, 0)
	if err != nil {
		return fmt.Errorf("not valid JSON (%v): fix the file, or write a fresh one with --export-default-settings FILE", jsonErrorText(data, dec, err))
	}
	if _, err := dec.Token(); err != io.EOF {
		return fmt.Errorf("not valid JSON (text after the top-level object): fix the file, or write a fresh one with --export-default-settings FILE")
	}
	if isNull || !root.isObject {
		return fmt.Errorf("the top level must be a JSON object holding \"tunneling\": {\"proxy\": {...}}")
	}
	out := *into
	out.RegionEndpointOverrides = maps.Clone(into.RegionEndpointOverrides)

	tunneling := root.lookup("tunneling")
	if tunneling == nil {
		*into = out
		return nil
	}
	if !tunneling.isObject {
		return fmt.Errorf(`"tunneling" must be an object holding "proxy"`)
	}
	proxy := tunneling.lookup("proxy")
	if proxy == nil {
		*into = out
		return nil
	}
	if !proxy.isObject {
		return fmt.Errorf(`"tunneling.proxy" must be an object`)
	}
	for i := range settingsTable {
		st := &settingsTable[i]
		n, key, notObject := proxy.lookupPath(st.path)
		if notObject != "" {
			return fmt.Errorf("%s must be an object", notObject)
		}
		if n == nil {
			continue
		}
		if n.isObject || n.isArray {
			return fmt.Errorf("%s must be a single value, not an object or array", key)
		}
		if err := st.set(&out, n.value, key); err != nil {
			return err
		}
	}
	if ov := proxy.lookup(overridesKey); ov != nil {
		if !ov.isObject {
			return fmt.Errorf("tunneling.proxy.%s must be an object mapping regions to hosts", overridesKey)
		}
		if out.RegionEndpointOverrides == nil {
			out.RegionEndpointOverrides = map[string]string{}
		}
		seen := map[string]bool{}
		for _, c := range ov.children {
			if seen[c.key] {
				continue
			}
			seen[c.key] = true
			if c.isObject || c.isArray {
				return fmt.Errorf("tunneling.proxy.%s.%s must be a host name, not an object or array", overridesKey, c.key)
			}
			host := strings.TrimSpace(c.value)
			if _, _, err := parseHostPort(strings.ToLower(host)); err != nil {
				return fmt.Errorf("tunneling.proxy.%s.%s = %q is not a host[:port]", overridesKey, c.key, c.value)
			}
			out.RegionEndpointOverrides[strings.ToLower(c.key)] = host
		}
	}
	*into = out
	return nil
}

func (st *setting) set(s *Settings, raw, key string) error {
	v := strings.TrimSpace(raw)
	switch st.kind {
	case kindString:
		if v == "" {
			return fmt.Errorf("%s is empty: remove the key to use the default", key)
		}
		if st.path == "endpoint_format" && strings.Count(v, "%s") != 1 {
			return fmt.Errorf("%s = %q must hold exactly one %%s (where the region goes)", key, raw)
		}
		*st.str(s) = v
	case kindBool:
		switch strings.ToLower(v) {
		case "true", "1":
			*st.flag(s) = true
		case "false", "0":
			*st.flag(s) = false
		default:
			return fmt.Errorf("%s = %q is not a boolean: use \"true\" or \"false\"", key, raw)
		}
	default:
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return fmt.Errorf("%s = %q is not an integer", key, raw)
		}
		if n < st.min || n > st.max {
			if st.min == st.max {
				return fmt.Errorf("%s = %d is not supported: only %d is", key, n, st.min)
			}
			return fmt.Errorf("%s = %d is out of range %d..%d", key, n, st.min, st.max)
		}
		if st.kind == kindInt {
			*st.num(s) = int(n)
		} else {
			*st.dur(s) = time.Duration(n) * time.Millisecond
		}
	}
	return nil
}

// jsonErrorText adds a line number to a JSON syntax error.
func jsonErrorText(data []byte, dec *json.Decoder, err error) string {
	off := dec.InputOffset()
	var se *json.SyntaxError
	if errors.As(err, &se) {
		off = se.Offset
	}
	if off > int64(len(data)) {
		off = int64(len(data))
	}
	line := 1 + bytes.Count(data[:off], []byte{'\n'})
	if err == io.EOF || errors.Is(err, io.ErrUnexpectedEOF) {
		return fmt.Sprintf("unexpected end at line %d", line)
	}
	return fmt.Sprintf("%v, line %d", err, line)
}
