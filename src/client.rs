//! A client of a running toolgate's admin API, for the command line: one request at a time,
//! with the approver token of `TOOLGATE_TOKEN`. It knows the API's paths and its error shape
//! (`{"error": {"code", "message"}}`), nothing of the server's types, so it sits low in the
//! layers and the CLI (the top layer) is its only user.

use std::path::Path;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use serde_json::Value;

use crate::config::env;

/// Long enough for a job's rollback or a replay, each call bounded by the upstream timeout.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(300);

/// The admin API at `server` (e.g. `http://127.0.0.1:8081`, or `https://…` when the admin
/// listener serves TLS: its certificate checked against the public roots and `cacert`).
#[derive(Debug, Clone, Copy)]
pub struct AdminClient<'a> {
    server: &'a str,
    cacert: Option<&'a Path>,
}

impl<'a> AdminClient<'a> {
    pub fn new(server: &'a str) -> Self {
        AdminClient {
            server,
            cacert: None,
        }
    }

    /// Also trusts the CA certificates (PEM) in `cacert` for an `https://` server.
    pub fn with_cacert(self, cacert: Option<&'a Path>) -> Self {
        AdminClient { cacert, ..self }
    }

    /// Calls the admin API. Returns the status and the JSON body (`null` when it is not JSON).
    pub async fn call(
        self,
        method: http::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<(u16, Value), String> {
        let resp = self.request(method, path, body).await?;
        let status = resp.status().as_u16();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("{}{path}: {e}", self.server))?
            .to_bytes();
        let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Ok((status, json))
    }

    /// A call whose answer must be a success (`accepted` lists the statuses that are): its JSON,
    /// else the error as [`error_text`] words it.
    pub async fn expect(
        self,
        method: http::Method,
        path: &str,
        body: Option<Value>,
        accepted: &[u16],
    ) -> Result<Value, String> {
        match self.call(method, path, body).await? {
            (status, json) if accepted.contains(&status) => Ok(json),
            (status, json) => Err(error_text(status, &json)),
        }
    }

    /// `GET path`: its JSON when it answered 200, else the error's words.
    pub async fn get(self, path: &str) -> Result<Value, String> {
        self.expect(http::Method::GET, path, None, &[200]).await
    }

    /// Sends one request with the approver token; the answer's head (its body is read by the
    /// caller, whole or as it streams).
    pub async fn request(
        self,
        method: http::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<http::Response<hyper::body::Incoming>, String> {
        let token = std::env::var(env::TOKEN)
            .map_err(|_| format!("set {} to an approver token", env::TOKEN))?;
        let url = format!("{}{}", self.server.trim_end_matches('/'), path);
        let mut req = http::Request::builder()
            .method(method)
            .uri(&url)
            .header(http::header::AUTHORIZATION, format!("Bearer {token}"));
        if body.is_some() {
            req = req.header(http::header::CONTENT_TYPE, "application/json");
        }
        let req = req
            .body(Full::new(bytes::Bytes::from(
                body.map(|b| b.to_string()).unwrap_or_default(),
            )))
            .map_err(|e| format!("{url}: {e}"))?;
        let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
        http.enforce_http(false);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls(self.cacert)?)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client: hyper_util::client::legacy::Client<_, Full<bytes::Bytes>> =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build(connector);
        tokio::time::timeout(ANSWER_TIMEOUT, client.request(req))
            .await
            .map_err(|_| format!("{url}: no answer within {}s", ANSWER_TIMEOUT.as_secs()))?
            .map_err(|e| {
                format!(
                    "{url}: {} (is toolgate serving there? see --server, and --cacert for a \
                     certificate from a private CA)",
                    causes(&e)
                )
            })
    }
}

/// An error with its causes: a failed connection says why (refused, a certificate not
/// trusted) instead of only "connect".
fn causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        next = cause.source();
    }
    text
}

/// TLS to an `https://` server: the public roots, and the certificates of `cacert`.
fn tls(cacert: Option<&Path>) -> Result<rustls::ClientConfig, String> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = cacert {
        let bad = |e: String| format!("--cacert {}: {e}", path.display());
        let certs = rustls::pki_types::CertificateDer::pem_file_iter(path)
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
            .map_err(|e| bad(e.to_string()))?;
        if certs.is_empty() {
            return Err(bad("no PEM certificate in the file".into()));
        }
        for cert in certs {
            roots.add(cert).map_err(|e| bad(e.to_string()))?;
        }
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// An error answer in words: `403: <the error's message>`.
pub fn error_text(status: u16, json: &Value) -> String {
    format!(
        "{status}: {}",
        json["error"]["message"]
            .as_str()
            .unwrap_or("request failed")
    )
}

/// `k=v&`, URL-encoded, or nothing.
pub fn query_param(k: &str, v: &Option<String>) -> String {
    match v {
        Some(x) => format!(
            "{k}={}&",
            form_urlencoded::byte_serialize(x.as_bytes()).collect::<String>()
        ),
        None => String::new(),
    }
}

/// A list's path, narrowed to one agent when one is named.
pub fn of_agent(path: &str, agent: Option<&str>) -> String {
    match agent {
        Some(a) => format!(
            "{path}?{}",
            form_urlencoded::Serializer::new(String::new())
                .append_pair("agent", a)
                .finish()
        ),
        None => path.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_errors_read_as_before() {
        assert_eq!(query_param("since", &Some("1 h".into())), "since=1+h&");
        assert_eq!(query_param("since", &None), "");
        assert_eq!(
            of_agent("/api/tokens", Some("a b")),
            "/api/tokens?agent=a+b"
        );
        assert_eq!(of_agent("/api/tokens", None), "/api/tokens");
        let refused = serde_json::json!({"error": {"code": "forbidden", "message": "no"}});
        assert_eq!(error_text(403, &refused), "403: no");
        assert_eq!(error_text(502, &Value::Null), "502: request failed");
    }
}
