package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/sectun/sectun/internal/server/sigv4"
	"github.com/sectun/sectun/internal/store"
	"github.com/sectun/sectun/internal/token"
)

var uuidRE = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)

func TestOpenDescribe(t *testing.T) {
	e := newEnv(t, nil)
	o := e.open(map[string]any{
		"description":       "debug pump 7",
		"tags":              []map[string]string{{"key": "team", "value": "ops"}, {"key": "empty", "value": ""}},
		"destinationConfig": map[string]any{"thingName": "pump-7", "services": []string{"SSH", "HTTP"}},
		"timeoutConfig":     map[string]any{"maxLifetimeTimeoutMinutes": 30},
	})
	if !uuidRE.MatchString(o.TunnelID) {
		t.Errorf("tunnelId %q is not a UUID v4", o.TunnelID)
	}
	if want := "arn:aws:iot:us-east-1:123456789012:tunnel/" + o.TunnelID; o.TunnelArn != want {
		t.Errorf("tunnelArn = %q, want %q", o.TunnelArn, want)
	}
	if len(o.SourceAccessToken) != 43 || len(o.DestinationAccessToken) != 43 || o.SourceAccessToken == o.DestinationAccessToken {
		t.Errorf("tokens %q %q", o.SourceAccessToken, o.DestinationAccessToken)
	}

	// Only hashes are stored.
	st := e.get(o.TunnelID)
	if !token.Equal(st.Source.TokenHash, token.Hash(o.SourceAccessToken)) || !token.Equal(st.Destination.TokenHash, token.Hash(o.DestinationAccessToken)) {
		t.Errorf("stored hashes do not match the returned tokens")
	}
	if !st.ExpiresAt.Equal(t0.Add(30*time.Minute)) || st.LifetimeMinutes != 30 {
		t.Errorf("ExpiresAt %v, LifetimeMinutes %d", st.ExpiresAt, st.LifetimeMinutes)
	}

	// The notification went to the thing with the destination token.
	notes := e.notes.take()
	want := []Notification{{TunnelID: o.TunnelID, ThingName: "pump-7", Token: o.DestinationAccessToken, Region: "us-east-1", Services: []string{"SSH", "HTTP"}}}
	if diff := cmp.Diff(want, notes); diff != "" {
		t.Errorf("notifications (-want +got):\n%s", diff)
	}

	// DescribeTunnel, field by field, including the raw JSON types.
	e.clock.Advance(1500 * time.Millisecond)
	r := e.call("DescribeTunnel", map[string]string{"tunnelId": o.TunnelID})
	var raw map[string]map[string]any
	r.into(t, &raw)
	tu := raw["tunnel"]
	wantKeys := []string{"createdAt", "description", "destinationConfig", "destinationConnectionState", "lastUpdatedAt",
		"sourceConnectionState", "status", "tags", "timeoutConfig", "tunnelArn", "tunnelId"}
	var keys []string
	for k := range tu {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	if diff := cmp.Diff(wantKeys, keys); diff != "" {
		t.Errorf("tunnel keys (-want +got):\n%s", diff)
	}
	if _, ok := tu["createdAt"].(float64); !ok {
		t.Errorf("createdAt is %T, want a JSON number", tu["createdAt"])
	}
	if !bytes.Contains(r.body, []byte(`"createdAt":1777636800.000`)) {
		t.Errorf("createdAt not in epoch-seconds form: %s", r.body)
	}
	d := e.describe(o.TunnelID)
	if d.TunnelID != o.TunnelID || d.TunnelArn != o.TunnelArn || d.Status != "OPEN" || d.Description != "debug pump 7" {
		t.Errorf("describe = %+v", d)
	}
	if d.SourceConnectionState.Status != "DISCONNECTED" || d.DestinationConnectionState.Status != "DISCONNECTED" ||
		d.SourceConnectionState.LastUpdatedAt != epoch(t0) {
		t.Errorf("connection states = %+v %+v", d.SourceConnectionState, d.DestinationConnectionState)
	}
	if d.DestinationConfig == nil || d.DestinationConfig.ThingName != "pump-7" || !slices.Equal(d.DestinationConfig.Services, []string{"SSH", "HTTP"}) {
		t.Errorf("destinationConfig = %+v", d.DestinationConfig)
	}
	if d.TimeoutConfig.MaxLifetimeTimeoutMinutes != 30 || d.CreatedAt != epoch(t0) || d.LastUpdatedAt != epoch(t0) {
		t.Errorf("timeout %d created %v updated %v", d.TimeoutConfig.MaxLifetimeTimeoutMinutes, d.CreatedAt, d.LastUpdatedAt)
	}
	if diff := cmp.Diff([]tagOut{{"team", "ops"}, {"empty", ""}}, d.Tags); diff != "" {
		t.Errorf("tags (-want +got):\n%s", diff)
	}

	// A connected peer shows as CONNECTED.
	at := t0.Add(2 * time.Second)
	if _, err := e.st.Update(context.Background(), o.TunnelID, func(tu *store.Tunnel) error {
		tu.Source.Connected, tu.Source.UpdatedAt = true, at
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	d = e.describe(o.TunnelID)
	if d.SourceConnectionState.Status != "CONNECTED" || d.SourceConnectionState.LastUpdatedAt != epoch(at) {
		t.Errorf("source state = %+v", d.SourceConnectionState)
	}
}

func TestOpenDefaults(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.Region = "eu-west-1"; c.AccountID = "000011112222" })
	for _, body := range []string{"", "{}", " {} ", `{"description":null,"unknownMember":1}`} {
		o := e.open(body)
		if want := "arn:aws:iot:eu-west-1:000011112222:tunnel/" + o.TunnelID; o.TunnelArn != want {
			t.Errorf("arn %q, want %q", o.TunnelArn, want)
		}
		d := e.describe(o.TunnelID)
		if d.TimeoutConfig.MaxLifetimeTimeoutMinutes != 720 || d.DestinationConfig != nil || d.Tags != nil || d.Description != "" {
			t.Errorf("body %q: describe = %+v", body, d)
		}
	}
	if n := e.notes.take(); len(n) != 0 {
		t.Errorf("notifications without a thing: %+v", n)
	}
	// Services without a thing: no notification either.
	e.open(map[string]any{"destinationConfig": map[string]any{"services": []string{"SSH"}}})
	if n := e.notes.take(); len(n) != 0 {
		t.Errorf("notifications without a thing: %+v", n)
	}
}

func TestValidation(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.MaxLifetimeMinutes = 60 })
	o := e.open(map[string]any{"destinationConfig": map[string]any{"thingName": "t1", "services": []string{"SSH"}}})
	arn := o.TunnelArn
	long := func(n int) string { return strings.Repeat("a", n) }
	svcs := func(ss ...string) map[string]any {
		return map[string]any{"destinationConfig": map[string]any{"thingName": "thing", "services": ss}}
	}
	tests := []struct {
		op, body string
		field    string // the message must name it
	}{
		{"OpenTunnel", `{"description":""}`, "'description'"},
		{"OpenTunnel", `{"description":"` + long(2049) + `"}`, "less than or equal to 2048"},
		{"OpenTunnel", `{"description":"bell\u0007"}`, "'description'"},
		{"OpenTunnel", `{"tags":[]}`, "'tags'"},
		{"OpenTunnel", `{"tags":[{"value":"v"}]}`, "'tags.1.member.key'"},
		{"OpenTunnel", `{"tags":[{"key":"k"}]}`, "'tags.1.member.value'"},
		{"OpenTunnel", `{"tags":[{"key":"` + long(129) + `","value":""}]}`, "'tags.1.member.key'"},
		{"OpenTunnel", `{"tags":[{"key":"k","value":"` + long(257) + `"}]}`, "'tags.1.member.value'"},
		{"OpenTunnel", `{"tags":[{"key":"k","value":"a;b"}]}`, "'tags.1.member.value'"},
		{"OpenTunnel", `{"tags":[{"key":"k","value":"1"},{"key":"k","value":"2"}]}`, "'tags.2.member.key'"},
		{"OpenTunnel", `{"tags":[{"key":"aws:x","value":"1"}]}`, "reserved prefix"},
		{"OpenTunnel", `{"destinationConfig":{"thingName":"t"}}`, "'destinationConfig.services'"},
		{"OpenTunnel", `{"destinationConfig":{"services":[]}}`, "'destinationConfig.services'"},
		{"OpenTunnel", mustJSON(svcs("A", "B", "C", "D")), "less than or equal to 3"},
		{"OpenTunnel", mustJSON(svcs("SSH", "SSH")), "'destinationConfig.services.2.member'"},
		{"OpenTunnel", mustJSON(svcs("bad service")), "'destinationConfig.services.1.member'"},
		{"OpenTunnel", mustJSON(svcs(long(129))), "'destinationConfig.services.1.member'"},
		{"OpenTunnel", `{"destinationConfig":{"thingName":"bad thing","services":["SSH"]}}`, "'destinationConfig.thingName'"},
		{"OpenTunnel", `{"destinationConfig":{"thingName":"","services":["SSH"]}}`, "'destinationConfig.thingName'"},
		{"OpenTunnel", `{"timeoutConfig":{"maxLifetimeTimeoutMinutes":0}}`, "'timeoutConfig.maxLifetimeTimeoutMinutes'"},
		{"OpenTunnel", `{"timeoutConfig":{"maxLifetimeTimeoutMinutes":61}}`, "less than or equal to 60"},
		{"CloseTunnel", `{}`, "Value null at 'tunnelId'"},
		{"CloseTunnel", `{"tunnelId":"a/b"}`, "'tunnelId'"},
		{"DescribeTunnel", `{"tunnelId":"` + long(129) + `"}`, "'tunnelId'"},
		{"ListTunnels", `{"maxResults":0}`, "'maxResults'"},
		{"ListTunnels", `{"maxResults":101}`, "'maxResults'"},
		{"ListTunnels", `{"thingName":"a b"}`, "'thingName'"},
		{"ListTunnels", `{"nextToken":"a.b"}`, "'nextToken'"},
		{"ListTunnels", `{"nextToken":"A"}`, "'nextToken'"},
		{"ListTunnels", `{"nextToken":"YWJj"}`, "'nextToken'"},
		{"RotateTunnelAccessToken", `{"tunnelId":"` + o.TunnelID + `"}`, "Value null at 'clientMode'"},
		{"RotateTunnelAccessToken", `{"tunnelId":"` + o.TunnelID + `","clientMode":"BOTH"}`, "'clientMode'"},
		{"RotateTunnelAccessToken", `{"tunnelId":"` + o.TunnelID + `","clientMode":"SOURCE","destinationConfig":{"services":["SSH"]}}`, "'destinationConfig'"},
		{"RotateTunnelAccessToken", `{"tunnelId":"` + o.TunnelID + `","clientMode":"DESTINATION","destinationConfig":{"services":["HTTP"]}}`, "'destinationConfig.services'"},
		{"TagResource", `{"tags":[{"key":"k","value":"v"}]}`, "Value null at 'resourceArn'"},
		{"TagResource", `{"resourceArn":"` + arn + `"}`, "Value null at 'tags'"},
		{"TagResource", `{"resourceArn":"` + arn + `","tags":[{"key":"k","value":"v\n"}]}`, "'tags.1.member.value'"},
		{"TagResource", `{"resourceArn":"","tags":[{"key":"k","value":"v"}]}`, "'resourceArn'"},
		{"UntagResource", `{"resourceArn":"` + arn + `"}`, "Value null at 'tagKeys'"},
		{"UntagResource", `{"resourceArn":"` + arn + `","tagKeys":[""]}`, "'tagKeys.1.member'"},
		{"ListTagsForResource", `{}`, "Value null at 'resourceArn'"},
	}
	for _, tc := range tests {
		r := e.call(tc.op, tc.body)
		code, msg := r.errCode(t)
		if r.status != http.StatusBadRequest || code != CodeValidation || !strings.Contains(msg, tc.field) {
			t.Errorf("%s %.80s: %d %s %q, want 400 ValidationException naming %s", tc.op, tc.body, r.status, code, msg, tc.field)
		}
		if !strings.Contains(msg, "validation error") {
			t.Errorf("%s: message %q lacks the AWS prefix", tc.op, msg)
		}
	}
	// Nothing was changed by the refused calls.
	if n := len(e.notes.take()); n != 1 {
		t.Errorf("%d notifications, want 1 (the first open)", n)
	}
	d := e.describe(o.TunnelID)
	if d.Tags != nil || !slices.Equal(d.DestinationConfig.Services, []string{"SSH"}) {
		t.Errorf("refused calls changed the tunnel: %+v", d)
	}
	// Several errors are all reported.
	r := e.call("OpenTunnel", `{"description":"","timeoutConfig":{"maxLifetimeTimeoutMinutes":0}}`)
	if _, msg := r.errCode(t); !strings.HasPrefix(msg, "2 validation errors detected: ") {
		t.Errorf("message %q", msg)
	}
}

func mustJSON(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return string(b)
}

func TestNotFound(t *testing.T) {
	e := newEnv(t, nil)
	o := e.open(`{}`)
	id := "11111111-2222-4333-8444-555555555555"
	arn := "arn:aws:iot:us-east-1:123456789012:tunnel/" + id
	otherAccount := strings.Replace(o.TunnelArn, "123456789012", "999999999999", 1)
	tests := []struct{ op, body string }{
		{"DescribeTunnel", `{"tunnelId":"` + id + `"}`},
		{"CloseTunnel", `{"tunnelId":"` + id + `"}`},
		{"CloseTunnel", `{"tunnelId":"` + id + `","delete":true}`},
		{"RotateTunnelAccessToken", `{"tunnelId":"` + id + `","clientMode":"ALL"}`},
		{"TagResource", `{"resourceArn":"` + arn + `","tags":[{"key":"k","value":"v"}]}`},
		{"UntagResource", `{"resourceArn":"` + arn + `","tagKeys":["k"]}`},
		{"ListTagsForResource", `{"resourceArn":"` + arn + `"}`},
		{"ListTagsForResource", `{"resourceArn":"not-an-arn"}`},
		{"ListTagsForResource", `{"resourceArn":"` + otherAccount + `"}`},
		{"TagResource", `{"resourceArn":"` + otherAccount + `","tags":[{"key":"k","value":"v"}]}`},
	}
	for _, tc := range tests {
		r := e.call(tc.op, tc.body)
		code, msg := r.errCode(t)
		if r.status != http.StatusBadRequest || code != CodeResourceNotFound || msg == "" {
			t.Errorf("%s %s: %d %s %q, want 400 ResourceNotFoundException", tc.op, tc.body, r.status, code, msg)
		}
	}
	if c := e.peers.take(); len(c) != 0 {
		t.Errorf("peer calls for unknown tunnels: %+v", c)
	}
}

func TestCloseTunnel(t *testing.T) {
	e := newEnv(t, nil)
	o := e.open(`{}`)
	if _, err := e.st.Update(context.Background(), o.TunnelID, func(tu *store.Tunnel) error {
		tu.Destination.Connected = true
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	e.clock.Advance(time.Minute)
	var out map[string]any
	e.mustCall("CloseTunnel", map[string]any{"tunnelId": o.TunnelID}, &out)
	if len(out) != 0 {
		t.Errorf("CloseTunnel output %v, want {}", out)
	}
	d := e.describe(o.TunnelID)
	if d.Status != "CLOSED" || d.LastUpdatedAt != epoch(t0.Add(time.Minute)) ||
		d.DestinationConnectionState.Status != "DISCONNECTED" || d.DestinationConnectionState.LastUpdatedAt != epoch(t0.Add(time.Minute)) {
		t.Errorf("after close: %+v", d)
	}
	if st := e.get(o.TunnelID); !st.ClosedAt.Equal(t0.Add(time.Minute)) {
		t.Errorf("ClosedAt = %v", st.ClosedAt)
	}
	if diff := cmp.Diff([]peerCall{{op: "close", tunnelID: o.TunnelID}}, e.peers.take(), cmp.AllowUnexported(peerCall{})); diff != "" {
		t.Errorf("peer calls (-want +got):\n%s", diff)
	}

	// Idempotent: a second close succeeds and keeps the first ClosedAt.
	e.clock.Advance(time.Minute)
	e.mustCall("CloseTunnel", map[string]any{"tunnelId": o.TunnelID, "delete": false}, nil)
	if st := e.get(o.TunnelID); !st.ClosedAt.Equal(t0.Add(time.Minute)) || st.Status != store.StatusClosed {
		t.Errorf("second close changed the tunnel: %+v", st)
	}
	e.peers.take()

	// Rotating a closed tunnel is refused.
	r := e.call("RotateTunnelAccessToken", map[string]any{"tunnelId": o.TunnelID, "clientMode": "ALL"})
	if code, msg := r.errCode(t); code != CodeValidation || !strings.Contains(msg, "CLOSED") {
		t.Errorf("rotate closed: %s %q", code, msg)
	}

	// delete=true removes it, open or closed.
	e.mustCall("CloseTunnel", map[string]any{"tunnelId": o.TunnelID, "delete": true}, nil)
	o2 := e.open(`{}`)
	e.mustCall("CloseTunnel", map[string]any{"tunnelId": o2.TunnelID, "delete": true}, nil)
	for _, id := range []string{o.TunnelID, o2.TunnelID} {
		r := e.call("DescribeTunnel", map[string]any{"tunnelId": id})
		if code, _ := r.errCode(t); code != CodeResourceNotFound {
			t.Errorf("describe deleted: %s", code)
		}
	}
	if c := e.peers.take(); len(c) != 2 {
		t.Errorf("peer calls %+v, want two closes", c)
	}
}

type listResult struct {
	TunnelSummaries []struct {
		TunnelID      string  `json:"tunnelId"`
		TunnelArn     string  `json:"tunnelArn"`
		Status        string  `json:"status"`
		Description   string  `json:"description"`
		CreatedAt     float64 `json:"createdAt"`
		LastUpdatedAt float64 `json:"lastUpdatedAt"`
	} `json:"tunnelSummaries"`
	NextToken string `json:"nextToken"`
}

func TestListTunnels(t *testing.T) {
	e := newEnv(t, nil)
	var ids, thingIDs []string // oldest first
	for i := range 5 {
		body := map[string]any{"description": "t" + string(rune('0'+i))}
		if i%2 == 0 {
			body["destinationConfig"] = map[string]any{"thingName": "pump", "services": []string{"SSH"}}
		}
		o := e.open(body)
		ids = append(ids, o.TunnelID)
		if i%2 == 0 {
			thingIDs = append(thingIDs, o.TunnelID)
		}
		e.clock.Advance(time.Second)
	}
	e.mustCall("CloseTunnel", map[string]any{"tunnelId": ids[1]}, nil)
	slices.Reverse(ids)
	slices.Reverse(thingIDs)

	page := func(body map[string]any) listResult {
		var l listResult
		e.mustCall("ListTunnels", body, &l)
		return l
	}
	// Everything, newest first.
	l := page(map[string]any{})
	var got []string
	for _, s := range l.TunnelSummaries {
		got = append(got, s.TunnelID)
	}
	if diff := cmp.Diff(ids, got); diff != "" || l.NextToken != "" {
		t.Errorf("list (-want +got):\n%s next %q", diff, l.NextToken)
	}
	s := l.TunnelSummaries[3] // ids[1] reversed
	if s.Status != "CLOSED" || s.Description != "t1" || s.TunnelArn != e.srv.TunnelARN(s.TunnelID) || s.CreatedAt != epoch(t0.Add(time.Second)) {
		t.Errorf("summary = %+v", s)
	}
	// Pages of two.
	got = nil
	body := map[string]any{"maxResults": 2}
	for pages := 0; ; pages++ {
		if pages > 5 {
			t.Fatal("paging does not end")
		}
		l := page(body)
		if len(l.TunnelSummaries) > 2 {
			t.Fatalf("page of %d", len(l.TunnelSummaries))
		}
		for _, s := range l.TunnelSummaries {
			got = append(got, s.TunnelID)
		}
		if l.NextToken == "" {
			break
		}
		if !nextTokenRE.MatchString(l.NextToken) {
			t.Fatalf("nextToken %q breaks the model's pattern", l.NextToken)
		}
		body["nextToken"] = l.NextToken
	}
	if diff := cmp.Diff(ids, got); diff != "" {
		t.Errorf("paged list (-want +got):\n%s", diff)
	}
	// By thing.
	got = nil
	for _, s := range page(map[string]any{"thingName": "pump"}).TunnelSummaries {
		got = append(got, s.TunnelID)
	}
	if diff := cmp.Diff(thingIDs, got); diff != "" {
		t.Errorf("thing list (-want +got):\n%s", diff)
	}
	if l := page(map[string]any{"thingName": "nobody"}); l.TunnelSummaries == nil || len(l.TunnelSummaries) != 0 {
		t.Errorf("empty list = %+v, want an empty tunnelSummaries", l)
	}
}

func TestRotate(t *testing.T) {
	e := newEnv(t, nil)
	o := e.open(map[string]any{"destinationConfig": map[string]any{"thingName": "pump", "services": []string{"SSH", "VNC"}}})
	e.notes.take()
	bind := func() {
		t.Helper()
		if _, err := e.st.Update(context.Background(), o.TunnelID, func(tu *store.Tunnel) error {
			tu.Source.ClientTokenHash = token.Hash("client-token-source-0123456789abcdef")
			tu.Destination.Consumed = true
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	type rot struct {
		TunnelArn              string  `json:"tunnelArn"`
		SourceAccessToken      *string `json:"sourceAccessToken"`
		DestinationAccessToken *string `json:"destinationAccessToken"`
	}
	before := e.get(o.TunnelID)

	// SOURCE: new source token only; the destination's is untouched.
	bind()
	e.clock.Advance(time.Minute)
	var r rot
	e.mustCall("RotateTunnelAccessToken", map[string]any{"tunnelId": o.TunnelID, "clientMode": "SOURCE"}, &r)
	if r.TunnelArn != o.TunnelArn || r.SourceAccessToken == nil || r.DestinationAccessToken != nil || *r.SourceAccessToken == o.SourceAccessToken {
		t.Fatalf("rotate SOURCE = %+v", r)
	}
	st := e.get(o.TunnelID)
	if !token.Equal(st.Source.TokenHash, token.Hash(*r.SourceAccessToken)) || st.Source.ClientTokenHash != nil || st.Source.Consumed {
		t.Errorf("source after rotation: %+v", st.Source)
	}
	if !token.Equal(st.Destination.TokenHash, before.Destination.TokenHash) || !st.Destination.Consumed {
		t.Errorf("destination changed by a SOURCE rotation: %+v", st.Destination)
	}
	if !st.UpdatedAt.Equal(t0.Add(time.Minute)) || !st.ExpiresAt.Equal(before.ExpiresAt) {
		t.Errorf("UpdatedAt %v ExpiresAt %v (rotation must not extend the lifetime)", st.UpdatedAt, st.ExpiresAt)
	}
	if diff := cmp.Diff([]peerCall{{op: "disconnect", tunnelID: o.TunnelID, mode: store.ModeSource}}, e.peers.take(), cmp.AllowUnexported(peerCall{})); diff != "" {
		t.Errorf("peer calls (-want +got):\n%s", diff)
	}
	if n := e.notes.take(); len(n) != 0 {
		t.Errorf("SOURCE rotation notified: %+v", n)
	}

	// DESTINATION: new destination token, notification with it.
	bind()
	r = rot{}
	e.mustCall("RotateTunnelAccessToken", map[string]any{"tunnelId": o.TunnelID, "clientMode": "DESTINATION",
		"destinationConfig": map[string]any{"thingName": "pump-b", "services": []string{"VNC", "SSH"}}}, &r)
	if r.SourceAccessToken != nil || r.DestinationAccessToken == nil {
		t.Fatalf("rotate DESTINATION = %+v", r)
	}
	st = e.get(o.TunnelID)
	if !token.Equal(st.Destination.TokenHash, token.Hash(*r.DestinationAccessToken)) || st.Destination.Consumed ||
		st.Source.ClientTokenHash == nil || st.ThingName != "pump-b" {
		t.Errorf("after DESTINATION rotation: %+v", st)
	}
	if diff := cmp.Diff([]peerCall{{op: "disconnect", tunnelID: o.TunnelID, mode: store.ModeDestination}}, e.peers.take(), cmp.AllowUnexported(peerCall{})); diff != "" {
		t.Errorf("peer calls (-want +got):\n%s", diff)
	}
	want := []Notification{{TunnelID: o.TunnelID, ThingName: "pump-b", Token: *r.DestinationAccessToken, Region: "us-east-1", Services: []string{"VNC", "SSH"}}}
	if diff := cmp.Diff(want, e.notes.take()); diff != "" {
		t.Errorf("notifications (-want +got):\n%s", diff)
	}

	// ALL: both, and ALL may change the services.
	r = rot{}
	e.mustCall("RotateTunnelAccessToken", map[string]any{"tunnelId": o.TunnelID, "clientMode": "ALL",
		"destinationConfig": map[string]any{"services": []string{"HTTP"}}}, &r)
	if r.SourceAccessToken == nil || r.DestinationAccessToken == nil {
		t.Fatalf("rotate ALL = %+v", r)
	}
	st = e.get(o.TunnelID)
	if !token.Equal(st.Source.TokenHash, token.Hash(*r.SourceAccessToken)) || !token.Equal(st.Destination.TokenHash, token.Hash(*r.DestinationAccessToken)) ||
		st.Source.ClientTokenHash != nil || !slices.Equal(st.Services, []string{"HTTP"}) || st.ThingName != "pump-b" {
		t.Errorf("after ALL rotation: %+v", st)
	}
	calls := e.peers.take()
	if len(calls) != 2 || calls[0].mode != store.ModeSource || calls[1].mode != store.ModeDestination {
		t.Errorf("peer calls %+v", calls)
	}
	if n := e.notes.take(); len(n) != 1 || n[0].Token != *r.DestinationAccessToken || !slices.Equal(n[0].Services, []string{"HTTP"}) {
		t.Errorf("notifications %+v", n)
	}
}

func TestTags(t *testing.T) {
	e := newEnv(t, nil)
	o := e.open(map[string]any{"tags": []map[string]string{{"key": "a", "value": "1"}}})
	list := func() []tagOut {
		var l struct {
			Tags []tagOut `json:"tags"`
		}
		r := e.call("ListTagsForResource", map[string]any{"resourceArn": o.TunnelArn})
		if !bytes.Contains(r.body, []byte(`"tags":[`)) {
			t.Errorf("ListTagsForResource body %s has no tags list", r.body)
		}
		r.into(t, &l)
		return l.Tags
	}
	if diff := cmp.Diff([]tagOut{{"a", "1"}}, list()); diff != "" {
		t.Errorf("tags (-want +got):\n%s", diff)
	}
	var out map[string]any
	e.mustCall("TagResource", map[string]any{"resourceArn": o.TunnelArn,
		"tags": []map[string]string{{"key": "b", "value": "2"}, {"key": "a", "value": "one"}, {"key": "ü t/x@y", "value": "ok"}}}, &out)
	if len(out) != 0 {
		t.Errorf("TagResource output %v, want {}", out)
	}
	if diff := cmp.Diff([]tagOut{{"a", "one"}, {"b", "2"}, {"ü t/x@y", "ok"}}, list()); diff != "" {
		t.Errorf("tags (-want +got):\n%s", diff)
	}
	e.mustCall("UntagResource", map[string]any{"resourceArn": o.TunnelArn, "tagKeys": []string{"a", "absent"}}, &out)
	if diff := cmp.Diff([]tagOut{{"b", "2"}, {"ü t/x@y", "ok"}}, list()); diff != "" {
		t.Errorf("tags (-want +got):\n%s", diff)
	}
	e.mustCall("UntagResource", map[string]any{"resourceArn": o.TunnelArn, "tagKeys": []string{"b", "ü t/x@y"}}, nil)
	if got := list(); len(got) != 0 {
		t.Errorf("tags = %+v, want none", got)
	}
	// Tags of a closed tunnel can still be changed.
	e.mustCall("CloseTunnel", map[string]any{"tunnelId": o.TunnelID}, nil)
	e.mustCall("TagResource", map[string]any{"resourceArn": o.TunnelArn, "tags": []map[string]string{{"key": "c", "value": ""}}}, nil)
	if d := e.describe(o.TunnelID); len(d.Tags) != 1 || d.Tags[0].Key != "c" {
		t.Errorf("describe tags = %+v", d.Tags)
	}
}

func TestLimitExceeded(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.MaxOpenTunnels = 2 })
	a := e.open(`{}`)
	e.open(`{}`)
	r := e.call("OpenTunnel", `{}`)
	if code, msg := r.errCode(t); r.status != http.StatusBadRequest || code != CodeLimitExceeded || msg == "" {
		t.Errorf("third open: %d %s %q", r.status, code, msg)
	}
	e.mustCall("CloseTunnel", map[string]any{"tunnelId": a.TunnelID}, nil)
	e.open(`{}`)
}

func TestProtocolErrors(t *testing.T) {
	e := newEnv(t, nil)
	big := []byte(`{"description":"` + strings.Repeat("x", DefaultMaxBodyBytes) + `"}`)
	tests := []struct {
		name   string
		rq     request
		status int
		code   string
	}{
		{"unknown op", request{target: "IoTSecuredTunneling.DeleteTunnel", body: []byte(`{}`)}, 400, CodeUnknownOperation},
		{"other service", request{target: "DynamoDB_20120810.ListTables", body: []byte(`{}`)}, 400, CodeUnknownOperation},
		{"no target", request{body: []byte(`{}`)}, 400, CodeUnknownOperation},
		{"malformed JSON", request{target: "IoTSecuredTunneling.OpenTunnel", body: []byte(`{"description":`)}, 400, CodeSerialization},
		{"not an object", request{target: "IoTSecuredTunneling.OpenTunnel", body: []byte(`[1]`)}, 400, CodeSerialization},
		{"trailing data", request{target: "IoTSecuredTunneling.OpenTunnel", body: []byte(`{} {}`)}, 400, CodeSerialization},
		{"wrong type", request{target: "IoTSecuredTunneling.OpenTunnel", body: []byte(`{"timeoutConfig":{"maxLifetimeTimeoutMinutes":"30"}}`)}, 400, CodeSerialization},
		{"fraction", request{target: "IoTSecuredTunneling.OpenTunnel", body: []byte(`{"timeoutConfig":{"maxLifetimeTimeoutMinutes":1.5}}`)}, 400, CodeSerialization},
		{"services not a list", request{target: "IoTSecuredTunneling.OpenTunnel", body: []byte(`{"destinationConfig":{"services":"SSH"}}`)}, 400, CodeSerialization},
		{"wrong content type", request{target: "IoTSecuredTunneling.ListTunnels", body: []byte(`{}`), contentType: "text/plain"}, 400, CodeSerialization},
		{"GET", request{method: http.MethodGet, target: "IoTSecuredTunneling.ListTunnels"}, 405, CodeUnknownOperation},
		{"wrong path", request{path: "/tunnels", target: "IoTSecuredTunneling.ListTunnels", body: []byte(`{}`)}, 404, CodeUnknownOperation},
		{"too large", request{target: "IoTSecuredTunneling.OpenTunnel", body: big}, 413, CodeRequestTooLarge},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := e.do(tc.rq)
			code, msg := r.errCode(t)
			if r.status != tc.status || code != tc.code || msg == "" {
				t.Errorf("%d %s %q, want %d %s", r.status, code, msg, tc.status, tc.code)
			}
		})
	}
	// The JSON 1.0 content type and application/json are accepted too.
	for _, ct := range []string{"application/x-amz-json-1.0", "application/json; charset=utf-8"} {
		if r := e.do(request{target: "IoTSecuredTunneling.ListTunnels", body: []byte(`{}`), contentType: ct}); r.status != 200 {
			t.Errorf("Content-Type %s: %d %s", ct, r.status, r.body)
		}
	}
}

func TestAuth(t *testing.T) {
	e := newEnv(t, nil)
	target := "IoTSecuredTunneling.ListTunnels"
	tests := []struct {
		name   string
		rq     request
		status int
		code   string
		msg    string
	}{
		{"unsigned", request{unsigned: true}, 403, sigv4.CodeMissingAuthenticationToken, "Missing Authentication Token"},
		{"unknown key", request{akid: "AKIDNOBODY"}, 403, sigv4.CodeUnrecognizedClient, "The security token included in the request is invalid."},
		{"wrong secret", request{secret: "wrong"}, 403, sigv4.CodeInvalidSignature, "The request signature we calculated does not match"},
		{"expired", request{signAt: t0.Add(-20 * time.Minute)}, 403, sigv4.CodeInvalidSignature, "Signature expired"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tc.rq.target = target
			tc.rq.body = []byte(`{}`)
			r := e.do(tc.rq)
			code, msg := r.errCode(t)
			if r.status != tc.status || code != tc.code || !strings.HasPrefix(msg, tc.msg) {
				t.Errorf("%d %s %q, want %d %s %q", r.status, code, msg, tc.status, tc.code, tc.msg)
			}
		})
	}
	if logs := e.logs.String(); strings.Contains(logs, testSecret) {
		t.Errorf("logs contain the secret")
	}

	// NoAuth accepts unsigned requests.
	na := newEnv(t, func(c *Config) { c.Credentials = nil; c.NoAuth = true })
	if r := na.do(request{target: target, body: []byte(`{}`), unsigned: true}); r.status != 200 {
		t.Errorf("NoAuth unsigned: %d %s", r.status, r.body)
	}
}

func TestSweep(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.Retention = time.Hour })
	short := e.open(map[string]any{"timeoutConfig": map[string]any{"maxLifetimeTimeoutMinutes": 1}})
	long := e.open(map[string]any{"timeoutConfig": map[string]any{"maxLifetimeTimeoutMinutes": 2}})
	ctx := context.Background()

	e.clock.Advance(59 * time.Second)
	if err := e.srv.Sweep(ctx); err != nil {
		t.Fatal(err)
	}
	if d := e.describe(short.TunnelID); d.Status != "OPEN" {
		t.Fatalf("closed before its lifetime: %+v", d)
	}
	e.clock.Advance(time.Second) // exactly at ExpiresAt
	if err := e.srv.Sweep(ctx); err != nil {
		t.Fatal(err)
	}
	if d := e.describe(short.TunnelID); d.Status != "CLOSED" || d.LastUpdatedAt != epoch(t0.Add(time.Minute)) {
		t.Fatalf("not closed at its lifetime: %+v", d)
	}
	if d := e.describe(long.TunnelID); d.Status != "OPEN" {
		t.Fatalf("long tunnel closed: %+v", d)
	}
	if diff := cmp.Diff([]peerCall{{op: "close", tunnelID: short.TunnelID}}, e.peers.take(), cmp.AllowUnexported(peerCall{})); diff != "" {
		t.Errorf("peer calls (-want +got):\n%s", diff)
	}
	// A second sweep does not close it again.
	if err := e.srv.Sweep(ctx); err != nil {
		t.Fatal(err)
	}
	if c := e.peers.take(); len(c) != 0 {
		t.Errorf("second sweep: %+v", c)
	}

	// Retention: kept for an hour after closing, then deleted.
	e.clock.Advance(time.Hour)
	if err := e.srv.Sweep(ctx); err != nil {
		t.Fatal(err)
	}
	e.describe(short.TunnelID) // still there at exactly ClosedAt+Retention
	e.clock.Advance(time.Millisecond)
	if err := e.srv.Sweep(ctx); err != nil {
		t.Fatal(err)
	}
	if r := e.call("DescribeTunnel", map[string]any{"tunnelId": short.TunnelID}); r.status != 400 {
		t.Errorf("not deleted after retention: %d %s", r.status, r.body)
	}
	// The long one expired meanwhile: closed by the sweep an hour later
	// and kept, since it has not been closed for Retention yet.
	if d := e.describe(long.TunnelID); d.Status != "CLOSED" || d.LastUpdatedAt != epoch(t0.Add(time.Hour+time.Minute)) {
		t.Errorf("long tunnel: %+v", d)
	}
}

func TestRun(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.SweepInterval = 5 * time.Millisecond })
	o := e.open(map[string]any{"timeoutConfig": map[string]any{"maxLifetimeTimeoutMinutes": 1}})
	e.clock.Advance(2 * time.Minute)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.srv.Run(ctx) }()
	deadline := time.Now().Add(10 * time.Second)
	for e.get(o.TunnelID).Status != store.StatusClosed {
		if time.Now().After(deadline) {
			t.Fatal("Run did not close the expired tunnel")
		}
		time.Sleep(5 * time.Millisecond) // polling a condition, not waiting for readiness
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run = %v, want nil", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
}

func TestNewConfig(t *testing.T) {
	st := openStore(t)
	creds := sigv4.Credentials{"a": "b"}
	tests := []struct {
		name string
		cfg  Config
		ok   bool
	}{
		{"minimal", Config{Store: st, Credentials: creds}, true},
		{"no auth", Config{Store: st, NoAuth: true}, true},
		{"no store", Config{Credentials: creds}, false},
		{"no credentials", Config{Store: st}, false},
		{"no auth ignores credentials", Config{Store: st, Credentials: creds, NoAuth: true}, true},
		{"empty credentials", Config{Store: st, Credentials: sigv4.Credentials{}}, false},
		{"credential store", Config{Store: st, CredentialStore: sigv4.CredentialsFunc(func(string) (string, bool) { return "", false })}, true},
		{"lifetime 721", Config{Store: st, NoAuth: true, MaxLifetimeMinutes: 721}, false},
		{"lifetime -1", Config{Store: st, NoAuth: true, MaxLifetimeMinutes: -1}, false},
		{"services -1", Config{Store: st, NoAuth: true, MaxServicesPerTunnel: -1}, false},
		{"open -1", Config{Store: st, NoAuth: true, MaxOpenTunnels: -1}, false},
		{"retention -1", Config{Store: st, NoAuth: true, Retention: -1}, false},
		{"bad region", Config{Store: st, NoAuth: true, Region: "US East"}, false},
		{"bad account", Config{Store: st, NoAuth: true, AccountID: "a:b"}, false},
		{"cn region", Config{Store: st, NoAuth: true, Region: "cn-north-1"}, true},
	}
	for _, tc := range tests {
		s, err := New(tc.cfg)
		if tc.ok != (err == nil) {
			t.Errorf("%s: New err = %v", tc.name, err)
		}
		if err != nil && !errors.Is(err, ErrConfig) {
			t.Errorf("%s: %v is not ErrConfig", tc.name, err)
		}
		if tc.name == "cn region" && s != nil && !strings.HasPrefix(s.TunnelARN("x"), "arn:aws-cn:iot:cn-north-1:") {
			t.Errorf("cn ARN %s", s.TunnelARN("x"))
		}
	}
}

func TestEpochTime(t *testing.T) {
	for _, tc := range []struct {
		t    time.Time
		want string
	}{
		{time.Unix(1700000000, 0), "1700000000.000"},
		{time.Unix(1700000000, 123456789), "1700000000.123"},
		{time.Unix(0, 5e6), "0.005"},
	} {
		b, _ := json.Marshal(epochTime(tc.t))
		if string(b) != tc.want {
			t.Errorf("%v -> %s, want %s", tc.t, b, tc.want)
		}
	}
}

func TestNotificationLogValue(t *testing.T) {
	n := Notification{TunnelID: "x", Token: "secret-token-value", ThingName: "th"}
	var buf bytes.Buffer
	l := slogJSON(&buf)
	l.Info("n", "notification", n)
	if strings.Contains(buf.String(), "secret-token-value") || !strings.Contains(buf.String(), token.Short("secret-token-value")) {
		t.Errorf("log %s", buf.String())
	}
}
