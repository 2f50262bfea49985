//! Prometheus metrics of the memory server (`yonder_server_*`).

use std::{net::SocketAddr, time::Duration};

use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
use yonder_common::protocol::{Response, WriteResult};

use crate::store::StoreUsage;

/// Request latency histogram, seconds, labelled by `op`.
pub const REQUEST_DURATION: &str = "yonder_server_request_duration_seconds";

/// Starts the Prometheus endpoint on `addr` (must run inside a Tokio runtime).
pub fn install(addr: SocketAddr) -> anyhow::Result<()> {
    PrometheusBuilder::new()
        .with_http_listener(addr)
        .set_buckets_for_metric(
            Matcher::Full(REQUEST_DURATION.into()),
            &[
                10e-6, 25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 10e-3, 50e-3, 0.25, 1.0,
            ],
        )?
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
    Ok(())
}

/// Records one served request.
pub fn request(op: &'static str, pages: usize, resp: &Response, elapsed: Duration) {
    counter!("yonder_server_requests_total", "op" => op).increment(1);
    counter!("yonder_server_pages_total", "op" => op).increment(pages as u64);
    histogram!(REQUEST_DURATION, "op" => op).record(elapsed.as_secs_f64());
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
