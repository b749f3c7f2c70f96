//! A tool's `rollback` declaration, checked at load time: either `{ none = "why" }` or a request
//! template whose placeholders name the call (`{response.x}`, `{params.x}`, `{body.x}`,
//! `{query.x}`).

use http::Method;
use serde_json::Value;

use super::file::RollbackDef;
use super::types::Rollback;

/// A tool's `rollback` declaration, checked and compiled: the body becomes JSON and the method
/// an HTTP method once, at load.
pub fn compile(def: &RollbackDef) -> Result<Rollback, String> {
    validate_def(def)?;
    if let Some(why) = &def.none {
        return Ok(Rollback::None(why.clone()));
    }
    let method = def.method.as_deref().unwrap_or("");
    let body = def
        .body
        .as_ref()
        .map(|b| serde_json::to_value(b).map_err(|e| e.to_string()))
        .transpose()?;
    Ok(Rollback::Request {
        method: Method::from_bytes(method.to_ascii_uppercase().as_bytes())
            .map_err(|_| format!("rollback.method {method:?} is not an HTTP method"))?,
        path: def.path.clone().unwrap_or_else(|| "/".into()),
        body,
    })
}

/// Checks a tool's `rollback` declaration at load time.
pub fn validate_def(def: &RollbackDef) -> Result<(), String> {
    match (&def.none, &def.method, &def.path) {
        (Some(why), None, None) if def.body.is_none() => {
            if why.trim().is_empty() {
                return Err("rollback.none must say why the call cannot be undone".into());
            }
            Ok(())
        }
        (None, Some(method), Some(path)) => {
            Method::from_bytes(method.to_ascii_uppercase().as_bytes())
                .map_err(|_| format!("rollback.method {method:?} is not an HTTP method"))?;
            if !path.starts_with('/') {
                return Err(format!("rollback.path {path:?} must start with '/'"));
            }
            check_placeholders(path)?;
            if let Some(body) = &def.body {
                let v = serde_json::to_value(body).map_err(|e| e.to_string())?;
                walk_strings(&v, &mut |s| check_placeholders(s))?;
            }
            Ok(())
        }
        _ => Err(
            "rollback is either { none = \"why\" } or { method, path, body? } over {response.x}, {params.x}, {body.x}, {query.x}"
                .into(),
        ),
    }
}

fn walk_strings(v: &Value, f: &mut dyn FnMut(&str) -> Result<(), String>) -> Result<(), String> {
    match v {
        Value::String(s) => f(s),
        Value::Array(a) => a.iter().try_for_each(|x| walk_strings(x, f)),
        Value::Object(m) => m.values().try_for_each(|x| walk_strings(x, f)),
        _ => Ok(()),
    }
}

pub(crate) fn placeholders(template: &str) -> Result<Vec<(usize, usize, &str)>, String> {
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(rel) = template[from..].find('{') {
        let start = from + rel;
        let end = template[start..]
            .find('}')
            .ok_or_else(|| format!("{template:?} has an unclosed '{{'"))?
            + start;
        out.push((start, end, &template[start + 1..end]));
        from = end + 1;
    }
    Ok(out)
}

fn check_placeholders(template: &str) -> Result<(), String> {
    for (_, _, name) in placeholders(template)? {
        let ok = ["response.", "params.", "body.", "query."]
            .iter()
            .any(|p| name.strip_prefix(p).is_some_and(|rest| !rest.is_empty()));
        if !ok {
            return Err(format!(
                "rollback template {template:?}: {{{name}}} must name response.x, params.x, body.x or query.x"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declarations_are_checked() {
        let def = |none: Option<&str>, method: Option<&str>, path: Option<&str>| RollbackDef {
            none: none.map(str::to_string),
            method: method.map(str::to_string),
            path: path.map(str::to_string),
            body: None,
        };
        assert!(validate_def(&def(Some("why"), None, None)).is_ok());
        assert!(validate_def(&def(Some(" "), None, None)).is_err());
        assert!(validate_def(&def(None, Some("DELETE"), Some("/v1/c/{response.id}"))).is_ok());
        assert!(validate_def(&def(None, Some("DELETE"), Some("/v1/c/{agent.id}"))).is_err());
        assert!(validate_def(&def(None, Some("DELETE"), None)).is_err());
        assert!(validate_def(&def(Some("x"), Some("DELETE"), Some("/x"))).is_err());
    }
}
