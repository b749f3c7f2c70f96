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
    /// What in a serialised value could make [`Redactor::walk`] rewrite it: the patterns, a
    /// `bearer` before an escaped blank, and the names of secret headers as keys.
    triggers: Regex,
    secrets: RwLock<Secrets>,
}

/// The injected secrets: as they are replaced, and as finders over serialised JSON (each as
/// it is, and as JSON writes it inside a string when that differs).
#[derive(Default)]
struct Secrets {
    plain: Vec<String>,
    finders: Vec<memchr::memmem::Finder<'static>>,
}

impl Secrets {
    fn new(plain: Vec<String>) -> Secrets {
        let mut forms: Vec<String> = plain.clone();
        for s in &plain {
            let quoted = serde_json::to_string(s).unwrap_or_default();
            let escaped = quoted.trim_start_matches('"').trim_end_matches('"');
            if escaped != s {
                forms.push(escaped.to_string());
            }
        }
        let finders = forms
            .iter()
            .map(|f| memchr::memmem::Finder::new(f.as_bytes()).into_owned())
            .collect();
        Secrets { plain, finders }
    }
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
/// A secret header's value as a redacted event holds it, after its key.
const REDACTED_VALUE: &str = ":\"[REDACTED]\"";

/// Values that look like keys, wherever they appear.
const KEY_PATTERNS: &str = concat!(
    r"(?:sk|rk)_(?:live|test)_[A-Za-z0-9_]{4,}",
    r"|gh[opusr]_[A-Za-z0-9]{10,}",
    r"|github_pat_[A-Za-z0-9_]{10,}",
    r"|SG\.[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}",
    r"|(?:AKIA|ASIA)[A-Z0-9]{16}",
    r"|-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?-----END [A-Z ]*PRIVATE KEY-----",
    r"|eyJ[A-Za-z0-9_\-]{5,}\.[A-Za-z0-9_\-]{5,}\.[A-Za-z0-9_\-]*",
    r"|(?i:bearer)\s+[A-Za-z0-9._~+/=\-]{8,}",
);

impl Redactor {
    pub fn new() -> Redactor {
        let patterns = Regex::new(KEY_PATTERNS).unwrap_or_else(|_| unreachable_regex());
        // A superset of what the walk rewrites, read in serialised JSON. The patterns' classes
        // hold no character JSON escapes, except `\s` after `bearer` (a tab is written `\t`)
        // and the key's body, which `[\s\S]` matches escaped or not.
        let headers = SECRET_HEADERS.map(regex::escape).join("|");
        let triggers = Regex::new(&format!(
            r#"{KEY_PATTERNS}|(?i:bearer)\s*\\|(?i:"(?:{headers})")"#
        ))
        // Nothing built: every value is walked.
        .unwrap_or_else(|_| Regex::new("").unwrap_or_else(|_| unreachable_regex()));
        Redactor {
            patterns,
            triggers,
            secrets: RwLock::new(Secrets::default()),
        }
    }

    /// The injected secrets to scrub wherever they appear (an upstream may echo them).
    pub fn set_secrets(&self, secrets: Vec<String>) {
        let mut s: Vec<String> = secrets.into_iter().filter(|s| s.len() >= 4).collect();
        // Longest first, so a secret that contains another is removed whole.
        s.sort_by_key(|x| std::cmp::Reverse(x.len()));
        s.dedup();
        *self.secrets.write().unwrap_or_else(|p| p.into_inner()) = Secrets::new(s);
    }

    pub fn text(&self, s: &str) -> String {
        let secrets = self.secrets.read().unwrap_or_else(|p| p.into_inner());
        self.redact(&secrets.plain, s).into_owned()
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
        self.walk(&secrets.plain, v);
    }

    /// Whether [`Redactor::value_in_place`] could rewrite a value whose serialised JSON is
    /// `json` (true whenever it would; false lets the writer keep the bytes it already has).
    /// One scan for the patterns and secret header names, one per injected secret. A secret
    /// header whose value is already `"[REDACTED]"` is what the walk would leave as it is.
    pub fn may_rewrite(&self, json: &[u8]) -> bool {
        let secrets = self.secrets.read().unwrap_or_else(|p| p.into_inner());
        if secrets.finders.iter().any(|f| f.find(json).is_some()) {
            return true;
        }
        let Ok(text) = std::str::from_utf8(json) else {
            return true;
        };
        self.triggers.find_iter(text).any(|m| {
            let header = m.as_str().starts_with('"');
            !(header && text[m.end()..].starts_with(REDACTED_VALUE))
        })
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

/// Headers as a JSON object for an event. Credential headers are redacted here; the rest of
/// redaction happens when the event is written (on the writer's thread, for every payload).
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
        // A credential header is never carried to the writer (names here are lowercase).
        let value = if SECRET_HEADERS.contains(&k.as_str()) {
            REDACTED.to_string()
        } else {
            match v.to_str() {
                Ok(text) => cap_text(text, HEADER_VALUE_CAP),
                Err(_) => cap_text(&String::from_utf8_lossy(v.as_bytes()), HEADER_VALUE_CAP),
            }
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

    /// Whether the walk rewrites `v`, and whether the writer's scan of its bytes says it may.
    fn rewrites(r: &Redactor, v: &Value) -> (bool, bool) {
        let bytes = serde_json::to_vec(v).unwrap();
        (r.value(v) != *v, r.may_rewrite(&bytes))
    }

    #[test]
    fn the_scan_of_serialised_json_sees_everything_the_walk_rewrites() {
        let r = Redactor::new();
        r.set_secrets(vec!["pl\"ain\tsecret".into(), "plain-secret-value".into()]);
        let rewritten = [
            json!({"h": "Bearer\tabcdefghijklmnop"}),
            json!({"h": "bearer \n\t abcdefghijklmnop"}),
            json!({"k": "-----BEGIN RSA PRIVATE KEY-----\nMIIE\n-----END RSA PRIVATE KEY-----"}),
            json!({"k": "x pl\"ain\tsecret y"}),
            json!({"k": ["plain-secret-value"]}),
            json!({"Authorization": "anything"}),
            json!({"COOKIE": ""}),
            json!({"sk_live_abcdef123456": 1}),
        ];
        for v in rewritten {
            assert_eq!(rewrites(&r, &v), (true, true), "{v}");
        }
        // Left as they are, and the scan says so: the common case stays one serialisation.
        let clean = [
            json!({"authorization": REDACTED, "proxy-authorization": REDACTED, "x": "task_id"}),
            json!({"headers": {"user-agent": "oha/1.16", "accept": "*/*"}, "path": "/v1/x"}),
            json!({"n": 5, "b": true, "z": null, "s": "Asia/Tokyo"}),
        ];
        for v in clean {
            assert_eq!(rewrites(&r, &v), (false, false), "{v}");
        }
    }

    #[test]
    fn credential_headers_are_redacted_when_the_event_is_built() {
        let mut h = http::HeaderMap::new();
        h.insert(
            "authorization",
            "Bearer sk_test_placeholder".parse().unwrap(),
        );
        h.insert("x-api-key", "k-123".parse().unwrap());
        h.insert("accept", "*/*".parse().unwrap());
        let v = headers_json(&h);
        assert_eq!(v["authorization"], REDACTED);
        assert_eq!(v["x-api-key"], REDACTED);
        assert_eq!(v["accept"], "*/*");
        assert!(!Redactor::new().may_rewrite(&serde_json::to_vec(&v).unwrap()));
    }

    use proptest::prelude::*;

    /// Strings built from pieces of secrets, key shapes, blanks JSON escapes, quotes and
    /// backslashes, and ordinary text.
    fn text() -> impl Strategy<Value = String> {
        let pieces = prop::sample::select(vec![
            "sk_live_",
            "rk_test_",
            "abcd1234",
            "ABCDEFGHIJKLMNOP",
            "ghp_",
            "github_pat_",
            "SG.",
            "AKIA",
            "ASIA",
            "eyJ",
            "abcde.",
            "Bearer",
            "bearer",
            " ",
            "\t",
            "\n",
            "\r",
            "\u{b}",
            "\u{85}",
            "\u{a0}",
            "\"",
            "\\",
            "-----BEGIN RSA PRIVATE KEY-----",
            "-----END RSA PRIVATE KEY-----",
            "plain-",
            "secret-",
            "value",
            "pl",
            "ain",
            "é",
            "[REDACTED]",
            "authorization",
            "Cookie",
            ":",
            "x",
            // Whole ones, so that the cases that must be seen come up often.
            "plain-secret-value",
            "pl\"ain\tx",
            "Bearer\tabcdefgh12",
            "bearer \n abcdefgh12",
            "sk_live_abcd",
            "-----BEGIN RSA PRIVATE KEY-----\nMIIE\n-----END RSA PRIVATE KEY-----",
        ]);
        prop::collection::vec(pieces, 0..12).prop_map(|v| v.concat())
    }

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            text().prop_map(Value::String),
            any::<i64>().prop_map(Value::from),
            Just(Value::Null),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map(text(), inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        /// The writer keeps the bytes it sealed only when the scan says nothing could be
        /// rewritten: whenever the walk would rewrite a value, the scan must say so.
        #[test]
        fn the_scan_never_misses_what_the_walk_rewrites(v in json_value()) {
            let r = Redactor::new();
            r.set_secrets(vec!["plain-secret-value".into(), "pl\"ain\tx".into()]);
            let (walked, scanned) = rewrites(&r, &v);
            prop_assert!(!walked || scanned, "missed: {}", v);
        }
    }
}
