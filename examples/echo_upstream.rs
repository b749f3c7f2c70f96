//! A local HTTPS upstream for demos and the benchmark: it makes its own CA, a certificate for the
//! host names it is given, and answers every request with a small JSON echo over HTTP/1.1 or
//! HTTP/2. `GET /bytes/N` answers N bytes.
//!
//! cargo run --release --example echo_upstream -- --listen 127.0.0.1:9443 \
//!     --ca-out /tmp/upstream-ca.pem api.stripe.com api.github.com

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use clap::Parser;
use http::Response;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "127.0.0.1:9443")]
    listen: SocketAddr,
    /// Where to write the CA certificate that toolgate (--upstream-ca) or curl should trust.
    #[arg(long)]
    ca_out: PathBuf,
    /// Host names the certificate is valid for.
    #[arg(required = true)]
    hosts: Vec<String>,
}

/// Requests received so far.
static SERVED: AtomicU64 = AtomicU64::new(0);

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "echo upstream CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca.self_signed(&ca_key)?;
    std::fs::write(&args.ca_out, ca_cert.pem())?;
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate()?;
    let leaf = CertificateParams::new(args.hosts.clone())?.signed_by(&key, &issuer)?;

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )?;
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    eprintln!(
        "echo upstream on https://{} for {:?}; CA in {}",
        listener.local_addr()?,
        args.hosts,
        args.ca_out.display()
    );
    // SIGTERM: say how many requests were received (the benchmark compares it with the audit
    // log), then stop.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => accepted?.0,
            _ = term.recv() => {
                eprintln!("served {}", SERVED.load(Ordering::Relaxed));
                return Ok(());
            }
        };
        let _ = stream.set_nodelay(true);
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(stream).await else {
                return;
            };
            let svc = hyper::service::service_fn(
                |req: http::Request<hyper::body::Incoming>| async move {
                    SERVED.fetch_add(1, Ordering::Relaxed);
                    let method = req.method().to_string();
                    let path = req.uri().path().to_string();
                    let len = req
                        .into_body()
                        .collect()
                        .await
                        .map(|b| b.to_bytes().len())
                        .unwrap_or(0);
                    let (body, content_type) = match path.strip_prefix("/bytes/").and_then(|n| n.parse().ok()) {
                    Some(n) => (Bytes::from(vec![b'x'; n]), "application/json"),
                    None if path == "/v1/chat/completions" => (Bytes::from(model_stream()), "text/event-stream"),
                    None => (Bytes::from(
                        serde_json::json!({"object": "echo", "method": method, "path": path, "body_len": len})
                            .to_string(),
                    ), "application/json"),
                };
                    Ok::<_, Infallible>(
                        Response::builder()
                            .header("content-type", content_type)
                            .body(Full::new(body))
                            .unwrap_or_default(),
                    )
                },
            );
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tls), svc)
                .await;
        });
    }
}

/// A streamed Chat Completions answer as a model provider sends it: a few text deltas, then a
/// tool call whose arguments arrive in fragments, then the usage (the bench's model scenario).
fn model_stream() -> String {
    let chunk = |delta: serde_json::Value| {
        serde_json::json!({"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1_700_000_000,
            "model": "gpt-bench", "choices": [{"index": 0, "delta": delta, "finish_reason": null}]})
    };
    let mut events = vec![chunk(
        serde_json::json!({"role": "assistant", "content": ""}),
    )];
    for word in ["I ", "will ", "refund ", "the ", "payment ", "now."] {
        events.push(chunk(serde_json::json!({"content": word})));
    }
    events.push(chunk(
        serde_json::json!({"tool_calls": [{"index": 0, "id": "call_bench", "type": "function",
        "function": {"name": "refund_payment", "arguments": ""}}]}),
    ));
    for part in [
        "{\"payment",
        "_intent\": \"pi",
        "_123\", \"am",
        "ount\": 500}",
    ] {
        events.push(chunk(
            serde_json::json!({"tool_calls": [{"index": 0, "function": {"arguments": part}}]}),
        ));
    }
    events.push(
        serde_json::json!({"id": "chatcmpl-bench", "object": "chat.completion.chunk", "choices": [],
        "usage": {"prompt_tokens": 50, "completion_tokens": 30, "total_tokens": 80}}),
    );
    let mut out: String = events.iter().map(|e| format!("data: {e}\n\n")).collect();
    out.push_str("data: [DONE]\n\n");
    out
}
