//! Prometheus metrics of the memory server (`yonder_server_*`).

use std::{net::SocketAddr, sync::OnceLock, time::Duration};

use metrics::{counter, gauge, histogram, Counter, Histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
use yonder_common::protocol::{Response, WriteResult};

use crate::store::StoreUsage;

/// Request latency histogram, seconds, labelled by `op`.
pub const REQUEST_DURATION: &str = "yonder_server_request_duration_seconds";

/// Stage histogram, seconds, labelled by `op`: from a request frame fully received to its reply
/// frame handed to the QUIC stream (decode, store, encode, and the wait for stream credit).
pub const REPLY_DURATION: &str = "yonder_server_request_to_reply_seconds";

/// Buckets of the server's latency histograms, seconds.
const LATENCY_BUCKETS: &[f64] = &[
    1e-6, 2.5e-6, 5e-6, 10e-6, 25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 10e-3, 50e-3,
    0.25, 1.0,
];

/// Request kinds, as `Request::op` names them; their metric handles are registered once.
const OPS: [&str; 6] = ["hello", "read", "write", "free", "drop_space", "stats"];

/// Metric handles of one request kind, so the request path does no registry lookup.
struct OpMetrics {
    requests: Counter,
    pages: Counter,
    duration: Histogram,
    reply: Histogram,
}

impl OpMetrics {
    fn new(op: &'static str) -> Self {
        Self {
            requests: counter!("yonder_server_requests_total", "op" => op),
            pages: counter!("yonder_server_pages_total", "op" => op),
            duration: histogram!(REQUEST_DURATION, "op" => op),
            reply: histogram!(REPLY_DURATION, "op" => op),
        }
    }
}

/// The handles of `op`, registered on first use (after [`install`], which runs before serving).
fn op_metrics(op: &'static str) -> Option<&'static OpMetrics> {
    static HANDLES: OnceLock<Vec<OpMetrics>> = OnceLock::new();
    let i = OPS.iter().position(|&o| o == op)?;
    Some(&HANDLES.get_or_init(|| OPS.iter().map(|&o| OpMetrics::new(o)).collect())[i])
}

/// Starts the Prometheus endpoint on `addr` (must run inside a Tokio runtime).
pub fn install(addr: SocketAddr) -> anyhow::Result<()> {
    PrometheusBuilder::new()
        .with_http_listener(addr)
        .set_buckets_for_metric(Matcher::Full(REQUEST_DURATION.into()), LATENCY_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full(REPLY_DURATION.into()), LATENCY_BUCKETS)?
        .install()?;
    metrics::describe_gauge!(
        "yonder_server_pages_stored",
        "Pages stored with content, all tenants"
    );
    metrics::describe_gauge!(
        "yonder_server_zero_pages_stored",
        "Zero pages stored as flags"
    );
    metrics::describe_gauge!("yonder_server_used_bytes", "Bytes charged against capacity");
    metrics::describe_gauge!("yonder_server_capacity_bytes", "Configured capacity");
    metrics::describe_counter!("yonder_server_requests_total", "Requests served, by op");
    metrics::describe_counter!(
        "yonder_server_pages_total",
        "Pages carried by requests, by op"
    );
    metrics::describe_counter!(
        "yonder_server_rejected_total",
        "Rejected requests or pages, by reason"
    );
    metrics::describe_gauge!("yonder_server_connections", "Open client connections");
    metrics::describe_histogram!(REQUEST_DURATION, "Time to serve a request, by op");
    metrics::describe_histogram!(
        REPLY_DURATION,
        "Time from a request frame received to its reply handed to the stream, by op"
    );
    Ok(())
}

/// Records one served request whose reply carries no error and no refused page.
pub fn request_ok(op: &'static str, pages: usize, elapsed: Duration) {
    match op_metrics(op) {
        Some(m) => {
            m.requests.increment(1);
            m.pages.increment(pages as u64);
            m.duration.record(elapsed.as_secs_f64());
        }
        None => {
            counter!("yonder_server_requests_total", "op" => op).increment(1);
            counter!("yonder_server_pages_total", "op" => op).increment(pages as u64);
            histogram!(REQUEST_DURATION, "op" => op).record(elapsed.as_secs_f64());
        }
    }
}

/// Records the time from a request frame received to its reply handed to the stream.
pub fn reply(op: &'static str, elapsed: Duration) {
    match op_metrics(op) {
        Some(m) => m.reply.record(elapsed.as_secs_f64()),
        None => histogram!(REPLY_DURATION, "op" => op).record(elapsed.as_secs_f64()),
    }
}

/// Records one served request and what its reply refused.
pub fn request(op: &'static str, pages: usize, resp: &Response, elapsed: Duration) {
    request_ok(op, pages, elapsed);
    match resp {
        Response::Error { code, .. } => rejected(code.as_str()),
        Response::Write { pages } => {
            let full = pages
                .iter()
                .filter(|p| **p == WriteResult::CapacityExceeded)
                .count();
            if full > 0 {
                counter!("yonder_server_rejected_total", "reason" => "capacity_exceeded")
                    .increment(full as u64);
            }
        }
        _ => {}
    }
}

/// Counts one rejection.
pub fn rejected(reason: &'static str) {
    counter!("yonder_server_rejected_total", "reason" => reason).increment(1);
}

/// Publishes store usage.
pub fn usage(u: &StoreUsage) {
    gauge!("yonder_server_pages_stored").set(u.data_pages as f64);
    gauge!("yonder_server_zero_pages_stored").set(u.zero_pages as f64);
    gauge!("yonder_server_used_bytes").set(u.used_bytes as f64);
    gauge!("yonder_server_capacity_bytes").set(u.capacity_bytes as f64);
}

/// Adjusts the open-connection gauge.
pub fn connections(delta: f64) {
    gauge!("yonder_server_connections").increment(delta);
}
