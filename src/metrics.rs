//! Request metrics for `/metrics` (Prometheus text format).

use std::collections::BTreeMap;
use std::sync::Mutex;

/// Latency histogram bucket bounds, in seconds.
const BUCKETS: [f64; 10] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 10.0,
];

#[derive(Default)]
struct Inner {
    requests: BTreeMap<(String, String, u16), u64>,
    buckets: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

#[derive(Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
    /// The trace exporter's counters, when traces are on.
    traces: Option<std::sync::Arc<crate::telemetry::Counts>>,
}

impl Metrics {
    /// Metrics that also show the trace exporter's counters, if traces are on.
    pub fn with_traces(traces: Option<std::sync::Arc<crate::telemetry::Counts>>) -> Metrics {
        Metrics {
            inner: Mutex::default(),
            traces,
        }
    }

    pub fn observe(&self, tool: &str, decision: &str, status: u16, seconds: f64) {
        let mut m = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        *m.requests
            .entry((tool.to_string(), decision.to_string(), status))
            .or_default() += 1;
        for (i, bound) in BUCKETS.iter().enumerate() {
            if seconds <= *bound {
                m.buckets[i] += 1;
            }
        }
        m.count += 1;
        m.sum += seconds;
    }

    pub fn render(&self) -> String {
        let m = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = String::from(
            "# HELP toolgate_requests_total Requests by tool, decision and status.\n# TYPE toolgate_requests_total counter\n",
        );
        for ((tool, decision, status), n) in &m.requests {
            out.push_str(&format!(
                "toolgate_requests_total{{tool=\"{}\",decision=\"{}\",status=\"{status}\"}} {n}\n",
                tool.replace('"', ""),
                decision
            ));
        }
        out.push_str("# HELP toolgate_request_duration_seconds Time from request to response headers.\n# TYPE toolgate_request_duration_seconds histogram\n");
        for (i, bound) in BUCKETS.iter().enumerate() {
            out.push_str(&format!(
                "toolgate_request_duration_seconds_bucket{{le=\"{bound}\"}} {}\n",
                m.buckets[i]
            ));
        }
        out.push_str(&format!(
            "toolgate_request_duration_seconds_bucket{{le=\"+Inf\"}} {}\ntoolgate_request_duration_seconds_sum {}\ntoolgate_request_duration_seconds_count {}\n",
            m.count, m.sum, m.count
        ));
        if let Some(t) = &self.traces {
            out.push_str(&t.render());
        }
        out
    }
}
