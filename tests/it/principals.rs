//! Principals and data boundaries (DESIGN sections 10 and 11), over real sockets with the
//! stateful API fakes: response contracts keep only what they name (nothing else of an answer
//! is written anywhere under the data dir) and hide fields from the agent; the story of an
//! approved refund names the refund.

use crate::support::*;
use base64::Engine;
use serde_json::Value;

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
    let gate = GateBuilder::examples()
        .routed_to(&pki, fakes.addr)
        .start()
        .await;
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
    let cookie = gate.sign_in(CAROL).await;
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

const DAVE: &str = "demo-dave-token";

async fn issue(gate: &Toolgate, token: &str, body: serde_json::Value) -> Answer {
    gate.admin(
        "POST",
        "/api/agents/support-bot-staging/tokens",
        Some(token),
        Some(body),
    )
    .await
}

async fn read_with(gate: &Toolgate, agent: &str, token: &str) -> Answer {
    let client = client_via(
        gate.addr,
        Some((agent, token)),
        &gate.ca_pem,
        http::Version::HTTP_11,
    );
    send(
        &client,
        "GET",
        "https://api.github.com/repos/acme/widgets",
        &[],
        "",
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issued_tokens_work_expire_are_revoked_and_never_recorded() {
    let (pki, fakes) = example_apis().await;
    let gate = GateBuilder::examples()
        .routed_to(&pki, fakes.addr)
        .start()
        .await;

    // Only group admin (or a group the agent names) issues; an agent's own token never does.
    let agent_token = issue(
        &gate,
        "demo-staging-token",
        serde_json::json!({"ttl": "15m"}),
    )
    .await;
    assert_eq!(agent_token.status, 401, "{}", agent_token.text());
    let carol = issue(&gate, CAROL, serde_json::json!({"ttl": "15m"})).await;
    assert_eq!(carol.status, 403, "{}", carol.text());
    let bad = issue(&gate, DAVE, serde_json::json!({"ttl": "30d"})).await;
    assert_eq!(bad.code(), "validation_error");
    for ttl in ["99999999999999999999999d", "1e300s"] {
        let huge = issue(&gate, DAVE, serde_json::json!({ "ttl": ttl })).await;
        assert_eq!(huge.status, 422, "{}", huge.text());
        assert_eq!(huge.code(), "validation_error");
        assert!(huge.text().contains("ttl"), "{}", huge.text());
    }

    // A job-bound token claims its job as a call naming it would: not another owner's job.
    let prod = client_via(
        gate.addr,
        Some(("support-bot-prod", "demo-prod-token")),
        &gate.ca_pem,
        http::Version::HTTP_11,
    );
    let read = "https://api.github.com/repos/acme/widgets";
    let prods = send(&prod, "GET", read, &[("toolgate-job", "job-of-bob")], "")
        .await
        .unwrap();
    assert_eq!(prods.status, 200, "{}", prods.text());
    let taken = issue(
        &gate,
        DAVE,
        serde_json::json!({"ttl": "15m", "job": "job-of-bob"}),
    )
    .await;
    assert_eq!(taken.status, 409, "{}", taken.text());
    let bad_job = issue(
        &gate,
        DAVE,
        serde_json::json!({"ttl": "15m", "job": "no spaces"}),
    )
    .await;
    assert_eq!(bad_job.code(), "validation_error");

    let got = issue(
        &gate,
        DAVE,
        serde_json::json!({"ttl": "15m", "job": "job-token"}),
    )
    .await;
    assert_eq!(got.status, 201, "{}", got.text());
    let issued = got.json();
    let (id, token) = (
        issued["id"].as_str().unwrap().to_string(),
        issued["token"].as_str().unwrap().to_string(),
    );
    // It works as the agent's proxy password, for that agent only; its calls are the job's.
    let (status, text) = connect_with(&gate, "support-bot-staging", &token).await;
    assert_eq!(status, 200, "{text}");
    let ok = read_with(&gate, "support-bot-staging", &token).await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert_eq!(connect_with(&gate, "support-bot-prod", &token).await.0, 407);
    // (Recorded by the audit writer within its batch time.)
    let told = || async {
        let path = "/api/audit/story/job-token";
        let job = gate.admin("GET", path, Some(CAROL), None).await.json();
        let events = job["events"].as_array()?;
        events.iter().any(|e| e["kind"] == "request").then_some(job)
    };
    let job = poll::until_some("the job's story holds the call", poll::SOON, told).await;
    let events = job["events"].as_array().unwrap();
    assert!(
        events.iter().all(|e| e["token"] == id.as_str()),
        "every event of the call names the token id: {job}"
    );
    // Everything done with the token is one query, on the traffic list and in the search.
    let request = ok.headers["toolgate-request-id"].to_str().unwrap();
    let rows = gate
        .admin(
            "GET",
            &format!("/api/traffic?token={id}"),
            Some(CAROL),
            None,
        )
        .await
        .json();
    let listed = texts(&rows, "requests", "request_id");
    assert_eq!(listed, vec![request], "{rows}");
    let found = gate
        .admin(
            "GET",
            &format!("/api/audit/search?token={id}"),
            Some(CAROL),
            None,
        )
        .await
        .json();
    let kinds = texts(&found, "events", "kind");
    assert!(
        kinds.contains(&"token.issued") && kinds.contains(&"request"),
        "{found}"
    );
    // The call's page names the token by its id.
    let cookie = gate.sign_in(CAROL).await;
    let detail = gate
        .page("GET", &format!("/traffic/{request}"), Some(&cookie), None)
        .await
        .text();
    assert!(detail.contains(&format!("issued token {id}")), "{detail}");
    let listed = gate
        .admin(
            "GET",
            "/api/tokens?agent=support-bot-staging",
            Some(DAVE),
            None,
        )
        .await;
    assert!(listed.text().contains(&id) && !listed.text().contains(&token));

    // Revoked: refused at once, on a tunnel already open too.
    let client = client_via(
        gate.addr,
        Some(("support-bot-staging", &token)),
        &gate.ca_pem,
        http::Version::HTTP_11,
    );
    let read = "https://api.github.com/repos/acme/widgets";
    assert_eq!(
        send(&client, "GET", read, &[], "").await.unwrap().status,
        200
    );
    let revoked = gate
        .admin("DELETE", &format!("/api/tokens/{id}"), Some(DAVE), None)
        .await;
    assert_eq!(revoked.status, 200, "{}", revoked.text());
    let after = send(&client, "GET", read, &[], "").await.unwrap();
    assert_eq!(after.status, 407, "{}", after.text());
    let (status, text) = connect_with(&gate, "support-bot-staging", &token).await;
    assert_eq!(status, 407, "{text}");

    // Expired: a second-long token stops after its second.
    let short = issue(&gate, DAVE, serde_json::json!({"ttl": "1s"}))
        .await
        .json();
    let short_token = short["token"].as_str().unwrap().to_string();
    let refused = || async {
        let got = connect_with(&gate, "support-bot-staging", &short_token).await;
        (got.0 != 200).then_some(got)
    };
    let (status, text) = poll::until_some("the token expires", poll::SOON, refused).await;
    assert_eq!(status, 407, "{text}");
    assert!(text.contains("expired or was revoked"), "{text}");

    // The same from the command line.
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_toolgate"))
            .args(["tokens"])
            .args(args)
            .args(["--server", &format!("http://{}", gate.admin_addr)])
            .env("TOOLGATE_TOKEN", DAVE)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{args:?}: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        text
    };
    let issued: Value = serde_json::from_str(&cli(&[
        "issue",
        "support-bot-staging",
        "--ttl",
        "5m",
        "--json",
    ]))
    .unwrap();
    let cli_id = issued["id"].as_str().unwrap().to_string();
    let cli_token = issued["token"].as_str().unwrap().to_string();
    assert_eq!(
        connect_with(&gate, "support-bot-staging", &cli_token)
            .await
            .0,
        200
    );
    assert!(cli(&["list", "support-bot-staging"]).contains(&cli_id));
    assert!(cli(&["revoke", &cli_id]).contains("revoked"));
    assert!(!cli(&["list"]).contains(&cli_id));
    assert_eq!(
        connect_with(&gate, "support-bot-staging", &cli_token)
            .await
            .0,
        407
    );

    // The tokens themselves are in no audit event and in no file under the data dir.
    let export = gate
        .admin("GET", "/api/audit/export", Some(CAROL), None)
        .await
        .text();
    assert!(export.contains("token.issued") && export.contains("token.revoked"));
    for t in [&token, &short_token] {
        assert!(
            !export.contains(t.as_str()),
            "the token is not in the audit log"
        );
        let mut found = Vec::new();
        files_holding(&gate.dir.path().join("data"), &[t.to_string()], &mut found);
        assert!(found.is_empty(), "{found:?}");
    }
}

/// A new tunnel with these credentials: its CONNECT status and answer.
async fn connect_with(gate: &Toolgate, agent: &str, token: &str) -> (u16, String) {
    let (status, text, _) =
        raw_connect(gate.addr, "api.github.com:443", Some((agent, token))).await;
    (status, text)
}

/// The example agents plus `ops-bot`, owned by dave (an admin), for the rule that nobody lends
/// a tool to their own agent.
fn agents_with_daves_bot() -> String {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    let mut text = std::fs::read_to_string(root.join("agents.toml")).unwrap();
    text.push_str(
        "\n[[agent]]\nid = \"ops-bot\"\n\
         token_sha256 = \"4db91eab0281403a94ae3ed61e1e1baf7528d2dc264eb786f64c43d7697d3177\"\n\
         owner = \"dave@example.com\"\nenvironment = \"prod\"\ntools = [\"github.repos.get\"]\n",
    );
    text
}

const PI: &str = "https://api.stripe.com/v1/payment_intents";

/// A payment intent created by the prod bot (its tools do not name payment_intents.create).
async fn create_pi(gate: &Toolgate, key: &str) -> Answer {
    let client = client_via(
        gate.addr,
        Some(("support-bot-prod", "demo-prod-token")),
        &gate.ca_pem,
        http::Version::HTTP_11,
    );
    send(
        &client,
        "POST",
        PI,
        &[FORM, ("idempotency-key", key)],
        "amount=500&currency=usd",
    )
    .await
    .unwrap()
}

async fn grant(gate: &Toolgate, token: &str, body: Value) -> Answer {
    gate.admin("POST", "/api/grants", Some(token), Some(body))
        .await
}

/// Events of the audit export of `kind` for the grant, once there is one (polled: the writer
/// records within its batch time, and an expiry at the grant's end).
async fn exported(gate: &Toolgate, kind: &str, grant_id: &str) -> Vec<Value> {
    let what = format!("a {kind} event of grant {grant_id} is recorded");
    poll::until_some(&what, poll::SOON, || async {
        let found: Vec<Value> = gate
            .admin("GET", "/api/audit/export", Some(CAROL), None)
            .await
            .text()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|e| e["kind"] == kind && e["payload"]["grant"] == grant_id)
            .collect();
        (!found.is_empty()).then_some(found)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_lends_one_tool_for_its_time_and_every_step_is_recorded() {
    let (pki, fakes) = example_apis().await;
    let agents = agents_with_daves_bot();
    let gate = GateBuilder::examples()
        .policies(&[("agents.toml", agents)])
        .routed_to(&pki, fakes.addr)
        .start()
        .await;
    let sent = || fakes.count("POST", "/v1/payment_intents");

    // Without a grant the prod bot may not create payment intents.
    let before = create_pi(&gate, "pi-before").await;
    assert_eq!(before.code(), "policy_violation", "{}", before.text());
    assert_eq!(sent(), 0);

    // Who may grant what.
    let ask = |agent: &str, tool: &str, lasts: &str, reason: &str| serde_json::json!({"agent": agent, "tool": tool, "for": lasts, "reason": reason});
    let pi_tool = "stripe.payment_intents.create";
    let refusals = [
        // An agent's token is no approver's.
        (
            "demo-prod-token",
            ask("support-bot-prod", pi_tool, "1h", "x"),
            401,
        ),
        // Not in group admin.
        (CAROL, ask("support-bot-prod", pi_tool, "1h", "x"), 403),
        // Dave's own agent, and the tool does not allow self-approval.
        (DAVE, ask("ops-bot", pi_tool, "1h", "x"), 403),
        (
            DAVE,
            ask("support-bot-prod", "stripe.nothing", "1h", "x"),
            404,
        ),
        // Already held through its globs.
        (
            DAVE,
            ask("support-bot-prod", "github.repos.get", "1h", "x"),
            422,
        ),
        // No prod credential: the grant could not work.
        (
            DAVE,
            ask("support-bot-staging", "github.repos.delete", "1h", "x"),
            422,
        ),
        (DAVE, ask("support-bot-prod", pi_tool, "30d", "x"), 422),
        // A duration past any clock (issue 23 row 12): 422, not a panic.
        (
            DAVE,
            ask("support-bot-prod", pi_tool, "99999999999999999999999d", "x"),
            422,
        ),
        (DAVE, ask("support-bot-prod", pi_tool, "1h", " "), 422),
    ];
    for (token, body, status) in refusals {
        let got = grant(&gate, token, body.clone()).await;
        assert_eq!(got.status, status, "{body}: {}", got.text());
    }
    let own = grant(&gate, DAVE, ask("ops-bot", pi_tool, "1h", "x")).await;
    assert!(own.text().contains("self-approval"), "{}", own.text());

    // A two-second grant: the tool works, exactly that tool, for that long.
    let got = grant(
        &gate,
        DAVE,
        ask(
            "support-bot-prod",
            pi_tool,
            "2s",
            "incident 42: rebill the customer",
        ),
    )
    .await;
    assert_eq!(got.status, 201, "{}", got.text());
    let g = got.json();
    let id = g["id"].as_str().unwrap().to_string();
    let during = create_pi(&gate, "pi-during").await;
    assert_eq!(during.status, 200, "{}", during.text());
    assert_eq!(sent(), 1);
    let other = send(
        &client_via(
            gate.addr,
            Some(("support-bot-prod", "demo-prod-token")),
            &gate.ca_pem,
            http::Version::HTTP_11,
        ),
        "POST",
        &format!("{PI}/pi_1/cancel"),
        &[FORM, ("idempotency-key", "cancel-1")],
        "",
    )
    .await
    .unwrap();
    assert_eq!(other.code(), "policy_violation", "a grant lends one tool");
    let listed = gate.admin("GET", "/api/grants", Some(CAROL), None).await;
    assert!(listed.text().contains(&id), "{}", listed.text());

    // The use is in the call's story, with who granted it, why and until when.
    let request = during.headers["toolgate-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    let used = exported(&gate, "grant.used", &id).await;
    assert_eq!(used.len(), 1, "{used:?}");
    let story = gate
        .admin(
            "GET",
            &format!("/api/audit/story/{request}"),
            Some(CAROL),
            None,
        )
        .await
        .json();
    let use_event = story["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "grant.used")
        .cloned()
        .unwrap_or_else(|| panic!("no grant.used in {story}"));
    assert_eq!(use_event["payload"]["granted_by"], "dave@example.com");
    assert_eq!(
        use_event["payload"]["reason"],
        "incident 42: rebill the customer"
    );
    assert_eq!(use_event["payload"]["until"], g["until"]);

    // Not a second longer: after its end (recorded at its time) the call is refused and
    // nothing more is sent.
    let expired = exported(&gate, "grant.expired", &id).await;
    assert!(now_unix() >= g["until_unix"].as_u64().unwrap());
    let after = create_pi(&gate, "pi-after").await;
    assert_eq!(after.code(), "policy_violation", "{}", after.text());
    assert_eq!(sent(), 1);
    assert_eq!(expired.len(), 1, "its expiry is recorded once: {expired:?}");
    assert_eq!(expired[0]["payload"]["by"], "toolgate");
    assert!(!gate
        .admin("GET", "/api/grants", Some(CAROL), None)
        .await
        .text()
        .contains(&id));

    // Revoked from the command line: refused at once.
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_toolgate"))
            .args(["grants"])
            .args(args)
            .args(["--server", &format!("http://{}", gate.admin_addr)])
            .env("TOOLGATE_TOKEN", DAVE)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (ok, text) = cli(&[
        "add",
        "support-bot-prod",
        pi_tool,
        "--for",
        "1h",
        "--reason",
        "incident 43",
        "--json",
    ]);
    assert!(ok, "{text}");
    let added: Value = serde_json::from_str(text.trim()).unwrap();
    let cli_id = added["id"].as_str().unwrap().to_string();
    assert_eq!(create_pi(&gate, "pi-cli").await.status, 200);
    assert_eq!(sent(), 2);
    let (ok, text) = cli(&["list", "support-bot-prod"]);
    assert!(
        ok && text.contains(&cli_id) && text.contains("incident 43"),
        "{text}"
    );
    let (ok, text) = cli(&["revoke", &cli_id]);
    assert!(ok, "{text}");
    let again = gate
        .admin("DELETE", &format!("/api/grants/{cli_id}"), Some(DAVE), None)
        .await;
    assert_eq!(again.status, 409, "{}", again.text());
    let revoked_call = create_pi(&gate, "pi-revoked").await;
    assert_eq!(revoked_call.code(), "policy_violation");
    assert_eq!(sent(), 2);
    let revoked = exported(&gate, "grant.revoked", &cli_id).await;
    assert_eq!(revoked.len(), 1);
    assert_eq!(revoked[0]["payload"]["by"], "dave@example.com");
    assert!(!exported(&gate, "grant.added", &cli_id).await.is_empty());

    // The page: lists live grants, adds one through its form (CSRF), revokes it.
    let cookie = gate.sign_in(DAVE).await;
    let html = gate
        .page("GET", "/grants", Some(&cookie), None)
        .await
        .text();
    assert!(html.contains("Grant a tool"), "{html}");
    let csrf = csrf_of(&html);
    let form = format!(
        "csrf={csrf}&agent=support-bot-prod&tool={pi_tool}&for=10m&reason=page+%3Cb%3Etest%3C%2Fb%3E"
    );
    let no_csrf = gate
        .page(
            "POST",
            "/grants",
            Some(&cookie),
            Some(form.replace(&csrf, "wrong")),
        )
        .await;
    assert_eq!(no_csrf.status, 403);
    let added = gate
        .page("POST", "/grants", Some(&cookie), Some(form))
        .await;
    assert_eq!(added.status, 303, "{}", added.text());
    let html = gate
        .page("GET", "/grants", Some(&cookie), None)
        .await
        .text();
    assert!(
        html.contains("page &lt;b&gt;test&lt;/b&gt;"),
        "listed, escaped: {html}"
    );
    let page_id = gate
        .admin("GET", "/api/grants", Some(DAVE), None)
        .await
        .json()["grants"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let revoked = gate
        .page(
            "POST",
            &format!("/grants/{page_id}/revoke"),
            Some(&cookie),
            Some(format!("csrf={csrf}")),
        )
        .await;
    assert_eq!(revoked.status, 303, "{}", revoked.text());
    assert!(gate
        .admin("GET", "/api/grants", Some(DAVE), None)
        .await
        .json()["grants"]
        .as_array()
        .unwrap()
        .is_empty());
    // The story's summary says the grant approved the call, and who granted it.
    let story = gate
        .page("GET", &format!("/stories/{request}"), Some(&cookie), None)
        .await
        .text();
    assert!(
        story.contains(&format!("dave@example.com by grant {id}")),
        "{story}"
    );
    // The reviewers' view of the call names the grant that let it through.
    let detail = gate
        .page("GET", &format!("/traffic/{request}"), Some(&cookie), None)
        .await
        .text();
    assert!(
        detail.contains(&format!("the tool lent by grant {id}"))
            && detail.contains("allowed by grant"),
        "{detail}"
    );
    // Carol sees the page but no form to grant.
    let carol = gate.sign_in(CAROL).await;
    let html = gate.page("GET", "/grants", Some(&carol), None).await.text();
    assert!(html.contains("Only group admin") && !html.contains("Grant a tool"));
}

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Issue 23 row 10: a call held under an issued token is not sent once the token is revoked,
/// even when an approver approves it afterwards: the commit re-checks the token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_call_is_not_sent_after_its_token_is_revoked() {
    let (pki, fakes) = example_apis().await;
    let gate = GateBuilder::examples()
        .routed_to(&pki, fakes.addr)
        .start()
        .await;
    let got = issue(&gate, DAVE, serde_json::json!({"ttl": "15m"})).await;
    assert_eq!(got.status, 201, "{}", got.text());
    let issued = got.json();
    let id = issued["id"].as_str().unwrap().to_string();
    let client = client_via(
        gate.addr,
        Some(("support-bot-staging", issued["token"].as_str().unwrap())),
        &gate.ca_pem,
        http::Version::HTTP_11,
    );
    let held = tokio::spawn(async move {
        send(
            &client,
            "POST",
            "https://api.stripe.com/v1/refunds",
            &[FORM, ("idempotency-key", "revoked-token-refund")],
            "payment_intent=pi_revoked&amount=100",
        )
        .await
        .unwrap()
    });
    let proposal = pending_proposal(gate.admin_addr, "pi_revoked").await;
    let revoked = gate
        .admin("DELETE", &format!("/api/tokens/{id}"), Some(DAVE), None)
        .await;
    assert_eq!(revoked.status, 200, "{}", revoked.text());
    let approved = gate
        .admin(
            "POST",
            &format!("/api/proposals/{proposal}/approve"),
            Some(CAROL),
            Some(serde_json::json!({"comment": "after the revocation"})),
        )
        .await;
    assert_eq!(approved.status, 200, "{}", approved.text());
    let held = held.await.unwrap();
    assert_eq!(held.status, 403, "{}", held.text());
    assert_eq!(held.code(), "approval_denied");
    assert!(
        held.text().contains(&id),
        "names the token: {}",
        held.text()
    );
    let p = gate
        .admin(
            "GET",
            &format!("/api/proposals/{proposal}"),
            Some(CAROL),
            None,
        )
        .await
        .json();
    assert_eq!(p["state"], "cancelled", "{p}");
    assert_eq!(fakes.count("POST", "/v1/refunds"), 0, "never sent");
}
