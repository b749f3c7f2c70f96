//! Redaction: what is written to the log, the ledger and stored outcomes never holds a secret
//! (an injected credential, a key-shaped value, a credential header), and what one request may
//! make the log keep is bounded.

use std::borrow::Cow;
use std::sync::RwLock;

use regex::Regex;
use serde_json::{json, Value};

/// Redacts secrets from anything about to be written.
pub struct Redactor {
    patterns: Regex,
    secrets: RwLock<Vec<String>>,
}

/// Header names whose values are always redacted.
pub const SECRET_HEADERS: [&str; 10] = [
    "authorization",
    // A person's signed assertion (an ID or access token), for toolgate alone.
    "toolgate-user-assertion",
    "proxy-authorization",
    "x-api-key",
    "api-key",
    "x-auth-token",
    "x-goog-api-key",
    "private-token",
    "cookie",
    "set-cookie",
];

pub const REDACTED: &str = "[REDACTED]";

impl Redactor {
    pub fn new() -> Redactor {
        // Values that look like keys, wherever they appear.
        let patterns = Regex::new(concat!(
            r"(?:sk|rk)_(?:live|test)_[A-Za-z0-9_]{4,}",
            r"|gh[opusr]_[A-Za-z0-9]{10,}",
            r"|github_pat_[A-Za-z0-9_]{10,}",
            r"|SG\.[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}",
            r"|(?:AKIA|ASIA)[A-Z0-9]{16}",
            r"|-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?-----END [A-Z ]*PRIVATE KEY-----",
            r"|eyJ[A-Za-z0-9_\-]{5,}\.[A-Za-z0-9_\-]{5,}\.[A-Za-z0-9_\-]*",
            r"|(?i:bearer)\s+[A-Za-z0-9._~+/=\-]{8,}",
        ))
        .unwrap_or_else(|_| Regex::new("$^").unwrap_or_else(|_| unreachable_regex()));
        Redactor {
            patterns,
            secrets: RwLock::new(Vec::new()),
        }
    }

    /// The injected secrets to scrub wherever they appear (an upstream may echo them).
    pub fn set_secrets(&self, secrets: Vec<String>) {
        let mut s: Vec<String> = secrets.into_iter().filter(|s| s.len() >= 4).collect();
        // Longest first, so a secret that contains another is removed whole.
        s.sort_by_key(|x| std::cmp::Reverse(x.len()));
        s.dedup();
        *self.secrets.write().unwrap_or_else(|p| p.into_inner()) = s;
    }

    pub fn text(&self, s: &str) -> String {
        let secrets = self.secrets.read().unwrap_or_else(|p| p.into_inner());
        self.redact(&secrets, s).into_owned()
    }

    /// The same, also scrubbing `extra` (a call's own secrets: a person's token filled in for
    /// this call, which no policy lists).
    pub fn text_with(&self, extra: &[String], s: &str) -> String {
        let mut out = Cow::Borrowed(s);
        for secret in extra.iter().filter(|x| x.len() >= 4) {
            if out.contains(secret.as_str()) {
                out = Cow::Owned(out.replace(secret.as_str(), REDACTED));
            }
        }
        self.text(&out)
    }

    /// `s` with every secret and key-shaped value replaced; borrowed (no copy) when nothing
    /// matched, which is the common case.
    fn redact<'a>(&self, secrets: &[String], s: &'a str) -> Cow<'a, str> {
        let mut out = Cow::Borrowed(s);
        for secret in secrets {
            if out.contains(secret.as_str()) {
                out = Cow::Owned(out.replace(secret.as_str(), REDACTED));
            }
        }
        // The pattern's literal prefixes make this a fast scan where nothing can match.
        match self.patterns.replace_all(&out, REDACTED) {
            Cow::Borrowed(_) => out,
            Cow::Owned(replaced) => Cow::Owned(replaced),
        }
    }

    /// Redacts every string in a JSON value (keys too).
    pub fn value(&self, v: &Value) -> Value {
        let mut copy = v.clone();
        self.value_in_place(&mut copy);
        copy
    }

    /// The same, in place: only what matched is rewritten.
    pub fn value_in_place(&self, v: &mut Value) {
        let secrets = self.secrets.read().unwrap_or_else(|p| p.into_inner());
        self.walk(&secrets, v);
    }

    fn walk(&self, secrets: &[String], v: &mut Value) {
        match v {
            Value::String(s) => {
                if let Cow::Owned(r) = self.redact(secrets, s) {
                    *s = r;
                }
            }
            Value::Array(a) => a.iter_mut().for_each(|x| self.walk(secrets, x)),
            Value::Object(m) => {
                let rename = m
                    .keys()
                    .any(|k| matches!(self.redact(secrets, k), Cow::Owned(_)));
                if rename {
                    let old = std::mem::take(m);
                    for (k, x) in old {
                        m.insert(self.redact(secrets, &k).into_owned(), x);
                    }
                }
                for (k, x) in m.iter_mut() {
                    if x.is_string() && SECRET_HEADERS.iter().any(|h| k.eq_ignore_ascii_case(h)) {
                        *x = Value::String(REDACTED.into());
                    } else {
                        self.walk(secrets, x);
                    }
                }
            }
            _ => {}
        }
    }
}

impl Default for Redactor {
    fn default() -> Self {
        Redactor::new()
    }
}

fn unreachable_regex() -> Regex {
    // A pattern that compiles everywhere; used only if the main one failed to build.
    #[allow(clippy::expect_used)]
    Regex::new("a^").expect("trivial regex")
}

/// An upstream answer with secrets scrubbed, as it is stored and answered: header values and a
/// UTF-8 body go through the redactor (an upstream that echoes the injected credential must not
/// hand it to the agent or to the disk); a binary body is kept as it is.
pub fn scrub_outcome(
    redactor: &Redactor,
    (status, extra): (u16, &[String]),
    headers: &http::HeaderMap,
    body: &[u8],
) -> (crate::store::Outcome, bytes::Bytes) {
    use base64::Engine;
    let body = match std::str::from_utf8(body) {
        Ok(text) => bytes::Bytes::from(redactor.text_with(extra, text)),
        Err(_) => bytes::Bytes::copy_from_slice(body),
    };
    let outcome = crate::store::Outcome {
        status,
        headers: headers
            .iter()
            .map(|(k, v)| {
                let v = String::from_utf8_lossy(v.as_bytes());
                let v = if SECRET_HEADERS.contains(&k.as_str()) {
                    REDACTED.to_string()
                } else {
                    redactor.text_with(extra, &v)
                };
                (k.to_string(), v)
            })
            .collect(),
        body: base64::engine::general_purpose::STANDARD.encode(&body),
    };
    (outcome, body)
}

/// Headers as a JSON object for an event. Redaction happens when the event is written (on the
/// writer's thread, for every payload), not here on the request path.
pub fn headers_json(headers: &http::HeaderMap) -> Value {
    let mut out = serde_json::Map::new();
    let mut total = 0usize;
    for (k, v) in headers {
        // What one request may make the log keep is bounded: a flood of large headers must not
        // fill the disk.
        if total >= HEADERS_CAP || out.len() >= MAX_HEADERS_RECORDED {
            out.insert("toolgate-truncated".into(), Value::Bool(true));
            break;
        }
        let value = match v.to_str() {
            Ok(text) => cap_text(text, HEADER_VALUE_CAP),
            Err(_) => cap_text(&String::from_utf8_lossy(v.as_bytes()), HEADER_VALUE_CAP),
        };
        total += k.as_str().len() + value.len();
        match out.get_mut(k.as_str()) {
            Some(Value::String(prev)) => {
                prev.push_str(", ");
                prev.push_str(&value);
            }
            _ => {
                out.insert(k.as_str().to_string(), Value::String(value));
            }
        }
    }
    Value::Object(out)
}

/// The most one header value, all headers and a URI or path take in an event.
pub const HEADER_VALUE_CAP: usize = 512;
pub const HEADERS_CAP: usize = 4096;
pub const MAX_HEADERS_RECORDED: usize = 64;
pub const URI_CAP: usize = 1024;

/// `text` cut to at most `cap` bytes (on a character boundary), with a mark when cut.
pub fn cap_text(text: &str, cap: usize) -> String {
    if text.len() <= cap {
        return text.to_string();
    }
    let mut end = cap;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…[{} bytes, truncated]", &text[..end], text.len())
}

/// A body for an event: text, capped, with a truncation mark (redacted when written).
pub fn body_json(bytes: &[u8], cap: usize) -> Value {
    let shown = &bytes[..bytes.len().min(cap)];
    let mut v = json!({ "text": String::from_utf8_lossy(shown), "bytes": bytes.len() });
    if bytes.len() > cap {
        v["truncated"] = Value::Bool(true);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction_covers_keys_headers_and_injected_secrets() {
        let r = Redactor::new();
        r.set_secrets(vec!["plain-secret-value".into()]);
        let corpus = [
            "sk_live_abcdef123456",
            "sk_test_abcdef123456",
            "rk_live_abcdef123456",
            "ghp_abcdefghijklmnop1234",
            "gho_abcdefghijklmnop1234",
            "github_pat_11ABCDEFG0abcdefghijkl",
            "SG.abcdefghijk.lmnopqrstuvwxyz012345",
            "AKIAABCDEFGHIJKLMNOP",
            "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjMifQ.c2lnbmF0dXJl",
            "-----BEGIN RSA PRIVATE KEY-----\nMIIE\n-----END RSA PRIVATE KEY-----",
            "Bearer abcdefghijklmnop",
            "plain-secret-value",
        ];
        for secret in corpus {
            let v = json!({"body": format!("x {secret} y"), "nested": [{"k": secret}]});
            let out = r.value(&v).to_string();
            assert!(!out.contains(secret), "{secret} survived: {out}");
        }
        let v = r.value(&json!({"Authorization": "anything", "x": "fine"}));
        assert_eq!(v["Authorization"], REDACTED);
        assert_eq!(v["x"], "fine");
    }
}
