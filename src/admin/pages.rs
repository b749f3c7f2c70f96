//! The approvers' web page: server-rendered, no assets from the internet, usable on a phone.
//! Sign-in with an approver token gives a session cookie (HttpOnly, SameSite=Strict, and Secure
//! when the page is served over HTTPS); every form
//! carries the session's CSRF token.

use std::sync::Arc;

use axum::extract::{Form, Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use serde::Deserialize;
use serde_json::json;

use super::actions::{apply_switch, rollback_status};
use super::auth::{
    secure, session_cookie, CsrfForm, Posted, Session, Signed, SignedReviewer, COOKIE,
};
use super::html::{esc, page, refused_page, when};
use crate::app::Console;
use crate::approval::{self, Action, Proposal};
use crate::model::{KillScope, KillTarget};
use crate::policy::Rollback;

pub async fn login_form(State(app): State<Arc<Console>>) -> Html<String> {
    page("Sign in", None, &login_body(&app, None))
}

/// The sign-in form, and what to paste into it: in `toolgate demo`, the published tokens that
/// sign someone in.
fn login_body(app: &Console, flash: Option<&str>) -> String {
    let flash = flash
        .map(|f| format!("<p class=\"flash\">{}</p>", esc(f)))
        .unwrap_or_default();
    let mut demo = String::new();
    if app.config().demo {
        let rows: String = app
            .policy()
            .published_tokens()
            .iter()
            .filter(|p| p.role != crate::policy::Role::Agent)
            .map(|p| {
                let what = match p.groups.is_empty() {
                    true => p.role.as_str().to_string(),
                    false => format!("{} ({})", p.role.as_str(), p.groups.join(", ")),
                };
                format!(
                    "<tr><td>{}</td><td>{}</td><td><code>{}</code></td></tr>",
                    esc(&p.id),
                    esc(&what),
                    esc(p.token)
                )
            })
            .collect();
        if !rows.is_empty() {
            demo = format!(
                "<div class=\"card\" id=\"demo-tokens\"><p>This is <code>toolgate demo</code>: the example \
                 policies' tokens are published, so here they are.</p><table><tr><th>who</th><th>role</th><th>token</th></tr>{rows}</table></div>"
            );
        }
    }
    let sso = super::sso::buttons(app);
    if !app.config().page_login.token() {
        return format!("<h1>Sign in</h1>{flash}{sso}");
    }
    format!(
        "<h1>Sign in</h1>{flash}{sso}<form method=\"post\" action=\"/login\" class=\"card\">\
         <label>Approver or reviewer token<input type=\"password\" name=\"token\" autocomplete=\"current-password\" autofocus></label>\
         <button>Sign in</button></form>\
         <p>Paste the token you were given as an approver (its SHA-256 is your <code>token_sha256</code> \
         in the policies' <code>[[approver]]</code>) or as a reviewer. Agents' tokens do not sign in here.</p>{demo}"
    )
}

#[derive(Deserialize)]
pub struct LoginForm {
    token: String,
}

/// Sign-in while the session store cannot be written: refused, nothing half-made.
fn session_store_down(e: crate::store::StoreError) -> Response {
    tracing::warn!(error = %e, "could not store a new session");
    let body = "<h1>Sign in</h1><p class=\"flash\">Signing in is unavailable: the session store cannot be written. Try again shortly.</p>";
    (StatusCode::SERVICE_UNAVAILABLE, page("Sign in", None, body)).into_response()
}

pub async fn login(State(app): State<Arc<Console>>, Form(form): Form<LoginForm>) -> Response {
    if !app.config().page_login.token() {
        let body = login_body(&app, Some("Signing in with a token is turned off here (--page-login oidc): sign in with your company's identity provider."));
        return (StatusCode::FORBIDDEN, page("Sign in", None, &body)).into_response();
    }
    let policy = app.policy();
    let token = form.token.trim();
    let (who, reviewer) = match policy.authenticate_approver(token) {
        Some(a) => (a, false),
        None => match policy.authenticate_reviewer(token) {
            Some(r) => (r, true),
            None => {
                let body = login_body(
                    &app,
                    Some("That is not an approver's or a reviewer's token."),
                );
                return (StatusCode::UNAUTHORIZED, page("Sign in", None, &body)).into_response();
            }
        },
    };
    let (id, _) = match app
        .sessions()
        .create(&who.id, reviewer, (Vec::new(), None))
        .await
    {
        Ok(s) => s,
        Err(e) => return session_store_down(e),
    };
    let home = if reviewer { "/traffic" } else { "/queue" };
    (
        [(header::SET_COOKIE, session_cookie(&app, &id))],
        Redirect::to(home),
    )
        .into_response()
}

pub async fn logout(
    State(app): State<Arc<Console>>,
    Posted { session: s, .. }: Posted<SignedReviewer, CsrfForm>,
) -> Response {
    let _ = app.sessions().remove(&s.session).await;
    let cookie = format!(
        "{COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0{}",
        secure(&app)
    );
    ([(header::SET_COOKIE, cookie)], Redirect::to("/login")).into_response()
}

pub async fn root(signed: Result<SignedReviewer, Response>) -> Redirect {
    match signed {
        Ok(SignedReviewer(s)) if s.reviewer => Redirect::to("/traffic"),
        _ => Redirect::to("/queue"),
    }
}

fn queue_rows(app: &Console, props: &[Proposal]) -> String {
    if props.is_empty() {
        return "<p id=\"empty\">Nothing is waiting for approval.</p>".into();
    }
    props
        .iter()
        .map(|p| {
            format!(
                "<div class=\"card proposal\" data-id=\"{id}\"><a href=\"/proposals/{id}\"><strong>{summary}</strong></a><br>\
                 {tool} · <span class=\"risk-{risk}\">{risk}</span> · agent {agent}{user} (owner {owner})<br>\
                 {approvals}/{required} approvals · proposed {age} · expires {left} · {state}</div>",
                id = esc(&p.id),
                summary = esc(&p.summary),
                tool = esc(&p.tool),
                risk = esc(&p.risk),
                agent = esc(&p.agent),
                user = acting_for(p),
                owner = esc(&p.owner),
                approvals = p.approvals.len(),
                required = p.required,
                age = when(p.created_unix),
                left = when(p.expires_unix),
                // Plain words, not a bare "approved": when it is sent, and until when.
                state = esc(&approval::status_text(p, approval::send_on(app, p))),
            )
        })
        .collect()
}

async fn open_proposals(app: &Console) -> Vec<Proposal> {
    approval::list(app, None)
        .await
        .unwrap_or_default()
        .into_iter()
        .filter(|p| p.state.is_open())
        .collect()
}

pub async fn queue(State(app): State<Arc<Console>>, Signed(s): Signed) -> Response {
    let rows = queue_rows(&app, &open_proposals(&app).await);
    // Updates by itself: the fragment is fetched again every two seconds (same origin, session
    // cookie), so a new proposal appears without a reload.
    let body = format!(
        "<h1>Waiting for approval</h1><div id=\"queue\">{rows}</div>\
         <script>setInterval(async()=>{{try{{const r=await fetch('/queue/fragment',{{credentials:'same-origin'}});\
         if(r.ok){{document.getElementById('queue').innerHTML=await r.text();}}}}catch(e){{}}}},2000);</script>"
    );
    page("Queue", Some(&s), &body).into_response()
}

/// The queue's rows alone, fetched by the queue page every two seconds: 401 (not the sign-in
/// page) when the session is gone.
pub async fn queue_fragment(
    State(app): State<Arc<Console>>,
    signed: Result<Signed, Response>,
) -> Response {
    if signed.is_err() {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    Html(queue_rows(&app, &open_proposals(&app).await)).into_response()
}

/// Who approved a proposal so far, as list items.
fn approvals_html(p: &Proposal) -> String {
    p.approvals
        .iter()
        .map(|a| {
            format!(
                "<li>{} at {}{}</li>",
                esc(&a.by),
                when(a.at_unix),
                match a.comment.is_empty() {
                    true => String::new(),
                    false => format!(": {}", esc(&a.comment)),
                }
            )
        })
        .collect()
}

/// The denial, revocation or cancellation of a proposal, if any.
fn decision_html(p: &Proposal) -> String {
    p.decision
        .as_ref()
        .map(|d| {
            format!(
                "<p>{} by {} at {}: {}</p>",
                esc(p.state.as_str()),
                esc(&d.by),
                when(d.at_unix),
                esc(&d.comment)
            )
        })
        .unwrap_or_default()
}

/// The forms an approver can use on a proposal in its state, each with the session's CSRF token.
fn actions_html(p: &Proposal, s: &Session) -> String {
    let form = |action: &str, label: &str| {
        format!(
            "<form method=\"post\" action=\"/proposals/{id}/{action}\" class=\"card\">\
             <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
             <label>Comment<textarea name=\"comment\" rows=\"2\"></textarea></label><button name=\"do\" value=\"{action}\">{label}</button></form>",
            id = esc(&p.id),
            csrf = esc(&s.csrf),
        )
    };
    match p.state {
        approval::State::Pending => {
            format!("{}{}", form("approve", "Approve"), form("deny", "Deny"))
        }
        approval::State::Approved => format!(
            "{}{}",
            form("revoke", "Revoke approval"),
            form("deny", "Deny")
        ),
        _ => String::new(),
    }
}

pub async fn detail(
    State(app): State<Arc<Console>>,
    Signed(s): Signed,
    Path(id): Path<String>,
) -> Response {
    let p = match approval::load(&app, &id).await {
        Ok(Some(p)) => p,
        _ => {
            return (
                StatusCode::NOT_FOUND,
                page("Not found", Some(&s), "<p>No such proposal.</p>"),
            )
                .into_response()
        }
    };
    let v = p.view();
    let send = approval::send_on(&app, &p);
    let headers_html: String = p
        .request
        .headers
        .iter()
        .map(|(k, v)| format!("{}: {}\n", esc(k), esc(v)))
        .collect();
    let (approvals, decision, actions) =
        (approvals_html(&p), decision_html(&p), actions_html(&p, &s));
    let body = format!(
        "<h1>{summary}</h1><p>State: <strong id=\"state\">{state}</strong>{note}</p>\
         <p id=\"status-text\">{status_text}</p>\
         <div class=\"card\"><table>\
         <tr><th>Tool</th><td>{tool} v{version} · <span class=\"risk-{risk}\">{risk}</span></td></tr>{mcp}{model}\
         <tr><th>Agent</th><td>{agent}{user} ({environment}), owner {owner}</td></tr>\
         <tr><th>Job</th><td>{job}</td></tr>\
         <tr><th>Policy</th><td>mode approve; {required} approval(s) from {groups}; self-approval {selfapp}; sent {send}</td></tr>\
         <tr><th>Proposed</th><td>{created}</td></tr>\
         <tr><th>Expires</th><td>{left}</td></tr></table></div>\
         <h2>Exact request</h2><pre>{method} {url}\n{headers_html}\n{body_text}</pre><p>sha256 {sha}</p>\
         <h2>Approvals so far</h2><ul>{approvals}</ul>{decision}{actions}\
         <p><a href=\"/stories/{id}\">The story of this call</a></p>",
        summary = esc(&p.summary),
        state = p.state.as_str(),
        note = p.note.as_ref().map(|n| format!(" — {}", esc(n))).unwrap_or_default(),
        tool = esc(&p.tool),
        version = p.tool_version,
        risk = esc(&p.risk),
        agent = esc(&p.agent),
        user = acting_for(&p),
        environment = esc(&p.environment),
        owner = esc(&p.owner),
        job = esc(&p.job),
        required = p.required,
        groups = if p.groups.is_empty() { "any approver".to_string() } else { esc(&p.groups.join(", ")) },
        selfapp = if p.allow_self_approval { "allowed" } else { "not allowed" },
        left = when(p.expires_unix),
        created = when(p.created_unix),
        send = match send {
            crate::policy::SendOn::Retry => "when the agent sends the call again (on_retry)",
            crate::policy::SendOn::Approval => "at once on approval (on_approval)",
        },
        status_text = esc(&approval::status_text(&p, send)),
        method = esc(&p.request.method),
        url = esc(&p.request.url()),
        body_text = esc(v["request"]["body"].as_str().unwrap_or("")),
        sha = esc(&p.request.sha256),
        id = esc(&p.id),
        mcp = match app.policy().tool(&p.tool).is_some_and(|t| t.graphql.is_some()) {
            true => graphql_rows(v["request"]["body"].as_str().unwrap_or("")),
            false => mcp_row(v["request"]["body"].as_str().unwrap_or("")),
        },
        model = model_rows(&p),
    );
    page(&p.summary, Some(&s), &body).into_response()
}

/// " for alice@example.com" when the call acts for a person (escaped), else nothing.
fn acting_for(p: &Proposal) -> String {
    p.user
        .as_ref()
        .map(|u| format!(" for {}", esc(u)))
        .unwrap_or_default()
}

/// What the model asked for, beside the exact payload, each value the call changed flagged:
/// "model asked for amount 500; the call sends 5000".
fn model_rows(p: &Proposal) -> String {
    let Some(by) = &p.requested_by else {
        return String::new();
    };
    let asked = match by["match"].as_str() {
        Some("none") => {
            return "<tr><th>Model</th><td class=\"flag\" id=\"model\">No model answer asked for this call: the agent made it on its own.</td></tr>".into()
        }
        Some("ambiguous") => &by["candidates"][0],
        _ => by,
    };
    let mut rows = format!(
        "<tr><th>Model</th><td id=\"model\">{} asked for {} <code>{}</code> in answer {} (matched {})</td></tr>",
        esc(asked["model"].as_str().unwrap_or("a model")),
        esc(asked["tool"].as_str().unwrap_or("?")),
        esc(&asked["arguments"].to_string()),
        esc(asked["answer_id"].as_str().unwrap_or("?")),
        esc(by["match"].as_str().unwrap_or("?")),
    );
    for change in changed(&asked["arguments"], &p.request.body_bytes()) {
        rows.push_str(&format!(
            "<tr><th>Changed</th><td class=\"flag changed\">{}</td></tr>",
            esc(&change)
        ));
    }
    rows
}

/// Each top-level value the model asked for that the call's body (JSON or a form) sends
/// differently, or not at all.
fn changed(asked: &serde_json::Value, body: &[u8]) -> Vec<String> {
    let sent: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(body)
        .ok()
        .and_then(|v: serde_json::Value| v.as_object().cloned())
        .unwrap_or_else(|| {
            form_urlencoded::parse(body)
                .map(|(k, v)| (k.into_owned(), serde_json::Value::String(v.into_owned())))
                .collect()
        });
    let text = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    asked
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(k, want)| match sent.get(k) {
            None => Some(format!(
                "model asked for {k} {}; the call does not send {k}",
                text(want)
            )),
            Some(got) if text(got) != text(want) => Some(format!(
                "model asked for {k} {}; the call sends {}",
                text(want),
                text(got)
            )),
            Some(_) => None,
        })
        .collect()
}

/// For a GraphQL call, a row per root field (its operation type, name, alias and arguments as
/// pretty JSON) and a row with the document as sent; the exact bytes committed are the body
/// shown below them.
fn graphql_rows(body: &str) -> String {
    let Ok(json) = serde_json::from_str::<serde_json::Value>(body) else {
        return String::new();
    };
    let Ok(request) = crate::graphql::Request::from_json(&json) else {
        return String::new();
    };
    let limits = crate::graphql::Limits {
        allow_introspection: true,
        ..Default::default()
    };
    let Ok(op) = crate::graphql::extract(&request, &limits) else {
        return String::new();
    };
    let mut rows = String::new();
    for f in &op.fields {
        let alias = f
            .alias
            .as_ref()
            .map(|a| format!(" (as {})", esc(a)))
            .unwrap_or_default();
        let arguments = serde_json::to_string_pretty(&f.arguments).unwrap_or_default();
        rows.push_str(&format!(
            "<tr><th>GraphQL field</th><td>{}.{}{alias} with arguments <pre>{}</pre></td></tr>",
            op.kind.as_str(),
            esc(&f.name),
            esc(&arguments)
        ));
    }
    rows.push_str(&format!(
        "<tr><th>GraphQL document</th><td><pre>{}</pre></td></tr>",
        esc(&request.query)
    ));
    rows
}

/// For an MCP tool call, a row naming the server's tool and its arguments (escaped).
fn mcp_row(body: &str) -> String {
    let Ok(message) = serde_json::from_str::<serde_json::Value>(body) else {
        return String::new();
    };
    match crate::mcp::classify(&message) {
        crate::mcp::Message::Call {
            name, arguments, ..
        } => format!(
            "<tr><th>MCP tool</th><td>{} with arguments <code>{}</code></td></tr>",
            esc(&name),
            esc(&arguments.to_string())
        ),
        _ => String::new(),
    }
}

pub async fn act(
    State(app): State<Arc<Console>>,
    Path((id, action)): Path<(String, String)>,
    Posted {
        session: s, form, ..
    }: Posted<Signed, CsrfForm>,
) -> Response {
    // The page never offers to cancel (only the agent's side does).
    let action = match Action::parse(&action) {
        Some(Action::Cancel) | None => return StatusCode::NOT_FOUND.into_response(),
        Some(action) => action,
    };
    match approval::decide(app.core(), &s.approver, &id, action, &form.comment).await {
        Ok(d) if d.unsent.is_some() => page(
            "Approved, not sent",
            Some(&s),
            &format!(
                "<p class=\"flash\" id=\"status-text\">{}</p><p><a href=\"/proposals/{}\">Back to the proposal</a></p>",
                esc(&d.status_text()),
                esc(&id)
            ),
        )
        .into_response(),
        Ok(_) => Redirect::to(&format!("/proposals/{id}")).into_response(),
        Err(e) => refused_page(&s, e.status, &e.message, &format!("/proposals/{id}")),
    }
}

#[derive(Deserialize, Default)]
pub struct HistoryQuery {
    state: Option<String>,
    tool: Option<String>,
    agent: Option<String>,
}

pub async fn history(
    State(app): State<Arc<Console>>,
    Signed(s): Signed,
    Query(q): Query<HistoryQuery>,
) -> Response {
    let state = q
        .state
        .as_deref()
        .filter(|x| !x.is_empty())
        .and_then(approval::State::parse);
    let tool = q.tool.clone().unwrap_or_default();
    let agent = q.agent.clone().unwrap_or_default();
    let rows: String = approval::list(&app, state)
        .await
        .unwrap_or_default()
        .iter()
        .filter(|p| tool.is_empty() || p.tool.contains(&tool))
        .filter(|p| agent.is_empty() || p.agent.contains(&agent))
        .take(500)
        .map(|p| {
            let by = p
                .approvals
                .iter()
                .map(|a| a.by.as_str())
                .chain(p.decision.as_ref().map(|d| d.by.as_str()))
                .collect::<Vec<_>>()
                .join(", ");
            format!(
                "<tr><td><a href=\"/proposals/{id}\">{summary}</a></td><td>{tool}</td><td>{agent}</td><td>{state}</td><td>{by}</td><td>{at}</td></tr>",
                at = when(p.created_unix),
                id = esc(&p.id),
                summary = esc(&p.summary),
                tool = esc(&p.tool),
                agent = esc(&p.agent),
                state = p.state.as_str(),
                by = esc(&by),
            )
        })
        .collect();
    let body = format!(
        "<h1>History</h1><form method=\"get\" class=\"card\"><label>State <input type=\"text\" name=\"state\" value=\"{}\"></label>\
         <label>Tool <input type=\"text\" name=\"tool\" value=\"{}\"></label><label>Agent <input type=\"text\" name=\"agent\" value=\"{}\"></label>\
         <button>Filter</button></form><table><tr><th>Summary</th><th>Tool</th><th>Agent</th><th>State</th><th>By</th><th>Proposed</th></tr>{rows}</table>",
        esc(q.state.as_deref().unwrap_or("")),
        esc(&tool),
        esc(&agent)
    );
    page("History", Some(&s), &body).into_response()
}

pub async fn switches(State(app): State<Arc<Console>>, Signed(s): Signed) -> Response {
    let policy = app.policy();
    let row = |scope: KillScope, name: &str| {
        let kind = scope.as_str();
        let state = KillTarget::of(scope, name).and_then(|t| app.kill().get(&t));
        let (label, action) = match &state {
            Some(_) => ("Enable", "enable"),
            None => ("Disable", "disable"),
        };
        let status = match &state {
            Some(k) => format!(
                "disabled by {} at {}: {}",
                esc(&k.by),
                when(k.at_unix),
                esc(&k.reason)
            ),
            None => "enabled".into(),
        };
        let reason = if action == "disable" {
            "<input type=\"text\" name=\"reason\" placeholder=\"reason\">"
        } else {
            ""
        };
        format!(
            "<tr><td>{name}</td><td>{status}</td><td><form method=\"post\" action=\"/switches/{kind}/{name}/{action}\">\
             <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">{reason}<button>{label}</button></form></td></tr>",
            name = esc(name),
            csrf = esc(&s.csrf),
        )
    };
    let tools: String = policy
        .tools()
        .iter()
        .map(|t| row(KillScope::Tool, &t.name))
        .collect();
    let mut agent_ids: Vec<&str> = policy.agents().map(|a| a.id.as_str()).collect();
    agent_ids.sort();
    let agents: String = agent_ids.iter().map(|a| row(KillScope::Agent, a)).collect();
    let body = format!(
        "<h1>Kill switches</h1><p>Any approver may disable; enabling needs group admin.</p>\
         <h2>Tools</h2><table>{tools}</table><h2>Agents</h2><table>{agents}</table>"
    );
    page("Kill switches", Some(&s), &body).into_response()
}

pub async fn switch(
    State(app): State<Arc<Console>>,
    Path((kind, name, action)): Path<(String, String, String)>,
    Posted {
        session: s, form, ..
    }: Posted<Signed, CsrfForm>,
) -> Response {
    let disable = match action.as_str() {
        "disable" => true,
        "enable" => false,
        _ => return StatusCode::NOT_FOUND.into_response(),
    };
    let Some(scope) = KillScope::parse(&kind) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let reason = Some(form.reason.clone());
    match apply_switch(&app, &s.approver, scope, &name, disable, reason).await {
        Ok(_) => Redirect::to("/switches").into_response(),
        Err(e) => refused_page(&s, e.status, &e.message, "/switches"),
    }
}

/// The JSON view of a proposal list for the API.
pub fn proposals_json(app: &Console, props: &[Proposal]) -> serde_json::Value {
    json!({ "proposals": props.iter().map(|p| proposal_json(app, p)).collect::<Vec<_>>() })
}

/// The JSON view of a proposal for the API and the CLI: its record, when its tool sends it once
/// approved (`send`), and what its state means in plain words (`status_text`).
pub fn proposal_json(app: &Console, p: &Proposal) -> serde_json::Value {
    let send = approval::send_on(app, p);
    let mut v = p.view();
    v["send"] = json!(send.as_str());
    v["status_text"] = json!(approval::status_text(p, send));
    v
}

/// Committed calls, grouped by job, newest first, with their undo buttons.
pub async fn rollback_list(State(app): State<Arc<Console>>, Signed(s): Signed) -> Response {
    let policy = app.policy();
    let mut calls = crate::ledger::all(app.store()).await.unwrap_or_default();
    calls.reverse();
    let mut jobs: Vec<String> = Vec::new();
    for c in &calls {
        if !jobs.contains(&c.job) {
            jobs.push(c.job.clone());
        }
    }
    let form = |what: &str, id: &str, label: &str| {
        format!(
            "<form method=\"post\" action=\"/rollback/{what}/{id}\" style=\"display:inline\">\
             <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\"><button>{label}</button></form>",
            id = esc(id),
            csrf = esc(&s.csrf),
        )
    };
    let mut body = String::from(
        "<h1>Roll back</h1><p>Committed calls, newest first. An undo is sent as the agent that \
         made the call, through its contract, permissions and credential, and is recorded in the \
         story of both calls.</p>",
    );
    for job in jobs.iter().take(100) {
        let rows: String = calls
            .iter()
            .filter(|c| &c.job == job)
            .map(|c| {
                let undo = policy
                    .tool(&c.tool)
                    .and_then(|t| t.rollback.as_ref())
                    .map(|r| match r {
                        Rollback::None(why) => format!("cannot be undone: {}", esc(why)),
                        Rollback::Request { .. } => String::new(),
                    })
                    .unwrap_or_else(|| "declares no undo".into());
                let state = if let Some(u) = &c.undone {
                    format!(
                        "undone by {} (<a href=\"/stories/{}\">{}</a>)",
                        esc(&u.by),
                        esc(&u.request_id),
                        esc(&u.request_id)
                    )
                } else if let Some(of) = &c.undoes {
                    format!("undo of {}", esc(of))
                } else if !(200..300).contains(&c.status) {
                    "changed nothing".into()
                } else if undo.is_empty() {
                    form("call", &c.request_id, "Undo")
                } else {
                    undo
                };
                format!(
                    "<tr><td><a href=\"/stories/{id}\">{id}</a></td><td>{tool}</td><td>{method} {path}</td><td>{status}</td><td>{state}</td></tr>",
                    id = esc(&c.request_id),
                    tool = esc(&c.tool),
                    method = esc(&c.method),
                    path = esc(&c.path_and_query),
                    status = c.status,
                )
            })
            .collect();
        body.push_str(&format!(
            "<div class=\"card\"><h2>Job <a href=\"/stories/{j}\">{j}</a></h2>{button}<table>{rows}</table></div>",
            j = esc(job),
            button = form("job", job, "Undo this job (newest first)"),
        ));
    }
    if jobs.is_empty() {
        body.push_str("<p>No committed calls yet.</p>");
    }
    page("Roll back", Some(&s), &body).into_response()
}

/// Undoes one call (`/rollback/call/{id}`) or a job (`/rollback/job/{job}`) and shows each result.
pub async fn rollback_act(
    State(app): State<Arc<Console>>,
    Path((what, id)): Path<(String, String)>,
    Posted { session: s, .. }: Posted<Signed, CsrfForm>,
) -> Response {
    let reports = match what.as_str() {
        "call" => vec![crate::rollback::undo(app.gate(), &id, &s.approver).await],
        "job" => match crate::rollback::undo_job(app.gate(), &id, &s.approver).await {
            Ok(r) => r,
            Err(e) => {
                return (
                    StatusCode::SERVICE_UNAVAILABLE,
                    page(
                        "Roll back",
                        Some(&s),
                        &format!(
                        "<p class=\"flash\">The store is unavailable ({}); nothing was sent.</p>",
                        esc(&e.to_string())
                    ),
                    ),
                )
                    .into_response()
            }
        },
        _ => return StatusCode::NOT_FOUND.into_response(),
    };
    let rows: String = reports
        .iter()
        .map(|r| {
            format!(
                "<tr><td>{}</td><td>{}</td><td><strong>{}</strong></td><td>{}</td></tr>",
                esc(&r.request_id),
                esc(r.tool.as_deref().unwrap_or("-")),
                esc(r.outcome.as_str()),
                esc(&r.message)
            )
        })
        .collect();
    let status = match reports.as_slice() {
        [one] => rollback_status(one.outcome),
        _ => StatusCode::OK,
    };
    (
        status,
        page(
            "Roll back",
            Some(&s),
            &format!(
                "<h1>Roll back {}</h1><table><tr><th>Call</th><th>Tool</th><th>Result</th><th>Detail</th></tr>{rows}</table>\
                 <p><a href=\"/rollback\">Back</a> · <a href=\"/stories/{}\">Story</a></p>",
                esc(&id),
                esc(&id)
            ),
        ),
    )
        .into_response()
}
