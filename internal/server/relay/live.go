package relay

// EndStats is what the relay knows of one connected end of a tunnel.
type EndStats struct {
	// Connected reports whether a peer holds this end now; the other
	// fields are zero when not.
	Connected bool
	// ChannelID is the channel-id of the peer's WebSocket session, and
	// Version the protocol version it speaks (1, 2 or 3); both are empty
	// when the end is connected to another node.
	ChannelID string
	Version   int
	// Frames and Bytes count the tunnel frames this peer sent that were
	// handed to the other end (bytes include the 2-byte length prefixes),
	// since this peer connected.
	Frames, Bytes int64
}

// TunnelStats returns the live state of each end of a tunnel, source
// first; ok is false when no peer of the tunnel is connected. It takes the
// relay's lock briefly (for the console's tunnel page).
func (r *Relay) TunnelStats(tunnelID string) (source, destination EndStats, ok bool) {
	r.mu.Lock()
	t := r.tunnels[tunnelID]
	r.mu.Unlock()
	if t == nil {
		return source, destination, false
	}
	var ends [2]EndStats
	for i := range t.ends {
		e := t.ends[i].Load()
		if e == nil || e.closed.Load() {
			continue
		}
		ok = true
		ends[i] = EndStats{Connected: true, Frames: e.cnt.frames.Load(), Bytes: e.cnt.bytes.Load()}
		if p := e.local; p != nil {
			ends[i].ChannelID, ends[i].Version = p.channelID, p.version
		}
	}
	return ends[0], ends[1], ok
}
