package operator

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/sectun/sectun/internal/notify"
	"github.com/sectun/sectun/internal/proxy"
	"github.com/sectun/sectun/tunnel"
)

// ServiceSpec is a service of the tunnel and where its local end listens.
type ServiceSpec struct {
	// ID is the tunnel's service ID (e.g. SSH).
	ID string
	// Listen is host:port; port 0 picks a free port.
	Listen string
}

// ParseServiceSpec parses --service values: "SSH" (a free port), "SSH=5555"
// or "SSH=127.0.0.1:5555". bind is the host used when only a port is given.
func ParseServiceSpec(s, bind string) (ServiceSpec, error) {
	id, addr, hasAddr := strings.Cut(strings.TrimSpace(s), "=")
	id, addr = strings.TrimSpace(id), strings.TrimSpace(addr)
	if !notify.ValidServiceID(id) {
		return ServiceSpec{}, fmt.Errorf("service %q: the ID must be 1-128 letters, digits, ':', '_' or '-' (e.g. SSH or SSH=5555)", s)
	}
	switch {
	case !hasAddr:
		addr = net.JoinHostPort(bind, "0")
	case addr == "":
		return ServiceSpec{}, fmt.Errorf("service %q: give a port after '=' (e.g. %s=5555) or none", s, id)
	default:
		if _, err := strconv.Atoi(addr); err == nil {
			addr = net.JoinHostPort(bind, addr)
		}
	}
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return ServiceSpec{}, fmt.Errorf("service %q: want %s=PORT or %s=HOST:PORT", s, id, id)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
		return ServiceSpec{}, fmt.Errorf("service %q: bad port %q", s, port)
	}
	return ServiceSpec{ID: id, Listen: addr}, nil
}

// ConnectConfig configures Connect. API and Services are required.
type ConnectConfig struct {
	// API opens, watches and closes the tunnel.
	API *Client
	// ThingName is the device; tunneld (or AWS) notifies it. Without one
	// the destination token is printed for a manual tunnel-agent --token.
	ThingName string
	// Services are the tunnel's services, in order.
	Services []ServiceSpec
	// TunnelEndpoint is the tunneling service's WebSocket endpoint; ""
	// derives it from API.Endpoint (https -> wss, http -> ws, same host
	// and port), or for AWS (API.Endpoint "") from API.Region.
	TunnelEndpoint string
	// TunnelTLS configures wss:// (nil: system roots).
	TunnelTLS *tls.Config
	// TunnelCAFile and TunnelInsecure are where TunnelTLS came from
	// (sectun's --ca and --insecure); they go into the device command
	// printed without ThingName.
	TunnelCAFile   string
	TunnelInsecure bool
	// ProgressInterval is how often a line says that Connect still waits
	// for the device (default 5 s).
	ProgressInterval time.Duration
	// PeerVersion is the device's protocol version when it is older than
	// V3 (1 or 2: the reference proxy's -y); 0 detects it.
	PeerVersion int
	// LifetimeMinutes is the tunnel's maximum lifetime (0: the service's
	// default, 720 on AWS).
	LifetimeMinutes int
	// Description is the tunnel's description (default "sectun connect").
	Description string
	// CloseOnExit closes the tunnel when Connect returns.
	CloseOnExit bool
	// WaitDevice bounds the wait for the device to connect before the
	// usage lines are printed (default 60 s; negative: do not wait).
	WaitDevice time.Duration
	// SSHUser is the user name in the printed ssh command (default
	// "USER").
	SSHUser string
	// Out receives the lines meant for the user (nil: discard).
	Out io.Writer
	// Logger receives diagnostics (nil: discard).
	Logger *slog.Logger
}

// ErrDeviceNotConnected: the device did not connect within WaitDevice.
// Connect goes on anyway; it is only printed.
var ErrDeviceNotConnected = errors.New("operator: the device has not connected")

// Connect opens a tunnel to a device and serves its source end on local
// ports until ctx ends or the tunnel closes: it calls OpenTunnel, connects
// a source session, listens on every service's address, waits for the
// device (DescribeTunnel) and prints how to use each service (e.g. "ssh -p
// 5555 USER@localhost"). With CloseOnExit the tunnel is closed at the end.
// It returns nil when ctx ended or the service closed the tunnel.
func Connect(ctx context.Context, cfg ConnectConfig) (err error) {
	out := cfg.Out
	if out == nil {
		out = io.Discard
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if cfg.API == nil || len(cfg.Services) == 0 {
		return errors.New("connect: no API client or no services")
	}
	ids := make([]string, 0, len(cfg.Services))
	seen := map[string]bool{}
	for _, s := range cfg.Services {
		if seen[s.ID] {
			return fmt.Errorf("connect: service %s given twice", s.ID)
		}
		seen[s.ID] = true
		ids = append(ids, s.ID)
	}
	if cfg.ThingName != "" && !notify.ValidThingName(cfg.ThingName) {
		return fmt.Errorf("connect: thing name %q is not 1-128 letters, digits, ':', '_' or '-'", cfg.ThingName)
	}
	endpoint := cfg.TunnelEndpoint
	if endpoint == "" && cfg.API.Endpoint != "" {
		if endpoint, err = wsEndpoint(cfg.API.Endpoint); err != nil {
			return err
		}
	}

	in := OpenTunnelInput{
		Description:       cfg.Description,
		DestinationConfig: &DestinationConfig{ThingName: cfg.ThingName, Services: ids},
	}
	if in.Description == "" {
		in.Description = "sectun connect"
	}
	if cfg.LifetimeMinutes > 0 {
		in.TimeoutConfig = &TimeoutConfig{MaxLifetimeTimeoutMinutes: cfg.LifetimeMinutes}
	}
	api := *cfg.API
	if api.Endpoint == "" {
		api.Endpoint = DefaultEndpoint(api.Region)
	}
	// The local ports first: a busy one must not open a tunnel (and
	// notify a device) for nothing.
	lns := make([]net.Listener, 0, len(cfg.Services))
	defer func() {
		for _, ln := range lns {
			if ln != nil {
				ln.Close() // those NewSource did not take
			}
		}
	}()
	for _, sv := range cfg.Services {
		ln, err := net.Listen("tcp", sv.Listen)
		if err != nil {
			return fmt.Errorf("connect: cannot listen for %s on %s: %w (no tunnel was opened)", sv.ID, sv.Listen, err)
		}
		lns = append(lns, ln)
	}
	opened, err := api.OpenTunnel(ctx, in)
	if err != nil {
		return err
	}
	log = log.With("tunnel_id", opened.TunnelID)
	target := "no thing (start the device end yourself)"
	if cfg.ThingName != "" {
		target = "thing " + cfg.ThingName
	}
	fmt.Fprintf(out, "Opened tunnel %s for %s, services %s\n", opened.TunnelID, target, strings.Join(ids, ", "))
	// Until the usage lines are out nobody else can use this tunnel (the
	// source token is never shown), so a failed start closes it too.
	ready, closedByService := false, false
	defer func() {
		if (cfg.CloseOnExit || !ready) && !closedByService {
			cctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if cerr := api.CloseTunnel(cctx, opened.TunnelID); cerr != nil {
				fmt.Fprintf(out, "Could not close tunnel %s: %v\n", opened.TunnelID, cerr)
				err = errors.Join(err, cerr)
				return
			}
			fmt.Fprintf(out, "Closed tunnel %s\n", opened.TunnelID)
		}
	}()

	cctx, cancel := context.WithTimeout(ctx, time.Minute)
	sess, err := tunnel.Connect(cctx, tunnel.Config{
		Mode:        tunnel.ModeSource,
		AccessToken: opened.SourceAccessToken,
		Endpoint:    endpoint,
		Region:      api.Region,
		TLS:         cfg.TunnelTLS,
		PeerVersion: cfg.PeerVersion,
		Logger:      log,
	})
	cancel()
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("connecting to the tunneling service: %w", err)
	}
	defer sess.Close()

	svcs := make([]proxy.Service, len(cfg.Services))
	for i, s := range cfg.Services {
		svcs[i] = proxy.Service{ServiceID: s.ID, Address: s.Listen, Listener: lns[i]}
		lns[i] = nil // NewSource owns it now
		if cfg.PeerVersion == 1 {
			// A V1 tunnel carries no service IDs.
			svcs[i].ServiceID = ""
		}
	}
	src, err := proxy.NewSource(ctx, sess, proxy.SourceConfig{Services: svcs, Logger: log})
	if err != nil {
		return err
	}
	defer src.Close()

	if cfg.ThingName == "" {
		printDeviceCommand(out, cfg, displayEndpoint(endpoint, api.Region), opened.DestinationAccessToken)
	}
	if cfg.WaitDevice >= 0 {
		wait := cfg.WaitDevice
		if wait == 0 {
			wait = time.Minute
		}
		fmt.Fprintf(out, "Waiting for the device to connect...\n")
		every := cfg.ProgressInterval
		if every <= 0 {
			every = 5 * time.Second
		}
		progress := func(waited time.Duration, state string) {
			fmt.Fprintf(out, "Still waiting for the device: %v of %v (destination %s)\n", waited.Round(time.Second), wait, state)
		}
		switch werr := waitDevice(ctx, &api, opened.TunnelID, wait, sess, every, progress); {
		case werr == nil:
			fmt.Fprintf(out, "Device connected.\n")
		case ctx.Err() != nil:
			return nil
		case errors.Is(werr, ErrDeviceNotConnected):
			fmt.Fprintf(out, "The device has not connected after %v (is tunnel-agent running and subscribed for %s?); connections fail until it does.\n", wait, cfg.ThingName)
		default:
			fmt.Fprintf(out, "Cannot tell whether the device is connected: %v\n", werr)
		}
	}
	addrs := src.Addrs()
	for _, s := range cfg.Services {
		key := s.ID
		if cfg.PeerVersion == 1 {
			key = ""
		}
		fmt.Fprintf(out, "  %-6s %s\n", s.ID, usage(s.ID, addrs[key], cfg.SSHUser))
	}
	ready = true
	if cfg.CloseOnExit {
		fmt.Fprintf(out, "Press Ctrl-C to close the tunnel.\n")
	} else {
		fmt.Fprintf(out, "Press Ctrl-C to stop; the tunnel stays open (close it with: aws iotsecuretunneling close-tunnel --tunnel-id %s).\n", opened.TunnelID)
	}

	select {
	case <-ctx.Done():
		return nil
	case <-sess.Done():
		serr := sess.Err()
		if errors.Is(serr, tunnel.ErrTunnelClosed) {
			closedByService = true
			fmt.Fprintf(out, "The tunnel was closed by the service.\n")
			return nil
		}
		return fmt.Errorf("tunnel session ended: %w", serr)
	case <-src.Done():
		return src.Err()
	}
}

// waitDevice polls DescribeTunnel until the destination is connected.
func waitDevice(ctx context.Context, api *Client, id string, wait time.Duration, sess *tunnel.Session, every time.Duration, progress func(time.Duration, string)) error {
	ctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	start := time.Now()
	next := every
	state := "not yet known"
	for {
		d, err := api.DescribeTunnel(ctx, id)
		if err == nil && d.DestinationConnectionState != nil && d.DestinationConnectionState.Status == "CONNECTED" {
			return nil
		}
		if err == nil && d.DestinationConnectionState != nil && d.DestinationConnectionState.Status != "" {
			state = d.DestinationConnectionState.Status
		}
		if waited := time.Since(start); waited >= next && progress != nil {
			progress(waited, state)
			next += every
		}
		if err != nil && ctx.Err() == nil {
			var ae *APIError
			if errors.As(err, &ae) {
				return err
			}
		}
		select {
		case <-tick.C:
		case <-sess.Done():
			return sess.Err()
		case <-ctx.Done():
			if errors.Is(ctx.Err(), context.DeadlineExceeded) {
				return ErrDeviceNotConnected
			}
			return ctx.Err()
		}
	}
}

// wsEndpoint turns the API's URL into the tunnel endpoint (same host and
// port, ws or wss).
func wsEndpoint(api string) (string, error) {
	u, err := url.Parse(api)
	if err != nil || u.Host == "" {
		return "", fmt.Errorf("endpoint URL %q: want https://host[:port]", api)
	}
	switch strings.ToLower(u.Scheme) {
	case "https":
		return "wss://" + u.Host, nil
	case "http":
		return "ws://" + u.Host, nil
	}
	return "", fmt.Errorf("endpoint URL %q: scheme must be https or http", api)
}

// printDeviceCommand prints the tunnel-agent command that serves the
// tunnel's destination end, working as shown: the token in the
// environment (command lines are visible to other users), the endpoint,
// the CA or --tunnel-insecure as given to sectun, a --map per service the
// agent does not map by itself.
func printDeviceCommand(out io.Writer, cfg ConnectConfig, endpoint, token string) {
	args := []string{"tunnel-agent", "--tunnel-endpoint", shellQuote(endpoint)}
	ca := cfg.TunnelCAFile
	if ca != "" {
		if abs, err := filepath.Abs(ca); err == nil {
			ca = abs
		}
		args = append(args, "--tunnel-ca", shellQuote(ca))
	}
	if cfg.TunnelInsecure {
		args = append(args, "--tunnel-insecure")
	}
	var guessed []string
	for _, sv := range cfg.Services {
		up := strings.ToUpper(sv.ID)
		port := ""
		switch {
		case up == "SSH" || up == "VNC":
			continue // the agent maps them itself (localhost:22, localhost:5900)
		case strings.HasPrefix(up, "SSH"):
			port = "22"
		case strings.HasPrefix(up, "HTTPS"):
			port = "443"
		case strings.HasPrefix(up, "HTTP") || strings.HasPrefix(up, "WEB"):
			port = "80"
		case strings.HasPrefix(up, "VNC"):
			port = "5900"
		case strings.HasPrefix(up, "RDP"):
			port = "3389"
		default:
			port = "PORT"
		}
		guessed = append(guessed, sv.ID)
		args = append(args, "--map", shellQuote(sv.ID+"=localhost:"+port))
	}
	fmt.Fprintf(out, "No thing given, so no device is notified. On the device run (the token in the environment, not on the command line):\n")
	fmt.Fprintf(out, "  export AWSIOT_TUNNEL_ACCESS_TOKEN=%s\n", shellQuote(token))
	fmt.Fprintf(out, "  %s\n", strings.Join(args, " "))
	if ca != "" {
		fmt.Fprintf(out, "(--tunnel-ca is this machine's path of the CA given with --ca: copy the file to the device, or change the path.)\n")
	}
	if len(guessed) > 0 {
		fmt.Fprintf(out, "(Check the --map addresses of %s: where the device serves them; PORT is to fill in.)\n", strings.Join(guessed, ", "))
	}
}

// shellQuote quotes s for a POSIX shell when it needs it.
func shellQuote(s string) string {
	if s != "" && strings.IndexFunc(s, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("-_./:=@,+", r))
	}) < 0 {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

func displayEndpoint(endpoint, region string) string {
	if endpoint != "" {
		return endpoint
	}
	return "data.tunneling.iot." + region + ".amazonaws.com"
}

// usage says how to reach a service through its local port.
func usage(id string, addr net.Addr, user string) string {
	if addr == nil {
		return "(not listening)"
	}
	host, port, _ := net.SplitHostPort(addr.String())
	if ip := net.ParseIP(host); ip != nil && ip.IsLoopback() {
		host = "localhost"
	} else if ip != nil && ip.IsUnspecified() {
		host = "localhost"
	}
	hostPort := net.JoinHostPort(host, port)
	if user == "" {
		user = "USER"
	}
	up := strings.ToUpper(id)
	switch {
	case strings.HasPrefix(up, "SSH"):
		return fmt.Sprintf("ssh -p %s %s@%s", port, user, host)
	case strings.HasPrefix(up, "HTTPS"):
		return "https://" + hostPort + "/"
	case strings.HasPrefix(up, "HTTP") || strings.HasPrefix(up, "WEB"):
		return "http://" + hostPort + "/"
	case strings.HasPrefix(up, "VNC"):
		return fmt.Sprintf("vncviewer %s::%s", host, port)
	case strings.HasPrefix(up, "RDP"):
		return "rdp://" + hostPort
	}
	return hostPort
}
