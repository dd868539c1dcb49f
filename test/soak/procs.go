package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"

	"github.com/sectun/sectun/internal/procstat"
	"github.com/sectun/sectun/internal/proctest"
)

// buildBinaries builds tunneld and localproxy into dir.
func buildBinaries(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	cmd := exec.Command("go", "build", "-o", dir, "github.com/sectun/sectun/cmd/tunneld", "github.com/sectun/sectun/cmd/localproxy")
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("building the binaries: %w", err)
	}
	return nil
}

// proc is a started binary; its output goes to a log file and, line by
// line, to lines for whoever counts events in it.
type proc struct {
	p    *proctest.Proc
	name string
	cmd  *exec.Cmd
	log  *os.File
	// lines receives every output line; a line is dropped when the
	// channel is full, so the process never waits on it.
	lines chan string
	done  <-chan struct{}
}

// procTail is how many output lines each process keeps in memory for
// waitLine; the log file has them all.
const procTail = 200

func startProc(binDir, logDir, name string, env []string, args ...string) (*proc, error) {
	f, err := os.CreateTemp(logDir, name+"-*.log")
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(f, "# %s %s\n", name, strings.Join(args, " "))
	lines := make(chan string, 256)
	p, err := proctest.Start(proctest.Config{
		Name: name, Path: filepath.Join(binDir, name), Args: args, Env: env,
		Tail: procTail,
		Log:  f,
		OnLine: func(line string) {
			select {
			case lines <- line:
			default:
			}
		},
	})
	if err != nil {
		f.Close()
		return nil, err
	}
	go func() {
		<-p.Done() // every line is written by then
		f.Close()
	}()
	return &proc{p: p, name: name, cmd: p.Cmd, log: f, lines: lines, done: p.Done()}, nil
}

// waitLine waits for an output line matching re.
func (p *proc) waitLine(re string, timeout time.Duration) ([]string, error) {
	m, err := p.p.WaitLine(context.Background(), regexp.MustCompile(re), timeout)
	if err != nil {
		return nil, fmt.Errorf("%w; see %s", err, p.log.Name())
	}
	return m, nil
}

// drainLines makes the next waitLine see only lines that come after.
func (p *proc) drainLines() { p.p.Drain() }

// stop sends SIGTERM and waits, killing after timeout.
func (p *proc) stop(timeout time.Duration) { p.p.Stop(timeout) }

// exitCode waits up to timeout for the process to end.
func (p *proc) exitCode(timeout time.Duration) (int, error) {
	return p.p.WaitExit(context.Background(), timeout)
}

// usage is a process's resource counts from /proc.
type usage = procstat.Usage

func procUsage(pid int) (usage, error) { return procstat.Read(pid) }

// tunneld is the running service with a SigV4-signing API client.
type tunneld struct {
	*proc
	url, addr, dataDir string
	keyID, secret      string
	client             *http.Client
	metrics            *http.Client
}

func startTunneld(binDir, logDir, dataDir string) (*tunneld, error) {
	p, err := startProc(binDir, logDir, "tunneld", nil,
		"--listen", "127.0.0.1:0", "--data-dir", dataDir, "--plaintext", "--mqtt-listen", "off")
	if err != nil {
		return nil, err
	}
	m, err := p.waitLine(`listening on (http://(\S+))`, 30*time.Second)
	if err != nil {
		p.stop(5 * time.Second)
		return nil, err
	}
	creds, err := os.ReadFile(filepath.Join(dataDir, "aws-credentials"))
	if err != nil {
		p.stop(5 * time.Second)
		return nil, err
	}
	d := &tunneld{proc: p, url: m[1], addr: m[2], dataDir: dataDir,
		client:  &http.Client{Timeout: 30 * time.Second},
		metrics: &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}},
	}
	if k := regexp.MustCompile(`aws_access_key_id = (\S+)`).FindStringSubmatch(string(creds)); k != nil {
		d.keyID = k[1]
	}
	if s := regexp.MustCompile(`aws_secret_access_key = (\S+)`).FindStringSubmatch(string(creds)); s != nil {
		d.secret = s[1]
	}
	return d, nil
}

// call invokes an API operation and decodes the answer into out.
func (d *tunneld) call(ctx context.Context, op string, in, out any) error {
	body, _ := json.Marshal(in)
	req, err := http.NewRequestWithContext(ctx, "POST", d.url+"/", bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/x-amz-json-1.1")
	req.Header.Set("X-Amz-Target", "IoTSecuredTunneling."+op)
	sum := sha256.Sum256(body)
	if err := v4.NewSigner().SignHTTP(ctx, aws.Credentials{AccessKeyID: d.keyID, SecretAccessKey: d.secret},
		req, hex.EncodeToString(sum[:]), "IoTSecuredTunneling", "us-east-1", time.Now()); err != nil {
		return err
	}
	resp, err := d.client.Do(req)
	if err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		return fmt.Errorf("%s: HTTP %d %s", op, resp.StatusCode, data)
	}
	if out != nil {
		return json.Unmarshal(data, out)
	}
	return nil
}

// metric reads samples of /metrics by name.
func (d *tunneld) metric(names ...string) (map[string]float64, error) {
	resp, err := d.metrics.Get(d.url + "/metrics")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	got := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		for _, n := range names {
			if rest, ok := strings.CutPrefix(sc.Text(), n+" "); ok {
				v, err := strconv.ParseFloat(strings.TrimSpace(rest), 64)
				if err == nil {
					got[n] = v
				}
			}
		}
	}
	return got, sc.Err()
}

// goroutines returns tunneld's goroutine count after dropping the API
// client's idle connections (each holds a goroutine in tunneld).
func (d *tunneld) goroutines() (int, error) {
	d.client.CloseIdleConnections()
	m, err := d.metric("go_goroutines")
	if err != nil {
		return 0, err
	}
	return int(m["go_goroutines"]), nil
}

// logTail returns the last lines of a log file, for error reports.
func logTail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// lockedRand is a math/rand source safe for concurrent use.
type lockedRand struct {
	mu sync.Mutex
	r  interface {
		Int64N(int64) int64
		IntN(int) int
	}
}

func (l *lockedRand) int64n(n int64) int64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.r.Int64N(n)
}

func (l *lockedRand) intn(n int) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.r.IntN(n)
}
