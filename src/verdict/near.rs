//! The contracts closest to a request no contract matches, and why each one does not: what a
//! person reads when an agent says "I was refused".

use http::Method;

use crate::policy::{Policy, Tool};

/// Up to `n` contracts on `host`, closest first, each with why it does not match
/// `method path` on `port`.
pub fn closest(
    policy: &Policy,
    host: &str,
    port: u16,
    method: &Method,
    path: &str,
    n: usize,
) -> Vec<String> {
    let mut near: Vec<(usize, String)> = policy
        .tools()
        .iter()
        .filter(|t| t.host.eq_ignore_ascii_case(host) && t.mcp.is_none())
        .map(|t| {
            let (distance, why) = why_not(t, port, method, path);
            let line = format!(
                "{} ({} {}): {}",
                t.name,
                t.method,
                t.path.as_str(),
                why.join("; ")
            );
            (distance, line)
        })
        .collect();
    near.sort();
    near.into_iter().take(n).map(|(_, line)| line).collect()
}

/// How far a contract is from the request, and the reasons it does not match.
fn why_not(tool: &Tool, port: u16, method: &Method, path: &str) -> (usize, Vec<String>) {
    let mut why = Vec::new();
    let mut distance = 0;
    if tool.port != port {
        why.push(format!("it is on port {}, not {port}", tool.port));
        distance += 40;
    }
    if tool.method != *method {
        why.push(format!("it takes {}, not {method}", tool.method));
        distance += 20;
    }
    let want: Vec<&str> = tool.path.as_str().split('/').skip(1).collect();
    let got: Vec<&str> = path.split('/').skip(1).collect();
    if want.len() != got.len() {
        why.push(format!(
            "its path has {} segment(s), the request's {}",
            want.len(),
            got.len()
        ));
        distance += 30 + 10 * want.len().abs_diff(got.len());
    }
    for (i, (w, g)) in want.iter().zip(&got).enumerate() {
        let param = w.starts_with('{') && w.ends_with('}');
        if !param && w != g {
            why.push(format!("segment {} is {w:?}, not {g:?}", i + 1));
            distance += 10 + unlike(w, g);
        } else if param && g.is_empty() {
            why.push(format!("segment {} ({w}) is empty", i + 1));
            distance += 10;
        }
    }
    if why.is_empty() {
        why.push("its path parameters' types refuse the request's values".into());
    }
    (distance, why)
}

/// How unlike two segments are, 0 to 10: the share of the longer one past their common prefix
/// (`refund` is nearer `refunds` than `customers`).
fn unlike(a: &str, b: &str) -> usize {
    let common = a.chars().zip(b.chars()).take_while(|(x, y)| x == y).count();
    let longest = a.chars().count().max(b.chars().count()).max(1);
    10 * (longest - common) / longest
}
