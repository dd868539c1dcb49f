package relay

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/sectun/sectun/internal/store"
	"github.com/sectun/sectun/wire"
)

var (
	// ErrNotHere refuses AttachRemote: the tunnel has no local peer for
	// the other end on this node (or the relay is shutting down).
	ErrNotHere = errors.New("relay: no local peer for the other end")
	// ErrStale refuses AttachRemote: an epoch does not match (the local
	// peer is not the one the remote node expects, or a newer connection
	// of the remote end is already attached or connected here).
	ErrStale = errors.New("relay: stale epoch")
	// ErrDetached is returned by Attachment.Deliver once the remote end is
	// no longer part of the pairing: replaced by a newer connection of its
	// end, closed (CloseTunnel, Shutdown) or detached.
	ErrDetached = errors.New("relay: remote end detached")
	// ErrBadFrames is returned by Attachment.Deliver for bytes that are
	// not whole, decodable tunnel frames.
	ErrBadFrames = errors.New("relay: bad frames from a remote end")
)

// Remote describes an end of a tunnel whose client is connected to another
// node (SCALEOUT.md), for AttachRemote.
type Remote struct {
	// TunnelID is the tunnel's ID.
	TunnelID string
	// Mode is the end the remote client is: the local peer it pairs with
	// is the other mode.
	Mode Mode
	// Epoch is the remote end's epoch (its Grant.Epoch on its node). An
	// end of this mode with a higher epoch, local or remote, makes
	// AttachRemote fail with ErrStale; one with the same or a lower epoch
	// is replaced (a local peer is closed with 1008 "replaced by a new
	// connection", a remote end's Peer is closed likewise).
	Epoch uint64
	// LocalEpoch, if not 0, is the epoch the local peer of the other mode
	// must have (its Grant.Epoch), else ErrStale.
	LocalEpoch uint64
	// Peer is the link to the other node: it gets the frames of the local
	// peer, as whole tunnel frames checked by this node.
	Peer Peer
}

// Attachment is a remote end attached to a pairing on this node: the node
// link's side of it. Frames read from the link go in with Deliver; frames
// of the local peer go out through Remote.Peer's Send.
type Attachment struct {
	end
	r      *Relay
	fw     forwarder
	msg    wire.Message
	ctx    context.Context // ends with the attachment
	cancel context.CancelFunc
	once   sync.Once
}

// AttachRemote makes rm the tunnel's end of mode rm.Mode on this node, in
// the pairing with the local peer of the other mode; it fails with
// ErrNotHere or ErrStale (wrapped, saying why). From then on, until the
// end leaves the pairing:
//
//   - Frames of the local peer reach rm.Peer.Send: checked by this relay
//     (wire.Message.Validate for the local peer's role, the tunnel's
//     service IDs, sizes), paced by the bandwidth limit, counted in Stats
//     and in the pairing's stream state. Send blocking is the backpressure
//     on the local peer's reader.
//   - Frames read from the link go to Attachment.Deliver, which relays
//     them to the local peer and tracks their streams (the relay that read
//     them checked them; Deliver only decodes them).
//   - The relay's own messages for the remote end (STREAM_RESET answering
//     a STREAM_START while the local peer is absent, the resets after the
//     local peer left or was replaced) also go to Peer.Send.
//   - CloseTunnel and DisconnectPeer for the remote end's mode call
//     Peer.Close; Shutdown calls Peer.Abort; a newer connection of the
//     same end (a handshake here, or another AttachRemote) closes it with
//     1008 "replaced by a new connection". Deliver then returns
//     ErrDetached.
//   - When the local peer leaves (or is replaced), the remote end gets
//     STREAM_RESET for the streams still active and stays attached: the
//     next local peer of that end pairs with it. The Authorizer's
//     PeerChanged tells the cluster the local peer left, should it rather
//     end the link.
//
// The owner must call Detach once the link ends, whatever the reason (link
// lost, Send failed, Deliver returned an error): the local peer then gets
// STREAM_RESET for every active stream and stays connected, as the
// protocol says for broken internal routing. The relay does not report
// remote ends to the Authorizer (their node does), nor count them in
// Stats.Peers.
func (r *Relay) AttachRemote(rm Remote) (*Attachment, error) {
	idx := modeIndex(rm.Mode)
	if idx < 0 {
		return nil, fmt.Errorf("relay: AttachRemote: unknown mode %q", rm.Mode)
	}
	if rm.Peer == nil {
		return nil, errors.New("relay: AttachRemote: nil Peer")
	}
	a := &Attachment{r: r}
	a.end = end{
		peer:  rm.Peer,
		mode:  rm.Mode,
		idx:   idx,
		epoch: rm.Epoch,
		log:   r.log.With("tunnel_id", rm.TunnelID, "mode", rm.Mode, "remote", true),
	}
	a.fw.from = &a.end
	a.ctx, a.cancel = context.WithCancel(context.Background())

	r.mu.Lock()
	if r.closing {
		r.mu.Unlock()
		a.cancel()
		return nil, fmt.Errorf("%w: shutting down", ErrNotHere)
	}
	t := r.tunnels[rm.TunnelID]
	var local *end
	if t != nil {
		local = t.ends[1-idx].Load()
	}
	if local == nil || local.local == nil || local.closed.Load() {
		r.mu.Unlock()
		a.cancel()
		return nil, fmt.Errorf("%w: tunnel %s has no %s peer here", ErrNotHere, rm.TunnelID, otherMode(rm.Mode))
	}
	if rm.LocalEpoch != 0 && local.epoch != rm.LocalEpoch {
		r.mu.Unlock()
		a.cancel()
		return nil, fmt.Errorf("%w: the %s peer here has epoch %d, not %d", ErrStale, local.mode, local.epoch, rm.LocalEpoch)
	}
	t.mu.Lock()
	old := t.ends[idx].Load()
	if old != nil && old.epoch > rm.Epoch {
		t.mu.Unlock()
		r.mu.Unlock()
		a.cancel()
		return nil, fmt.Errorf("%w: the %s end has epoch %d, newer than %d", ErrStale, rm.Mode, old.epoch, rm.Epoch)
	}
	a.t = t
	t.ends[idx].Store(&a.end)
	resets, other := t.replaced(old, idx)
	t.mu.Unlock()
	r.remotes[a] = struct{}{}
	r.wg.Add(1) // for replace's goroutine: r.closing is false under r.mu
	r.mu.Unlock()
	defer r.wg.Done()
	if old != nil {
		r.replace(old, other, resets)
		if old.local != nil {
			r.notify(t, old.mode)
		}
	}
	return a, nil
}

func otherMode(m Mode) Mode {
	if modeIndex(m) == 0 {
		return store.ModeDestination
	}
	return store.ModeSource
}

// Deliver relays frames read from the link to the local peer: whole tunnel
// frames (length prefixes included), any number of them, as the remote
// node checked them. It blocks while the local peer does not take them
// (backpressure for the link) and under the tunnel's bandwidth limit;
// frames is not retained after it returns. Frames for an absent or
// departing local peer are dropped and counted (a STREAM_START or
// CONNECTION_START so dropped is answered through Peer.Send). It returns
// ErrDetached once the end has left the pairing, and an error wrapping
// ErrBadFrames for bytes that are not whole decodable frames (after
// relaying the frames before them); the owner should end the link then.
// One goroutine at a time may call Deliver.
func (a *Attachment) Deliver(frames []byte) error {
	if a.closed.Load() {
		return ErrDetached
	}
	t := a.t
	var err error
	r := 0
	for r < len(frames) {
		n, serr := wire.SplitFrame(frames[r:])
		if serr != nil || n == 0 {
			err = fmt.Errorf("%w: no whole frame at offset %d of %d", ErrBadFrames, r, len(frames))
			break
		}
		stop := r + n
		if uerr := a.msg.Unmarshal(frames[r+wire.FrameHeaderSize : stop]); uerr != nil {
			err = fmt.Errorf("%w: %w", ErrBadFrames, uerr)
			break
		}
		t.route(&a.end, &a.fw, frames, r, stop, &a.msg, true)
		r = stop
	}
	a.fw.flush() // frames is the caller's again
	if perr := t.pace(a.ctx, a.idx, r); perr != nil && err == nil && a.closed.Load() {
		err = ErrDetached
	}
	if err == nil && a.closed.Load() {
		err = ErrDetached
	}
	return err
}

// Detach removes the remote end from the pairing, if it is still the
// current end of its mode: the local peer gets STREAM_RESET for every
// active stream and stays connected. It does not call the Peer's Close.
// It may be called more than once, from any goroutine; Deliver returns
// ErrDetached afterwards.
func (a *Attachment) Detach() {
	a.once.Do(func() {
		a.closed.Store(true)
		a.cancel()
		r := a.r
		other, resets, current := a.leave(r, func() { delete(r.remotes, a) })
		if other != nil {
			a.log.Info("remote end detached: resetting the local peer's streams", "streams", len(resets))
			other.sendResets(resets)
		}
		if current {
			r.notify(a.t, a.mode)
		}
	})
}

// abort is Shutdown's: the Peer is dropped, the end stops relaying.
func (a *Attachment) abort() {
	a.cancel()
	a.end.abort()
}
