package console_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/cdproto/input"
	"github.com/chromedp/cdproto/page"
	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"

	"github.com/sectun/sectun/internal/console/sshdtest"
	"github.com/sectun/sectun/tunnel"
)

const browserWait = 60 * time.Second

// chromium returns the browser to drive, or skips.
func chromium(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("SECTUN_CHROMIUM"); p != "" {
		return p
	}
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	t.Skip("chromium not installed (Debian: chromium): the browser tests need it")
	return ""
}

// newBrowser starts a headless chromium with a fresh profile; the
// returned context is its first tab.
func newBrowser(t *testing.T) context.Context {
	t.Helper()
	// The profile directory is removed by hand: chromium's helper
	// processes may still write to it for a moment after the browser has
	// exited, which made t.TempDir's cleanup fail ("directory not empty").
	profile, err := os.MkdirTemp("", "sectun-chromium-")
	if err != nil {
		t.Fatal(err)
	}
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(chromium(t)),
		chromedp.Headless,
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.NoFirstRun,
		chromedp.NoDefaultBrowserCheck,
		chromedp.UserDataDir(profile),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.Flag("ignore-certificate-errors", true), // tunneld's development CA
		chromedp.WindowSize(1280, 860),
	}
	actx, cancelA := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(actx)
	t.Cleanup(func() {
		cancel()
		cancelA()
		for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(100 * time.Millisecond) {
			if err := os.RemoveAll(profile); err == nil || time.Now().After(deadline) {
				if err != nil {
					t.Logf("chromium profile %s not removed: %v", profile, err)
				}
				return
			}
		}
	})
	if err := chromedp.Run(ctx); err != nil {
		t.Fatalf("starting chromium: %v", err)
	}
	acceptDialogs(t, ctx)
	return ctx
}

// acceptDialogs says OK to confirm() in a tab, and logs the page's
// console errors and exceptions.
func acceptDialogs(t *testing.T, ctx context.Context) {
	chromedp.ListenTarget(ctx, func(ev any) {
		switch ev := ev.(type) {
		case *page.EventJavascriptDialogOpening:
			go chromedp.Run(ctx, page.HandleJavaScriptDialog(true))
		case *runtime.EventExceptionThrown:
			t.Logf("page exception: %s", ev.ExceptionDetails.Error())
		case *runtime.EventConsoleAPICalled:
			if ev.Type == runtime.APITypeError || ev.Type == runtime.APITypeWarning {
				var parts []string
				for _, a := range ev.Args {
					parts = append(parts, string(a.Value)+a.Description)
				}
				t.Logf("page console %s: %s", ev.Type, strings.Join(parts, " "))
			}
		}
	})
}

func run(t *testing.T, ctx context.Context, what string, actions ...chromedp.Action) {
	t.Helper()
	c, cancel := context.WithTimeout(ctx, browserWait)
	defer cancel()
	if err := chromedp.Run(c, actions...); err != nil {
		var loc string
		lc, cancel := context.WithTimeout(ctx, 5*time.Second)
		chromedp.Run(lc, chromedp.Location(&loc))
		cancel()
		t.Fatalf("%s: %v (at %s)", what, err, loc)
	}
}

// shot writes a screenshot of a page, NAME.png, into $SECTUN_SCREENSHOTS
// (SECTUN_SCREENSHOTS=$PWD/docs/console refreshes the docs' pictures), or
// else into sectun-console-screenshots in the system's temporary
// directory, so a run does not change the checkout.
func shot(t *testing.T, ctx context.Context, name string) {
	t.Helper()
	var png []byte
	run(t, ctx, "screenshot "+name, page.BringToFront(), chromedp.Sleep(300*time.Millisecond), chromedp.CaptureScreenshot(&png))
	dir := os.Getenv("SECTUN_SCREENSHOTS")
	if dir == "" {
		dir = filepath.Join(os.TempDir(), "sectun-console-screenshots")
	}
	t.Logf("screenshot: %s", filepath.Join(dir, name+".png"))
	// A page must not show a script's stray value: "null", "undefined" or
	// an element rendered as text.
	var stray string
	run(t, ctx, "stray values on "+name, chromedp.Evaluate(`(() => { const m = document.body.innerText.match(/\bnull\b|\bundefined\b|\[object [A-Za-z]+\]/); return m ? m[0] : ""; })()`, &stray))
	if stray != "" {
		t.Errorf("page %s shows %q", name, stray)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, name+".png"), png, 0o644); err != nil {
		t.Fatal(err)
	}
}

// termText is the terminal's buffer as text.
const termText = `(() => { const b = window.sectunTerm.buffer.active; const out = []; for (let i = 0; i < b.length; i++) out.push(b.getLine(i).translateToString(true)); return out.join("\n"); })()`

func waitTerm(t *testing.T, ctx context.Context, re *regexp.Regexp) string {
	t.Helper()
	deadline := time.Now().Add(browserWait)
	var text string
	for time.Now().Before(deadline) {
		run(t, ctx, "read the terminal", chromedp.Evaluate(termText, &text))
		if re.MatchString(text) {
			return text
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("terminal never showed %v:\n%s", re, text)
	return ""
}

// TestBrowserEndToEnd drives the console in a real chromium with real
// parts: tunneld (TLS), a destination (sectun's tunnel library, as
// localproxy and tunnel-agent run it) in front of a real sshd. Sign in,
// open a tunnel, see it connect, open the terminal, sign in to sshd with
// a key after confirming the host key, run a command and read its output
// from xterm's buffer, resize, close the tunnel from another tab and see
// both ends disconnected, sign out. Screenshots: see shot.
func TestBrowserEndToEnd(t *testing.T) {
	ctx := newBrowser(t)
	sshd := sshdtest.Start(t)
	e := newEnv(t, nil)
	base := e.base + "/console/"

	// Sign in.
	run(t, ctx, "sign-in page", chromedp.Navigate(base), chromedp.WaitVisible("#access_key_id", chromedp.ByID))
	shot(t, ctx, "signin")
	run(t, ctx, "wrong secret", chromedp.SendKeys("#access_key_id", e.akid, chromedp.ByID), chromedp.SendKeys("#secret_access_key", "wrong", chromedp.ByID),
		chromedp.Click("#signin-button", chromedp.ByID), chromedp.WaitVisible("#signin-error", chromedp.ByID))
	var msg string
	run(t, ctx, "error text", chromedp.Text("#signin-error", &msg, chromedp.ByID))
	if !strings.Contains(msg, "wrong") {
		t.Errorf("sign-in error %q", msg)
	}
	run(t, ctx, "sign in", chromedp.SendKeys("#access_key_id", e.akid, chromedp.ByID), chromedp.SendKeys("#secret_access_key", e.secret, chromedp.ByID),
		chromedp.Click("#signin-button", chromedp.ByID), chromedp.WaitVisible("#ov-open", chromedp.ByID))
	shot(t, ctx, "overview")
	var upFor string
	run(t, ctx, "uptime", chromedp.Evaluate(`(() => { for (const dt of document.querySelectorAll("dt")) if (dt.textContent === "Up for") return dt.nextElementSibling.textContent; return ""; })()`, &upFor))
	if !strings.Contains(upFor, "min") && !strings.Contains(upFor, " h") && !strings.Contains(upFor, " d") {
		t.Errorf("overview: Up for %q, want a length of time", upFor)
	}

	// Open a tunnel for a thing.
	run(t, ctx, "open page", chromedp.Navigate(base+"#/open"), chromedp.WaitVisible("#open-thing", chromedp.ByID),
		chromedp.SendKeys("#open-thing", "pi-kitchen", chromedp.ByID),
		chromedp.SendKeys("#open-description", "SSH from the browser test", chromedp.ByID),
		chromedp.Click("#open-submit", chromedp.ByID), chromedp.WaitVisible("#tokens", chromedp.ByID))
	var tunnelID, dstToken string
	run(t, ctx, "tokens", chromedp.Text("#opened-tunnel", &tunnelID, chromedp.ByID),
		chromedp.Text(`code[data-secret="Destination access token"]`, &dstToken, chromedp.ByQuery))
	shot(t, ctx, "open")
	var cmds string
	run(t, ctx, "commands", chromedp.Text("#tokens", &cmds, chromedp.ByID))
	if !strings.Contains(cmds, "localproxy -r us-east-1 -e wss://") || !strings.Contains(cmds, "sectun connect --endpoint-url https://") {
		t.Errorf("commands: %s", cmds)
	}
	dst := sshdtest.StartDestination(t, strings.Replace(e.base, "https", "wss", 1), dstToken, e.tls, sshd.Addr)

	// The list and the tunnel page show it, connected.
	run(t, ctx, "tunnels list", chromedp.Navigate(base+"#/tunnels"),
		chromedp.WaitVisible(`tr[data-tunnel="`+tunnelID+`"] td.dst-state .badge.ok`, chromedp.ByQuery))
	shot(t, ctx, "tunnels")
	run(t, ctx, "devices", chromedp.Navigate(base+"#/devices"), chromedp.WaitVisible(`tr[data-thing="pi-kitchen"]`, chromedp.ByQuery))
	shot(t, ctx, "devices")
	run(t, ctx, "tunnel page", chromedp.Navigate(base+"#/tunnel/"+tunnelID), chromedp.WaitVisible(".destination-state .badge.ok", chromedp.ByQuery))

	// The terminal, in its own tab: rotate the source token, sign in with
	// the key after checking the host key.
	shot(t, ctx, "tunnel")
	term := ctx
	run(t, term, "terminal", chromedp.Navigate(e.base+"/console/terminal#"+tunnelID), chromedp.WaitVisible("#ssh-user", chromedp.ByID),
		chromedp.SendKeys("#ssh-user", sshd.User, chromedp.ByID), chromedp.SetValue("#ssh-key", string(sshd.Key), chromedp.ByID))
	shot(t, term, "terminal-signin")
	run(t, term, "connect", chromedp.Click("#ssh-connect", chromedp.ByID), chromedp.WaitVisible("#hostkey-accept", chromedp.ByID))
	var fp string
	run(t, term, "fingerprint", chromedp.Text("#hostkey-fp", &fp, chromedp.ByID))
	if fp != sshd.HostKeyFingerprint {
		t.Errorf("host key shown %q, want %q", fp, sshd.HostKeyFingerprint)
	}
	shot(t, term, "terminal-hostkey")
	run(t, term, "accept host key", chromedp.Click("#hostkey-accept", chromedp.ByID))
	waitTerm(t, term, regexp.MustCompile(`[$#] $|[$#]\s*$`))
	run(t, term, "type", typeLine("echo browser-$((6*7)) && stty size"))
	text := waitTerm(t, term, regexp.MustCompile(`(?m)^browser-42\s*$`))
	var cols, rows int
	run(t, term, "size", chromedp.Evaluate(`window.sectunTerm.cols`, &cols), chromedp.Evaluate(`window.sectunTerm.rows`, &rows))
	if !strings.Contains(text, fmt.Sprintf("%d %d", rows, cols)) {
		t.Errorf("stty size does not say %d %d:\n%s", rows, cols, text)
	}
	shot(t, term, "terminal")

	// Resize the window: the shell sees the new size.
	run(t, term, "resize", chromedp.EmulateViewport(900, 520), chromedp.Sleep(500*time.Millisecond),
		chromedp.Evaluate(`window.sectunTerm.cols`, &cols), chromedp.Evaluate(`window.sectunTerm.rows`, &rows),
		typeLine("clear; stty size"))
	waitTerm(t, term, regexp.MustCompile(fmt.Sprintf(`(?m)^%d %d\s*$`, rows, cols)))

	// Keystroke echo, for the figures.
	browserEcho := browserEchoLatency(t, term, 40)
	cliEcho := cliEchoLatency(t, e, tunnelID, sshd, 40)
	t.Logf("FIGURE keystroke echo through the same tunnel (40 keys): browser terminal p50 %v p90 %v; ssh -tt CLI p50 %v p90 %v",
		pct(browserEcho, 50), pct(browserEcho, 90), pct(cliEcho, 50), pct(cliEcho, 90))

	// The CLI's source replaced the browser's: reconnect gets a new token.
	run(t, term, "reconnect", chromedp.WaitVisible("#term-reconnect", chromedp.ByID), chromedp.Click("#term-reconnect", chromedp.ByID),
		chromedp.WaitVisible("#hostkey-accept", chromedp.ByID), chromedp.Click("#hostkey-accept", chromedp.ByID))
	run(t, term, "type again", chromedp.WaitVisible(`#term-state`, chromedp.ByID))
	waitTerm(t, term, regexp.MustCompile(`[$#]\s*$`))
	run(t, term, "type again", typeLine("echo again-$((5*5))"))
	waitTerm(t, term, regexp.MustCompile(`(?m)^again-25\s*$`))

	// Close the tunnel with the console's CloseTunnel (the tunnel page's
	// button runs the same request; a second tab cannot be driven here:
	// chromedp's second target hangs in this headless chromium), from the
	// terminal's page, which stays open: both ends are disconnected.
	var closed int
	closeJS := `fetch("/console/api/op/CloseTunnel", {method: "POST", headers: {"Content-Type": "application/json",
		"X-CSRF-Token": document.querySelector('meta[name="csrf-token"]').content}, body: JSON.stringify({tunnelId: ` + strconv.Quote(tunnelID) + `})}).then(r => r.status)`
	run(t, term, "close", chromedp.Evaluate(closeJS, &closed, func(p *runtimeEvaluateParams) *runtimeEvaluateParams { return p.WithAwaitPromise(true) }))
	if closed != 200 {
		t.Fatalf("CloseTunnel from the page: %d", closed)
	}
	run(t, term, "terminal ended", page.BringToFront(), chromedp.WaitVisible(`body[data-ended="true"]`, chromedp.ByQuery))
	waitTerm(t, term, regexp.MustCompile(`WebSocket closed|session ended`))
	select {
	case <-dst.Session.Done():
		if !errors.Is(dst.Session.Err(), tunnel.ErrTunnelClosed) {
			t.Errorf("destination ended with %v, want ErrTunnelClosed", dst.Session.Err())
		}
	case <-time.After(browserWait):
		t.Error("the destination was not disconnected when the tunnel closed")
	}
	shot(t, term, "terminal-ended")
	run(t, ctx, "back to the console", chromedp.Navigate(base+"#/tunnel/"+tunnelID), chromedp.WaitVisible(".destination-state .badge.idle", chromedp.ByQuery))
	shot(t, ctx, "tunnel-closed")

	// Sign out.
	run(t, ctx, "sign out", chromedp.Click("#signout", chromedp.ByID), chromedp.WaitVisible("#access_key_id", chromedp.ByID))
	var status int
	run(t, ctx, "session gone", chromedp.Evaluate(`fetch("/console/api/session").then(r => r.status)`, &status, func(p *runtimeEvaluateParams) *runtimeEvaluateParams { return p.WithAwaitPromise(true) }))
	if status != 401 {
		t.Errorf("after sign-out the API answers %d", status)
	}
}

// browserEchoLatency types single keys into the terminal's SSH session and
// times each until the echo is on screen (xterm parsed it).
func browserEchoLatency(t *testing.T, ctx context.Context, n int) []time.Duration {
	t.Helper()
	var ms []float64
	js := fmt.Sprintf(`(async () => {
		const term = window.sectunTerm, out = [];
		for (let i = 0; i < %d; i++) {
			const t0 = performance.now();
			const p = new Promise(res => { const d = term.onWriteParsed(() => { d.dispose(); res(); }); });
			window.sectunType("x");
			await p;
			out.push(performance.now() - t0);
			await new Promise(res => setTimeout(res, 20));
		}
		window.sectunType("\x15");
		return out;
	})()`, n)
	run(t, ctx, "echo latency", chromedp.Evaluate(js, &ms, func(p *runtimeEvaluateParams) *runtimeEvaluateParams { return p.WithAwaitPromise(true) }))
	out := make([]time.Duration, len(ms))
	for i, m := range ms {
		out[i] = time.Duration(m * float64(time.Millisecond))
	}
	return out
}

// cliEchoLatency connects ssh -tt through the same tunnel (a source
// session of the tunnel library on a local port, as localproxy -m src
// runs, with a rotated source token) and times the echo of single keys.
func cliEchoLatency(t *testing.T, e *env, tunnelID string, sshd *sshdtest.Server, n int) []time.Duration {
	t.Helper()
	if _, err := exec.LookPath("ssh"); err != nil {
		t.Log("ssh not installed: no CLI figure")
		return nil
	}
	b := e.browser()
	b.signIn(e.akid, e.secret)
	rot := decode(t, b.op("RotateTunnelAccessToken", map[string]any{"tunnelId": tunnelID, "clientMode": "SOURCE"}, nil).body)
	ctx, cancel := context.WithTimeout(context.Background(), browserWait)
	defer cancel()
	src, err := tunnel.Connect(ctx, tunnel.Config{Mode: tunnel.ModeSource, AccessToken: rot["sourceAccessToken"],
		Endpoint: strings.Replace(e.base, "https", "wss", 1), TLS: e.tls, DisableReconnect: true})
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				up, err := src.Dial(context.Background(), "SSH")
				if err != nil {
					return
				}
				defer up.Close()
				go io.Copy(up, c)
				io.Copy(c, up)
			}()
		}
	}()
	port := fmt.Sprint(ln.Addr().(*net.TCPAddr).Port)
	cmd := exec.CommandContext(ctx, "ssh", "-tt", "-p", port, "-i", sshd.KeyFile, "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
		"-o", "BatchMode=yes", "-o", "LogLevel=ERROR", sshd.User+"@127.0.0.1")
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { stdin.Close(); cmd.Process.Kill(); cmd.Wait() }()
	r := bufio.NewReader(stdout)
	fmt.Fprint(stdin, "echo READY-$((1+1))\n")
	var seen strings.Builder
	for !strings.Contains(seen.String(), "READY-2") {
		c, err := r.ReadByte()
		if err != nil {
			t.Fatalf("ssh: %v (%q)", err, seen.String())
		}
		seen.WriteByte(c)
	}
	// Let the prompt come, then time each key's echo.
	time.Sleep(300 * time.Millisecond)
	for r.Buffered() > 0 {
		r.ReadByte()
	}
	var out []time.Duration
	for range n {
		t0 := time.Now()
		stdin.Write([]byte("x"))
		for {
			c, err := r.ReadByte()
			if err != nil {
				t.Fatal(err)
			}
			if c == 'x' {
				break
			}
		}
		out = append(out, time.Since(t0))
		time.Sleep(20 * time.Millisecond)
	}
	return out
}

func pct(d []time.Duration, p int) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), d...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[min(len(s)-1, len(s)*p/100)]
}

type runtimeEvaluateParams = runtime.EvaluateParams

// typeLine types a line into xterm as a person would: the text (one input
// event, as an IME or a paste gives it; chromedp's SendKeys makes Chrome
// deliver every character twice to xterm) and the Enter key.
func typeLine(text string) chromedp.Action {
	return chromedp.Tasks{
		chromedp.Focus(".xterm-helper-textarea", chromedp.ByQuery),
		input.InsertText(text),
		input.DispatchKeyEvent(input.KeyRawDown).WithKey("Enter").WithCode("Enter").WithWindowsVirtualKeyCode(13).WithNativeVirtualKeyCode(13),
		input.DispatchKeyEvent(input.KeyUp).WithKey("Enter").WithCode("Enter").WithWindowsVirtualKeyCode(13).WithNativeVirtualKeyCode(13),
	}
}
