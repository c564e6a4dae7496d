//! skiffd's own metrics in the Prometheus text format (version 0.0.4), served on
//! `[metrics] address` (off by default) at `/metrics`:
//! - `skiff_grpc_requests_total{method,code}` and `skiff_grpc_request_duration_seconds{method,code}`
//!   (histogram), recorded by [`RpcMetricsLayer`], a tower layer around both CRI services;
//! - `skiff_image_pulls_total{result}`, `skiff_image_pull_duration_seconds{result}`,
//!   `skiff_image_pulled_bytes_total` (the size of each image a successful PullImage returned);
//! - `skiff_network_operation_duration_seconds{operation,result}` (pod network setup and
//!   teardown), recorded by [`network::Timed`] around the network plugin;
//! - `skiff_pods{state}` and `skiff_containers{state}`, counted from the stores at scrape time;
//! - the metadata journal's (read at scrape time): `skiff_metadata_journal_entries_total`,
//!   `skiff_metadata_journal_sync_duration_seconds` (histogram of the `fdatasync`s durable
//!   changes wait for, shared by the changes waiting at once), `skiff_metadata_journal_checkpoints_total`
//!   and `skiff_metadata_journal_usable` (0 once a write, `fdatasync` or checkpoint failed);
//! - process metrics from `/proc/self` (read on a blocking thread): RSS, open fds, threads,
//!   CPU seconds, start time.
//!
//! Everything is hand-written: a few counters and fixed-bucket histograms behind one mutex each.

pub mod network;
mod process;
mod server;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{LazyLock, Mutex};
use std::time::Duration;

pub use server::{start, MetricsServer};

/// Upper bounds (seconds) of the latency histograms' buckets.
const BUCKETS: [f64; 14] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 30.0, 120.0];

#[derive(Debug, Clone, Default)]
struct Histogram {
    /// Non-cumulative counts per bucket; the last slot is +Inf.
    counts: [u64; BUCKETS.len() + 1],
    sum: f64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, secs: f64) {
        let i = BUCKETS.iter().position(|b| secs <= *b).unwrap_or(BUCKETS.len());
        self.counts[i] += 1;
        self.sum += secs;
        self.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        render_histogram(out, name, labels, &BUCKETS, &self.counts, self.sum, self.count);
    }
}

/// A histogram's lines: cumulative buckets of `bounds` from the per-bucket `counts` (one more
/// than `bounds`: the last is +Inf), its sum and count.
fn render_histogram(out: &mut String, name: &str, labels: &str, bounds: &[f64], counts: &[u64], sum: f64, count: u64) {
    let sep = if labels.is_empty() { "" } else { "," };
    let mut acc = 0;
    for (b, n) in bounds.iter().zip(counts) {
        acc += n;
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {acc}");
    }
    acc += counts.get(bounds.len()).copied().unwrap_or(0);
    let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {acc}");
    let braced = if labels.is_empty() { String::new() } else { format!("{{{labels}}}") };
    let _ = writeln!(out, "{name}_sum{braced} {sum}");
    let _ = writeln!(out, "{name}_count{braced} {count}");
}

/// A family of histograms keyed by label values.
#[derive(Debug, Default)]
struct Family {
    by_labels: Mutex<BTreeMap<Vec<String>, Histogram>>,
}

impl Family {
    fn observe(&self, labels: Vec<String>, d: Duration) {
        let mut g = self.by_labels.lock().unwrap_or_else(|p| p.into_inner());
        g.entry(labels).or_default().observe(d.as_secs_f64());
    }

    fn snapshot(&self) -> Vec<(Vec<String>, Histogram)> {
        let g = self.by_labels.lock().unwrap_or_else(|p| p.into_inner());
        g.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }
}

/// Every metric skiffd records as things happen (the rest is gathered at scrape time).
#[derive(Debug, Default)]
pub struct Metrics {
    rpc: Family,
    pulls: Family,
    pulled_bytes: AtomicU64,
    network: Family,
}

/// The process-wide metrics.
pub static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::default);

impl Metrics {
    /// One finished gRPC call (`code` as tonic names it: `Ok`, `NotFound`…).
    pub fn rpc(&self, method: &str, code: &str, d: Duration) {
        self.rpc.observe(vec![method.to_owned(), code.to_owned()], d);
    }

    /// One PullImage: its outcome, duration and (on success) the image's size.
    pub fn pull(&self, ok: bool, d: Duration, bytes: u64) {
        self.pulls.observe(vec![if ok { "success" } else { "error" }.to_owned()], d);
        if ok {
            self.pulled_bytes.fetch_add(bytes, Ordering::Relaxed);
        }
    }

    /// One network plugin call (`setup` or `teardown`).
    pub fn network(&self, operation: &str, ok: bool, d: Duration) {
        self.network.observe(vec![operation.to_owned(), if ok { "success" } else { "error" }.to_owned()], d);
    }
}

/// Counts at scrape time.
#[derive(Debug, Default, Clone)]
pub struct Gauges {
    pub pods: BTreeMap<&'static str, u64>,
    pub containers: BTreeMap<&'static str, u64>,
    pub process: process::Process,
    /// The metadata journal's counters, and whether it is still usable.
    pub journal: Option<(common::journal::Stats, bool)>,
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn labels(names: &[&str], values: &[String]) -> String {
    names.iter().zip(values).map(|(n, v)| format!("{n}=\"{}\"", escape(v))).collect::<Vec<_>>().join(",")
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// The whole exposition.
pub fn render(m: &Metrics, g: &Gauges) -> String {
    let mut out = String::new();
    let rpc = m.rpc.snapshot();
    header(&mut out, "skiff_grpc_requests_total", "counter", "CRI gRPC calls handled, by method and code.");
    for (l, h) in &rpc {
        let _ = writeln!(out, "skiff_grpc_requests_total{{{}}} {}", labels(&["method", "code"], l), h.count);
    }
    let name = "skiff_grpc_request_duration_seconds";
    header(&mut out, name, "histogram", "Duration of CRI gRPC calls, by method and code.");
    for (l, h) in &rpc {
        h.render(&mut out, name, &labels(&["method", "code"], l));
    }
    let pulls = m.pulls.snapshot();
    header(&mut out, "skiff_image_pulls_total", "counter", "PullImage calls, by result.");
    for (l, h) in &pulls {
        let _ = writeln!(out, "skiff_image_pulls_total{{{}}} {}", labels(&["result"], l), h.count);
    }
    let name = "skiff_image_pull_duration_seconds";
    header(&mut out, name, "histogram", "Duration of PullImage, by result.");
    for (l, h) in &pulls {
        h.render(&mut out, name, &labels(&["result"], l));
    }
    header(
        &mut out,
        "skiff_image_pulled_bytes_total",
        "counter",
        "Sum of the sizes of the images successful PullImage calls returned.",
    );
    let _ = writeln!(out, "skiff_image_pulled_bytes_total {}", m.pulled_bytes.load(Ordering::Relaxed));
    let name = "skiff_network_operation_duration_seconds";
    header(&mut out, name, "histogram", "Duration of pod network setup and teardown, by result.");
    for (l, h) in &m.network.snapshot() {
        h.render(&mut out, name, &labels(&["operation", "result"], l));
    }
    header(&mut out, "skiff_pods", "gauge", "Pod sandboxes by state.");
    for (state, n) in &g.pods {
        let _ = writeln!(out, "skiff_pods{{state=\"{state}\"}} {n}");
    }
    header(&mut out, "skiff_containers", "gauge", "Containers by state.");
    for (state, n) in &g.containers {
        let _ = writeln!(out, "skiff_containers{{state=\"{state}\"}} {n}");
    }
    if let Some((j, usable)) = &g.journal {
        render_journal(&mut out, j, *usable);
    }
    g.process.render(&mut out);
    out
}

fn render_journal(out: &mut String, j: &common::journal::Stats, usable: bool) {
    use common::journal::SYNC_BUCKETS;
    let name = "skiff_metadata_journal_entries_total";
    header(
        out,
        name,
        "counter",
        "Changes of pod and container records and image holds written to the metadata journal.",
    );
    let _ = writeln!(out, "{name} {}", j.entries);
    let name = "skiff_metadata_journal_sync_duration_seconds";
    header(out, name, "histogram", "Duration of the metadata journal's fdatasyncs that durable changes waited for.");
    render_histogram(out, name, "", &SYNC_BUCKETS, &j.sync_buckets, j.sync_seconds, j.syncs);
    let name = "skiff_metadata_journal_checkpoints_total";
    header(out, name, "counter", "Full metadata journal files checkpointed (their files fsynced) and reused.");
    let _ = writeln!(out, "{name} {}", j.checkpoints);
    let name = "skiff_metadata_journal_usable";
    header(out, name, "gauge", "1 while the metadata journal works; 0 once a write, fdatasync or checkpoint failed.");
    let _ = writeln!(out, "{name} {}", u8::from(usable));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let m = Metrics::default();
        m.rpc("Version", "Ok", Duration::from_micros(500));
        m.rpc("Version", "Ok", Duration::from_millis(20));
        m.rpc("RunPodSandbox", "InvalidArgument", Duration::from_secs(500));
        m.pull(true, Duration::from_secs(2), 1000);
        let text = render(&m, &Gauges::default());
        assert!(text.contains("skiff_grpc_requests_total{method=\"Version\",code=\"Ok\"} 2"), "{text}");
        assert!(
            text.contains("skiff_grpc_request_duration_seconds_bucket{method=\"Version\",code=\"Ok\",le=\"0.001\"} 1")
        );
        assert!(
            text.contains("skiff_grpc_request_duration_seconds_bucket{method=\"Version\",code=\"Ok\",le=\"0.025\"} 2")
        );
        assert!(text.contains(
            "skiff_grpc_request_duration_seconds_bucket{method=\"RunPodSandbox\",code=\"InvalidArgument\",le=\"120\"} 0"
        ));
        assert!(text.contains(
            "skiff_grpc_request_duration_seconds_bucket{method=\"RunPodSandbox\",code=\"InvalidArgument\",le=\"+Inf\"} 1"
        ));
        assert!(text.contains("skiff_image_pulled_bytes_total 1000"));
        assert!(text.contains("skiff_image_pulls_total{result=\"success\"} 1"));
    }

    #[test]
    fn journal_counters_and_sync_histogram() {
        let mut j =
            common::journal::Stats { entries: 7, syncs: 3, sync_seconds: 0.0012, checkpoints: 1, ..Default::default() };
        j.sync_buckets[2] = 2; // <= 0.5 ms
        j.sync_buckets[12] = 1; // > 2 s
        let g = Gauges { journal: Some((j, false)), ..Default::default() };
        let text = render(&Metrics::default(), &g);
        for want in [
            "skiff_metadata_journal_entries_total 7\n",
            "skiff_metadata_journal_sync_duration_seconds_bucket{le=\"0.00025\"} 0\n",
            "skiff_metadata_journal_sync_duration_seconds_bucket{le=\"0.0005\"} 2\n",
            "skiff_metadata_journal_sync_duration_seconds_bucket{le=\"2\"} 2\n",
            "skiff_metadata_journal_sync_duration_seconds_bucket{le=\"+Inf\"} 3\n",
            "skiff_metadata_journal_sync_duration_seconds_count 3\n",
            "skiff_metadata_journal_checkpoints_total 1\n",
            "skiff_metadata_journal_usable 0\n",
            "# TYPE skiff_metadata_journal_sync_duration_seconds histogram\n",
        ] {
            assert!(text.contains(want), "{want:?} missing in\n{text}");
        }
        assert!(!render(&Metrics::default(), &Gauges::default()).contains("journal"));
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(labels(&["a"], &["x\"y\\z\n".into()]), "a=\"x\\\"y\\\\z\\n\"");
    }
}
