package main

import (
	"bytes"
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/common/expfmt"
	"golang.org/x/sys/unix"

	"github.com/ramproc/ramproc/bytestore"
	"github.com/ramproc/ramproc/fusebridge"
	"github.com/ramproc/ramproc/handler"
)

// serverCollector exposes a running mount to Prometheus. It reads the live
// counters at every scrape (the hot path only adds to atomics), so the
// stats file, -metrics-addr and any registry see the same numbers.
type serverCollector struct {
	srv      *fusebridge.Server
	store    *bytestore.Store
	capacity int64
	start    time.Time
}

var (
	descRequests = prometheus.NewDesc("ramproc_requests_total",
		"FUSE requests served, by operation (passthrough reads and writes never reach the server).", []string{"op"}, nil)
	descErrors = prometheus.NewDesc("ramproc_request_errors_total",
		"FUSE requests answered with an error, by errno.", []string{"errno"}, nil)
	descRead = prometheus.NewDesc("ramproc_read_bytes_total",
		"Bytes served by READ requests, i.e. read through the server.", nil, nil)
	descWritten = prometheus.NewDesc("ramproc_written_bytes_total",
		"Bytes accepted by WRITE requests, i.e. written through the server.", nil, nil)
	descOpen = prometheus.NewDesc("ramproc_open_handles",
		"File handles opened by OPEN or CREATE and not yet released.", nil, nil)
	descEntries = prometheus.NewDesc("ramproc_published_entries",
		"Files published in the mount.", nil, nil)
	descSize = prometheus.NewDesc("ramproc_store_size_bytes",
		"Size of the RAM file.", nil, nil)
	descAlloc = prometheus.NewDesc("ramproc_store_allocated_bytes",
		"RAM the RAM file's pages take.", nil, nil)
	descCap = prometheus.NewDesc("ramproc_store_capacity_bytes",
		"Capacity of the RAM file (-max-size); 0 means no limit.", nil, nil)
	descPT = prometheus.NewDesc("ramproc_passthrough",
		"1 when the kernel serves the RAM file by FUSE passthrough, 0 when its I/O goes through the server.", nil, nil)
	descUptime = prometheus.NewDesc("ramproc_uptime_seconds",
		"Seconds since the server started.", nil, nil)
)

func (c *serverCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descRequests, descErrors, descRead, descWritten, descOpen, descEntries, descSize, descAlloc, descCap, descPT, descUptime} {
		ch <- d
	}
}

func (c *serverCollector) Collect(ch chan<- prometheus.Metric) {
	m := c.srv.Metrics()
	for _, op := range fusebridge.Ops() {
		ch <- prometheus.MustNewConstMetric(descRequests, prometheus.CounterValue, float64(m.Requests(op)), op.String())
	}
	for errno, n := range m.Errors() {
		name := unix.ErrnoName(errno)
		if name == "" {
			name = errno.Error()
		}
		ch <- prometheus.MustNewConstMetric(descErrors, prometheus.CounterValue, float64(n), name)
	}
	ch <- prometheus.MustNewConstMetric(descRead, prometheus.CounterValue, float64(m.BytesRead()))
	ch <- prometheus.MustNewConstMetric(descWritten, prometheus.CounterValue, float64(m.BytesWritten()))
	ch <- prometheus.MustNewConstMetric(descOpen, prometheus.GaugeValue, float64(m.OpenHandles()))
	ch <- prometheus.MustNewConstMetric(descEntries, prometheus.GaugeValue, float64(c.srv.Published()))
	if st, err := c.store.Stat(); err == nil {
		ch <- prometheus.MustNewConstMetric(descSize, prometheus.GaugeValue, float64(st.Size))
		ch <- prometheus.MustNewConstMetric(descAlloc, prometheus.GaugeValue, float64(st.Blocks*512))
	}
	ch <- prometheus.MustNewConstMetric(descCap, prometheus.GaugeValue, float64(c.capacity))
	pt := 0.0
	if c.srv.Passthrough() {
		pt = 1
	}
	ch <- prometheus.MustNewConstMetric(descPT, prometheus.GaugeValue, pt)
	ch <- prometheus.MustNewConstMetric(descUptime, prometheus.GaugeValue, time.Since(c.start).Seconds())
}

// newRegistry is the registry both the stats file and -metrics-addr
// serve: the mount's own metrics only.
func newRegistry(c *serverCollector) *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(c)
	return reg
}

// statsHandler is a generated file, /proc style: the registry gathered
// afresh at every open and encoded in the Prometheus text format.
func statsHandler(reg prometheus.Gatherer) handler.Generated {
	return func(ctx context.Context) ([]byte, error) {
		mfs, err := reg.Gather()
		if err != nil {
			return nil, err
		}
		var b bytes.Buffer
		enc := expfmt.NewEncoder(&b, expfmt.NewFormat(expfmt.TypeTextPlain))
		for _, mf := range mfs {
			if err := enc.Encode(mf); err != nil {
				return nil, err
			}
		}
		return b.Bytes(), nil
	}
}
