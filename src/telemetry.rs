//! Traces: OpenTelemetry spans of the request path, exported over OTLP/HTTP (protobuf) off the
//! request path. Off unless an endpoint is given (`--otlp-endpoint`, or the standard
//! `OTEL_EXPORTER_OTLP_ENDPOINT` / `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`).
//!
//! The spans come from `tracing` (the phases' `#[instrument]` spans and the call span the
//! driver opens) through `tracing-opentelemetry`; only spans of the request path are exported,
//! never a log event, so nothing a log line says (and no body) reaches a span. A finished span
//! goes into a bounded queue without waiting: when the collector is slow or down, spans are
//! dropped and counted ([`Counts`], `toolgate_trace_spans_dropped_total`), and a call never
//! waits for the exporter.
//!
//! Imports nothing of the crate: the start-up code and the metrics read it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter, SpanProcessor};
use opentelemetry_sdk::Resource;
use tokio::sync::{mpsc, oneshot};

/// The standard variables read here (the SDK and the exporter read the others: headers,
/// timeout, sampler, resource attributes).
pub mod env {
    pub const OTLP_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
    pub const OTLP_TRACES_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT";
    pub const OTLP_PROTOCOL: &str = "OTEL_EXPORTER_OTLP_PROTOCOL";
    pub const OTLP_TRACES_PROTOCOL: &str = "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL";
    pub const SERVICE_NAME: &str = "OTEL_SERVICE_NAME";
    pub const BSP_MAX_QUEUE_SIZE: &str = "OTEL_BSP_MAX_QUEUE_SIZE";
    pub const BSP_SCHEDULE_DELAY: &str = "OTEL_BSP_SCHEDULE_DELAY";
    pub const BSP_MAX_EXPORT_BATCH_SIZE: &str = "OTEL_BSP_MAX_EXPORT_BATCH_SIZE";
}

/// The targets whose spans are exported: the request path (the proxy's phases, approval
/// waits, the commit and the upstream client).
const EXPORTED_TARGETS: &[&str] = &[
    "toolgate::proxy",
    "toolgate::approval",
    "toolgate::commit",
    "toolgate::upstream",
];

/// How traces are exported, validated at start-up.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The OTLP/HTTP traces URL (`…/v1/traces`); None: the exporter reads
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` itself.
    pub endpoint: Option<String>,
    /// Finished spans waiting for export, at most (`OTEL_BSP_MAX_QUEUE_SIZE`, 2048).
    pub queue: usize,
    /// Spans in one export request, at most (`OTEL_BSP_MAX_EXPORT_BATCH_SIZE`, 512).
    pub batch: usize,
    /// How long a batch waits to fill (`OTEL_BSP_SCHEDULE_DELAY` in ms, 5000).
    pub delay: Duration,
    /// `service.name` (`OTEL_SERVICE_NAME`, else `toolgate`).
    pub service_name: String,
}

impl Settings {
    /// The settings for `--otlp-endpoint` (or `OTEL_EXPORTER_OTLP_ENDPOINT`, the base URL
    /// that `/v1/traces` is added to) and the standard variables; None when no endpoint is
    /// set anywhere: traces are off.
    pub fn from_env(endpoint: Option<&str>) -> Result<Option<Settings>, String> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        let signal = var(env::OTLP_TRACES_ENDPOINT);
        let endpoint = match (endpoint.filter(|e| !e.trim().is_empty()), &signal) {
            (Some(base), _) => Some(traces_url(base)?),
            (None, Some(_)) => None,
            (None, None) => return Ok(None),
        };
        let protocol = var(env::OTLP_TRACES_PROTOCOL).or_else(|| var(env::OTLP_PROTOCOL));
        if let Some(p) = protocol.filter(|p| p != "http/protobuf") {
            return Err(format!(
                "OTLP protocol {p:?} is not supported: toolgate exports traces over OTLP/HTTP; set OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf (or leave it unset)"
            ));
        }
        let number = |name: &str, default: u64| -> Result<u64, String> {
            match var(name) {
                None => Ok(default),
                Some(v) => v
                    .trim()
                    .parse::<u64>()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| format!("{name}={v:?}: expected a positive whole number")),
            }
        };
        Ok(Some(Settings {
            endpoint,
            queue: number(env::BSP_MAX_QUEUE_SIZE, 2048)? as usize,
            batch: number(env::BSP_MAX_EXPORT_BATCH_SIZE, 512)? as usize,
            delay: Duration::from_millis(number(env::BSP_SCHEDULE_DELAY, 5000)?),
            service_name: var(env::SERVICE_NAME).unwrap_or_else(|| "toolgate".into()),
        }))
    }
}

/// `BASE/v1/traces`, the OTLP/HTTP path of traces under a collector's base URL.
fn traces_url(base: &str) -> Result<String, String> {
    let base = base.trim().trim_end_matches('/');
    let uri: http::Uri = base
        .parse()
        .map_err(|e| format!("--otlp-endpoint {base:?}: not a URL ({e})"))?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
        return Err(format!(
            "--otlp-endpoint {base:?}: expected http://HOST:PORT or https://HOST:PORT (the collector's OTLP/HTTP address)"
        ));
    }
    Ok(format!("{base}/v1/traces"))
}

/// What the exporter did: spans sent, spans dropped because the queue was full, spans lost to
/// a failed export.
#[derive(Debug, Default)]
pub struct Counts {
    pub exported: AtomicU64,
    pub dropped: AtomicU64,
    pub failed: AtomicU64,
}

impl Counts {
    /// The counters in Prometheus text format.
    pub fn render(&self) -> String {
        let (exported, dropped, failed) = (
            self.exported.load(Ordering::Relaxed),
            self.dropped.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        );
        format!(
            "# HELP toolgate_trace_spans_exported_total Spans sent to the OTLP collector.\n# TYPE toolgate_trace_spans_exported_total counter\ntoolgate_trace_spans_exported_total {exported}\n\
             # HELP toolgate_trace_spans_dropped_total Spans dropped because the export queue was full.\n# TYPE toolgate_trace_spans_dropped_total counter\ntoolgate_trace_spans_dropped_total {dropped}\n\
             # HELP toolgate_trace_spans_failed_total Spans lost to a failed export.\n# TYPE toolgate_trace_spans_failed_total counter\ntoolgate_trace_spans_failed_total {failed}\n"
        )
    }
}

/// The running exporter: flushed and stopped with [`Telemetry::shutdown`].
pub struct Telemetry {
    provider: SdkTracerProvider,
    queue: mpsc::Sender<Queued>,
    counts: Arc<Counts>,
}

/// The `tracing` layer that turns the request path's spans into OpenTelemetry spans.
pub type Layer = Box<dyn tracing_subscriber::Layer<tracing_subscriber::Registry> + Send + Sync>;

/// Starts the exporter (on the current Tokio runtime) and returns it with the layer to install.
pub fn start(settings: &Settings) -> Result<(Telemetry, Layer), String> {
    let client = OtlpClient::new()?;
    let mut builder = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(client);
    if let Some(url) = &settings.endpoint {
        builder = builder.with_endpoint(url.clone());
    }
    let mut exporter = builder
        .build()
        .map_err(|e| format!("the OTLP exporter could not be set up: {e}"))?;
    let resource = Resource::builder()
        .with_service_name(settings.service_name.clone())
        .build();
    exporter.set_resource(&resource);
    let counts = Arc::new(Counts::default());
    let (tx, rx) = mpsc::channel(settings.queue);
    tokio::spawn(export_loop(rx, exporter, counts.clone(), settings.clone()));
    let processor = Bounded {
        queue: tx.clone(),
        counts: counts.clone(),
    };
    let provider = SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_resource(resource)
        .build();
    let tracer = provider.tracer("toolgate");
    let filter = tracing_subscriber::filter::filter_fn(|meta| {
        meta.is_span()
            && EXPORTED_TARGETS
                .iter()
                .any(|t| meta.target().starts_with(t))
    });
    let layer = tracing_subscriber::Layer::with_filter(
        tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_tracked_inactivity(false)
            .with_threads(false)
            .with_location(false),
        filter,
    );
    let telemetry = Telemetry {
        provider,
        queue: tx,
        counts,
    };
    Ok((telemetry, Box::new(layer)))
}

impl Telemetry {
    /// The exporter's counters, for `/metrics`.
    pub fn counts(&self) -> Arc<Counts> {
        self.counts.clone()
    }

    /// Sends what is queued and stops: waits at most `timeout`.
    pub async fn shutdown(self, timeout: Duration) {
        let (done, sent) = oneshot::channel();
        if self.queue.send(Queued::Flush(done)).await.is_ok() {
            let _ = tokio::time::timeout(timeout, sent).await;
        }
        let _ = self.provider.shutdown();
    }
}

/// What the processor hands the export task.
enum Queued {
    Span(Box<SpanData>),
    /// Send what is queued, then say so.
    Flush(oneshot::Sender<()>),
}

/// The span processor: a finished span is queued without waiting, or dropped and counted.
#[derive(Debug)]
struct Bounded {
    queue: mpsc::Sender<Queued>,
    counts: Arc<Counts>,
}

impl std::fmt::Debug for Queued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Queued")
    }
}

impl SpanProcessor for Bounded {
    fn on_start(&self, _span: &mut opentelemetry_sdk::trace::Span, _cx: &opentelemetry::Context) {}

    fn on_end(&self, span: SpanData) {
        if self.queue.try_send(Queued::Span(Box::new(span))).is_err() {
            self.counts.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        Ok(())
    }
}

/// Sends spans in batches: when a batch is full or has waited the schedule delay.
async fn export_loop(
    mut rx: mpsc::Receiver<Queued>,
    exporter: opentelemetry_otlp::SpanExporter,
    counts: Arc<Counts>,
    settings: Settings,
) {
    let mut batch: Vec<SpanData> = Vec::with_capacity(settings.batch);
    let mut failing = false;
    while let Some(first) = rx.recv().await {
        let mut flushed = None;
        match first {
            Queued::Span(s) => batch.push(*s),
            Queued::Flush(done) => flushed = Some(done),
        }
        let deadline = tokio::time::sleep(settings.delay);
        tokio::pin!(deadline);
        while flushed.is_none() && batch.len() < settings.batch {
            tokio::select! {
                next = rx.recv() => match next {
                    Some(Queued::Span(s)) => batch.push(*s),
                    Some(Queued::Flush(done)) => flushed = Some(done),
                    None => break,
                },
                _ = &mut deadline => break,
            }
        }
        if !batch.is_empty() {
            let n = batch.len() as u64;
            match exporter.export(std::mem::take(&mut batch)).await {
                Ok(()) => {
                    counts.exported.fetch_add(n, Ordering::Relaxed);
                    failing = false;
                }
                Err(e) => {
                    counts.failed.fetch_add(n, Ordering::Relaxed);
                    if !failing {
                        tracing::warn!(error = %e, spans = n, "the OTLP collector did not take a batch of spans; later failures are counted in toolgate_trace_spans_failed_total");
                    }
                    failing = true;
                }
            }
        }
        if let Some(done) = flushed {
            let _ = done.send(());
        }
    }
}

/// The OTLP exporter's HTTP client: hyper with rustls on ring (the crate's one provider) and
/// the webpki roots.
#[derive(Debug, Clone)]
struct OtlpClient {
    client: Client<
        hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
        Full<Bytes>,
    >,
}

impl OtlpClient {
    fn new() -> Result<OtlpClient, String> {
        let roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS for the OTLP exporter: {e}"))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        Ok(OtlpClient {
            client: Client::builder(TokioExecutor::new()).build(connector),
        })
    }
}

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for OtlpClient {
    async fn send_bytes(
        &self,
        request: http::Request<Bytes>,
    ) -> Result<http::Response<Bytes>, opentelemetry_http::HttpError> {
        let request = request.map(Full::new);
        let resp = tokio::time::timeout(Duration::from_secs(10), self.client.request(request))
            .await
            .map_err(|_| "the OTLP collector did not answer within 10 s")??;
        let (parts, body) = resp.into_parts();
        let body = tokio::time::timeout(Duration::from_secs(10), body.collect())
            .await
            .map_err(|_| "the OTLP collector's answer did not arrive within 10 s")??
            .to_bytes();
        Ok(http::Response::from_parts(parts, body))
    }
}

/// The trace a request continues: the W3C `traceparent`/`tracestate` it carries, if any.
pub fn remote_parent(headers: &http::HeaderMap) -> Option<opentelemetry::Context> {
    use opentelemetry::trace::TraceContextExt as _;
    if !headers.contains_key("traceparent") {
        return None;
    }
    let cx = TraceContextPropagator::new().extract(&opentelemetry_http::HeaderExtractor(headers));
    cx.span().span_context().is_valid().then_some(cx)
}

/// Writes the trace context of `cx` into outgoing headers (W3C trace context).
pub fn inject(cx: &opentelemetry::Context, headers: &mut http::HeaderMap) {
    TraceContextPropagator::new()
        .inject_context(cx, &mut opentelemetry_http::HeaderInjector(headers));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_endpoint_is_a_collectors_base_url() {
        assert_eq!(
            traces_url("http://127.0.0.1:4318/").unwrap(),
            "http://127.0.0.1:4318/v1/traces"
        );
        assert!(traces_url("127.0.0.1:4318").is_err());
        assert!(traces_url("ftp://x").is_err());
    }

    #[test]
    fn a_traceparent_is_continued_and_one_that_is_not_valid_is_ignored() {
        use opentelemetry::trace::TraceContextExt as _;
        let mut h = http::HeaderMap::new();
        // Flags 03: the W3C level 2 "random" bit beside "sampled", as Python's SDK sends it.
        h.insert(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-03"
                .parse()
                .unwrap(),
        );
        let cx = remote_parent(&h).unwrap();
        assert_eq!(
            cx.span().span_context().trace_id().to_string(),
            "0af7651916cd43dd8448eb211c80319c"
        );
        h.insert("traceparent", "00-zz-b7ad6b7169203331-01".parse().unwrap());
        assert!(remote_parent(&h).is_none());
        let mut out = http::HeaderMap::new();
        inject(&cx, &mut out);
        assert!(out["traceparent"]
            .to_str()
            .unwrap()
            .contains("0af7651916cd43dd8448eb211c80319c"));
    }

    proptest::proptest! {
        /// Whatever an agent sends as trace context, reading it never panics, and what is
        /// continued is a valid context.
        #[test]
        fn any_trace_context_is_read_without_panic(tp in "\\PC{0,80}", ts in "\\PC{0,80}") {
            let mut h = http::HeaderMap::new();
            if let Ok(v) = http::HeaderValue::from_str(&tp) {
                h.insert("traceparent", v);
            }
            if let Ok(v) = http::HeaderValue::from_str(&ts) {
                h.insert("tracestate", v);
            }
            if let Some(cx) = remote_parent(&h) {
                use opentelemetry::trace::TraceContextExt as _;
                proptest::prop_assert!(cx.span().span_context().is_valid());
            }
        }

        #[test]
        fn a_well_formed_traceparent_is_continued(
            trace in "[0-9a-f]{32}", span in "[0-9a-f]{16}", flags in "0[0-3]",
        ) {
            proptest::prop_assume!(trace != "0".repeat(32) && span != "0".repeat(16));
            let mut h = http::HeaderMap::new();
            let tp = format!("00-{trace}-{span}-{flags}");
            h.insert("traceparent", http::HeaderValue::from_str(&tp).unwrap());
            proptest::prop_assert!(remote_parent(&h).is_some(), "{}", tp);
        }
    }
}
