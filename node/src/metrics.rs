//! The broker's metrics in Prometheus's text format, served with `/health` and `/ready` on
//! the admin listener (`admin_listen`).
//!
//! Two kinds of figures: those the driver counts as things happen (requests and their time
//! in the broker, bytes, syncs, elections), kept in [`Metrics`], and those read from core's
//! [`BrokerStats`] at each scrape (partitions, controller, readiness, group lag). The
//! registry and the encoding are `prometheus-client`'s.

use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};
use seedlog_core::BrokerStats;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use crate::console;

type Labels = Vec<(&'static str, String)>;

fn seconds_histogram() -> Histogram {
    // 50 µs to about 1.6 s.
    Histogram::new(exponential_buckets(0.000_05, 2.0, 16))
}

/// Finer than [`seconds_histogram`] (√2 apart, 50 µs to about 9 s): a tail read off these
/// buckets is within 41% of the truth, where one bucket more or less is the question.
fn stage_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_05, std::f64::consts::SQRT_2, 36))
}

/// The stages of a record's way to consumers (see `crate::stages`): handles into the
/// `record_stage` family, looked up once.
#[derive(Clone)]
pub struct StageMetrics {
    queued: Histogram,
    sync_wait: Histogram,
    sync: Histogram,
    commit: Histogram,
    visible: Histogram,
}

impl StageMetrics {
    /// A request waited `took` between its last byte read and the driver taking it.
    pub fn queued(&self, took: Duration) {
        self.queued.observe(took.as_secs_f64());
    }

    /// One append's way to consumers.
    pub fn timed(&self, stages: &crate::stages::Stages) {
        let pairs = [
            (&self.sync_wait, stages.sync_wait),
            (&self.sync, stages.sync),
            (&self.commit, stages.commit),
            (&self.visible, Some(stages.visible)),
        ];
        for (histogram, took) in pairs {
            if let Some(took) = took {
                histogram.observe(took.as_secs_f64());
            }
        }
    }
}

/// What the driver counts as it runs; cheap to clone (every handle shares its value).
#[derive(Clone)]
pub struct Metrics {
    requests: Family<Labels, Counter>,
    /// Every API's requests together, for the console's rates.
    requests_total: Counter,
    request_seconds: Family<Labels, Histogram, fn() -> Histogram>,
    received_bytes: Counter,
    sent_bytes: Counter,
    connections: Gauge,
    sync_seconds: Histogram,
    sync_files: Histogram,
    elections: Family<Labels, Counter>,
    stage_seconds: Family<Labels, Histogram, fn() -> Histogram>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            requests: Family::default(),
            requests_total: Counter::default(),
            request_seconds: Family::new_with_constructor(seconds_histogram),
            received_bytes: Counter::default(),
            sent_bytes: Counter::default(),
            connections: Gauge::default(),
            sync_seconds: seconds_histogram(),
            sync_files: Histogram::new(exponential_buckets(1.0, 2.0, 10)),
            elections: Family::default(),
            stage_seconds: Family::new_with_constructor(stage_histogram),
        }
    }
}

/// Running totals since the broker started.
#[derive(Debug, Clone, Copy)]
pub struct Totals {
    /// Requests received, every API.
    pub requests: u64,
    /// Request bytes received.
    pub bytes_in: u64,
    /// Response bytes sent.
    pub bytes_out: u64,
    /// Client connections open now.
    pub connections: i64,
}

/// One API's request counter and time histogram, looked up once and kept by the driver.
#[derive(Clone)]
pub struct ApiMetrics {
    requests: Counter,
    requests_total: Counter,
    seconds: Histogram,
}

impl ApiMetrics {
    /// A request came in.
    pub fn request(&self) {
        self.requests.inc();
        self.requests_total.inc();
    }

    /// A request was answered after `took`.
    pub fn answered(&self, took: Duration) {
        self.seconds.observe(took.as_secs_f64());
    }
}

impl Metrics {
    /// The handles of the API with key `key` (`unknown` for a key Kafka does not define).
    pub fn api(&self, key: i16) -> ApiMetrics {
        let name = kafka_protocol::messages::ApiKey::try_from(key)
            .map_or_else(|()| "unknown".to_string(), |k| format!("{k:?}"));
        let labels = vec![("api", name)];
        ApiMetrics {
            requests: self.requests.get_or_create(&labels).clone(),
            requests_total: self.requests_total.clone(),
            seconds: self.request_seconds.get_or_create(&labels).clone(),
        }
    }

    /// The handles of the stage histograms.
    pub fn stages(&self) -> StageMetrics {
        let stage = |name: &str| {
            self.stage_seconds
                .get_or_create(&vec![("stage", name.to_string())])
                .clone()
        };
        StageMetrics {
            queued: stage("queued"),
            sync_wait: stage("sync_wait"),
            sync: stage("sync"),
            commit: stage("commit"),
            visible: stage("appended_to_visible"),
        }
    }

    /// The running totals the console turns into rates.
    pub fn totals(&self) -> Totals {
        Totals {
            requests: self.requests_total.get(),
            bytes_in: self.received_bytes.get(),
            bytes_out: self.sent_bytes.get(),
            connections: self.connections.get(),
        }
    }

    /// Bytes received, size prefixes included.
    pub fn received(&self, bytes: usize) {
        self.received_bytes.inc_by(bytes as u64);
    }

    /// Bytes sent, size prefixes included.
    pub fn sent(&self, bytes: usize) {
        self.sent_bytes.inc_by(bytes as u64);
    }

    /// Client connections open now.
    pub fn set_connections(&self, open: usize) {
        self.connections.set(open as i64);
    }

    /// A group-commit sync of `files` files took `took`.
    pub fn synced(&self, took: Duration, files: usize) {
        self.sync_seconds.observe(took.as_secs_f64());
        self.sync_files.observe(files as f64);
    }

    /// This broker was elected leader of a Raft group (`metadata` or a partition).
    pub fn elected(&self, metadata: bool) {
        let group = if metadata { "metadata" } else { "partition" };
        self.elections
            .get_or_create(&vec![("group", group.to_string())])
            .inc();
    }

    /// Every metric, with `stats` from core, in the text exposition format.
    pub fn render(&self, stats: &BrokerStats) -> String {
        let mut r = Registry::with_prefix("seedlog");
        r.register(
            "requests",
            "Requests received, by API",
            self.requests.clone(),
        );
        r.register_with_unit(
            "request_duration",
            "Time from a request's arrival to its answer, by API",
            Unit::Seconds,
            self.request_seconds.clone(),
        );
        r.register_with_unit(
            "received",
            "Request bytes received",
            Unit::Bytes,
            self.received_bytes.clone(),
        );
        r.register_with_unit(
            "sent",
            "Response bytes sent",
            Unit::Bytes,
            self.sent_bytes.clone(),
        );
        r.register(
            "connections",
            "Client connections open",
            self.connections.clone(),
        );
        r.register_with_unit(
            "sync_duration",
            "Time from a group-commit fsync's start to its completion",
            Unit::Seconds,
            self.sync_seconds.clone(),
        );
        r.register(
            "sync_files",
            "Files one group-commit fsync covered",
            self.sync_files.clone(),
        );
        r.register_with_unit(
            "record_stage",
            "Where records' time goes, by stage: queued (request read until the broker takes \
             it), sync_wait (appended until its fsync starts), sync, commit (synced until the \
             high watermark passes it), appended_to_visible; per append, on partition leaders",
            Unit::Seconds,
            self.stage_seconds.clone(),
        );
        r.register(
            "raft_elections_won",
            "Raft leaderships this broker took, by group kind",
            self.elections.clone(),
        );
        partition_families(&mut r, stats);
        let gauge = |v: i64| {
            let g: Gauge = Gauge::default();
            g.set(v);
            g
        };
        r.register(
            "ready",
            "1 once the broker knows the controller and has caught up",
            gauge(stats.ready.into()),
        );
        r.register(
            "active_controller",
            "1 on the active controller",
            gauge(stats.is_controller.into()),
        );
        r.register(
            "offline_partitions",
            "Replicated partitions without a leader (active controller only)",
            gauge(stats.offline_partitions as i64),
        );
        let committed = Family::<Labels, Gauge>::default();
        let lag = Family::<Labels, Gauge>::default();
        for g in &stats.group_lag {
            let labels = vec![
                ("group", g.group.clone()),
                ("topic", g.topic.clone()),
                ("partition", g.partition.to_string()),
            ];
            committed.get_or_create(&labels).set(g.committed);
            lag.get_or_create(&labels).set(g.lag);
        }
        r.register(
            "consumer_group_committed_offset",
            "Committed offset of groups coordinated here",
            committed,
        );
        r.register(
            "consumer_group_lag",
            "High watermark minus committed offset, for partitions held here",
            lag,
        );
        if let Some(bytes) = resident_bytes() {
            r.register_with_unit(
                "process_resident_memory",
                "Resident memory of the broker process",
                Unit::Bytes,
                gauge(bytes),
            );
        }
        let mut text = String::new();
        // Writing to a String does not fail.
        let _ = encode(&mut text, &r);
        text
    }
}

/// One figure of a partition.
type PartitionFigure = fn(&seedlog_core::PartitionStats) -> i64;

/// The per-partition gauges and the under-replicated count.
fn partition_families(r: &mut Registry, stats: &BrokerStats) {
    let families: [(&str, &str, PartitionFigure); 5] = [
        ("partition_log_start_offset", "First offset held", |p| {
            p.log_start_offset
        }),
        (
            "partition_log_end_offset",
            "Offset after the last record held",
            |p| p.log_end_offset,
        ),
        (
            "partition_high_watermark",
            "Offset after the last committed record",
            |p| p.high_watermark,
        ),
        (
            "partition_size_bytes",
            "Bytes of the partition's segments",
            |p| p.size_bytes as i64,
        ),
        (
            "partition_leader",
            "1 where this broker leads the partition",
            |p| p.leader.into(),
        ),
    ];
    for (name, help, value) in families {
        let family = Family::<Labels, Gauge>::default();
        for p in &stats.partitions {
            let labels = vec![
                ("topic", p.topic.to_string()),
                ("partition", p.partition.to_string()),
            ];
            family.get_or_create(&labels).set(value(p));
        }
        r.register(name, help, family);
    }
    let under = stats
        .partitions
        .iter()
        .filter(|p| p.in_sync.is_some_and(|n| n < p.replicas))
        .count();
    let gauge: Gauge = Gauge::default();
    gauge.set(under as i64);
    r.register(
        "under_replicated_partitions",
        "Partitions led here with fewer replicas in sync than assigned",
        gauge,
    );
}

/// The process's resident memory, from /proc (Linux); `None` elsewhere.
fn resident_bytes() -> Option<i64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: i64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * page as i64)
}

/// Asks the driver for core's snapshot.
pub type StatsRequests = mpsc::Sender<StatsRequest>;

/// A request for core's snapshot: with the console's views of the cluster or without, and
/// where to answer.
pub type StatsRequest = (bool, oneshot::Sender<BrokerStats>);

/// Serves `/metrics`, `/health` and `/ready` on `listener` until the driver goes away.
pub async fn serve_admin(listener: TcpListener, metrics: Metrics, stats: StatsRequests) {
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, "admin listener: / (console) /metrics /health /ready");
    }
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors, say: wait rather than spin.
                warn!(error = %e, "admin listener: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (metrics, stats) = (metrics.clone(), stats.clone());
        tokio::spawn(async move {
            if let Err(e) = answer(stream, &metrics, &stats).await {
                debug!(%peer, error = %e, "admin request failed");
            }
        });
    }
}

/// The largest request head the admin listener reads.
const HEAD_MAX: usize = 8 * 1024;

/// How long a client has to send its request, and the driver to answer for it.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Reads one request head and answers it; the connection closes after.
async fn answer(
    mut stream: TcpStream,
    metrics: &Metrics,
    stats: &StatsRequests,
) -> anyhow::Result<()> {
    let head = tokio::time::timeout(ADMIN_TIMEOUT, read_head(&mut stream)).await??;
    let mut words = head.split_whitespace();
    let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let path = path.split('?').next().unwrap_or("");
    let (status, kind, body) = match (method, path) {
        ("GET", "/metrics") => match snapshot(stats, false).await {
            Some(s) => (
                "200 OK",
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                metrics.render(&s),
            ),
            None => (
                "503 Service Unavailable",
                "text/plain",
                "the broker does not answer\n".into(),
            ),
        },
        ("GET", "/health") => match snapshot(stats, false).await {
            Some(_) => ("200 OK", "text/plain", "live\n".into()),
            None => (
                "503 Service Unavailable",
                "text/plain",
                "the broker does not answer\n".into(),
            ),
        },
        ("GET", "/ready") => match snapshot(stats, false).await {
            Some(s) if s.ready => ("200 OK", "text/plain", "ready\n".into()),
            Some(_) => (
                "503 Service Unavailable",
                "text/plain",
                "catching up with the metadata quorum\n".into(),
            ),
            None => (
                "503 Service Unavailable",
                "text/plain",
                "the broker does not answer\n".into(),
            ),
        },
        ("GET", "/") => ("200 OK", "text/html; charset=utf-8", console::PAGE.into()),
        ("GET", "/api/cluster") => match snapshot(stats, true).await {
            Some(s) => (
                "200 OK",
                "application/json",
                console::cluster_json(&s, metrics.totals()),
            ),
            None => (
                "503 Service Unavailable",
                "text/plain",
                "the broker does not answer\n".into(),
            ),
        },
        ("GET", _) => (
            "404 Not Found",
            "text/plain",
            "try / (the console), /metrics, /health or /ready\n".into(),
        ),
        _ => ("405 Method Not Allowed", "text/plain", "GET only\n".into()),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await?;
    Ok(())
}

/// Core's snapshot, if the driver answers in time.
async fn snapshot(stats: &StatsRequests, console: bool) -> Option<BrokerStats> {
    let (tx, rx) = oneshot::channel();
    stats.send((console, tx)).await.ok()?;
    match tokio::time::timeout(ADMIN_TIMEOUT, rx).await {
        Ok(Ok(s)) => Some(s),
        _ => {
            warn!("the driver did not answer a metrics request in time");
            None
        }
    }
}

/// The request line and headers, up to the blank line.
async fn read_head(stream: &mut TcpStream) -> anyhow::Result<String> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).await?;
        anyhow::ensure!(n > 0, "closed before the request ended");
        head.extend_from_slice(&buf[..n]);
        anyhow::ensure!(head.len() <= HEAD_MAX, "request head over {HEAD_MAX} bytes");
    }
    Ok(String::from_utf8_lossy(&head).into_owned())
}
