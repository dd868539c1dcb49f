package api

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/sectun/sectun/internal/store"
	"github.com/sectun/sectun/internal/token"
)

// openParams is a validated OpenTunnel request.
type openParams struct {
	description string
	tags        []tagOut
	thingName   string
	services    []string
	lifetime    int // minutes
}

// parseOpenTunnel decodes and validates an OpenTunnel body.
func (s *Server) parseOpenTunnel(body []byte) (*openParams, error) {
	p := &openParams{lifetime: s.maxLifetime}
	_, err := parse(body, func(in *openTunnelIn, v *validator) {
		if in.Description != nil {
			p.description = *in.Description
			v.description("description", p.description)
		}
		if in.Tags != nil {
			p.tags = v.tags("tags", in.Tags)
		}
		if in.DestinationConfig != nil {
			p.thingName, p.services = v.destinationConfig("destinationConfig", in.DestinationConfig, s.maxServices)
		}
		if in.TimeoutConfig != nil && in.TimeoutConfig.MaxLifetimeTimeoutMinutes != nil {
			m := *in.TimeoutConfig.MaxLifetimeTimeoutMinutes
			switch {
			case m < 1:
				v.add("timeoutConfig.maxLifetimeTimeoutMinutes", m, "Member must have value greater than or equal to 1")
			case m > s.maxLifetime:
				v.add("timeoutConfig.maxLifetimeTimeoutMinutes", m, fmt.Sprintf("Member must have value less than or equal to %d", s.maxLifetime))
			default:
				p.lifetime = m
			}
		}
	})
	if err != nil {
		return nil, err
	}
	return p, nil
}

func (s *Server) openTunnel(ctx context.Context, body []byte) (any, string, error) {
	p, err := s.parseOpenTunnel(body)
	if err != nil {
		return nil, "", err
	}
	now := s.clock()
	srcPlain, srcHash := token.New()
	dstPlain, dstHash := token.New()
	t := &store.Tunnel{
		Description:     p.description,
		Status:          store.StatusOpen,
		ThingName:       p.thingName,
		Services:        p.services,
		LifetimeMinutes: p.lifetime,
		Tags:            toStoreTags(p.tags),
		CreatedAt:       now,
		UpdatedAt:       now,
		ExpiresAt:       now.Add(time.Duration(p.lifetime) * time.Minute),
		Source:          store.Peer{TokenHash: srcHash, UpdatedAt: now},
		Destination:     store.Peer{TokenHash: dstHash, UpdatedAt: now},
	}
	tc, outbox := s.notifier.(TunnelCreator)
	outbox = outbox && t.ThingName != ""
	if err := s.create(ctx, t, func(ctx context.Context, t *store.Tunnel) error {
		if outbox {
			return tc.CreateTunnel(ctx, t, s.notification(t, dstPlain))
		}
		return s.store.Create(ctx, t)
	}); err != nil {
		return nil, "", err
	}
	s.log.LogAttrs(ctx, slog.LevelInfo, "tunnel opened",
		slog.String("tunnel_id", t.ID), slog.String("thing_name", t.ThingName),
		slog.Any("services", t.Services), slog.Int("lifetime_minutes", t.LifetimeMinutes),
		slog.String("source_token", token.Short(srcPlain)), slog.String("destination_token", token.Short(dstPlain)))
	if t.ThingName != "" && !outbox {
		s.notify(ctx, t, dstPlain)
	}
	return &openTunnelOut{
		TunnelID:               t.ID,
		TunnelArn:              t.ARN,
		SourceAccessToken:      srcPlain,
		DestinationAccessToken: dstPlain,
	}, t.ID, nil
}

// create stores t under a fresh ID, enforcing MaxOpenTunnels.
func (s *Server) create(ctx context.Context, t *store.Tunnel, put func(context.Context, *store.Tunnel) error) error {
	if s.maxOpen > 0 {
		s.openMu.Lock()
		defer s.openMu.Unlock()
		n, err := s.store.CountOpen(ctx)
		if err != nil {
			return fmt.Errorf("api: counting open tunnels: %w", err)
		}
		if n >= s.maxOpen {
			return errorf(CodeLimitExceeded, http.StatusBadRequest,
				"Limit of %d open tunnels reached: close a tunnel (CloseTunnel) before opening another", s.maxOpen)
		}
	}
	for range 3 { // a UUID v4 collision is all but impossible; retry anyway
		t.ID = newUUID()
		t.ARN = s.TunnelARN(t.ID)
		err := put(ctx, t)
		if !errors.Is(err, store.ErrExists) {
			if err != nil {
				return fmt.Errorf("api: creating tunnel: %w", err)
			}
			return nil
		}
	}
	return fmt.Errorf("api: creating tunnel: %w", store.ErrExists)
}

func (s *Server) notify(ctx context.Context, t *store.Tunnel, dstToken string) {
	if s.notifier == nil {
		return
	}
	// Not canceled when the request ends: a notifier may publish later.
	s.notifier.NotifyTunnel(context.WithoutCancel(ctx), s.notification(t, dstToken))
}

func (s *Server) notification(t *store.Tunnel, dstToken string) Notification {
	return Notification{
		TunnelID:  t.ID,
		ThingName: t.ThingName,
		Token:     dstToken,
		Region:    s.region,
		Services:  slices.Clone(t.Services),
	}
}

func (s *Server) closeTunnel(ctx context.Context, body []byte) (any, string, error) {
	var id string
	in, err := parse(body, func(in *closeTunnelIn, v *validator) {
		id = v.tunnelID("tunnelId", in.TunnelID)
	})
	if err != nil {
		return nil, "", err
	}
	now := s.clock()
	var closed bool
	_, err = s.store.Update(ctx, id, func(t *store.Tunnel) error {
		closed = false
		if t.Status == store.StatusClosed {
			return nil
		}
		closeInPlace(t, now)
		closed = true
		return nil
	})
	if err := storeErr(err, notFound(id), "closing tunnel"); err != nil {
		return nil, id, err
	}
	if closed {
		s.log.LogAttrs(ctx, slog.LevelInfo, "tunnel closed", slog.String("tunnel_id", id), slog.String("reason", "CloseTunnel"))
	}
	// Always tell the relay: it is idempotent there, and a peer that raced
	// an earlier close is caught this way.
	if s.peers != nil {
		s.peers.CloseTunnel(id, "tunnel closed")
	}
	if in.Delete != nil && *in.Delete {
		if err := s.store.Delete(ctx, id); err != nil && !errors.Is(err, store.ErrNotFound) {
			return nil, id, fmt.Errorf("api: deleting tunnel: %w", err)
		}
		s.log.LogAttrs(ctx, slog.LevelInfo, "tunnel deleted", slog.String("tunnel_id", id))
	}
	return emptyOut{}, id, nil
}

// closeInPlace marks t closed at now; both ends are disconnected by then.
func closeInPlace(t *store.Tunnel, now time.Time) {
	t.Status = store.StatusClosed
	t.ClosedAt = now
	t.UpdatedAt = now
	for _, p := range []*store.Peer{&t.Source, &t.Destination} {
		if p.Connected {
			p.Connected = false
			p.UpdatedAt = now
		}
	}
}

func (s *Server) describeTunnel(ctx context.Context, body []byte) (any, string, error) {
	var id string
	if _, err := parse(body, func(in *tunnelIDIn, v *validator) {
		id = v.tunnelID("tunnelId", in.TunnelID)
	}); err != nil {
		return nil, "", err
	}
	t, err := s.store.Get(ctx, id)
	if err := storeErr(err, notFound(id), "reading tunnel"); err != nil {
		return nil, id, err
	}
	return &describeTunnelOut{Tunnel: tunnelShape(t)}, id, nil
}

func tunnelShape(t *store.Tunnel) tunnelOut {
	out := tunnelOut{
		TunnelID:                   t.ID,
		TunnelArn:                  t.ARN,
		Status:                     string(t.Status),
		SourceConnectionState:      connState(&t.Source),
		DestinationConnectionState: connState(&t.Destination),
		Description:                t.Description,
		TimeoutConfig:              &timeoutConfigOut{MaxLifetimeTimeoutMinutes: t.LifetimeMinutes},
		Tags:                       toTagOut(t.Tags),
		CreatedAt:                  epochTime(t.CreatedAt),
		LastUpdatedAt:              epochTime(t.UpdatedAt),
	}
	if t.ThingName != "" || len(t.Services) > 0 {
		svcs := t.Services
		if svcs == nil {
			svcs = []string{}
		}
		out.DestinationConfig = &destinationConfigOut{ThingName: t.ThingName, Services: svcs}
	}
	return out
}

func connState(p *store.Peer) *connectionStateOut {
	st := "DISCONNECTED"
	if p.Connected {
		st = "CONNECTED"
	}
	return &connectionStateOut{Status: st, LastUpdatedAt: epochTime(p.UpdatedAt)}
}

func (s *Server) listTunnels(ctx context.Context, body []byte) (any, string, error) {
	opts := store.ListOptions{Limit: maxMaxResults}
	_, err := parse(body, func(in *listTunnelsIn, v *validator) {
		if in.ThingName != nil {
			opts.ThingName = *in.ThingName
			v.str("thingName", opts.ThingName, 1, maxThingName, thingNameRE, patThingName)
		}
		if in.MaxResults != nil {
			switch m := *in.MaxResults; {
			case m < 1:
				v.add("maxResults", m, "Member must have value greater than or equal to 1")
			case m > maxMaxResults:
				v.add("maxResults", m, fmt.Sprintf("Member must have value less than or equal to %d", maxMaxResults))
			default:
				opts.Limit = m
			}
		}
		if in.NextToken != nil {
			v.str("nextToken", *in.NextToken, 1, 4096, nextTokenRE, patNextToken)
			if v.n == 0 {
				c, err := base64.RawURLEncoding.DecodeString(*in.NextToken)
				if err != nil || len(c) == 0 {
					v.add("nextToken", *in.NextToken, "Member must be a nextToken returned by ListTunnels")
				}
				opts.Cursor = string(c)
			}
		}
	})
	if err != nil {
		return nil, "", err
	}
	ts, next, err := s.store.List(ctx, opts)
	if err != nil {
		if errors.Is(err, store.ErrInvalidCursor) {
			return nil, "", errorf(CodeValidation, http.StatusBadRequest,
				"1 validation error detected: Value at 'nextToken' failed to satisfy constraint: Member must be a nextToken returned by ListTunnels")
		}
		return nil, "", fmt.Errorf("api: listing tunnels: %w", err)
	}
	out := &listTunnelsOut{TunnelSummaries: make([]tunnelSummaryOut, 0, len(ts))}
	for _, t := range ts {
		out.TunnelSummaries = append(out.TunnelSummaries, tunnelSummaryOut{
			TunnelID:      t.ID,
			TunnelArn:     t.ARN,
			Status:        string(t.Status),
			Description:   t.Description,
			CreatedAt:     epochTime(t.CreatedAt),
			LastUpdatedAt: epochTime(t.UpdatedAt),
		})
	}
	if next != "" {
		out.NextToken = base64.RawURLEncoding.EncodeToString([]byte(next))
	}
	return out, "", nil
}

func (s *Server) rotateTunnelAccessToken(ctx context.Context, body []byte) (any, string, error) {
	var (
		id       string
		modes    []store.Mode
		thing    string
		services []string
	)
	in, err := parse(body, func(in *rotateIn, v *validator) {
		id = v.tunnelID("tunnelId", in.TunnelID)
		if v.required("clientMode", in.ClientMode) {
			switch *in.ClientMode {
			case "SOURCE":
				modes = []store.Mode{store.ModeSource}
			case "DESTINATION":
				modes = []store.Mode{store.ModeDestination}
			case "ALL":
				modes = []store.Mode{store.ModeSource, store.ModeDestination}
			default:
				v.add("clientMode", *in.ClientMode, "Member must satisfy enum value set: [SOURCE, DESTINATION, ALL]")
			}
		}
		if in.DestinationConfig != nil {
			if in.ClientMode != nil && *in.ClientMode == "SOURCE" {
				v.add("destinationConfig", "{...}", "Member must be absent when clientMode is SOURCE")
			} else {
				thing, services = v.destinationConfig("destinationConfig", in.DestinationConfig, s.maxServices)
			}
		}
	})
	if err != nil {
		return nil, "", err
	}

	// Tokens are made outside the update function, which may run again.
	plain := make(map[store.Mode]string, 2)
	hashes := make(map[store.Mode][]byte, 2)
	for _, m := range modes {
		plain[m], hashes[m] = token.New()
	}
	all := len(modes) == 2
	now := s.clock()
	t, err := s.store.Update(ctx, id, func(t *store.Tunnel) error {
		if t.Status != store.StatusOpen {
			return errorf(CodeValidation, http.StatusBadRequest,
				"Tunnel %s is CLOSED: its tokens cannot be rotated; open a new tunnel", id)
		}
		if in.DestinationConfig != nil {
			if !all && !sameSet(t.Services, services) {
				return errorf(CodeValidation, http.StatusBadRequest,
					"1 validation error detected: Value '[%s]' at 'destinationConfig.services' failed to satisfy constraint: "+
						"Member must equal the tunnel's services [%s] unless clientMode is ALL (the source stays connected)",
					shorten(strings.Join(services, ", ")), strings.Join(t.Services, ", "))
			}
			if thing != "" {
				t.ThingName = thing
			}
			t.Services = slices.Clone(services)
		}
		for _, m := range modes {
			p := t.Peer(m)
			p.TokenHash = hashes[m]
			p.ClientTokenHash = nil
			p.Consumed = false
		}
		t.UpdatedAt = now
		return nil
	})
	if err := storeErr(err, notFound(id), "rotating tokens"); err != nil {
		return nil, id, err
	}
	attrs := []slog.Attr{slog.String("tunnel_id", id), slog.String("client_mode", *in.ClientMode)}
	for _, m := range modes {
		attrs = append(attrs, slog.String(string(m)+"_token", token.Short(plain[m])))
	}
	s.log.LogAttrs(ctx, slog.LevelInfo, "tunnel tokens rotated", attrs...)
	if s.peers != nil {
		for _, m := range modes {
			s.peers.DisconnectPeer(id, m, "access token rotated")
		}
	}
	out := &rotateOut{TunnelArn: t.ARN}
	if p, ok := plain[store.ModeSource]; ok {
		out.SourceAccessToken = p
	}
	if p, ok := plain[store.ModeDestination]; ok {
		out.DestinationAccessToken = p
		if t.ThingName != "" {
			s.notify(ctx, t, p)
		}
	}
	return out, id, nil
}

func sameSet(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	a, b = slices.Clone(a), slices.Clone(b)
	slices.Sort(a)
	slices.Sort(b)
	return slices.Equal(a, b)
}

// resource is the tunnel a tagging request names by its ARN.
type resource struct {
	arn string
	id  string // the tunnel ID in arn; the tunnel may not exist
}

// parseResource is parse for the requests that name a tunnel by ARN: it
// validates the ARN (arnOf returns where in holds it) with check's
// members, then finds the tunnel ID in it.
func parseResource[In any](body []byte, arnOf func(*In) *string, check func(*In, *validator)) (*In, resource, error) {
	var r resource
	in, err := parse(body, func(in *In, v *validator) {
		r.arn = v.arn("resourceArn", arnOf(in))
		check(in, v)
	})
	if err != nil {
		return nil, r, err
	}
	r.id, err = tunnelIDForARN(r.arn)
	return in, r, err
}

// tunnelIDForARN returns the ID of the tunnel an ARN names. The caller
// checks that the tunnel exists and has exactly that ARN.
func tunnelIDForARN(arn string) (string, error) {
	i := strings.LastIndex(arn, ":tunnel/")
	if !strings.HasPrefix(arn, "arn:") || i < 0 {
		return "", errorf(CodeResourceNotFound, http.StatusBadRequest, "Resource %s not found: not a tunnel ARN", shorten(arn))
	}
	id := arn[i+len(":tunnel/"):]
	if !tunnelIDRE.MatchString(id) {
		return "", resourceNotFound(arn)
	}
	return id, nil
}

func resourceNotFound(arn string) *apiError {
	return errorf(CodeResourceNotFound, http.StatusBadRequest, "Resource %s not found", shorten(arn))
}

// updateResource runs fn on r's tunnel in a store update that also stamps
// UpdatedAt, and answers as TagResource and UntagResource do.
func (s *Server) updateResource(ctx context.Context, r resource, fn func(t *store.Tunnel) error) (any, string, error) {
	now := s.clock()
	_, err := s.store.Update(ctx, r.id, func(t *store.Tunnel) error {
		if t.ARN != r.arn {
			return resourceNotFound(r.arn)
		}
		if err := fn(t); err != nil {
			return err
		}
		t.UpdatedAt = now
		return nil
	})
	if err := storeErr(err, resourceNotFound(r.arn), "updating tags"); err != nil {
		return nil, r.id, err
	}
	return emptyOut{}, r.id, nil
}

func (s *Server) tagResource(ctx context.Context, body []byte) (any, string, error) {
	var tags []tagOut
	_, r, err := parseResource(body, func(in *tagResourceIn) *string { return in.ResourceArn },
		func(in *tagResourceIn, v *validator) {
			if in.Tags == nil {
				v.add("tags", nil, "Member must not be null")
			} else {
				tags = v.tags("tags", in.Tags)
			}
		})
	if err != nil {
		return nil, "", err
	}
	return s.updateResource(ctx, r, func(t *store.Tunnel) error {
		merged := slices.Clone(t.Tags)
		for _, nt := range tags {
			i := slices.IndexFunc(merged, func(x store.Tag) bool { return x.Key == nt.Key })
			if i >= 0 {
				merged[i].Value = nt.Value
			} else {
				merged = append(merged, store.Tag{Key: nt.Key, Value: nt.Value})
			}
		}
		if len(merged) > maxTags {
			return errorf(CodeValidation, http.StatusBadRequest,
				"1 validation error detected: Value at 'tags' failed to satisfy constraint: a tunnel can hold at most %d tags (it would have %d)", maxTags, len(merged))
		}
		t.Tags = merged
		return nil
	})
}

func (s *Server) untagResource(ctx context.Context, body []byte) (any, string, error) {
	var keys []string
	_, r, err := parseResource(body, func(in *untagResourceIn) *string { return in.ResourceArn },
		func(in *untagResourceIn, v *validator) {
			switch {
			case in.TagKeys == nil:
				v.add("tagKeys", nil, "Member must not be null")
			case len(*in.TagKeys) > maxTags:
				v.add("tagKeys", fmt.Sprintf("<%d keys>", len(*in.TagKeys)), fmt.Sprintf("Member must have length less than or equal to %d", maxTags))
			default:
				keys = *in.TagKeys
				for i, k := range keys {
					v.str(fmt.Sprintf("tagKeys.%d.member", i+1), k, 1, maxTagKey, tagRE, patTag)
				}
			}
		})
	if err != nil {
		return nil, "", err
	}
	return s.updateResource(ctx, r, func(t *store.Tunnel) error {
		t.Tags = slices.DeleteFunc(slices.Clone(t.Tags), func(x store.Tag) bool { return slices.Contains(keys, x.Key) })
		return nil
	})
}

func (s *Server) listTagsForResource(ctx context.Context, body []byte) (any, string, error) {
	_, r, err := parseResource(body, func(in *listTagsIn) *string { return in.ResourceArn },
		func(*listTagsIn, *validator) {})
	if err != nil {
		return nil, "", err
	}
	t, err := s.store.Get(ctx, r.id)
	if err == nil && t.ARN != r.arn {
		err = store.ErrNotFound
	}
	if err := storeErr(err, resourceNotFound(r.arn), "reading tunnel"); err != nil {
		return nil, r.id, err
	}
	tags := toTagOut(t.Tags)
	if tags == nil {
		tags = []tagOut{}
	}
	return &listTagsOut{Tags: tags}, r.id, nil
}

// parse decodes body into a new In and has check validate it, recording
// every problem in v (and, typically, the validated values in the
// caller's variables). It returns the SerializationException of a bad
// body, or the ValidationException listing all check found.
func parse[In any](body []byte, check func(in *In, v *validator)) (*In, error) {
	in := new(In)
	if err := decode(body, in); err != nil {
		return nil, err
	}
	var v validator
	check(in, &v)
	if err := v.err(); err != nil {
		return nil, err
	}
	return in, nil
}

// storeErr is what an operation answers for err from the store call
// doing something to one tunnel: nil for nil, missing for
// store.ErrNotFound, an *apiError an update function returned as it is,
// and anything else as an internal error.
func storeErr(err error, missing *apiError, doing string) error {
	var ae *apiError
	switch {
	case err == nil:
		return nil
	case errors.Is(err, store.ErrNotFound):
		return missing
	case errors.As(err, &ae):
		return ae
	}
	return fmt.Errorf("api: %s: %w", doing, err)
}

func toStoreTags(ts []tagOut) []store.Tag {
	if len(ts) == 0 {
		return nil
	}
	out := make([]store.Tag, len(ts))
	for i, t := range ts {
		out[i] = store.Tag{Key: t.Key, Value: t.Value}
	}
	return out
}

func toTagOut(ts []store.Tag) []tagOut {
	if len(ts) == 0 {
		return nil
	}
	out := make([]tagOut, len(ts))
	for i, t := range ts {
		out[i] = tagOut{Key: t.Key, Value: t.Value}
	}
	return out
}
