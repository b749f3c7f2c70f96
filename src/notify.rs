//! Notifications of new proposals: Slack-compatible JSON to a webhook, retried with backoff in
//! the background. A failing webhook never blocks or loses a proposal; failures are logged.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::json;
use tracing::{info, warn};

use crate::approval::Proposal;
use crate::Gate;

/// Attempts per notification, and the first pause between them (doubling).
const ATTEMPTS: u32 = 5;
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const TIMEOUT: Duration = Duration::from_secs(10);

pub type WebhookClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// A client for webhooks (http or https, verified against the same roots as upstreams).
pub fn client(tls: rustls::ClientConfig) -> WebhookClient {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Client::builder(TokioExecutor::new()).build(https)
}

/// Sends the notification for a new proposal, if a webhook is configured for the tool or
/// globally. Returns at once; delivery happens in the background.
pub fn new_proposal(gate: &Gate, p: &Proposal, tool_webhook: Option<&str>) {
    let Some(url) = tool_webhook
        .or(gate.config.webhook.as_deref())
        .map(str::to_string)
    else {
        return;
    };
    let link = format!(
        "{}/proposals/{}",
        gate.config.admin_url.trim_end_matches('/'),
        p.id
    );
    let text = format!(
        "toolgate: agent {} (owner {}) asks to run {} [{}]: {}. Review: {}",
        p.agent, p.owner, p.tool, p.risk, p.summary, link
    );
    let payload = json!({
        "text": text,
        "proposal": p.id,
        "tool": p.tool,
        "agent": p.agent,
        "summary": p.summary,
        "link": link,
    })
    .to_string();
    let client = gate.webhook.clone();
    let id = p.id.clone();
    gate.tasks.spawn(deliver(client, url, payload, id));
}

async fn deliver(client: Arc<WebhookClient>, url: String, payload: String, id: String) {
    let mut backoff = FIRST_BACKOFF;
    for attempt in 1..=ATTEMPTS {
        let req = http::Request::post(&url)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(payload.clone())));
        let result = match req {
            Ok(req) => tokio::time::timeout(TIMEOUT, client.request(req))
                .await
                .map_err(|_| "timed out".to_string())
                .and_then(|r| r.map_err(|e| e.to_string())),
            Err(e) => {
                warn!(proposal = %id, error = %e, "webhook URL is not valid; not retrying");
                return;
            }
        };
        match result {
            Ok(resp) if resp.status().is_success() => {
                info!(proposal = %id, attempt, "webhook delivered");
                return;
            }
            Ok(resp) => {
                warn!(proposal = %id, attempt, status = resp.status().as_u16(), "webhook refused the notification")
            }
            Err(e) => warn!(proposal = %id, attempt, error = %e, "webhook failed"),
        }
        if attempt < ATTEMPTS {
            tokio::time::sleep(backoff).await;
            backoff *= 2;
        }
    }
    warn!(proposal = %id, "webhook gave up after {ATTEMPTS} attempts; the proposal is still in the queue");
}
