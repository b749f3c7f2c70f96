//! `toolgate rollback` and `toolgate replay`: committed calls undone, or sent again to a
//! sandbox, through the admin API.

use std::process::ExitCode;

use crate::client::{error_text, AdminClient};

use super::fail;

/// A path segment, percent-encoded (ids an agent chose stay one segment).
fn seg(s: &str) -> String {
    crate::rollback::percent_encode_segment(s).collect()
}

/// `toolgate rollback ID|--job JOB`: each undo's outcome; success only when everything asked
/// for was undone.
pub(super) async fn rollback(
    client: AdminClient<'_>,
    id: Option<String>,
    job: Option<String>,
    json: bool,
) -> ExitCode {
    let path = match (&id, &job) {
        (_, Some(job)) => format!("/api/jobs/{}/rollback", seg(job)),
        (Some(id), None) => format!("/api/rollback/{}", seg(id)),
        (None, None) => return fail("give a request or proposal id, or --job JOB"),
    };
    let (status, body) = match client.call(http::Method::POST, &path, None).await {
        Ok(r) => r,
        Err(e) => return fail(&e),
    };
    if json {
        say!("{body}");
    }
    let reports: Vec<serde_json::Value> = match body.get("results") {
        Some(serde_json::Value::Array(a)) => a.clone(),
        _ if body.get("outcome").is_some() => vec![body.clone()],
        _ => {
            return fail(&error_text(status, &body));
        }
    };
    let mut complete = true;
    for r in &reports {
        let outcome = r["outcome"].as_str().unwrap_or("?");
        use crate::rollback::Outcome;
        complete &= match serde_json::from_value::<Outcome>(r["outcome"].clone()) {
            Ok(Outcome::Undone) => true,
            Ok(Outcome::AlreadyUndone) => job.is_some(),
            _ => false,
        };
        if !json {
            say!(
                "{:<15} {:<28} {:<28} {}",
                outcome,
                r["request_id"].as_str().unwrap_or("-"),
                r["tool"].as_str().unwrap_or("-"),
                r["message"].as_str().unwrap_or("")
            );
        }
    }
    if complete {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// `toolgate replay ID --to HOST:PORT`: each re-sent call's outcome; success only when every
/// call was sent.
pub(super) async fn replay(client: AdminClient<'_>, id: &str, to: &str, json: bool) -> ExitCode {
    let path = format!("/api/replay/{}", seg(id));
    let body = serde_json::json!({ "to": to });
    let body = match client
        .expect(http::Method::POST, &path, Some(body), &[200])
        .await
    {
        Ok(body) => body,
        Err(e) => return fail(&e),
    };
    if json {
        say!("{body}");
    }
    let mut all_sent = true;
    for r in body["results"].as_array().into_iter().flatten() {
        all_sent &= r["outcome"] == "sent";
        if !json {
            say!(
                "{:<8} {:<28} {:<24} {} {} -> {} {}",
                r["outcome"].as_str().unwrap_or("?"),
                r["request_id"].as_str().unwrap_or("-"),
                r["tool"].as_str().unwrap_or("-"),
                r["method"].as_str().unwrap_or(""),
                r["path"].as_str().unwrap_or(""),
                r["status"],
                r["message"].as_str().unwrap_or("")
            );
        }
    }
    if all_sent {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
