//! The reviewers' "Refused: no contract" view of captured traffic: the calls refused because
//! no tool contract matched them, grouped as `toolgate contracts suggest` groups them (host,
//! method, path template), each with the drafted `[[tool]]` to copy. `/traffic/no-contract` is
//! the page, `GET /api/traffic/no-contract` the calls themselves (their bodies' and queries'
//! shapes, never values), which `contracts suggest --server` drafts from. Everything an agent
//! sent (hosts, paths, agent names) is escaped before it is written into the page.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;

use super::auth::{api_error, Reviewer, SignedReviewer};
use super::html::{esc, page};
use super::traffic::blocking;
use crate::app::Console;
use crate::audit::{UnmatchedCalls, UNMATCHED_MAX};
use crate::import::suggest::{self, Group, SuggestOptions};

/// The filters of the view and the API: `since` (a time) and `agent`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct UnmatchedFilter {
    pub since: Option<String>,
    pub agent: Option<String>,
}

async fn read(app: &Arc<Console>, f: &UnmatchedFilter) -> Result<UnmatchedCalls, String> {
    let given = |v: &Option<String>| v.clone().filter(|s| !s.trim().is_empty());
    let (since, agent) = (given(&f.since), given(&f.agent));
    blocking(app, move |a| a.unmatched(since, agent, UNMATCHED_MAX)).await
}

/// `GET /api/traffic/no-contract?since=&agent=`: the refused calls, oldest first.
pub async fn api(
    State(app): State<Arc<Console>>,
    _: Reviewer,
    Query(f): Query<UnmatchedFilter>,
) -> Response {
    match read(&app, &f).await {
        Ok(calls) => Json(calls).into_response(),
        Err(why) => api_error(StatusCode::BAD_REQUEST, "validation_error", why).into_response(),
    }
}

/// `/traffic/no-contract`: the groups, their counts and agents, and the drafted TOML.
pub async fn view(
    State(app): State<Arc<Console>>,
    SignedReviewer(s): SignedReviewer,
    Query(f): Query<UnmatchedFilter>,
) -> Response {
    let title = "Refused: no contract";
    let read = read(&app, &f).await;
    let drafted = read.and_then(|r| {
        let opts = SuggestOptions {
            prefix: "suggested".into(),
            ..SuggestOptions::default()
        };
        suggest::suggest(&r.calls, &opts)
            .map(|d| (d, r.truncated))
            .map_err(|e| e.to_string())
    });
    let (drafted, truncated) = match drafted {
        Ok(d) => d,
        Err(why) => {
            let body = format!("{}<p class=\"flash\">{}</p>", form(&f), esc(&why));
            return (StatusCode::BAD_REQUEST, page(title, Some(&s), &body)).into_response();
        }
    };
    let more = match truncated {
        true => format!("<p>Only the newest {UNMATCHED_MAX} refused calls are read; narrow with Since or Agent.</p>"),
        false => String::new(),
    };
    let body = format!(
        "<h1>{title}</h1>{}<p>Calls refused because no tool contract matched them, grouped by host, \
         method and path template (segments that look like ids are parameters), each with a drafted \
         contract to review and copy into the policies folder. Nothing here changes the policies. \
         <code>toolgate contracts suggest</code> prints the same, and with <code>--spec</code> takes \
         the templates and schemas from an OpenAPI document.</p>{more}{}",
        form(&f),
        groups_html(&drafted.groups)
    );
    page(title, Some(&s), &body).into_response()
}

fn form(f: &UnmatchedFilter) -> String {
    let field = |name: &str, label: &str, v: &Option<String>| {
        format!(
            "<label>{label} <input type=\"text\" name=\"{name}\" value=\"{}\"></label>",
            esc(v.as_deref().unwrap_or(""))
        )
    };
    format!(
        "<form method=\"get\" action=\"/traffic/no-contract\" class=\"card filters\">{}{}<button>Filter</button></form>",
        field("agent", "Agent", &f.agent),
        field("since", "Since", &f.since),
    )
}

/// The table of groups, then each group's drafted TOML and schema files.
fn groups_html(groups: &[Group]) -> String {
    if groups.is_empty() {
        return "<p id=\"empty\">No call was refused for want of a contract.</p>".into();
    }
    let rows: String = groups
        .iter()
        .enumerate()
        .map(|(i, g)| {
            let agents: Vec<String> = g.agents.iter().map(|(a, n)| format!("{a} ({n})")).collect();
            format!(
                "<tr class=\"unmatched\"><td><a href=\"#draft-{i}\">{tool}</a></td><td>{method}</td>\
                 <td>{host}</td><td class=\"template\">{template}</td><td class=\"calls\">{calls}</td>\
                 <td class=\"agents\">{agents}</td></tr>",
                tool = esc(&g.tool),
                method = esc(&g.method),
                host = esc(&crate::base::authority(&g.host, g.port)),
                template = esc(&g.template),
                calls = g.calls,
                agents = esc(&agents.join(", ")),
            )
        })
        .collect();
    let drafts: String = groups
        .iter()
        .enumerate()
        .map(|(i, g)| {
            let schemas: String = g
                .schemas
                .iter()
                .map(|(file, text)| {
                    format!(
                        "<p>schemas/suggested/{}</p><pre class=\"schema\">{}</pre>",
                        esc(file),
                        esc(text)
                    )
                })
                .collect();
            format!(
                "<div class=\"card\" id=\"draft-{i}\"><h2>{}</h2><pre class=\"toml\">{}</pre>{schemas}</div>",
                esc(&g.tool),
                esc(&g.toml)
            )
        })
        .collect();
    format!(
        "<table id=\"no-contract\"><thead><tr><th>Drafted tool</th><th>Method</th><th>Host</th>\
         <th>Path template</th><th>Refused calls</th><th>Agents</th></tr></thead><tbody>{rows}</tbody></table>{drafts}"
    )
}
