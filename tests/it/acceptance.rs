//! The launch checks that need the stateful API fakes: every commit is traceable to a proposal
//! and approval (or to the policy that lets it run unattended), a failed job is unwound by
//! `rollback --job`, the story of an action comes from one command, and recorded calls replay
//! against a sandbox only. Each asserts on what the fake APIs hold, not only on what toolgate
//! says. The other launch checks (`launch_check_*`) live beside the features they test; see the
//! README's "Launch checks".

use std::time::Duration;

use crate::support::fakes::{Fakes, Keys};
use crate::support::*;
use serde_json::{json, Value};

const CAROL: &str = "demo-carol-token";
const DAVE: &str = "demo-dave-token";

/// Runs the real `toolgate` binary against the test server's admin listener.
async fn cli(gate: &Toolgate, token: &str, args: &[&str]) -> (bool, String) {
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(env!("CARGO_BIN_EXE_toolgate"))
            .args(args)
            .env("TOOLGATE_SERVER", format!("http://{}", gate.admin_addr))
            .env("TOOLGATE_TOKEN", token)
            .output(),
    )
    .await
    .expect("the CLI answered within 60s")
    .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// The first event of the story of `id` (a request or a job) that `pick` accepts, once the log
/// has it (it is written behind the calls: polled, bounded).
async fn story_event(gate: &Toolgate, id: &str, pick: impl Fn(&Value) -> bool) -> Value {
    let (path, pick) = (&format!("/api/audit/story/{id}"), &pick);
    let what = format!("the story of {id} holds the event");
    poll::until_some(&what, poll::SOON, move || async move {
        let story = gate.admin("GET", path, Some(CAROL), None).await.json();
        story["events"]
            .as_array()?
            .iter()
            .find(|e| pick(e))
            .cloned()
    })
    .await
}

/// A job of three calls by the staging agent: a customer and an issue are created, then the
/// card is declined (Stripe answers 402).
async fn partial_job(gate: &Toolgate, job: &str) -> (String, u64) {
    let c = staging(gate);
    let customer = send(
        &c,
        "POST",
        "https://api.stripe.com/v1/customers",
        &[
            FORM,
            ("idempotency-key", &format!("{job}-1")),
            ("toolgate-job", job),
        ],
        "email=jo%40acme.com&name=Jo",
    )
    .await
    .unwrap();
    assert_eq!(customer.status, 200, "{}", customer.text());
    let customer_id = customer.json()["id"].as_str().unwrap().to_string();
    let issue = send(
        &c,
        "POST",
        "https://api.github.com/repos/acme/widgets/issues",
        &[JSON, ("toolgate-job", job)],
        json!({"title": format!("Onboard Jo ({job})"), "labels": ["onboarding"]}).to_string(),
    )
    .await
    .unwrap();
    assert_eq!(issue.status, 201, "{}", issue.text());
    let number = issue.json()["number"].as_u64().unwrap();
    let declined = send(
        &c,
        "POST",
        "https://api.stripe.com/v1/payment_intents",
        &[FORM, ("idempotency-key", &format!("{job}-3")), ("toolgate-job", job)],
        format!("amount=2000&currency=usd&customer={customer_id}&payment_method=pm_card_chargeDeclined&confirm=true"),
    )
    .await
    .unwrap();
    assert_eq!(declined.status, 402, "the third call fails upstream");
    assert!(declined.text().contains("Your card was declined."));
    (customer_id, number)
}

#[tokio::test]
async fn launch_check_rollback_after_a_partial_failure_unwinds_the_job() {
    let (_pki, fakes, gate) = GateBuilder::examples().with_fakes().await;
    let (customer, issue) = partial_job(&gate, "job-onboard-jo").await;
    {
        let st = fakes.state.lock().unwrap();
        assert!(st.customers.contains_key(&customer));
        assert_eq!(
            st.issues[&("acme/widgets".to_string(), issue)]["state"],
            "open"
        );
    }

    let (ok, out) = cli(&gate, CAROL, &["rollback", "--job", "job-onboard-jo"]).await;
    assert!(ok, "every undoable call was undone:\n{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines.len(),
        2,
        "two commits succeeded, so two undos:\n{out}"
    );
    assert!(
        lines[0].starts_with("undone") && lines[0].contains("github.issues.create"),
        "newest first:\n{out}"
    );
    assert!(
        lines[1].starts_with("undone") && lines[1].contains("stripe.customers.create"),
        "{out}"
    );

    // What the upstreams hold now.
    {
        let st = fakes.state.lock().unwrap();
        assert!(
            !st.customers.contains_key(&customer),
            "the customer is gone"
        );
        assert_eq!(st.deleted_customers, vec![customer.clone()]);
        assert_eq!(
            st.issues[&("acme/widgets".to_string(), issue)]["state"],
            "closed"
        );
        assert!(
            st.payment_intents.is_empty(),
            "the declined charge made nothing"
        );
    }
    // The undos carried the real credentials toolgate injected, as the agent.
    let undo_calls: Vec<_> = fakes
        .seen()
        .into_iter()
        .filter(|s| s.method == "DELETE" || s.method == "PATCH")
        .collect();
    assert_eq!(undo_calls.len(), 2);
    for s in &undo_calls {
        let auth = s.authorization.as_deref().unwrap_or("");
        assert!(
            auth == "Bearer sk_test_toolgate_demo_placeholder"
                || auth == "Bearer toolgate-demo-github-placeholder",
            "{auth}"
        );
    }
    assert_eq!(undo_calls[0].body, "{\"state\":\"closed\"}");

    // Undoing again sends nothing and says so.
    let (ok, out) = cli(&gate, CAROL, &["rollback", "--job", "job-onboard-jo"]).await;
    assert!(ok, "{out}");
    assert_eq!(
        out.lines()
            .filter(|l| l.starts_with("already_undone"))
            .count(),
        2,
        "{out}"
    );
    let seen = fakes.seen().len();
    let commit = gate
        .admin(
            "GET",
            "/api/audit/search?kind=commit&tool=stripe.customers.create",
            Some(CAROL),
            None,
        )
        .await
        .json();
    let rid = commit["events"][0]["request_id"]
        .as_str()
        .unwrap()
        .to_string();
    let again = gate
        .admin("POST", &format!("/api/rollback/{rid}"), Some(CAROL), None)
        .await;
    assert_eq!(again.status, 409);
    assert_eq!(again.json()["outcome"], "already_undone");
    assert_eq!(
        fakes.seen().len(),
        seen,
        "a second undo reaches no upstream"
    );

    // A call that cannot be undone says why; an unknown id is not found.
    let mail = send(
        &staging(&gate),
        "POST",
        "https://api.sendgrid.com/v3/mail/send",
        &[JSON, ("toolgate-job", "job-mail")],
        json!({"personalizations": [{"to": [{"email": "jo@acme.com"}]}], "from": {"email": "support@acme.com"}, "subject": "Hi", "content": [{"type": "text/plain", "value": "Hello"}]}).to_string(),
    )
    .await
    .unwrap();
    assert_eq!(mail.status, 202);
    let rid = mail.headers["toolgate-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    let r = gate
        .admin("POST", &format!("/api/rollback/{rid}"), Some(CAROL), None)
        .await;
    assert_eq!(r.status, 422);
    assert!(r.json()["message"]
        .as_str()
        .unwrap()
        .contains("a sent email cannot be recalled"));
    let r = gate
        .admin("POST", "/api/rollback/req_nope", Some(CAROL), None)
        .await;
    assert_eq!(r.status, 404);
    let r = gate
        .admin("POST", &format!("/api/rollback/{rid}"), None, None)
        .await;
    assert_eq!(r.status, 401, "an undo needs an approver");
}

#[tokio::test]
async fn undo_goes_through_the_policy_in_force() {
    let (_pki, fakes, gate) = GateBuilder::examples().with_fakes().await;
    let c = staging(&gate);
    let created = send(
        &c,
        "POST",
        "https://api.stripe.com/v1/customers",
        &[
            FORM,
            ("idempotency-key", "k-policy"),
            ("toolgate-job", "job-p"),
        ],
        "email=kim%40acme.com",
    )
    .await
    .unwrap();
    let rid = created.headers["toolgate-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    // The undo's own tool is switched off: the undo is refused and nothing is sent.
    let off = gate
        .admin(
            "POST",
            "/api/tools/stripe.customers.delete/disable",
            Some(CAROL),
            Some(json!({"reason": "incident 7"})),
        )
        .await;
    assert_eq!(off.status, 200);
    let r = gate
        .admin("POST", &format!("/api/rollback/{rid}"), Some(CAROL), None)
        .await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(r.json()["outcome"], "refused");
    assert!(r.json()["message"].as_str().unwrap().contains("incident 7"));
    assert_eq!(fakes.count("DELETE", "/v1/customers"), 0);
    // Enabled again (admin), the same undo goes through once.
    gate.admin(
        "POST",
        "/api/tools/stripe.customers.delete/enable",
        Some(DAVE),
        None,
    )
    .await;
    let r = gate
        .admin("POST", &format!("/api/rollback/{rid}"), Some(CAROL), None)
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(fakes.count("DELETE", "/v1/customers"), 1);
    // Both calls' stories show the link.
    let rollback = story_event(&gate, &rid, |e| {
        e["kind"] == "rollback" && e["payload"]["outcome"] == "undone"
    })
    .await;
    let undo_id = rollback["payload"]["undo_request"].as_str().unwrap();
    let request = story_event(&gate, undo_id, |e| e["kind"] == "request").await;
    assert_eq!(request["payload"]["undoes"], rid.as_str());
    assert_eq!(request["payload"]["asked_by"], "carol@example.com");
    assert_eq!(
        request["agent"], "support-bot-staging",
        "an undo acts as the agent that made the call"
    );
}

#[tokio::test]
async fn launch_check_every_commit_has_a_traceable_proposal_and_approval() {
    let (_pki, fakes, gate) = GateBuilder::examples().with_fakes().await;
    let c = staging(&gate);
    // Unattended commits (mode auto) and a held refund that carol approves.
    partial_job(&gate, "job-trace").await;
    let held = {
        let c = c.clone();
        tokio::spawn(async move {
            send(
                &c,
                "POST",
                "https://api.stripe.com/v1/refunds",
                &[
                    FORM,
                    ("idempotency-key", "refund-1"),
                    ("toolgate-job", "job-trace"),
                ],
                "payment_intent=pi_123&amount=500",
            )
            .await
            .unwrap()
        })
    };
    let id = pending_proposal(gate.admin_addr, "").await;
    assert_eq!(fakes.count("POST", "/v1/refunds"), 0, "held: nothing sent");
    let ok = gate
        .admin(
            "POST",
            &format!("/api/proposals/{id}/approve"),
            Some(CAROL),
            Some(json!({"comment": "customer asked"})),
        )
        .await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    let refund = held.await.unwrap();
    assert_eq!(refund.status, 200, "{}", refund.text());

    // Every request that reached an upstream with a change has a commit event, and every commit
    // names the proposal and approval that allowed it, or the policy that let it run unattended.
    let mutating_sent = fakes.seen().iter().filter(|s| s.method != "GET").count();
    let what = "every change sent has its commit event";
    let all = audit_events_once(&gate, "kind=commit", what, |all| all.len() >= mutating_sent).await;
    assert_eq!(
        all.len(),
        mutating_sent,
        "one commit event per change the upstreams received"
    );
    for commit in &all {
        let story = gate
            .admin(
                "GET",
                &format!(
                    "/api/audit/story/{}",
                    commit["request_id"].as_str().unwrap()
                ),
                Some(CAROL),
                None,
            )
            .await
            .json();
        let events = story["events"].as_array().unwrap();
        let decision = events
            .iter()
            .find(|e| e["kind"] == "decision" && e["request_id"] == commit["request_id"]);
        match commit["proposal"].as_str() {
            Some(p) => {
                let approval = events
                    .iter()
                    .find(|e| e["kind"] == "approval" && e["proposal"] == p)
                    .unwrap_or_else(|| panic!("commit of proposal {p} has an approval"));
                assert_eq!(approval["payload"]["by"], "carol@example.com");
                assert!(
                    approval["seq"].as_u64() < commit["seq"].as_u64(),
                    "approved before it was sent"
                );
                assert!(events
                    .iter()
                    .any(|e| e["kind"] == "proposal" && e["proposal"] == p));
            }
            None => {
                let d = decision.unwrap_or_else(|| panic!("commit {commit} has a decision"));
                assert_eq!(d["payload"]["outcome"], "allowed");
                assert_eq!(
                    d["payload"]["mode"], "auto",
                    "only mode auto commits without a proposal"
                );
            }
        }
        assert!(
            commit["agent"].is_string()
                && commit["owner"].is_string()
                && commit["tool"].is_string()
        );
    }
    assert!(
        all.iter().any(|c| c["proposal"].is_string()),
        "the refund's commit is among them"
    );
}

#[tokio::test]
async fn launch_check_the_story_of_an_action_comes_from_one_command() {
    let (_pki, _fakes, gate) = GateBuilder::examples().with_fakes().await;
    partial_job(&gate, "job-story").await;
    let (ok, _) = cli(&gate, CAROL, &["rollback", "--job", "job-story"]).await;
    assert!(ok);
    let what = "both undos are recorded";
    audit_events_once(&gate, "kind=rollback", what, |all| {
        all.iter()
            .filter(|e| e["payload"]["outcome"] == "undone")
            .count()
            >= 2
    })
    .await;
    let (ok, story) = cli(&gate, CAROL, &["audit", "story", "job-story"]).await;
    assert!(ok, "{story}");
    for needle in [
        "support-bot-staging", // who asked
        "alice@example.com",   // the agent's owner
        "POST api.stripe.com /v1/customers",
        "commit: sending POST https://api.stripe.com/v1/customers", // what executed
        "upstream answered 200",                                    // what changed
        "upstream answered 402",                                    // the failure
        "rolled back by carol@example.com",                         // what was undone, and by whom
        "by carol@example.com: DELETE /v1/customers/cus_", // what the undo changed, in the summary
    ] {
        assert!(story.contains(needle), "{needle:?} missing from:\n{story}");
    }
    assert!(
        !story.contains("sk_test_toolgate_demo_placeholder"),
        "no secret in a story"
    );
}

#[tokio::test]
async fn replay_sends_recorded_calls_to_a_sandbox_only() {
    let (pki, prod) = example_apis().await;
    let sandbox = Fakes::start(pki.server_config(&["localhost"]), Keys::sandbox()).await;
    let stray = Fakes::start(pki.server_config(&["127.0.0.1"]), Keys::sandbox()).await;
    let route = format!("localhost:{0}={1}", sandbox.addr.port(), sandbox.addr);
    let gate = GateBuilder::examples()
        .routed_to(&pki, prod.addr)
        .config(|c| {
            c.add_connect_to(&route).unwrap();
        })
        .start()
        .await;
    partial_job(&gate, "job-replay").await;
    let read = send(
        &staging(&gate),
        "GET",
        "https://api.github.com/repos/acme/widgets",
        &[("toolgate-job", "job-replay")],
        "",
    )
    .await
    .unwrap();
    assert_eq!(read.status, 200);
    story_event(&gate, "job-replay", |e| {
        e["kind"] == "request" && e["payload"]["path"] == "/repos/acme/widgets"
    })
    .await;
    let before = prod.seen().len();

    let to = format!("localhost:{}", sandbox.addr.port());
    // Approvers who are not admins may not send credentials to a host they name.
    let (ok, out) = cli(&gate, CAROL, &["replay", "job-replay", "--to", &to]).await;
    assert!(!ok && out.contains("only group admin"), "{out}");
    // Never to a real API host.
    let (ok, out) = cli(
        &gate,
        DAVE,
        &["replay", "job-replay", "--to", "api.stripe.com:443"],
    )
    .await;
    assert!(!ok && out.contains("never to a real API"), "{out}");
    // Nor to one spelled with the root's trailing dot or in capitals.
    let (ok, out) = cli(
        &gate,
        DAVE,
        &["replay", "job-replay", "--to", "API.Stripe.com.:443"],
    )
    .await;
    assert!(!ok && out.contains("never to a real API"), "{out}");
    // A loopback or private address only where --connect-to routes the sandbox's name.
    let unrouted = format!("127.0.0.1:{}", stray.addr.port());
    let (ok, out) = cli(&gate, DAVE, &["replay", "job-replay", "--to", &unrouted]).await;
    assert!(!ok, "{out}");
    assert!(
        stray.seen().is_empty(),
        "nothing reached an unrouted private address"
    );

    let (ok, out) = cli(&gate, DAVE, &["replay", "job-replay", "--to", &to]).await;
    assert!(ok, "{out}");
    assert_eq!(out.lines().count(), 4, "three calls and one read:\n{out}");
    assert_eq!(
        prod.seen().len(),
        before,
        "nothing went to the original hosts"
    );
    let seen = sandbox.seen();
    assert_eq!(seen.len(), 4);
    for s in &seen {
        let auth = s.authorization.as_deref().unwrap_or("");
        assert!(
            auth.starts_with("Bearer sandbox-"),
            "only the sandbox credential: {auth}"
        );
        assert!(s.status < 500, "{s:?}");
    }
    assert_eq!(seen[0].method, "POST");
    assert_eq!(seen[0].path, "/v1/customers");
    assert!(seen[0].body.contains("email=jo%40acme.com"));
    assert!(
        sandbox.state.lock().unwrap().customers.len() == 1,
        "the sandbox now holds the customer"
    );
    let what = "every replay and refusal is recorded";
    let all = audit_events_once(&gate, "kind=replay", what, |all| all.len() >= 8).await;
    let (replays, refused): (Vec<&Value>, Vec<&Value>) =
        all.iter().partition(|r| r["payload"]["to"] == to.as_str());
    assert_eq!(replays.len(), 4);
    assert_eq!(refused.len(), 4, "the unrouted attempt is recorded too");
    for r in refused {
        assert!(r["payload"]["status"].is_null(), "{r}");
        assert!(
            r["payload"]["message"]
                .as_str()
                .unwrap()
                .contains("127.0.0.1"),
            "{r}"
        );
    }
    for r in replays {
        assert!(
            r["request_id"].as_str().unwrap().starts_with("req_"),
            "linked to the original"
        );
        assert_eq!(r["payload"]["to"], to.as_str());
        assert_eq!(r["job"], "job-replay");
    }
}

#[tokio::test]
async fn the_rollback_page_undoes_a_job_with_a_session_and_csrf() {
    let (_pki, fakes, gate) = GateBuilder::examples().with_fakes().await;
    let (customer, issue) = partial_job(&gate, "job-page").await;
    let cookie = gate.sign_in(CAROL).await;
    let list = gate.page("GET", "/rollback", Some(&cookie), None).await;
    assert_eq!(list.status, 200);
    let html = list.text();
    assert!(html.contains("action=\"/rollback/job/job-page\""), "{html}");
    assert!(
        html.contains("github.issues.create") && html.contains("changed nothing"),
        "the declined call is shown, without a button"
    );
    let csrf = csrf_of(&html);

    // Without the CSRF token nothing is sent.
    let refused = gate
        .page(
            "POST",
            "/rollback/job/job-page",
            Some(&cookie),
            Some("csrf=wrong".into()),
        )
        .await;
    assert_eq!(refused.status, 403);
    assert_eq!(fakes.count("DELETE", "/v1/customers"), 0);
    // Not signed in: to the sign-in page.
    let anon = gate
        .page(
            "POST",
            "/rollback/job/job-page",
            None,
            Some(format!("csrf={csrf}")),
        )
        .await;
    assert_eq!(anon.status, 303);

    let done = gate
        .page(
            "POST",
            "/rollback/job/job-page",
            Some(&cookie),
            Some(format!("csrf={csrf}")),
        )
        .await;
    assert_eq!(done.status, 200, "{}", done.text());
    assert_eq!(
        done.text().matches("<strong>undone</strong>").count(),
        2,
        "{}",
        done.text()
    );
    {
        let st = fakes.state.lock().unwrap();
        assert!(!st.customers.contains_key(&customer));
        assert_eq!(
            st.issues[&("acme/widgets".to_string(), issue)]["state"],
            "closed"
        );
    }
    let list = gate
        .page("GET", "/rollback", Some(&cookie), None)
        .await
        .text();
    assert_eq!(
        list.matches("undone by carol@example.com").count(),
        2,
        "{list}"
    );
}
