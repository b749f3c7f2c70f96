//! The page layout shared by every admin page, and HTML escaping: nothing an agent sent is ever
//! written unescaped.

use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};

use super::auth::Session;

/// Escapes text for HTML.
pub fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// What a refused page action shows: the refusal's status and message, and a link `back`.
pub(crate) fn refused_page(
    who: &Session,
    status: StatusCode,
    message: &str,
    back: &str,
) -> Response {
    let body = format!(
        "<p class=\"flash\">{}</p><p><a href=\"{}\">Back</a></p>",
        esc(message),
        esc(back)
    );
    (status, page("Refused", Some(who), &body)).into_response()
}

pub(crate) const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:0;background:#f6f7f9;color:#111}\
header{background:#1f2937;color:#fff;padding:.6rem 1rem;display:flex;flex-wrap:wrap;gap:1rem;align-items:center}\
header a{color:#fff}main{padding:1rem;max-width:72rem;margin:auto;overflow-wrap:anywhere}\
.filters label{display:inline-block;margin:.2rem .4rem .2rem 0;min-width:9rem}.filters input{width:auto;max-width:100%}\
details{background:#fff;border:1px solid #ddd;border-radius:8px;padding:.5rem;margin:.4rem 0}summary{cursor:pointer}\
.card{background:#fff;border:1px solid #ddd;border-radius:8px;padding:.8rem;margin:.6rem 0}\
.risk-high,.risk-critical{color:#b91c1c;font-weight:bold}pre{white-space:pre-wrap;word-break:break-all;background:#f3f4f6;padding:.5rem}\
table{border-collapse:collapse;width:100%}td,th{border-bottom:1px solid #eee;padding:.3rem;text-align:left;vertical-align:top}\
button{padding:.5rem 1rem;margin:.2rem 0;font-size:1rem}textarea,input[type=text],input[type=password]{width:100%;box-sizing:border-box;font-size:1rem}\
.flash{background:#fef3c7;padding:.5rem;border-radius:6px}\
.flag{color:#b91c1c;font-weight:bold;background:#fef2f2}.flag::before{content:'\\26A0  '}@media(max-width:40rem){td,th{display:block}}";

pub(crate) fn page(title: &str, who: Option<&Session>, body: &str) -> Html<String> {
    let nav = match who {
        Some(s) => {
            let links = match s.reviewer {
                true => "<a href=\"/traffic\">Traffic</a>",
                false => "<a href=\"/queue\">Queue</a><a href=\"/history\">History</a><a href=\"/traffic\">Traffic</a><a href=\"/switches\">Kill switches</a><a href=\"/grants\">Grants</a><a href=\"/connections\">Connections</a><a href=\"/rollback\">Roll back</a>",
            };
            format!(
                "{links}<span>{}{}</span><form method=\"post\" action=\"/logout\" style=\"display:inline\">\
                 <input type=\"hidden\" name=\"csrf\" value=\"{}\"><button>Sign out</button></form>",
                esc(&s.approver.id),
                if s.reviewer { " (reviewer)" } else { "" },
                esc(&s.csrf)
            )
        }
        None => String::new(),
    };
    Html(format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <title>{} · toolgate</title><style>{STYLE}</style></head><body><header><strong>toolgate</strong>{nav}</header>\
         <main>{body}</main></body></html>",
        esc(title)
    ))
}

/// A time on a page: ISO 8601 in UTC to the second, and how long ago (or how soon) it is,
/// e.g. `2026-12-04T13:37:45Z (5 min ago)`. Never epoch seconds.
pub(crate) fn when(unix_secs: u64) -> String {
    when_ms(unix_secs.saturating_mul(1000))
}

/// [`when`] of a time in milliseconds since the epoch.
pub(crate) fn when_ms(unix_ms: u64) -> String {
    when_at(unix_ms, crate::base::now_ms())
}

fn when_at(unix_ms: u64, now_ms: u64) -> String {
    let iso = crate::audit::rfc3339(unix_ms / 1000 * 1000);
    let relative = match unix_ms <= now_ms {
        true => match span((now_ms - unix_ms) / 1000) {
            None => "just now".to_string(),
            Some(s) => format!("{s} ago"),
        },
        false => match span((unix_ms - now_ms) / 1000) {
            None => "in a moment".to_string(),
            Some(s) => format!("in {s}"),
        },
    };
    format!("<time datetime=\"{iso}\">{iso}</time> ({relative})")
}

/// A duration as people say it: `40 s`, `5 min`, `2 h 10 min`, `3 days`; None under a second.
fn span(secs: u64) -> Option<String> {
    Some(match secs {
        0 => return None,
        1..=59 => format!("{secs} s"),
        60..=3599 => format!("{} min", secs / 60),
        3600..=86_399 => match secs % 3600 / 60 {
            0 => format!("{} h", secs / 3600),
            m => format!("{} h {m} min", secs / 3600),
        },
        _ => match secs / 86_400 {
            1 => "1 day".to_string(),
            d => format!("{d} days"),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_read_as_iso_and_relative() {
        let now = 1_764_855_465_000; // 2025-12-04T13:37:45Z
        assert_eq!(
            when_at(now - 300_000, now),
            "<time datetime=\"2025-12-04T13:32:45Z\">2025-12-04T13:32:45Z</time> (5 min ago)"
        );
        assert!(when_at(now + 3_660_000, now).ends_with("(in 1 h 1 min)"));
        assert!(when_at(now + 400, now).ends_with("(in a moment)"));
        assert!(when_at(now - 2 * 86_400_000, now).ends_with("(2 days ago)"));
        assert!(when_at(now, now).ends_with("(just now)"));
    }
}
