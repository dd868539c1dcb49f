package api

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"

	"github.com/sectun/sectun/internal/server/sigv4"
)

// BenchmarkDescribeTunnel measures one signed DescribeTunnel through
// ServeHTTP (signature check, decode, SQLite read, encode).
func BenchmarkDescribeTunnel(b *testing.B) {
	now := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	s, err := New(Config{Store: openStore(b), Credentials: sigv4.Credentials{testAKID: testSecret}, Now: func() time.Time { return now }})
	if err != nil {
		b.Fatal(err)
	}
	sign := func(target string, body []byte) *http.Request {
		r := httptest.NewRequest(http.MethodPost, "http://127.0.0.1:8080/", bytes.NewReader(body))
		r.Header.Set("Content-Type", contentTypeAmzJSON11)
		r.Header.Set("X-Amz-Target", target)
		sum := sha256.Sum256(body)
		if err := v4.NewSigner().SignHTTP(context.Background(), aws.Credentials{AccessKeyID: testAKID, SecretAccessKey: testSecret},
			r, hex.EncodeToString(sum[:]), "IoTSecuredTunneling", "us-east-1", now); err != nil {
			b.Fatal(err)
		}
		return r
	}
	w := httptest.NewRecorder()
	s.ServeHTTP(w, sign("IoTSecuredTunneling.OpenTunnel", []byte(`{"destinationConfig":{"thingName":"t","services":["SSH"]}}`)))
	var o openResult
	if err := json.Unmarshal(w.Body.Bytes(), &o); err != nil || w.Code != 200 {
		b.Fatalf("open: %d %s", w.Code, w.Body)
	}
	body := []byte(`{"tunnelId":"` + o.TunnelID + `"}`)
	r := sign("IoTSecuredTunneling.DescribeTunnel", body)
	b.ReportAllocs()
	for b.Loop() {
		r.Body = http.NoBody
		rr := r.Clone(r.Context())
		rr.Body = nopCloser{bytes.NewReader(body)}
		w := httptest.NewRecorder()
		s.ServeHTTP(w, rr)
		if w.Code != 200 {
			b.Fatalf("%d %s", w.Code, w.Body)
		}
	}
}

type nopCloser struct{ *bytes.Reader }

func (nopCloser) Close() error { return nil }
