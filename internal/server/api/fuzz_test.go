package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"slices"
	"testing"
	"unicode/utf8"
)

var openSeeds = []string{
	``,
	`{}`,
	`{"description":"d","tags":[{"key":"k","value":"v"}],"destinationConfig":{"thingName":"t","services":["SSH","HTTP"]},"timeoutConfig":{"maxLifetimeTimeoutMinutes":30}}`,
	`{"destinationConfig":{"services":["A","A"]}}`,
	`{"destinationConfig":{"services":null,"thingName":null}}`,
	`{"tags":[{"key":"aws:x","value":"v"},{"key":"k"}]}`,
	`{"timeoutConfig":{"maxLifetimeTimeoutMinutes":1e3}}`,
	`{"description":"\u0000"}`,
	`[]`,
	`{"description":`,
	`{} x`,
}

// FuzzOpenTunnel checks that decoding and validating any OpenTunnel body
// either yields parameters inside the model's constraints or a
// ValidationException / SerializationException.
func FuzzOpenTunnel(f *testing.F) {
	for _, s := range openSeeds {
		f.Add([]byte(s))
	}
	s, err := New(Config{Store: openStore(f), NoAuth: true})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		p, err := s.parseOpenTunnel(body)
		if err != nil {
			var ae *apiError
			if !errors.As(err, &ae) || ae.status != http.StatusBadRequest || (ae.code != CodeValidation && ae.code != CodeSerialization) || ae.message == "" {
				t.Fatalf("error %#v", err)
			}
			return
		}
		if p.lifetime < 1 || p.lifetime > MaxLifetimeMinutes {
			t.Fatalf("lifetime %d", p.lifetime)
		}
		if n := utf8.RuneCountInString(p.description); n > maxDescription {
			t.Fatalf("description of %d characters", n)
		}
		for _, r := range p.description {
			if isOther(r) {
				t.Fatalf("description with control character %U", r)
			}
		}
		if len(p.services) > DefaultMaxServicesPerTunnel {
			t.Fatalf("%d services", len(p.services))
		}
		seen := map[string]bool{}
		for _, sv := range p.services {
			if seen[sv] || !serviceRE.MatchString(sv) || len(sv) > maxService {
				t.Fatalf("bad service %q in %q", sv, p.services)
			}
			seen[sv] = true
		}
		if p.thingName != "" && !thingNameRE.MatchString(p.thingName) {
			t.Fatalf("thing name %q", p.thingName)
		}
		if p.thingName != "" && len(p.services) == 0 {
			t.Fatal("thing name without services")
		}
		if len(p.tags) > maxTags {
			t.Fatalf("%d tags", len(p.tags))
		}
		keys := map[string]bool{}
		for _, tg := range p.tags {
			if keys[tg.Key] || tg.Key == "" || !tagRE.MatchString(tg.Key) || !tagRE.MatchString(tg.Value) {
				t.Fatalf("bad tag %+v", tg)
			}
			keys[tg.Key] = true
		}
	})
}

// FuzzRequest sends any body to any operation of a NoAuth server on
// SQLite: the answer is always a well-formed AWS JSON response, 200 or a
// 4xx, never a 500.
func FuzzRequest(f *testing.F) {
	ops := slices.Sorted(func(yield func(string) bool) {
		for k := range operations {
			if !yield(k) {
				return
			}
		}
	})
	ops = append(ops, "Nope")
	for i := range ops {
		for _, s := range openSeeds {
			f.Add(uint8(i), []byte(s))
		}
	}
	f.Add(uint8(0), []byte(`{"tunnelId":"x","delete":true}`))
	f.Add(uint8(1), []byte(`{"maxResults":1,"nextToken":"YWJjZGVmZ2hpams","thingName":"t"}`))
	f.Add(uint8(2), []byte(`{"resourceArn":"arn:aws:iot:us-east-1:123456789012:tunnel/x","tagKeys":["a"]}`))
	s, err := New(Config{Store: openStore(f), NoAuth: true, MaxOpenTunnels: 1000})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, op uint8, body []byte) {
		name := ops[int(op)%len(ops)]
		r := httptest.NewRequest(http.MethodPost, "/", bytes.NewReader(body))
		r.Header.Set("X-Amz-Target", "IoTSecuredTunneling."+name)
		r.Header.Set("Content-Type", contentTypeAmzJSON11)
		w := httptest.NewRecorder()
		s.ServeHTTP(w, r)
		if w.Code != 200 && w.Code != 400 && w.Code != 413 {
			t.Fatalf("%s %q: status %d %s", name, body, w.Code, w.Body)
		}
		if w.Header().Get(headerRequestID) == "" {
			t.Fatal("no request id")
		}
		var m map[string]any
		if err := json.Unmarshal(w.Body.Bytes(), &m); err != nil {
			t.Fatalf("%s: response %q is not a JSON object: %v", name, w.Body, err)
		}
		if w.Code != 200 {
			if typ, _ := m["__type"].(string); typ == "" || typ != w.Header().Get(headerErrorType) {
				t.Fatalf("%s: error response %q", name, w.Body)
			}
		}
	})
}
