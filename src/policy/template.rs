//! Path templates such as `/repos/{owner}/{repo}/issues/{number}`.

use std::collections::{BTreeMap, HashMap};

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

    /// The parameter values a [`Router`] captured for this template, percent-decoded and
    /// named. None when a value is not valid percent-encoded UTF-8.
    pub fn bind(&self, values: &[&str]) -> Option<BTreeMap<String, String>> {
        let mut params = BTreeMap::new();
        for (name, raw) in self.params().zip(values) {
            params.insert(name.to_string(), percent_decode(raw)?);
        }
        Some(params)
    }

    /// True when the two templates match exactly the same requests: the same literals at the
    /// same positions and parameters (whatever their names) at the others. Under the router's
    /// precedence any other pair is told apart, so only these clash.
    pub fn same_shape(&self, other: &PathTemplate) -> bool {
        self.segments.len() == other.segments.len()
            && self
                .segments
                .iter()
                .zip(&other.segments)
                .all(|(a, b)| match (a, b) {
                    (Segment::Literal(x), Segment::Literal(y)) => x == y,
                    (Segment::Param(_), Segment::Param(_)) => true,
                    _ => false,
                })
    }

    /// True when some path could match both templates (an MCP endpoint and an HTTP contract
    /// on the same host and method may not share one).
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

/// The templates of one host and method, matched as HTTP routers match: segment by segment,
/// a literal segment before a parameter at the same position (`/issues/comments` wins over
/// `/issues/{number}` for the request `/issues/comments`), falling back to the parameter when
/// the literal branch leads nowhere. A request costs the length of its path, whatever the number
/// of templates.
#[derive(Debug)]
pub struct Router<T> {
    root: Node<T>,
}

#[derive(Debug)]
struct Node<T> {
    literals: HashMap<String, Node<T>>,
    param: Option<Box<Node<T>>>,
    value: Option<T>,
}

impl<T> Default for Node<T> {
    fn default() -> Self {
        Node {
            literals: HashMap::new(),
            param: None,
            value: None,
        }
    }
}

impl<T> Default for Router<T> {
    fn default() -> Self {
        Router {
            root: Node::default(),
        }
    }
}

impl<T> Router<T> {
    /// Adds a template. Err with the value already routed there when a template of the same
    /// shape (see [`PathTemplate::same_shape`]) is in: both would match the same requests.
    pub fn insert(&mut self, template: &PathTemplate, value: T) -> Result<(), &T> {
        let mut node = &mut self.root;
        for seg in &template.segments {
            node = match seg {
                Segment::Literal(l) => node.literals.entry(l.clone()).or_default(),
                Segment::Param(_) => node.param.get_or_insert_with(Box::default).as_mut(),
            };
        }
        if node.value.is_none() {
            node.value = Some(value);
            return Ok(());
        }
        match &node.value {
            Some(existing) => Err(existing),
            None => Ok(()),
        }
    }

    /// The value routed for a request path (that passed [`check_path`]), with the raw values
    /// of its parameters in order.
    pub fn at<'p>(&self, path: &'p str) -> Option<(&T, Vec<&'p str>)> {
        let parts = split(path);
        let mut captured = Vec::new();
        let value = walk(&self.root, &parts, &mut captured)?;
        Some((value, captured))
    }
}

fn walk<'n, 'p, T>(
    node: &'n Node<T>,
    parts: &[&'p str],
    captured: &mut Vec<&'p str>,
) -> Option<&'n T> {
    let Some((first, rest)) = parts.split_first() else {
        return node.value.as_ref();
    };
    if let Some(found) = node
        .literals
        .get(*first)
        .and_then(|n| walk(n, rest, captured))
    {
        return Some(found);
    }
    let param = node.param.as_deref()?;
    captured.push(*first);
    match walk(param, rest, captured) {
        Some(found) => Some(found),
        None => {
            captured.pop();
            None
        }
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

    fn router(templates: &[&str]) -> (Router<usize>, Vec<PathTemplate>) {
        let mut r = Router::default();
        let parsed: Vec<PathTemplate> = templates
            .iter()
            .map(|t| PathTemplate::parse(t).unwrap())
            .collect();
        for (i, t) in parsed.iter().enumerate() {
            r.insert(t, i).unwrap();
        }
        (r, parsed)
    }

    fn routed(
        r: &(Router<usize>, Vec<PathTemplate>),
        path: &str,
    ) -> Option<(String, BTreeMap<String, String>)> {
        let (i, values) = r.0.at(path)?;
        let t = &r.1[*i];
        Some((t.as_str().to_string(), t.bind(&values)?))
    }

    #[test]
    fn a_literal_segment_wins_over_a_parameter() {
        let r = router(&[
            "/repos/{owner}/{repo}/issues/{issue_number}",
            "/repos/{owner}/{repo}/issues/comments",
            "/v1/customers/{customer}",
            "/v1/customers/search",
        ]);
        let (t, p) = routed(&r, "/repos/acme/web/issues/comments").unwrap();
        assert_eq!(t, "/repos/{owner}/{repo}/issues/comments");
        assert_eq!(p["repo"], "web");
        let (t, p) = routed(&r, "/repos/acme/web/issues/12").unwrap();
        assert_eq!(t, "/repos/{owner}/{repo}/issues/{issue_number}");
        assert_eq!(p["issue_number"], "12");
        assert_eq!(
            routed(&r, "/v1/customers/search").unwrap().0,
            "/v1/customers/search"
        );
        assert_eq!(
            routed(&r, "/v1/customers/cus_1").unwrap().1["customer"],
            "cus_1"
        );
        assert!(routed(&r, "/v1/customers").is_none());
        assert!(routed(&r, "/v1/customers/cus_1/x").is_none());
        let (_, p) = routed(&r, "/v1/customers/a%20b").unwrap();
        assert_eq!(p["customer"], "a b");
    }

    #[test]
    fn a_literal_branch_that_leads_nowhere_falls_back_to_the_parameter() {
        let r = router(&["/a/b/c", "/a/{x}/d", "/{y}/b/e", "/"]);
        assert_eq!(routed(&r, "/a/b/c").unwrap().0, "/a/b/c");
        let (t, p) = routed(&r, "/a/b/d").unwrap();
        assert_eq!((t.as_str(), p["x"].as_str()), ("/a/{x}/d", "b"));
        let (t, p) = routed(&r, "/a/b/e").unwrap();
        assert_eq!((t.as_str(), p["y"].as_str()), ("/{y}/b/e", "a"));
        assert!(routed(&r, "/a/c/c").is_none());
        assert_eq!(routed(&r, "/").unwrap().0, "/");
    }

    #[test]
    fn only_templates_of_the_same_shape_clash() {
        let mut r = Router::default();
        let a = PathTemplate::parse("/v1/customers/{id}").unwrap();
        let b = PathTemplate::parse("/v1/customers/{customer}").unwrap();
        let c = PathTemplate::parse("/v1/customers/search").unwrap();
        r.insert(&a, "a").unwrap();
        r.insert(&c, "c").unwrap();
        assert_eq!(r.insert(&b, "b"), Err(&"a"));
        assert!(a.same_shape(&b) && !a.same_shape(&c));
    }

    proptest::proptest! {
        /// The router finds a template exactly when one matches, and the one it finds is the
        /// matching template with a literal at the first position where they differ.
        #[test]
        fn router_agrees_with_a_scan_under_literal_precedence(
            templates in proptest::collection::vec(proptest::collection::vec(0u8..4, 0..4), 1..12),
            path in proptest::collection::vec(0u8..3, 0..4),
        ) {
            let seg = |k: u8, i: usize| match k {
                0 => "a".to_string(),
                1 => "b".to_string(),
                2 => "c".to_string(),
                _ => format!("{{p{i}}}"),
            };
            let mut r = Router::default();
            let mut kept: Vec<PathTemplate> = Vec::new();
            for t in &templates {
                let text = format!("/{}", t.iter().enumerate().map(|(i, k)| seg(*k, i)).collect::<Vec<_>>().join("/"));
                let parsed = PathTemplate::parse(&text).unwrap();
                let clash = kept.iter().any(|k| k.same_shape(&parsed));
                proptest::prop_assert_eq!(r.insert(&parsed, kept.len()).is_err(), clash);
                if !clash {
                    kept.push(parsed);
                }
            }
            let path = format!("/{}", path.iter().map(|k| seg(*k, 0)).collect::<Vec<_>>().join("/"));
            let shape = |t: &PathTemplate| -> Vec<bool> {
                t.segments.iter().map(|s| matches!(s, Segment::Literal(_))).collect()
            };
            let best = kept
                .iter()
                .enumerate()
                .filter(|(_, t)| t.matches(&path).is_some())
                .max_by_key(|(_, t)| shape(t))
                .map(|(i, _)| i);
            let got = r.at(&path).map(|(i, values)| {
                assert_eq!(kept[*i].bind(&values), kept[*i].matches(&path));
                *i
            });
            proptest::prop_assert_eq!(got, best);
        }
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
