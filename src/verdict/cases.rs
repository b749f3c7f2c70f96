//! Policy test cases (`policies/tests/*.toml`): what a request is and what the policies must
//! decide about it. A file is TOML, parsed with `toml`; each `[[case]]` becomes an [`Asked`],
//! a [`World`] and an [`Expect`], and [`Expect::judge`] compares a [`Verdict`] with it.

use std::collections::BTreeMap;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Uri};
use serde::Deserialize;

use super::{Asked, Outcome, Verdict, Who, World};

/// A cases file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CasesFile {
    #[serde(default)]
    case: Vec<CaseDef>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseDef {
    name: String,
    agent: Option<String>,
    source: Option<String>,
    request: RequestDef,
    expect: ExpectDef,
    /// On a `forward` expectation: the credential the call is sent with.
    credential: Option<String>,
    /// Kill switches thrown: `tool:NAME` or `agent:ID`.
    #[serde(default)]
    disabled: Vec<String>,
    /// Tools lent to the agent by a live grant.
    #[serde(default)]
    grants: Vec<String>,
    /// What the agent already spent of the tool's budget in the current period.
    spent: Option<f64>,
    /// The person the call acts for, and their groups.
    user: Option<String>,
    #[serde(default)]
    user_groups: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RequestDef {
    method: String,
    url: String,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    body: Option<String>,
    json: Option<toml::Value>,
    form: Option<toml::Table>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum ExpectDef {
    Word(String),
    Refuse {
        refuse: String,
        message: Option<String>,
    },
}

/// What a case expects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    Forward {
        credential: Option<String>,
    },
    Hold,
    DryRun,
    Refuse {
        code: String,
        message: Option<String>,
    },
}

/// The codes a dry evaluation can give (those of the phases before anything is sent).
const CODES: [&str; 7] = [
    "auth_required",
    "auth_error",
    "egress_denied",
    "policy_violation",
    "tool_disabled",
    "validation_error",
    "idempotency_key_required",
];

/// One case, ready to evaluate.
#[derive(Debug, Clone)]
pub struct Case {
    pub name: String,
    pub asked: Asked,
    pub world: World,
    pub expect: Expect,
}

/// Reads the cases of one file's text; the error names the case and what to change.
pub fn parse(text: &str) -> Result<Vec<Case>, String> {
    let file: CasesFile = toml::from_str(text).map_err(|e| e.to_string().trim_end().to_string())?;
    if file.case.is_empty() {
        return Err("no [[case]] entries".into());
    }
    file.case
        .into_iter()
        .map(|def| {
            let name = def.name.clone();
            case(def).map_err(|e| format!("case {name:?}: {e}"))
        })
        .collect()
}

fn case(def: CaseDef) -> Result<Case, String> {
    let who = match (def.agent, def.source) {
        (Some(id), None) => Who::Agent(id),
        (None, Some(ip)) => Who::Source(
            ip.parse()
                .map_err(|_| format!("source {ip:?} is not an IP address"))?,
        ),
        _ => return Err("give exactly one of agent = \"ID\" or source = \"ADDRESS\"".into()),
    };
    let expect = expect(def.expect, def.credential)?;
    let mut world = World::given(&def.disabled, def.grants)?;
    world.spent = def.spent;
    world.acting_for(def.user, def.user_groups);
    Ok(Case {
        name: def.name,
        asked: request(def.request, who)?,
        world,
        expect,
    })
}

fn expect(def: ExpectDef, credential: Option<String>) -> Result<Expect, String> {
    let expect = match def {
        ExpectDef::Word(w) => match w.as_str() {
            "forward" => Expect::Forward {
                credential: credential.clone(),
            },
            "hold" => Expect::Hold,
            "dry_run" => Expect::DryRun,
            other => {
                return Err(format!(
                    "expect = {other:?}: write \"forward\", \"hold\", \"dry_run\" or {{ refuse = \"CODE\" }}"
                ))
            }
        },
        ExpectDef::Refuse { refuse, message } => {
            if !CODES.contains(&refuse.as_str()) {
                return Err(format!(
                    "refuse = {refuse:?} is not a code the proxy's decision phases give: one of {}",
                    CODES.join(", ")
                ));
            }
            Expect::Refuse {
                code: refuse,
                message,
            }
        }
    };
    match (&expect, credential) {
        (Expect::Forward { .. }, _) | (_, None) => Ok(expect),
        (_, Some(_)) => Err("credential = … belongs to an expect = \"forward\" case".into()),
    }
}

/// The request a case describes: an absolute URL, headers, and one kind of body.
fn request(def: RequestDef, who: Who) -> Result<Asked, String> {
    let (method, url) = method_and_url(&def.method, &def.url)?;
    let mut headers = HeaderMap::new();
    for (name, value) in &def.headers {
        let n = HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes())
            .map_err(|_| format!("header name {name:?} is not valid"))?;
        let v = HeaderValue::from_str(value)
            .map_err(|_| format!("header {name}'s value is not valid"))?;
        headers.append(n, v);
    }
    let (body, ctype) = match (def.body, def.json, def.form) {
        (None, None, None) => (Bytes::new(), None),
        (Some(text), None, None) => (Bytes::from(text), None),
        (None, Some(json), None) => {
            let value = serde_json::to_value(json).map_err(|e| format!("json: {e}"))?;
            (Bytes::from(value.to_string()), Some("application/json"))
        }
        (None, None, Some(form)) => {
            let value = serde_json::to_value(form).map_err(|e| format!("form: {e}"))?;
            (
                Bytes::from(encode_form(&value)),
                Some("application/x-www-form-urlencoded"),
            )
        }
        _ => return Err("give at most one of body, json or form".into()),
    };
    if let Some(ctype) = ctype.filter(|_| !headers.contains_key(http::header::CONTENT_TYPE)) {
        headers.insert(http::header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    }
    Ok(Asked {
        who,
        method,
        url,
        headers,
        body,
    })
}

/// A request's method and its absolute URL (`https://host/path?query`, or `http://`), read.
pub fn method_and_url(method: &str, url: &str) -> Result<(Method, Uri), String> {
    let m = Method::from_bytes(method.to_ascii_uppercase().as_bytes())
        .map_err(|_| format!("method {method:?} is not an HTTP method"))?;
    let u: Uri = url.parse().map_err(|e| format!("url {url:?}: {e}"))?;
    if !matches!(u.scheme_str(), Some("https" | "http")) || u.host().is_none() {
        return Err(format!("url {url:?} must be absolute: https://host/path"));
    }
    Ok((m, u))
}

/// A JSON object as a form body in bracket notation (`a[b]=1`, `a[0]=x`), as the Stripe SDKs
/// send it; the inverse of `contract::decode_form`.
pub fn encode_form(value: &serde_json::Value) -> String {
    let mut out = form_urlencoded::Serializer::new(String::new());
    if let serde_json::Value::Object(map) = value {
        for (k, v) in map {
            pairs(k.clone(), v, &mut out);
        }
    }
    out.finish()
}

fn pairs(key: String, value: &serde_json::Value, out: &mut form_urlencoded::Serializer<String>) {
    use serde_json::Value;
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                pairs(format!("{key}[{k}]"), v, out);
            }
        }
        Value::Array(list) => {
            for (i, v) in list.iter().enumerate() {
                pairs(format!("{key}[{i}]"), v, out);
            }
        }
        Value::String(s) => {
            out.append_pair(&key, s);
        }
        Value::Null => {
            out.append_pair(&key, "");
        }
        other => {
            out.append_pair(&key, &other.to_string());
        }
    }
}

impl Expect {
    /// How the expectation reads in a table.
    pub fn describe(&self) -> String {
        match self {
            Expect::Forward { credential: None } => "forward".into(),
            Expect::Forward {
                credential: Some(c),
            } => format!("forward with {c}"),
            Expect::Hold => "hold".into(),
            Expect::DryRun => "dry_run".into(),
            Expect::Refuse {
                code,
                message: None,
            } => format!("refuse {code}"),
            Expect::Refuse {
                code,
                message: Some(m),
            } => format!("refuse {code} ({m:?})"),
        }
    }

    /// Whether `verdict` meets the expectation: `None` when it does, else why not.
    pub fn judge(&self, verdict: &Verdict) -> Option<String> {
        match (self, &verdict.outcome) {
            (Expect::Forward { credential: want }, Outcome::Forward { credential: got }) => {
                want.as_ref().filter(|w| Some(*w) != got.as_ref()).map(|w| {
                    format!(
                        "forwarded with credential {}, not {w}",
                        got.as_deref().unwrap_or("none")
                    )
                })
            }
            (Expect::Hold, Outcome::Hold) | (Expect::DryRun, Outcome::DryRun) => None,
            (Expect::Refuse { code, message }, Outcome::Refused(r)) => {
                if r.code.as_str() != code {
                    return Some(format!("refused with {}, not {code}", r.code.as_str()));
                }
                message
                    .as_ref()
                    .filter(|m| !r.message.contains(m.as_str()))
                    .map(|m| format!("the refusal's message does not contain {m:?}"))
            }
            _ => Some(format!("decided {}", describe(verdict))),
        }
    }
}

/// A verdict in one line: its outcome, tool and credential or refusal.
pub fn describe(verdict: &Verdict) -> String {
    let tool = verdict
        .tool
        .as_deref()
        .map(|t| format!(" {t}"))
        .unwrap_or_default();
    match &verdict.outcome {
        Outcome::Forward { credential } => format!(
            "forward{tool} with credential {}",
            credential.as_deref().unwrap_or("none")
        ),
        Outcome::Hold => format!("hold{tool}"),
        Outcome::DryRun => format!("dry_run{tool}"),
        Outcome::Refused(r) => format!("refuse {}{tool}: {}", r.code.as_str(), r.message),
        Outcome::Unsupported(why) => format!("not evaluated: {why}"),
    }
}
