//! Path templates such as `/repos/{owner}/{repo}/issues/{number}`.

use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Param(String),
}

/// The value at a dotted path such as `body.customer.email` (`items.0` indexes an array), as
/// summary and rollback templates name them.
pub fn dotted<'a>(ctx: &'a serde_json::Value, path: &str) -> Option<&'a serde_json::Value> {
    ctx.pointer(&format!("/{}", path.replace('.', "/")))
}

/// A compiled path template: literal segments match exactly, `{name}` matches one non-empty
/// segment and captures it.
#[derive(Debug, Clone)]
pub struct PathTemplate {
    source: String,
    segments: Vec<Segment>,
}

/// Why a request path cannot be matched at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("the path must start with '/'")]
    NotAbsolute,
    #[error("the path contains an empty segment ('//')")]
    EmptySegment,
    #[error("the path contains a '.' or '..' segment")]
    DotSegment,
    #[error("the path contains an encoded '/', '\\' or '.' ('%2F', '%5C', '%2E')")]
    EncodedSeparator,
    #[error("the path contains a '\\', which some servers read as '/'")]
    Backslash,
    #[error("the path contains a '.' or '..' segment with parameters ('..;'), which some servers read as '..'")]
    DotParamSegment,
    #[error("the path contains an encoded control character")]
    EncodedControl,
}

impl PathTemplate {
    pub fn parse(template: &str) -> Result<Self, String> {
        if !template.starts_with('/') {
            return Err(format!("path template {template:?} must start with '/'"));
        }
        let mut segments = Vec::new();
        let mut names = Vec::new();
        for raw in template[1..].split('/') {
            if raw.is_empty() && template != "/" {
                return Err(format!("path template {template:?} has an empty segment"));
            }
            if let Some(name) = raw.strip_prefix('{').and_then(|r| r.strip_suffix('}')) {
                if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    return Err(format!(
                        "path template {template:?}: parameter {{{name}}} must be letters, digits or '_'"
                    ));
                }
                if names.contains(&name) {
                    return Err(format!("path template {template:?} names {{{name}}} twice"));
                }
                names.push(name);
                segments.push(Segment::Param(name.to_string()));
            } else if raw.contains('{') || raw.contains('}') {
                return Err(format!(
                    "path template {template:?}: a parameter must be a whole segment, like /{{id}}"
                ));
            } else if !raw.is_empty() {
                segments.push(Segment::Literal(raw.to_string()));
            }
        }
        Ok(PathTemplate {
            source: template.to_string(),
            segments,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// The parameter names in order.
    pub fn params(&self) -> impl Iterator<Item = &str> {
        self.segments.iter().filter_map(|s| match s {
            Segment::Param(n) => Some(n.as_str()),
            Segment::Literal(_) => None,
        })
    }

    /// Matches a request path (without query) that passed [`check_path`]. Parameter values are
    /// percent-decoded.
    pub fn matches(&self, path: &str) -> Option<BTreeMap<String, String>> {
        let parts: Vec<&str> = split(path);
        if parts.len() != self.segments.len() {
            return None;
        }
        let mut params = BTreeMap::new();
        for (seg, part) in self.segments.iter().zip(parts) {
            match seg {
                Segment::Literal(l) => {
                    if l != part {
                        return None;
                    }
                }
                Segment::Param(name) => {
                    params.insert(name.clone(), percent_decode(part)?);
                }
            }
        }
        Some(params)
    }

    /// True when some path could match both templates (a policy load error when both tools
    /// share a host and method).
    pub fn overlaps(&self, other: &PathTemplate) -> bool {
        self.segments.len() == other.segments.len()
            && self
                .segments
                .iter()
                .zip(&other.segments)
                .all(|(a, b)| match (a, b) {
                    (Segment::Literal(x), Segment::Literal(y)) => x == y,
                    _ => true,
                })
    }
}

fn split(path: &str) -> Vec<&str> {
    if path == "/" {
        return Vec::new();
    }
    path[1..].split('/').collect()
}

/// Refuses paths that an upstream might read differently from toolgate: dot segments, empty
/// segments and encoded separators. A gateway that matched `/v1/customers/..%2Frefunds` as a
/// customer lookup would be bypassed.
pub fn check_path(path: &str) -> Result<(), PathError> {
    if !path.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    if path == "/" {
        return Ok(());
    }
    let lower = path.to_ascii_lowercase();
    if lower.contains("%2f") || lower.contains("%5c") || lower.contains("%2e") {
        return Err(PathError::EncodedSeparator);
    }
    if path.contains('\\') {
        return Err(PathError::Backslash);
    }
    if lower.contains("%00") || lower.contains("%0a") || lower.contains("%0d") {
        return Err(PathError::EncodedControl);
    }
    for seg in lower[1..].split('/') {
        match seg {
            "" => return Err(PathError::EmptySegment),
            "." | ".." => return Err(PathError::DotSegment),
            _ => {}
        }
        // Servlet containers drop path parameters (`;x` or `%3Bx`) before resolving dots.
        let bare = seg.split(';').next().unwrap_or(seg);
        let bare = bare.split("%3b").next().unwrap_or(bare);
        if bare.is_empty() || bare == "." || bare == ".." {
            if bare.is_empty() && !seg.starts_with(';') && !seg.starts_with("%3b") {
                continue;
            }
            return Err(PathError::DotParamSegment);
        }
    }
    Ok(())
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_and_extracts_params() {
        let t = PathTemplate::parse("/repos/{owner}/{repo}/issues/{number}").unwrap();
        let p = t.matches("/repos/acme/web/issues/12").unwrap();
        assert_eq!(p["owner"], "acme");
        assert_eq!(p["number"], "12");
        assert!(t.matches("/repos/acme/web/issues").is_none());
        assert!(t.matches("/repos/acme/web/pulls/12").is_none());
        let enc = t.matches("/repos/a%20b/web/issues/1").unwrap();
        assert_eq!(enc["owner"], "a b");
    }

    #[test]
    fn root_and_literal_templates() {
        let t = PathTemplate::parse("/v1/refunds").unwrap();
        assert!(t.matches("/v1/refunds").is_some());
        assert!(t.matches("/v1/refunds/x").is_none());
        let root = PathTemplate::parse("/").unwrap();
        assert!(root.matches("/").is_some());
    }

    #[test]
    fn bad_templates_are_rejected() {
        for bad in ["v1", "/a//b", "/a/{}", "/a/{x}{y}", "/a/x{y}", "/{a}/{a}"] {
            assert!(PathTemplate::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn overlap() {
        let a = PathTemplate::parse("/v1/customers/{id}").unwrap();
        let b = PathTemplate::parse("/v1/customers/search").unwrap();
        let c = PathTemplate::parse("/v1/refunds/{id}").unwrap();
        assert!(a.overlaps(&b));
        assert!(!a.overlaps(&c));
    }

    #[test]
    fn non_canonical_paths_are_refused() {
        assert_eq!(check_path("/v1/../x"), Err(PathError::DotSegment));
        assert_eq!(check_path("/v1//x"), Err(PathError::EmptySegment));
        assert_eq!(check_path("/v1/a%2Fb"), Err(PathError::EncodedSeparator));
        assert_eq!(check_path("/v1/%2e%2e/x"), Err(PathError::EncodedSeparator));
        assert_eq!(check_path("*"), Err(PathError::NotAbsolute));
        assert!(check_path("/v1/customers/cus_1").is_ok());
        assert!(check_path("/").is_ok());
        assert_eq!(
            check_path("/repos/acme/x\\..\\..\\evilcorp\\secrets"),
            Err(PathError::Backslash)
        );
        assert_eq!(check_path("/v1/..;/x"), Err(PathError::DotParamSegment));
        assert_eq!(check_path("/v1/.;x=1/x"), Err(PathError::DotParamSegment));
        assert_eq!(check_path("/v1/..%3B/x"), Err(PathError::DotParamSegment));
        assert_eq!(check_path("/v1/;x/y"), Err(PathError::DotParamSegment));
        assert_eq!(check_path("/v1/a%00"), Err(PathError::EncodedControl));
        assert!(check_path("/v1/a;b").is_ok());
    }
}
