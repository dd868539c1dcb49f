package main

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"slices"
	"strings"
	"text/tabwriter"
	"time"
)

// Report is the outcome of a harness run (the -json output).
type Report struct {
	// Command is the harness's command line.
	Command string `json:"command"`
	// Machine describes where it ran.
	Machine Machine `json:"machine"`
	// SizeBytes is the bulk size per direction.
	SizeBytes int64 `json:"size_bytes"`
	Runs      int   `json:"runs"`
	Conns     int   `json:"conns"`
	Tunnels   int   `json:"tunnels"`
	// Transports holds one table per transport.
	Transports []*TransportResult `json:"transports"`
	// Seconds is the run's wall time.
	Seconds float64 `json:"seconds"`
}

// Machine describes the host.
type Machine struct {
	CPUs   int    `json:"cpus"`
	CPU    string `json:"cpu"`
	Kernel string `json:"kernel"`
	Go     string `json:"go"`
	// LoadStart and LoadEnd are /proc/loadavg at the start and the end:
	// other work on the machine skews every figure.
	LoadStart string `json:"load_start"`
	LoadEnd   string `json:"load_end"`
}

// TransportResult is one table: the figures measured with one transport
// between the local proxies and tunneld.
type TransportResult struct {
	// Transport is "plain" (ws://) or "tls" (wss://, both legs).
	Transport string `json:"transport"`
	Rows      []Row  `json:"rows"`
	// Notes explain figures (sample counts, errors counted in conns).
	Notes []string `json:"notes,omitempty"`
}

// Row is one figure: sectun's value, the baseline's, their ratio and the
// issue's target.
type Row struct {
	Figure string `json:"figure"`
	Unit   string `json:"unit"`
	// Sectun is the median over the runs.
	Sectun float64 `json:"sectun"`
	// Baseline is the median of the reference over the runs (the 3-hop
	// relay unless BaselineName says otherwise); nil when there is none.
	Baseline     *float64 `json:"baseline,omitempty"`
	BaselineName string   `json:"baseline_name,omitempty"`
	// Ratio is Sectun / Baseline.
	Ratio *float64 `json:"ratio,omitempty"`
	// Target is the target in words; Met whether it holds.
	Target string `json:"target,omitempty"`
	Met    *bool  `json:"met,omitempty"`
	// SectunRuns and BaselineRuns are the per-run values.
	SectunRuns   []float64 `json:"sectun_runs,omitempty"`
	BaselineRuns []float64 `json:"baseline_runs,omitempty"`
}

// goal is a target of the issue: a check of a row.
type goal struct {
	text string
	ok   func(sectun, ratio float64) bool
}

func minRatio(x float64) *goal {
	return &goal{fmt.Sprintf(">= %.0f%% of baseline", x*100), func(_, r float64) bool { return r >= x }}
}

func maxRatio(x float64) *goal {
	return &goal{fmt.Sprintf("<= %gx baseline", x), func(_, r float64) bool { return r <= x }}
}

func atMost(x float64, unit string) *goal {
	return &goal{fmt.Sprintf("<= %g %s", x, unit), func(s, _ float64) bool { return s <= x }}
}

func atLeast(x float64, text string) *goal {
	return &goal{text, func(s, _ float64) bool { return s >= x }}
}

// median returns the median of v (the mean of the middle two for an even
// count); NaN for none.
func median(v []float64) float64 {
	if len(v) == 0 {
		return math.NaN()
	}
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// percentile returns the q-quantile (0 < q <= 1) of sorted durations, by
// the nearest-rank method.
func percentile(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(math.Ceil(q*float64(len(sorted)))) - 1
	return sorted[max(0, min(i, len(sorted)-1))]
}

// add appends a row from per-run values; baseline may be nil.
func (t *TransportResult) add(figure, unit string, sectun, baseline []float64, baseName string, tg *goal) {
	r := Row{Figure: figure, Unit: unit, Sectun: median(sectun), SectunRuns: sectun}
	if baseline != nil {
		b := median(baseline)
		r.Baseline, r.BaselineRuns, r.BaselineName = &b, baseline, baseName
		if b != 0 {
			ratio := r.Sectun / b
			r.Ratio = &ratio
		}
	}
	if tg != nil {
		r.Target = tg.text
		ratio := math.NaN()
		if r.Ratio != nil {
			ratio = *r.Ratio
		}
		met := tg.ok(r.Sectun, ratio)
		r.Met = &met
	}
	t.Rows = append(t.Rows, r)
}

func (t *TransportResult) notef(format string, args ...any) {
	t.Notes = append(t.Notes, fmt.Sprintf(format, args...))
}

func formatValue(v float64, unit string) string {
	switch {
	case math.IsNaN(v):
		return "-"
	case unit == "MB/s" || unit == "µs" || unit == "count":
		return fmt.Sprintf("%.0f", v)
	case unit == "ms" || unit == "CPU-s/GiB":
		return fmt.Sprintf("%.2f", v)
	}
	return fmt.Sprintf("%.1f", v)
}

var transportTitle = map[string]string{
	"plain": "plain ws:// between the local proxies and tunneld",
	"tls":   "TLS (wss://) on both legs, tunneld's self-signed CA",
}

// printText writes the tables.
func (r *Report) printText(w io.Writer) {
	fmt.Fprintf(w, "sectun bench: %s\n", r.Command)
	fmt.Fprintf(w, "machine: %d CPUs (%s), Linux %s, %s; load average at start %s, at end %s\n",
		r.Machine.CPUs, r.Machine.CPU, r.Machine.Kernel, r.Machine.Go, r.Machine.LoadStart, r.Machine.LoadEnd)
	fmt.Fprintf(w, "bulk %s each way at once on one connection; %d run(s), medians; baseline = plain 3-hop TCP relay (3 processes, io.Copy) unless named\n",
		sizeText(r.SizeBytes), r.Runs)
	for _, t := range r.Transports {
		fmt.Fprintf(w, "\n== %s ==\n", transportTitle[t.Transport])
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "figure\tunit\tsectun\tbaseline\tratio\ttarget\tmet?")
		for _, row := range t.Rows {
			base, ratio, met := "-", "-", ""
			fig := row.Figure
			if row.Baseline != nil {
				base = formatValue(*row.Baseline, row.Unit)
				if row.BaselineName != "" && row.BaselineName != "relay" {
					fig += " (vs " + row.BaselineName + ")"
				}
			}
			if row.Ratio != nil {
				ratio = fmt.Sprintf("%.2f", *row.Ratio)
			}
			if row.Met != nil {
				met = "yes"
				if !*row.Met {
					met = "NO"
				}
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", fig, row.Unit, formatValue(row.Sectun, row.Unit), base, ratio, row.Target, met)
		}
		tw.Flush()
		for _, n := range t.Notes {
			fmt.Fprintf(w, "  note: %s\n", n)
		}
	}
	var met, missed []string
	for _, t := range r.Transports {
		for _, row := range t.Rows {
			if row.Met == nil {
				continue
			}
			name := t.Transport + ": " + row.Figure
			if *row.Met {
				met = append(met, name)
			} else {
				missed = append(missed, name)
			}
		}
	}
	fmt.Fprintf(w, "\ntargets met: %d of %d", len(met), len(met)+len(missed))
	if len(missed) > 0 {
		fmt.Fprintf(w, "; missed: %s", strings.Join(missed, "; "))
	}
	fmt.Fprintf(w, "\ntotal time %.0f s\n", r.Seconds)
}

func (r *Report) printJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}

func sizeText(n int64) string {
	switch {
	case n%(1<<30) == 0:
		return fmt.Sprintf("%d GiB", n>>30)
	case n%(1<<20) == 0:
		return fmt.Sprintf("%d MiB", n>>20)
	}
	return fmt.Sprintf("%d B", n)
}
