//! `mitm-ref LISTEN CA_OUT UPSTREAM_ADDR UPSTREAM_CA`: a hudsucker MITM proxy on LISTEN whose
//! CA is written to CA_OUT, forwarding every intercepted request to UPSTREAM_ADDR (trusting
//! UPSTREAM_CA, with the request's host as SNI). Nothing else: the floor a MITM proxy costs.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hudsucker::certificate_authority::RcgenAuthority;
use hudsucker::Proxy;
use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

/// Connects every request to the one upstream address, whatever its host.
#[derive(Clone)]
struct ToUpstream(SocketAddr);

impl tower_service::Service<http::Uri> for ToUpstream {
    type Response = TokioIo<tokio::net::TcpStream>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: http::Uri) -> Self::Future {
        let addr = self.0;
        Box::pin(async move {
            let s = tokio::net::TcpStream::connect(addr).await?;
            s.set_nodelay(true)?;
            Ok(TokioIo::new(s))
        })
    }
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, listen, ca_out, upstream, upstream_ca] = args.as_slice() else {
        eprintln!("usage: mitm-ref LISTEN CA_OUT UPSTREAM_ADDR UPSTREAM_CA");
        std::process::exit(2);
    };
    let provider = rustls::crypto::ring::default_provider();
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "mitm-ref CA");
    let cert = params.self_signed(&key).expect("CA");
    std::fs::write(ca_out, cert.pem()).expect("write CA");
    let issuer = rcgen::Issuer::new(params, key);
    let ca = RcgenAuthority::new(issuer, 1_000, provider.clone());

    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(upstream_ca).expect("upstream CA") {
        roots.add(c.expect("PEM")).expect("root");
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_safe_default_protocol_versions()
        .expect("TLS")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(ToUpstream(upstream.parse().expect("UPSTREAM_ADDR")));
    let proxy = Proxy::builder()
        .with_addr(listen.parse().expect("LISTEN"))
        .with_ca(ca)
        .with_http_connector(https)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .build()
        .expect("proxy");
    eprintln!("mitm-ref listening on {listen}");
    if let Err(e) = proxy.start().await {
        eprintln!("mitm-ref: {e}");
    }
}
