//! Principals and data boundaries (DESIGN sections 10 and 11), over real sockets with the
//! stateful API fakes: response contracts keep only what they name (nothing else of an answer
//! is written anywhere under the data dir) and hide fields from the agent; the story of an
//! approved refund names the refund.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use base64::Engine;
use serde_json::Value;
use support::*;

const CAROL: &str = "demo-carol-token";
/// In the fakes' refund answers, and in nothing the agent sent: `keep` leaves it out.
const CHARGE: &str = "ch_1PgafuB7WZ01zgkWXYmPNZs8";

/// `needle` as it reads inside any base64 text (three alignments).
fn base64_forms(needle: &str) -> Vec<String> {
    let b64 = base64::engine::general_purpose::STANDARD;
    (0..3)
        .map(|k| {
            let mut bytes = vec![0u8; k];
            bytes.extend_from_slice(needle.as_bytes());
            let text = b64.encode(&bytes);
            let skip = (k * 4).div_ceil(3) + 1;
            text[skip..text.len().saturating_sub(4)].to_string()
        })
        .collect()
}

fn files_holding(dir: &std::path::Path, needles: &[String], out: &mut Vec<String>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files_holding(&path, needles, out);
            continue;
        }
        let bytes = std::fs::read(&path).unwrap_or_default();
        for n in needles {
            if bytes.windows(n.len()).any(|w| w == n.as_bytes()) {
                out.push(format!("{} holds {n}", path.display()));
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_contracts_keep_and_hide_and_the_story_names_what_changed() {
    let (pki, fakes) = example_apis().await;
    let gate = examples_gate(&pki, fakes.addr, &[], |_| {}).await;
    let agent = staging(&gate);

    // An approved refund: the agent gets the whole answer, the store keeps the named fields.
    let approving = approver(&gate, "refund ok");
    let got = send(
        &agent,
        "POST",
        "https://api.stripe.com/v1/refunds",
        &[FORM, ("idempotency-key", "keep-1")],
        "payment_intent=pi_keep&amount=100",
    )
    .await
    .unwrap();
    approving.abort();
    assert_eq!(got.status, 200, "{}", got.text());
    let answer = got.json();
    assert_eq!(
        answer["charge"], CHARGE,
        "the first caller gets the whole answer"
    );
    let refund = answer["id"].as_str().unwrap().to_string();
    // The same call again: what was kept, nothing else.
    let again = send(
        &agent,
        "POST",
        "https://api.stripe.com/v1/refunds",
        &[FORM, ("idempotency-key", "keep-1")],
        "payment_intent=pi_keep&amount=100",
    )
    .await
    .unwrap();
    let kept = again.json();
    assert_eq!(kept["id"], refund.as_str());
    assert_eq!(kept["status"], "succeeded");
    assert!(kept.get("charge").is_none(), "{kept}");
    assert_eq!(fakes.count("POST", "/v1/refunds"), 1);

    // A read that hides fields: the agent never sees them; the upstream sent them.
    let created = send(
        &agent,
        "POST",
        "https://api.stripe.com/v1/customers",
        &[FORM, ("idempotency-key", "keep-c")],
        "email=hide@acme.com",
    )
    .await
    .unwrap()
    .json();
    let id = created["id"].as_str().unwrap();
    assert!(
        created.get("shipping").is_some(),
        "the fake answers with shipping"
    );
    let read = send(
        &agent,
        "GET",
        &format!("https://api.stripe.com/v1/customers/{id}"),
        &[],
        "",
    )
    .await
    .unwrap()
    .json();
    assert_eq!(read["email"], "hide@acme.com");
    for hidden in ["phone", "address", "shipping"] {
        assert!(read.get(hidden).is_none(), "{hidden} is hidden: {read}");
    }

    // Nothing of the refund's answer beyond the kept fields is written: not in the audit log,
    // not in any file under the data dir (plain or base64).
    let export = gate
        .admin("GET", "/api/audit/export", Some(CAROL), None)
        .await
        .text();
    assert!(export.contains(&refund), "the refund id is kept");
    assert!(
        !export.contains(CHARGE),
        "the audit log keeps no other field"
    );
    let mut needles = vec![CHARGE.to_string()];
    needles.extend(base64_forms(CHARGE));
    let mut found = Vec::new();
    files_holding(&gate.dir.path().join("data"), &needles, &mut found);
    assert!(found.is_empty(), "{found:?}");

    // The story of the approved refund says what it created.
    let list = gate
        .admin("GET", "/api/proposals?state=committed", Some(CAROL), None)
        .await
        .json();
    let proposal = list["proposals"][0]["id"].as_str().unwrap().to_string();
    let login = gate
        .page("POST", "/login", None, Some(format!("token={CAROL}")))
        .await;
    let cookie = login.headers["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let story = gate
        .page("GET", &format!("/stories/{proposal}"), Some(&cookie), None)
        .await
        .text();
    let changed = story
        .split("what changed:")
        .nth(1)
        .and_then(|t| t.split('<').next())
        .unwrap_or_default();
    assert!(
        changed.contains(&format!("created refund {refund} (")),
        "{changed}"
    );
    assert!(
        changed.contains("status succeeded") && changed.contains("amount 100"),
        "{changed}"
    );
    let _: Value = list;
}
