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

use crate::model::Proposal;

/// Attempts per notification, and the first pause between them (doubling).
const ATTEMPTS: u32 = 5;
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const TIMEOUT: Duration = Duration::from_secs(10);

type WebhookClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// Sends notifications of new proposals, in the background.
pub struct Notifier {
    client: Arc<WebhookClient>,
    /// The webhook for tools that name none (`--webhook`).
    default_url: Option<String>,
    /// The admin listener's public address, for links.
    admin_url: String,
    tasks: tokio_util::task::TaskTracker,
}

impl Notifier {
    /// A notifier whose client verifies https webhooks with `tls` (the same roots as upstreams),
    /// and whose deliveries run on `tasks` (so shutdown waits for them within its grace).
    pub fn new(
        tls: rustls::ClientConfig,
        default_url: Option<String>,
        admin_url: String,
        tasks: tokio_util::task::TaskTracker,
    ) -> Notifier {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        Notifier {
            client: Arc::new(Client::builder(TokioExecutor::new()).build(https)),
            default_url,
            admin_url,
            tasks,
        }
    }

    /// Sends the notification for a new proposal, if a webhook is configured for the tool or
    /// globally. Returns at once; delivery happens in the background.
    pub fn new_proposal(&self, p: &Proposal, tool_webhook: Option<&str>) {
        let Some(url) = tool_webhook
            .or(self.default_url.as_deref())
            .map(str::to_string)
        else {
            return;
        };
        let link = format!(
            "{}/proposals/{}",
            self.admin_url.trim_end_matches('/'),
            p.id
        );
        let text = slack_text(p, &link);
        let payload = json!({
            "text": text,
            "unfurl_links": false,
            "unfurl_media": false,
            "proposal": p.id,
            "tool": p.tool,
            "agent": p.agent,
            "summary": p.summary,
            "link": link,
        })
        .to_string();
        self.tasks
            .spawn(deliver(self.client.clone(), url, payload, p.id.clone()));
    }
}

/// The message text. What the agent chose (its summary fields, even its id) is shown as
/// inline code with Slack's control characters escaped, so it can neither format, mention
/// (`<!channel>`) nor link; the only link is toolgate's own.
fn slack_text(p: &Proposal, link: &str) -> String {
    format!(
        "toolgate: agent {} (owner {}) asks to run {} [{}]: {} <{}|Review proposal {}>",
        slack_code(&p.agent),
        slack_code(&p.owner),
        slack_code(&p.tool),
        slack_code(&p.risk),
        slack_code(&p.summary),
        slack_escape(link),
        slack_escape(&p.id),
    )
}

/// Slack's three control characters, escaped as its docs ask.
fn slack_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Agent text as one inline code span: no formatting, no auto-linked URLs, one line.
fn slack_code(s: &str) -> String {
    let flat: String = s
        .chars()
        .map(|c| match c {
            '`' => '\'',
            c if c.is_control() => ' ',
            c => c,
        })
        .collect();
    format!("`{}`", slack_escape(&flat))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_text_cannot_link_mention_or_format_in_slack() {
        let p: Proposal = serde_json::from_value(serde_json::json!({
            "id": "prop_1", "state": "pending", "tool": "stripe.refunds.create", "tool_version": 1,
            "risk": "high", "agent": "bot", "owner": "alice@example.com", "environment": "staging",
            "job": "j", "request_id": "req_1",
            "summary": "Refund <https://evil.example/approve|Approve here> <!channel> `x`\n*now*",
            "request": {"method": "POST", "host": "api.stripe.com", "port": 443,
                        "path_and_query": "/v1/refunds", "headers": [], "body": "", "sha256": ""},
            "identity": "i", "created_unix": 0, "expires_unix": 0, "required": 1, "groups": [],
            "allow_self_approval": false
        }))
        .unwrap();
        let text = slack_text(&p, "http://127.0.0.1:8081/proposals/prop_1");
        assert!(!text.contains("<https://evil"), "{text}");
        assert!(!text.contains("<!channel>"), "{text}");
        assert!(
            text.contains("&lt;https://evil.example/approve|Approve here&gt;"),
            "{text}"
        );
        assert!(!text.contains('\n'));
        // Exactly one link, toolgate's own.
        assert_eq!(text.matches('<').count(), 1, "{text}");
        assert!(text.contains("<http://127.0.0.1:8081/proposals/prop_1|Review proposal prop_1>"));
    }
}
