//! The audit log in OCSF (Open Cybersecurity Schema Framework, schema [`VERSION`]): each event
//! as one OCSF event, for SIEMs (`audit export --format ocsf`, the audit sinks).
//!
//! A call's events are API Activity (6003): the agent is the actor, the tool the API
//! operation, the request and the upstream's answer `http_request`/`http_response`, the gateway's
//! verdict the status and the disposition. Approvals, kill switches, grants and tokens are
//! Entity Management (3004) of the proposal, tool, agent, grant or token; a policy reload is
//! Application Lifecycle (6002); a purge or an import Datastore Activity (6005); a sign-in to the
//! page (and a refused one) Authentication (3002), Logon; a kind this
//! build does not know the Base Event (0). The README has the table.
//!
//! Nothing is lost: `metadata.sequence` is the event's sequence number, `metadata.uid` its
//! hash, and `unmapped` holds the audit event itself, field for field (its `hash` and `prev`
//! among them), so that a receiver can drop duplicates by sequence and verify the chain.

use serde_json::{json, Map, Value};

use super::{Event, Kind};

/// The OCSF schema version the events follow.
pub const VERSION: &str = "1.8.0";

/// Where an event kind goes in OCSF: class and activity.
struct Class {
    uid: u32,
    category: u32,
    name: &'static str,
    activity: u32,
    activity_name: &'static str,
}

const API: (u32, u32, &str) = (6003, 6, "API Activity");
const ENTITY: (u32, u32, &str) = (3004, 3, "Entity Management");
const LIFECYCLE: (u32, u32, &str) = (6002, 6, "Application Lifecycle");
const DATASTORE: (u32, u32, &str) = (6005, 6, "Datastore Activity");
const AUTH: (u32, u32, &str) = (3002, 3, "Authentication");
const BASE: (u32, u32, &str) = (0, 0, "Base Event");

fn class((uid, category, name): (u32, u32, &'static str), activity: (u32, &'static str)) -> Class {
    Class {
        uid,
        category,
        name,
        activity: activity.0,
        activity_name: activity.1,
    }
}

/// The class of `e` and its activity.
fn class_of(e: &Event) -> Class {
    use Kind::*;
    match &e.kind {
        Request
        | Decision
        | Commit
        | Response
        | UpstreamError
        | ResponseSchemaMismatch
        | ModelUsage
        | DryRun
        | IdempotentReplay
        | OutcomeUnknown
        | Rollback
        | Replay => class(API, api_activity(method_of(&e.payload))),
        Proposal | GrantAdded | TokenIssued | ConnectionLinked | ConnectionRefused => {
            class(ENTITY, (1, "Create"))
        }
        GrantUsed | ConnectionUsed => class(ENTITY, (2, "Read")),
        Approval | Denial | Revocation | ConnectionRefreshed => class(ENTITY, (3, "Update")),
        Cancellation | GrantRevoked | TokenRevoked | ConnectionRevoked => {
            class(ENTITY, (4, "Delete"))
        }
        Expiry | GrantExpired | ConnectionBroken => class(ENTITY, (11, "Deactivate")),
        KillSwitch if switched_on(&e.payload) => class(ENTITY, (9, "Disable")),
        KillSwitch => class(ENTITY, (8, "Enable")),
        PolicyReload => class(LIFECYCLE, (8, "Update")),
        Purge => class(DATASTORE, (7, "Delete")),
        StoreImport => class(DATASTORE, (5, "Write")),
        SignIn | SignInRefused => class(AUTH, (1, "Logon")),
        Other(_) => class(BASE, (0, "Unknown")),
    }
}

/// API Activity's activity for an HTTP method.
fn api_activity(method: Option<&str>) -> (u32, &'static str) {
    match method.map(str::to_ascii_uppercase).as_deref() {
        Some("POST") => (1, "Create"),
        Some("GET" | "HEAD" | "OPTIONS") => (2, "Read"),
        Some("PUT" | "PATCH") => (3, "Update"),
        Some("DELETE") => (4, "Delete"),
        Some(_) => (99, "Other"),
        None => (0, "Unknown"),
    }
}

/// The HTTP method an event's payload names (the request's, a commit's, an undo's).
fn method_of(payload: &Value) -> Option<&str> {
    payload.get("method").and_then(Value::as_str)
}

/// Whether a kill-switch event threw the switch (rather than reset it).
fn switched_on(payload: &Value) -> bool {
    payload.get("state").and_then(Value::as_str) == Some("disabled")
}

/// The event in OCSF.
pub fn event(e: &Event) -> Value {
    let c = class_of(e);
    let mut out = Map::new();
    out.insert("class_uid".into(), json!(c.uid));
    out.insert("class_name".into(), json!(c.name));
    out.insert("category_uid".into(), json!(c.category));
    out.insert("activity_id".into(), json!(c.activity));
    out.insert("activity_name".into(), json!(c.activity_name));
    out.insert(
        "type_uid".into(),
        json!(u64::from(c.uid) * 100 + u64::from(c.activity)),
    );
    out.insert("time".into(), json!(e.unix_ms));
    out.insert("message".into(), json!(message(e)));
    out.insert("metadata".into(), metadata(e));
    verdict(e, &mut out);
    match c.uid {
        6003 => api_fields(e, &mut out),
        3004 => entity_fields(e, &mut out),
        6002 => {
            out.insert("app".into(), product());
            out.insert("actor".into(), actor_of(e));
        }
        6005 => {
            out.insert("actor".into(), actor_of(e));
            out.insert("src_endpoint".into(), json!({"name": "toolgate"}));
        }
        _ => {}
    }
    out.insert(
        "unmapped".into(),
        serde_json::to_value(e).unwrap_or(Value::Null),
    );
    Value::Object(out)
}

/// toolgate as OCSF names a product.
fn product() -> Value {
    json!({
        "name": "toolgate",
        "vendor_name": "toolgate",
        "version": env!("CARGO_PKG_VERSION"),
    })
}

fn metadata(e: &Event) -> Value {
    let mut m = json!({
        "version": VERSION,
        "product": product(),
        "log_name": "audit",
        "sequence": e.seq,
        "uid": e.hash,
        "original_time": e.time,
        "profiles": ["security_control"],
    });
    if let Some(r) = &e.request_id {
        m["correlation_uid"] = json!(r);
    }
    m
}

/// One line that says what happened.
fn message(e: &Event) -> String {
    let who = e.agent.as_deref().unwrap_or("toolgate");
    let what = e.tool.as_deref().unwrap_or("");
    let outcome = outcome(&e.payload).unwrap_or("");
    [e.kind.as_str(), who, what, outcome]
        .iter()
        .filter(|s| !s.is_empty())
        .cloned()
        .collect::<Vec<_>>()
        .join(" ")
}

/// The decision's outcome an event carries (its own, or its folded decision's).
fn outcome(payload: &Value) -> Option<&str> {
    payload
        .get("outcome")
        .or_else(|| payload.pointer("/decision/outcome"))
        .and_then(Value::as_str)
}

/// The refusal code an event carries.
fn code(payload: &Value) -> Option<&str> {
    payload
        .get("code")
        .or_else(|| payload.pointer("/decision/code"))
        .and_then(Value::as_str)
}

/// Status, severity, disposition and action: what the gateway did with the call.
fn verdict(e: &Event, out: &mut Map<String, Value>) {
    let refused = outcome(&e.payload) == Some("refused")
        || matches!(
            e.kind,
            Kind::Denial | Kind::UpstreamError | Kind::OutcomeUnknown | Kind::ConnectionRefused
        );
    let held = outcome(&e.payload).is_some_and(|o| o.starts_with("held"));
    let (disposition, name) = match (&e.kind, refused, held) {
        (Kind::Denial, _, _) => (25, "Rejected"),
        (Kind::Approval, _, _) => (8, "Approved"),
        (Kind::Revocation, _, _) => (24, "Access Revoked"),
        (Kind::UpstreamError | Kind::OutcomeUnknown, _, _) => (27, "Error"),
        (_, true, _) => (2, "Blocked"),
        (_, _, true) => (14, "Delayed"),
        _ if e.kind == Kind::Request || outcome(&e.payload).is_some() => (1, "Allowed"),
        _ => (17, "Logged"),
    };
    out.insert("disposition_id".into(), json!(disposition));
    out.insert("disposition".into(), json!(name));
    let (action, action_name) = if refused {
        (2, "Denied")
    } else {
        (1, "Allowed")
    };
    out.insert("action_id".into(), json!(action));
    out.insert("action".into(), json!(action_name));
    let (status, status_name) = if refused {
        (2, "Failure")
    } else {
        (1, "Success")
    };
    out.insert("status_id".into(), json!(status));
    out.insert("status".into(), json!(status_name));
    if let Some(c) = code(&e.payload) {
        out.insert("status_code".into(), json!(c));
    }
    if let Some(m) = e.payload.get("message").and_then(Value::as_str) {
        out.insert("status_detail".into(), json!(m));
    }
    let severity = match (&e.kind, refused) {
        (Kind::KillSwitch, _) => (3, "Medium"),
        (_, true) => (2, "Low"),
        _ => (1, "Informational"),
    };
    out.insert("severity_id".into(), json!(severity.0));
    out.insert("severity".into(), json!(severity.1));
}

/// The agent as OCSF's actor: a non-human user; the person it acted for and its owner are
/// under `unmapped`.
fn actor_of(e: &Event) -> Value {
    let by = e
        .payload
        .get("by")
        .and_then(Value::as_str)
        .filter(|b| !b.is_empty());
    match (e.agent.as_deref(), by) {
        (_, Some(person)) if e.kind != Kind::Request => json!({
            "user": {"uid": person, "name": person, "type_id": 1, "type": "User"}
        }),
        (Some(agent), _) => json!({
            "user": {"uid": agent, "name": agent, "type_id": 99, "type": "AI agent"},
            "app_name": agent,
        }),
        (None, _) => json!({"app_name": "toolgate"}),
    }
}

/// API Activity's own fields: the operation, the request and the answer, the endpoints.
fn api_fields(e: &Event, out: &mut Map<String, Value>) {
    let p = &e.payload;
    let operation = e
        .tool
        .clone()
        .unwrap_or_else(|| e.kind.as_str().to_string());
    let mut api = json!({"operation": operation});
    if let Some(r) = &e.request_id {
        api["request"] = json!({"uid": r});
    }
    let host = p.get("host").and_then(Value::as_str);
    if let Some(h) = host {
        api["service"] = json!({"name": h});
    }
    out.insert("api".into(), api);
    out.insert("actor".into(), actor_of(e));
    let peer = p.get("peer").and_then(Value::as_str).unwrap_or("");
    let src = match peer.parse::<std::net::SocketAddr>() {
        Ok(a) => json!({"ip": a.ip().to_string(), "port": a.port()}),
        Err(_) => json!({"name": e.agent.as_deref().unwrap_or("toolgate")}),
    };
    out.insert("src_endpoint".into(), src);
    if let Some(h) = host {
        let mut dst = json!({"hostname": h});
        if let Some(port) = p.get("port").and_then(Value::as_u64) {
            dst["port"] = json!(port);
        }
        out.insert("dst_endpoint".into(), dst);
    }
    if let Some(method) = method_of(p) {
        let mut url = json!({"scheme": "https"});
        if let Some(h) = host {
            url["hostname"] = json!(h);
        }
        let path = p.get("path").and_then(Value::as_str);
        let full = p.get("url").and_then(Value::as_str);
        match (path, full) {
            (Some(path), _) => url["path"] = json!(path),
            (None, Some(full)) => url["url_string"] = json!(full),
            (None, None) => url["path"] = json!("/"),
        }
        out.insert(
            "http_request".into(),
            json!({"http_method": method, "url": url}),
        );
    }
    let status = p
        .get("status")
        .or_else(|| p.pointer("/response/status"))
        .and_then(Value::as_u64);
    if let Some(code) = status {
        let mut resp = json!({"code": code});
        if let Some(l) = p.get("latency_ms").and_then(Value::as_u64) {
            resp["latency"] = json!(l);
        }
        out.insert("http_response".into(), resp);
    }
}

/// Entity Management's own fields: what was managed, by whom.
fn entity_fields(e: &Event, out: &mut Map<String, Value>) {
    let p = &e.payload;
    let (kind, uid) = match &e.kind {
        Kind::GrantAdded | Kind::GrantUsed | Kind::GrantRevoked | Kind::GrantExpired => {
            ("grant", p.get("grant").or_else(|| p.get("id")))
        }
        Kind::TokenIssued | Kind::TokenRevoked => ("token", p.get("token").or_else(|| p.get("id"))),
        Kind::KillSwitch => ("kill switch", p.get("target")),
        Kind::ConnectionLinked
        | Kind::ConnectionRefused
        | Kind::ConnectionRefreshed
        | Kind::ConnectionBroken
        | Kind::ConnectionRevoked
        | Kind::ConnectionUsed => ("connection", p.get("connection")),
        _ => ("proposal", None),
    };
    let uid = uid
        .and_then(Value::as_str)
        .map(str::to_string)
        .or_else(|| e.proposal.clone())
        .or_else(|| e.tool.clone())
        .or_else(|| e.token.clone())
        .unwrap_or_else(|| e.seq.to_string());
    out.insert(
        "entity".into(),
        json!({"uid": uid, "name": uid, "type": kind}),
    );
    out.insert("actor".into(), actor_of(e));
    if let Some(c) = p.get("comment").and_then(Value::as_str) {
        out.insert("comment".into(), json!(c));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(kind: Kind, payload: Value) -> Event {
        Event {
            seq: 42,
            time: "2026-12-04T10:00:00.000Z".into(),
            unix_ms: 1_796_378_400_000,
            kind,
            request_id: Some("req_1".into()),
            job: Some("job_1".into()),
            proposal: None,
            agent: Some("billing-bot".into()),
            owner: Some("payments".into()),
            tool: Some("stripe.refund".into()),
            tool_version: Some(1),
            token: None,
            user: Some("alice@example.com".into()),
            payload,
            prev: "aa".into(),
            hash: "bb".into(),
        }
    }

    #[test]
    fn a_call_is_api_activity_with_its_sequence_and_chain() {
        let e = ev(
            Kind::Request,
            json!({"method": "POST", "host": "api.stripe.com", "port": 443, "path": "/v1/refunds", "peer": "127.0.0.1:5000"}),
        );
        let o = event(&e);
        assert_eq!(o["class_uid"], 6003);
        assert_eq!(o["type_uid"], 600301);
        assert_eq!(o["metadata"]["sequence"], 42);
        assert_eq!(o["metadata"]["uid"], "bb");
        assert_eq!(o["metadata"]["version"], VERSION);
        assert_eq!(o["api"]["operation"], "stripe.refund");
        assert_eq!(o["actor"]["user"]["uid"], "billing-bot");
        assert_eq!(o["src_endpoint"]["ip"], "127.0.0.1");
        assert_eq!(o["http_request"]["url"]["path"], "/v1/refunds");
        // The audit event itself, whole: the chain verifies from what a receiver got.
        let back: Event = serde_json::from_value(o["unmapped"].clone()).unwrap();
        assert_eq!(back, e);
        assert_eq!(o["unmapped"]["prev"], "aa");
    }

    #[test]
    fn a_refusal_is_blocked_and_an_approval_is_approved_by_its_person() {
        let refused = event(&ev(
            Kind::Decision,
            json!({"outcome": "refused", "code": "validation_error", "status": 422}),
        ));
        assert_eq!(refused["disposition_id"], 2);
        assert_eq!(refused["status_id"], 2);
        assert_eq!(refused["status_code"], "validation_error");
        let approved = event(&ev(Kind::Approval, json!({"by": "carol"})));
        assert_eq!(approved["class_uid"], 3004);
        assert_eq!(approved["disposition_id"], 8);
        assert_eq!(approved["actor"]["user"]["uid"], "carol");
    }

    #[test]
    fn every_kind_maps_to_a_class_with_a_consistent_type() {
        let kinds = Kind::KNOWN
            .iter()
            .cloned()
            .chain([Kind::Other("quota.changed".into())]);
        for kind in kinds {
            let o = event(&ev(kind.clone(), json!({"method": "GET"})));
            let (class, activity) = (
                o["class_uid"].as_u64().unwrap(),
                o["activity_id"].as_u64().unwrap(),
            );
            assert_eq!(
                o["type_uid"].as_u64().unwrap(),
                class * 100 + activity,
                "{kind}"
            );
            assert_eq!(o["category_uid"].as_u64().unwrap(), class / 1000, "{kind}");
            assert_eq!(o["unmapped"]["kind"], kind.as_str());
        }
    }
}
