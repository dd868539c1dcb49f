package console

import (
	"encoding/json"
	"io"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/sectun/sectun/internal/store"
)

// ops are the API operations the console may run, and whether each
// changes something (and so needs the CSRF check, which every POST gets).
var ops = map[string]bool{
	"OpenTunnel":              true,
	"CloseTunnel":             true,
	"RotateTunnelAccessToken": true,
	"TagResource":             true,
	"UntagResource":           true,
	"DescribeTunnel":          false,
	"ListTunnels":             false,
	"ListTagsForResource":     false,
}

const (
	defaultPageSize = 50
	maxPageSize     = 200
	// maxScan bounds the store rows one filtered list request reads; the
	// answer's cursor continues where it stopped.
	maxScan = 2000
)

func (c *Console) serveAPI(w http.ResponseWriter, r *http.Request, name string) {
	if op, ok := strings.CutPrefix(name, "op/"); ok {
		c.withSession(w, r, true, func(w http.ResponseWriter, r *http.Request, s *session) { c.runOp(w, r, s, op) })
		return
	}
	var fn func(http.ResponseWriter, *http.Request, *session)
	switch name {
	case "session":
		fn = c.sessionInfo
	case "overview":
		fn = c.overview
	case "tunnels":
		fn = c.tunnels
	case "tunnel":
		fn = c.tunnel
	case "devices":
		fn = c.devices
	default:
		jsonError(w, http.StatusNotFound, "NotFound", "No console API "+shorten(name))
		return
	}
	c.withSession(w, r, false, fn)
}

// runOp runs one API operation with the request body, for the session's
// principal.
func (c *Console) runOp(w http.ResponseWriter, r *http.Request, s *session, op string) {
	if _, ok := ops[op]; !ok {
		jsonError(w, http.StatusBadRequest, "UnknownOperationException", "The console does not run "+shorten(op))
		return
	}
	body, err := io.ReadAll(r.Body)
	if err != nil {
		jsonError(w, http.StatusRequestEntityTooLarge, "RequestEntityTooLargeException", "Request body too large")
		return
	}
	out, err := c.cfg.API.Invoke(r.Context(), op, body, s.principal, "console")
	if err != nil {
		opErr(w, err)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Write(out)
}

type sessionOut struct {
	Principal   string    `json:"principal"`
	CSRF        string    `json:"csrf"`
	ExpiresAt   time.Time `json:"expiresAt"`
	IdleSeconds float64   `json:"idleTimeoutSeconds"`
	Region      string    `json:"region"`
	TunnelURL   string    `json:"tunnelURL"`
	APIURL      string    `json:"apiURL"`
	CAPath      string    `json:"caPath,omitempty"`
}

func (c *Console) sessionInfo(w http.ResponseWriter, r *http.Request, s *session) {
	tunnelURL, apiURL := c.endpoints(r)
	writeJSON(w, sessionOut{
		Principal: s.principal, CSRF: s.csrf, ExpiresAt: s.created.Add(c.cfg.MaxAge),
		IdleSeconds: c.cfg.IdleTimeout.Seconds(), Region: c.cfg.Region,
		TunnelURL: tunnelURL, APIURL: apiURL, CAPath: c.cfg.CAPath,
	})
}

// endpoints returns the tunnel and API URLs for commands.
func (c *Console) endpoints(r *http.Request) (tunnelURL, apiURL string) {
	scheme := "https"
	if r.TLS == nil {
		scheme = "http"
	}
	apiURL = scheme + "://" + r.Host
	tunnelURL = c.cfg.TunnelURL
	if tunnelURL == "" {
		tunnelURL = strings.Replace(apiURL, "http", "ws", 1)
	}
	return tunnelURL, apiURL
}

type overviewOut struct {
	OpenTunnels       int              `json:"openTunnels"`
	LiveTunnels       int              `json:"liveTunnels"`
	ConnectedPeers    int              `json:"connectedPeers"`
	BytesRelayed      int64            `json:"bytesRelayed"`
	FramesRelayed     int64            `json:"framesRelayed"`
	Handshakes        int64            `json:"handshakes"`
	HandshakeFailures int64            `json:"handshakeFailures"`
	FailureReasons    map[string]int64 `json:"handshakeFailureReasons"`
	AddressesBlocked  int64            `json:"addressesBlocked"`
	Violations        int64            `json:"protocolViolations"`
	Health            health           `json:"health"`
	Now               time.Time        `json:"now"`
}

func (c *Console) overview(w http.ResponseWriter, r *http.Request, s *session) {
	st := c.cfg.Relay.Stats()
	h, open := c.health(r.Context())
	out := overviewOut{
		OpenTunnels: open, LiveTunnels: st.Tunnels, ConnectedPeers: st.Peers,
		BytesRelayed: st.BytesRelayed, FramesRelayed: st.FramesRelayed,
		Handshakes: st.Handshakes, FailureReasons: st.HandshakeFailures,
		AddressesBlocked: st.AddressesBlocked, Violations: st.Violations,
		Health: h, Now: c.cfg.Now().UTC(),
	}
	for _, n := range st.HandshakeFailures {
		out.HandshakeFailures += n
	}
	writeJSON(w, out)
}

type endOut struct {
	Connected bool      `json:"connected"`
	Since     time.Time `json:"since"`
}

type tunnelRow struct {
	ID          string    `json:"tunnelId"`
	Thing       string    `json:"thingName"`
	Services    []string  `json:"services"`
	Status      string    `json:"status"`
	Description string    `json:"description,omitempty"`
	Source      endOut    `json:"source"`
	Destination endOut    `json:"destination"`
	CreatedAt   time.Time `json:"createdAt"`
	ExpiresAt   time.Time `json:"expiresAt"`
	ClosedAt    time.Time `json:"closedAt,omitzero"`
}

func row(t *store.Tunnel) tunnelRow {
	return tunnelRow{
		ID: t.ID, Thing: t.ThingName, Services: t.Services, Status: string(t.Status), Description: t.Description,
		Source:      endOut{t.Source.Connected, t.Source.UpdatedAt},
		Destination: endOut{t.Destination.Connected, t.Destination.UpdatedAt},
		CreatedAt:   t.CreatedAt, ExpiresAt: t.ExpiresAt, ClosedAt: t.ClosedAt,
	}
}

type tunnelsOut struct {
	Tunnels    []tunnelRow `json:"tunnels"`
	NextCursor string      `json:"nextCursor,omitempty"`
	Scanned    int         `json:"scanned"`
	Now        time.Time   `json:"now"`
}

// tunnels lists tunnels newest first: thing (exact), status (OPEN or
// CLOSED), limit and cursor query parameters.
func (c *Console) tunnels(w http.ResponseWriter, r *http.Request, s *session) {
	q := r.URL.Query()
	limit := defaultPageSize
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > maxPageSize {
			jsonError(w, http.StatusBadRequest, "ValidationException", "limit must be 1 to "+strconv.Itoa(maxPageSize))
			return
		}
		limit = n
	}
	status := strings.ToUpper(q.Get("status"))
	if status != "" && status != string(store.StatusOpen) && status != string(store.StatusClosed) {
		jsonError(w, http.StatusBadRequest, "ValidationException", "status must be OPEN or CLOSED")
		return
	}
	out := tunnelsOut{Tunnels: []tunnelRow{}, Now: c.cfg.Now().UTC()}
	thing := q.Get("thing")
	cursor := q.Get("cursor")
	for {
		batch := limit - len(out.Tunnels)
		if status != "" {
			batch = min(maxPageSize, maxScan-out.Scanned)
		}
		ts, next, err := c.cfg.Store.List(r.Context(), store.ListOptions{ThingName: thing, Limit: batch, Cursor: cursor})
		if err != nil {
			jsonError(w, http.StatusBadRequest, "ValidationException", "Listing failed: "+shorten(err.Error()))
			return
		}
		out.Scanned += len(ts)
		for i, t := range ts {
			if status != "" && string(t.Status) != status {
				continue
			}
			out.Tunnels = append(out.Tunnels, row(t))
			if len(out.Tunnels) == limit && i < len(ts)-1 {
				// The page ends inside this batch: the cursor after t is
				// that of the batch cut after t.
				_, next, err = c.cfg.Store.List(r.Context(), store.ListOptions{ThingName: thing, Limit: i + 1, Cursor: cursor})
				if err != nil {
					next = ""
				}
				break
			}
		}
		cursor = next
		if cursor == "" || len(out.Tunnels) == limit || out.Scanned >= maxScan {
			out.NextCursor = cursor
			break
		}
	}
	writeJSON(w, out)
}

type liveEnd struct {
	Connected bool   `json:"connected"`
	ChannelID string `json:"channelId,omitempty"`
	Version   int    `json:"version,omitempty"`
	Frames    int64  `json:"messagesSent"`
	Bytes     int64  `json:"bytesSent"`
}

type tunnelOut struct {
	Tunnel      json.RawMessage `json:"tunnel"` // DescribeTunnel's answer
	Source      liveEnd         `json:"source"`
	Destination liveEnd         `json:"destination"`
	ExpiresAt   time.Time       `json:"expiresAt"`
	Now         time.Time       `json:"now"`
}

// tunnel describes one tunnel (DescribeTunnel, through the API) with the
// relay's live figures.
func (c *Console) tunnel(w http.ResponseWriter, r *http.Request, s *session) {
	id := r.URL.Query().Get("id")
	body, _ := json.Marshal(map[string]string{"tunnelId": id})
	b, err := c.cfg.API.Invoke(r.Context(), "DescribeTunnel", body, s.principal, "console")
	if err != nil {
		opErr(w, err)
		return
	}
	var d struct {
		Tunnel json.RawMessage `json:"tunnel"`
	}
	json.Unmarshal(b, &d)
	out := tunnelOut{Tunnel: d.Tunnel, Now: c.cfg.Now().UTC()}
	if t, err := c.cfg.Store.Get(r.Context(), id); err == nil {
		out.ExpiresAt = t.ExpiresAt
	}
	src, dst, _ := c.cfg.Relay.TunnelStats(id)
	out.Source = liveEnd{src.Connected, src.ChannelID, src.Version, src.Frames, src.Bytes}
	out.Destination = liveEnd{dst.Connected, dst.ChannelID, dst.Version, dst.Frames, dst.Bytes}
	writeJSON(w, out)
}

type deviceOut struct {
	Thing       string      `json:"thing"`
	Connected   bool        `json:"connected"`
	LastSeen    time.Time   `json:"lastSeen,omitzero"`
	OpenTunnels []tunnelRow `json:"openTunnels"` // the newest maxDeviceTunnels
	OpenCount   int         `json:"openCount"`
	Tunnels     int         `json:"tunnels"`
}

// maxDeviceScan bounds the tunnels read to find things; maxDeviceTunnels
// the open tunnels listed per thing.
const (
	maxDeviceScan    = 5000
	maxDeviceTunnels = 5
)

// devices lists the things the broker knows and the things of recent
// tunnels, with their open tunnels.
func (c *Console) devices(w http.ResponseWriter, r *http.Request, s *session) {
	byThing := map[string]*deviceOut{}
	get := func(thing string) *deviceOut {
		d := byThing[thing]
		if d == nil {
			d = &deviceOut{Thing: thing, OpenTunnels: []tunnelRow{}}
			byThing[thing] = d
		}
		return d
	}
	if c.cfg.Devices != nil {
		for _, d := range c.cfg.Devices() {
			o := get(d.Thing)
			o.Connected, o.LastSeen = d.Connected, d.LastSeen
		}
	}
	cursor, scanned := "", 0
	for scanned < maxDeviceScan {
		ts, next, err := c.cfg.Store.List(r.Context(), store.ListOptions{Limit: maxPageSize, Cursor: cursor})
		if err != nil {
			jsonError(w, http.StatusInternalServerError, "InternalFailure", "Listing tunnels failed")
			return
		}
		scanned += len(ts)
		for _, t := range ts {
			if t.ThingName == "" {
				continue
			}
			d := get(t.ThingName)
			d.Tunnels++
			if t.Status == store.StatusOpen {
				d.OpenCount++
				if len(d.OpenTunnels) < maxDeviceTunnels {
					d.OpenTunnels = append(d.OpenTunnels, row(t))
				}
			}
			if t.Destination.Connected && c.cfg.Devices == nil {
				d.Connected = true
			}
			if t.Destination.UpdatedAt.After(d.LastSeen) && (t.Destination.Connected || !t.Destination.UpdatedAt.Equal(t.CreatedAt)) {
				d.LastSeen = t.Destination.UpdatedAt
			}
		}
		if next == "" {
			break
		}
		cursor = next
	}
	out := make([]*deviceOut, 0, len(byThing))
	for _, d := range byThing {
		out = append(out, d)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Connected != out[j].Connected {
			return out[i].Connected
		}
		return out[i].Thing < out[j].Thing
	})
	writeJSON(w, map[string]any{"devices": out, "brokerKnown": c.cfg.Devices != nil, "now": c.cfg.Now().UTC()})
}
