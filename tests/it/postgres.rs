//! The PostgreSQL store against a real private cluster (never a mock): migrations applied once
//! by replicas starting together, replicas that act as one gateway, a database that goes away.
//! The compare-and-sets every store must keep are checked in `store.rs`, here and on sled.

use std::sync::Arc;
use std::time::Duration;

use crate::support::pg::Cluster;
use crate::support::poll;
use toolgate::model::KillTarget;
use toolgate::store::{BudgetStore, KillStore, PgStore};

/// Two stores on the cluster's database, as two replicas hold them, each having run the
/// migrations at once with the other.
pub(crate) async fn two_replicas(cluster: &Cluster) -> (Arc<PgStore>, Arc<PgStore>) {
    let a = Arc::new(PgStore::connect(&cluster.url, cluster.dir()).unwrap());
    let b = Arc::new(PgStore::connect(&cluster.url, cluster.dir()).unwrap());
    // Both migrate at once: each version is applied exactly once.
    let (ma, mb) = tokio::join!(a.migrate(), b.migrate());
    let mut applied = ma.unwrap();
    applied.extend(mb.unwrap());
    applied.sort();
    let every: Vec<i32> = (1..=applied.len() as i32).collect();
    assert!(applied.len() >= 3, "{applied:?}");
    assert_eq!(applied, every, "each version applied once, by one of them");
    assert!(
        a.migrate().await.unwrap().is_empty(),
        "nothing left to apply"
    );
    (a, b)
}

#[tokio::test]
async fn a_lost_database_is_an_error_and_the_pool_reconnects() {
    let Some(cluster) = Cluster::start("a_lost_database_is_an_error_and_the_pool_reconnects")
    else {
        return;
    };
    let store = PgStore::connect(&cluster.url, cluster.dir()).unwrap();
    store.migrate().await.unwrap();
    store.budget_add("k", 1.0, 5.0).await.unwrap().unwrap();
    cluster.stop();
    // The database is gone: every call fails (the callers refuse the request), none hangs.
    let failed = tokio::time::timeout(Duration::from_secs(20), store.budget_get("k"))
        .await
        .expect("an answer, not a hang");
    let message = failed.unwrap_err().to_string();
    assert!(message.contains("postgres"), "{message}");
    assert!(!message.contains("password"), "{message}");
    // Back: the pool replaces its dead connections on its own.
    cluster.start_again();
    let answered = || async { store.budget_get("k").await.ok() };
    let what = "calls flow again once the database is back";
    let total = poll::until_some(what, Duration::from_secs(20), answered).await;
    assert_eq!(total, 1.0);
}

#[tokio::test]
async fn replicas_write_one_audit_chain_that_verifies_from_either() {
    let Some(cluster) = Cluster::start("replicas_write_one_audit_chain_that_verifies_from_either")
    else {
        return;
    };
    let (a, b) = two_replicas(&cluster).await;
    let (a, b): (toolgate::store::Store, toolgate::store::Store) = (a, b);
    let audit_a = Arc::new(toolgate::audit::Audit::open(&a).unwrap());
    let audit_b = Arc::new(toolgate::audit::Audit::open(&b).unwrap());
    // Both replicas record at once: their batches race for the same sequence numbers.
    let mut tasks = Vec::new();
    for (name, audit) in [("a", audit_a.clone()), ("b", audit_b.clone())] {
        tasks.push(tokio::spawn(async move {
            for i in 0..300 {
                audit
                    .record(toolgate::audit::Record {
                        kind: toolgate::audit::Kind::Request,
                        request_id: Some(format!("req_{name}_{i}")),
                        agent: Some(format!("agent-{name}")),
                        job: Some("job-shared".into()),
                        payload: serde_json::json!({"i": i}),
                        ..Default::default()
                    })
                    .await;
                if i % 50 == 0 {
                    tokio::task::yield_now().await;
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    // A durable record on B after A's writes: it chains after everything before it.
    audit_b
        .record_durable(toolgate::audit::Record {
            kind: toolgate::audit::Kind::Commit,
            request_id: Some("req_b_commit".into()),
            job: Some("job-shared".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(audit_a.close(Duration::from_secs(30)).await);
    assert!(audit_b.close(Duration::from_secs(30)).await);
    // One chain, 601 events, verified from either replica.
    let check_a = toolgate::audit::Audit::open(&a).unwrap();
    let check_b = toolgate::audit::Audit::open(&b).unwrap();
    assert_eq!(check_a.verify().unwrap(), 601);
    assert_eq!(check_b.verify().unwrap(), 601);
    // The story of a request written on A reads the same from B.
    let from_a: Vec<u64> = check_a
        .story("req_a_7")
        .unwrap()
        .iter()
        .map(|e| e.seq)
        .collect();
    let from_b: Vec<u64> = check_b
        .story("req_a_7")
        .unwrap()
        .iter()
        .map(|e| e.seq)
        .collect();
    assert_eq!(from_a.len(), 1);
    assert_eq!(from_a, from_b);
    assert_eq!(check_b.story("job-shared").unwrap().len(), 601);
}

/// Two in-process toolgates on the cluster's database with the example policies (and `extra`),
/// sharing the CA and seal key (`--certs`), as two replicas are deployed.
pub(crate) async fn two_gates(
    cluster: &Cluster,
    pki: &crate::support::Pki,
    upstream: std::net::SocketAddr,
    extra: &[(&str, String)],
) -> (crate::support::Toolgate, crate::support::Toolgate) {
    let url = cluster.url.clone();
    let a = crate::support::GateBuilder::examples()
        .policies(extra)
        .routed_to(pki, upstream)
        .config({
            let url = url.clone();
            move |c| c.database_url = Some(url)
        })
        .start()
        .await;
    let certs = a.dir.path().join("certs");
    let b = crate::support::GateBuilder::examples()
        .policies(extra)
        .routed_to(pki, upstream)
        .config(move |c| {
            c.database_url = Some(url);
            c.certs_dir = certs;
        })
        .start()
        .await;
    (a, b)
}

/// Two toolgates on one database, sharing the CA and seal key (`--certs`) and the policies, act
/// as one gateway: a call held on A is approved through B and completes on A; a kill switch
/// thrown on A refuses the next call on B; duplicates sent to both execute once.
#[tokio::test]
async fn two_replicas_act_as_one_gateway() {
    use crate::support::*;
    let Some(cluster) = Cluster::start("two_replicas_act_as_one_gateway") else {
        return;
    };
    let (pki, fakes) = example_apis().await;
    let (a, b) = two_gates(&cluster, &pki, fakes.addr, &[]).await;
    let agent = Some(("support-bot-staging", "demo-staging-token"));
    let via_a = client_via(a.addr, agent, &a.ca_pem, http::Version::HTTP_11);
    let via_b = client_via(b.addr, agent, &a.ca_pem, http::Version::HTTP_11);

    // 1. Held on A, approved through B's API: A sends it, once.
    let held = tokio::spawn(async move {
        send(
            &via_a,
            "POST",
            "https://api.stripe.com/v1/refunds",
            &[FORM, ("idempotency-key", "replica-refund-1")],
            "payment_intent=pi_replica&amount=100",
        )
        .await
        .unwrap()
    });
    let listed_on_b = || async {
        let path = "/api/proposals?state=pending";
        let list = b.admin("GET", path, Some("demo-carol-token"), None).await;
        let first = list.json()["proposals"].as_array()?.first()?.clone();
        first["id"].as_str().map(str::to_string)
    };
    if let Some(id) = poll::eventually(poll::SOON, listed_on_b).await {
        let path = format!("/api/proposals/{id}/approve");
        let comment = serde_json::json!({"comment": "from B"});
        let got = b
            .admin("POST", &path, Some("demo-carol-token"), Some(comment))
            .await;
        assert_eq!(got.status, 200, "{}", got.text());
    } else {
        let list = b
            .admin("GET", "/api/proposals", Some("demo-carol-token"), None)
            .await;
        let list_a = a
            .admin("GET", "/api/proposals", Some("demo-carol-token"), None)
            .await;
        panic!(
            "the proposal made on A is not listed on B: {} / on A: {} / the call: {}",
            list.text(),
            list_a.text(),
            held.await.unwrap().text()
        );
    }
    let answer = held.await.unwrap();
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(fakes.count("POST", "/v1/refunds"), 1);

    // 1b. A replica starting while another is sending takes only abandoned commits: one found
    //     `committing` since just now is left alone, one committing for long is outcome_unknown.
    {
        use toolgate::model::State;
        let store: toolgate::store::Store =
            Arc::new(PgStore::connect(&cluster.url, cluster.dir()).unwrap());
        let audit = toolgate::audit::Audit::open(&store).unwrap();
        let seen = store.proposal_list().await.unwrap().pop().unwrap();
        let mut p = seen.clone();
        p.state = State::Committing;
        p.committing_unix = Some(toolgate::base::now_unix());
        assert!(store.proposal_swap(&seen, &p).await.unwrap());
        p.version = seen.version + 1;
        let limit = Duration::from_secs(120);
        let n = toolgate::approval::recover(&store, &audit, limit)
            .await
            .unwrap();
        assert_eq!(n, 0, "a commit in progress elsewhere is not taken");
        let seen = p.clone();
        p.committing_unix = Some(toolgate::base::now_unix() - 1000);
        assert!(store.proposal_swap(&seen, &p).await.unwrap());
        let n = toolgate::approval::recover(&store, &audit, limit)
            .await
            .unwrap();
        assert_eq!(n, 1);
        let after = store.proposal_get(&p.id).await.unwrap().unwrap();
        assert_eq!(after.state, State::OutcomeUnknown);
        assert!(audit.close(Duration::from_secs(10)).await);
    }

    // 2. Twenty duplicates, half to each replica: one customer.
    let via_a = client_via(a.addr, agent, &a.ca_pem, http::Version::HTTP_11);
    let mut tasks = Vec::new();
    for i in 0..20 {
        let client = if i % 2 == 0 {
            via_a.clone()
        } else {
            via_b.clone()
        };
        tasks.push(tokio::spawn(async move {
            send(
                &client,
                "POST",
                "https://api.stripe.com/v1/customers",
                &[FORM, ("idempotency-key", "replica-dup-1")],
                "email=dup@acme.com",
            )
            .await
            .unwrap()
            .status
            .as_u16()
        }));
    }
    for t in tasks {
        let status = t.await.unwrap();
        assert!(status == 200 || status == 409, "{status}");
    }
    assert_eq!(
        fakes.count("POST", "/v1/customers"),
        1,
        "executed once across replicas"
    );

    // 3. A kill switch thrown on A refuses the next call on B (within a second).
    let got = a
        .admin(
            "POST",
            "/api/tools/stripe.customers.retrieve/disable",
            Some("demo-carol-token"),
            Some(serde_json::json!({"reason": "incident on A"})),
        )
        .await;
    assert_eq!(got.status, 200, "{}", got.text());
    let disabled = || async {
        let got = send(
            &via_b,
            "GET",
            "https://api.stripe.com/v1/customers/cus_1",
            &[],
            "",
        )
        .await
        .unwrap();
        got.code() == "tool_disabled"
    };
    let what = "B refuses the tool A disabled";
    poll::until(what, Duration::from_millis(1500), disabled).await;

    // The audit chain verifies from both, and reads the same once both replicas' batched
    // writers have written what they hold.
    let same = || async {
        let path = "/api/audit/verify";
        let va = a.admin("GET", path, Some("demo-carol-token"), None).await;
        let vb = b.admin("GET", path, Some("demo-carol-token"), None).await;
        let (va, vb) = (va.json(), vb.json());
        assert_eq!(va["ok"], true, "{va}");
        va == vb
    };
    let what = "A and B verify the same chain";
    poll::until(what, Duration::from_secs(5), same).await;

    // A token issued on A and revoked through B, a grant made and revoked through B: A
    // follows each (B's announcement, else its own copy going stale within a second).
    principals_follow_across_replicas(&a, &b, &fakes).await;

    // 4. The database stops: calls are refused with 503 store_unavailable (the audit log
    //    cannot be written), nothing reaches the API; it comes back: calls flow again, without
    //    a restart.
    let before = fakes.seen().len();
    cluster.stop();
    let unready = || async { a.admin("GET", "/readyz", None, None).await.status == 503 };
    poll::until("A finds the database gone", poll::SOON, unready).await;
    let read = "https://api.github.com/repos/acme/widgets";
    let got = send(&via_a, "GET", read, &[], "").await.unwrap();
    assert_eq!(
        (got.status.as_u16(), got.code().as_str()),
        (503, "store_unavailable"),
        "{}",
        got.text()
    );
    // The same refusal, whole, to an HTTP/2 client (a JSON error, not a reset stream).
    let via_a_h2 = client_via(a.addr, agent, &a.ca_pem, http::Version::HTTP_2);
    let got = send(&via_a_h2, "GET", read, &[], "").await.unwrap();
    assert_eq!(got.version, http::Version::HTTP_2);
    assert_eq!(
        (got.status.as_u16(), got.code().as_str()),
        (503, "store_unavailable"),
        "{}",
        got.text()
    );
    assert_eq!(
        fakes.seen().len(),
        before,
        "nothing was sent while the database was gone"
    );
    cluster.start_again();
    let flowing = || async { send(&via_a, "GET", read, &[], "").await.unwrap().status == 200 };
    let what = "calls flow again once the database is back";
    poll::until(what, Duration::from_secs(20), flowing).await;
}

#[tokio::test]
async fn what_one_replica_announces_the_others_hear() {
    use toolgate::store::{Backend, Topic};
    let Some(cluster) = Cluster::start("what_one_replica_announces_the_others_hear") else {
        return;
    };
    let (a, b) = two_replicas(&cluster).await;
    let mut heard = b.subscribe().expect("a shared store can be listened to");
    // The listener connects in the background: announce until it hears (bounded).
    let mut got = None;
    for _ in 0..50 {
        a.announce(&Topic::Proposal("prop_1".into())).await.unwrap();
        if let Ok(Some(topic)) =
            tokio::time::timeout(Duration::from_millis(200), heard.recv()).await
        {
            got = Some(topic);
            break;
        }
    }
    assert_eq!(got, Some(Topic::Proposal("prop_1".into())));
    a.announce(&Topic::Kill).await.unwrap();
    let next = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match heard.recv().await {
                Some(Topic::Kill) => return true,
                Some(_) => continue,
                None => return false,
            }
        }
    })
    .await;
    assert_eq!(next.ok(), Some(true), "the kill announcement arrives");
}

#[tokio::test]
async fn the_database_connection_is_tls_when_the_url_asks_and_never_unverified() {
    let Some(cluster) = Cluster::start("the_database_connection_is_tls_when_the_url_asks") else {
        return;
    };
    let pki = crate::support::Pki::new("database CA");
    let (cert, key) = pki.server_pem(&["localhost", "127.0.0.1"]);
    cluster.enable_tls(&cert, &key);
    let seal = cluster.dir().join("seal");
    let ca = pki.ca_path.display();

    // Verified TLS: the store works and every connection it holds is encrypted.
    for mode in ["require", "verify-full"] {
        let url = format!("{}?sslmode={mode}&sslrootcert={ca}", cluster.url);
        let store = PgStore::connect(&url, &seal).unwrap();
        store.migrate().await.unwrap();
        let target = KillTarget::Tool("stripe.refunds.create".into());
        store.kill_set(&target, None).await.unwrap();
        let plain = cluster.psql(
            "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
             WHERE a.usename = 'toolgate' AND a.pid <> pg_backend_pid() AND NOT s.ssl",
        );
        assert_eq!(plain, "0", "sslmode={mode}: no connection without TLS");
        let encrypted = cluster.psql("SELECT count(*) FROM pg_stat_ssl WHERE ssl");
        assert_ne!(
            encrypted, "0",
            "sslmode={mode}: the store's connections use TLS"
        );
    }

    // A certificate toolgate cannot verify is refused, whether TLS was required or only
    // preferred (the default): never a connection to a server it cannot authenticate.
    for url in [
        format!("{}?sslmode=require", cluster.url),
        cluster.url.clone(),
    ] {
        let store = PgStore::connect(&url, &seal).unwrap();
        let err = store.migrate().await.unwrap_err().to_string();
        assert!(err.contains("certificate"), "{url}: {err}");
    }
    // A name the certificate does not carry is refused too (verify-full is what every mode does).
    let pki_other = crate::support::Pki::new("another CA");
    let url = format!(
        "{}?sslmode=require&sslrootcert={}",
        cluster.url.replace("127.0.0.1", "localhost"),
        pki_other.ca_path.display()
    );
    let err = PgStore::connect(&url, &seal)
        .unwrap()
        .migrate()
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("certificate"), "{err}");
    // A root file that is not there is an error at start, naming the option.
    let url = format!("{}?sslrootcert=/nonexistent/ca.pem", cluster.url);
    let err = PgStore::connect(&url, &seal).err().unwrap().to_string();
    assert!(err.contains("sslrootcert"), "{err}");
    // sslmode=disable stays plain, as asked.
    let url = format!("{}?sslmode=disable", cluster.url);
    PgStore::connect(&url, &seal)
        .unwrap()
        .migrate()
        .await
        .unwrap();
}

#[tokio::test]
async fn a_single_toolgate_moves_its_open_state_to_the_database() {
    use crate::support::*;
    let Some(cluster) = Cluster::start("a_single_toolgate_moves_its_open_state") else {
        return;
    };
    let (pki, fakes) = example_apis().await;
    let one = GateBuilder::examples()
        .routed_to(&pki, fakes.addr)
        .start()
        .await;
    let agent = Some(("support-bot-staging", "demo-staging-token"));
    let via = client_via(one.addr, agent, &one.ca_pem, http::Version::HTTP_11);
    let refund = |client: TestClient| async move {
        send(
            &client,
            "POST",
            "https://api.stripe.com/v1/refunds",
            &[FORM, ("idempotency-key", "import-refund-1")],
            "payment_intent=pi_import&amount=100",
        )
        .await
        .unwrap()
    };
    let customer = |client: TestClient| async move {
        send(
            &client,
            "POST",
            "https://api.stripe.com/v1/customers",
            &[FORM, ("idempotency-key", "import-customer-1")],
            "email=moved@acme.com",
        )
        .await
        .unwrap()
    };

    // On sled: a held refund (its agent gave up waiting), a committed call, a kill switch.
    let held = tokio::spawn(refund(via.clone()));
    let listed = || async {
        let path = "/api/proposals?state=pending";
        let list = one.admin("GET", path, Some("demo-carol-token"), None).await;
        let pending = list.json()["proposals"].as_array().cloned()?;
        (!pending.is_empty()).then_some(pending)
    };
    let pending = poll::until_some("the refund is held", poll::SOON, listed).await;
    assert_eq!(pending.len(), 1, "the refund is held");
    held.abort();
    assert_eq!(customer(via.clone()).await.status, 200);
    let got = one
        .admin(
            "POST",
            "/api/tools/stripe.customers.retrieve/disable",
            Some("demo-carol-token"),
            Some(serde_json::json!({"reason": "before the move"})),
        )
        .await;
    assert_eq!(got.status, 200, "{}", got.text());
    let dir = one.into_dir().await;

    // The import, twice: the second finds everything there and changes nothing.
    let import = || {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_toolgate"))
            .args(["db", "import", "--database-url", &cluster.url, "--data-dir"])
            .arg(dir.path().join("data"))
            .arg("--certs")
            .arg(dir.path().join("certs"))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        text
    };
    let first = import();
    assert!(
        first.contains("imported 1 proposals, 1 kill switches"),
        "{first}"
    );
    assert!(first.contains("events verified"), "{first}");
    let second = import();
    assert!(
        second.contains("imported 0 proposals, 0 kill switches, 0 idempotency"),
        "{second}"
    );

    // A replica on the database carries on where the single toolgate stopped.
    let url = cluster.url.clone();
    let replica = GateBuilder::reopen(dir)
        .routed_to(&pki, fakes.addr)
        .config(move |c| {
            c.reload_interval = Duration::from_millis(100);
            c.database_url = Some(url);
        })
        .start()
        .await;
    let via = client_via(replica.addr, agent, &replica.ca_pem, http::Version::HTTP_11);
    let id = pending[0]["id"].as_str().unwrap();
    let got = replica
        .admin(
            "POST",
            &format!("/api/proposals/{id}/approve"),
            Some("demo-carol-token"),
            Some(serde_json::json!({"comment": "approved after the move"})),
        )
        .await;
    assert_eq!(got.status, 200, "{}", got.text());
    let answer = refund(via.clone()).await;
    assert_eq!(
        answer.status,
        200,
        "the same call joins its proposal: {}",
        answer.text()
    );
    assert_eq!(
        fakes.count("POST", "/v1/refunds"),
        1,
        "sent once, with its sealed headers"
    );
    assert_eq!(customer(via.clone()).await.status, 200);
    assert_eq!(
        fakes.count("POST", "/v1/customers"),
        1,
        "answered from the imported record"
    );
    let got = send(
        &via,
        "GET",
        "https://api.stripe.com/v1/customers/cus_1",
        &[],
        "",
    )
    .await
    .unwrap();
    assert_eq!(got.code(), "tool_disabled", "{}", got.text());
    let events = audit_events(&replica, "kind=store.import").await;
    assert_eq!(events.len(), 2, "each import is in the new chain");
    assert_eq!(events[0]["payload"]["proposals"], 1);
    assert!(events[0]["payload"]["source_audit"]["last_hash"]
        .as_str()
        .is_some_and(|h| h.len() == 64));
}

#[tokio::test]
async fn an_issued_token_and_its_revocation_hold_across_replicas() {
    use toolgate::store::TokenStore;
    let Some(cluster) = Cluster::start("an_issued_token_and_its_revocation_hold") else {
        return;
    };
    let (a, b) = two_replicas(&cluster).await;
    let now = toolgate::base::now_unix();
    let mut token = toolgate::model::AgentToken {
        id: "tok_1".into(),
        agent: "support-bot-staging".into(),
        job: Some("job-1".into()),
        sha256: "ab".repeat(32),
        issued_by: "dave@example.com".into(),
        issued_unix: now,
        expires_unix: now + 60,
        revoked: false,
        user: None,
    };
    a.token_put(&token).await.unwrap();
    let found = b.token_by_hash(&"ab".repeat(32)).await.unwrap().unwrap();
    assert!(found.live(now) && found.job.as_deref() == Some("job-1"));
    token.revoked = true;
    b.token_put(&token).await.unwrap();
    assert!(!a.token_get("tok_1").await.unwrap().unwrap().live(now));
    assert_eq!(a.token_list(now).await.unwrap().len(), 1);
    assert!(a.token_list(now + 61).await.unwrap().is_empty());
}

#[tokio::test]
async fn a_grant_is_seen_by_every_replica_and_ended_once() {
    use toolgate::store::GrantStore;
    let Some(cluster) = Cluster::start("a_grant_is_seen_by_every_replica") else {
        return;
    };
    let (a, b) = two_replicas(&cluster).await;
    let now = toolgate::base::now_unix();
    let grant = toolgate::model::Grant {
        id: "grant_1".into(),
        agent: "support-bot-prod".into(),
        tool: "stripe.payment_intents.create".into(),
        granted_by: "dave@example.com".into(),
        reason: "incident 42".into(),
        created_unix: now,
        until_unix: now + 60,
        ended: None,
    };
    a.grant_put(&grant).await.unwrap();
    assert_eq!(
        b.grant_open(Some("support-bot-prod")).await.unwrap(),
        vec![grant.clone()]
    );
    assert!(b
        .grant_open(Some("support-bot-staging"))
        .await
        .unwrap()
        .is_empty());
    // Both replicas end it at once (an expiry timer on each, say): one of them does.
    let ends = (0..8).map(|i| {
        let store = if i % 2 == 0 { a.clone() } else { b.clone() };
        async move {
            let end = toolgate::model::GrantEnd {
                how: "expired".into(),
                by: format!("replica-{i}"),
                at_unix: now,
            };
            store.grant_end("grant_1", end).await.unwrap()
        }
    });
    let ended: Vec<_> = futures_util::future::join_all(ends)
        .await
        .into_iter()
        .flatten()
        .collect();
    assert_eq!(ended.len(), 1, "ended exactly once: {ended:?}");
    assert!(a.grant_open(None).await.unwrap().is_empty());
    let stored = b.grant_get("grant_1").await.unwrap().unwrap();
    assert_eq!(stored.ended, ended[0].ended);
    assert!(!stored.live(now));
}

/// Sends `method url` through `gate` as `agent` on one tunnel until the answer's status is `want`
/// (polled, bounded); the last status (407 when the tunnel itself is refused).
async fn until_status(
    gate: &crate::support::Toolgate,
    agent: (&str, &str),
    (method, url, headers, body): (&str, &str, &[(&str, &str)], &str),
    want: u16,
) -> u16 {
    let client =
        crate::support::client_via(gate.addr, Some(agent), &gate.ca_pem, http::Version::HTTP_11);
    let last = std::cell::Cell::new(0);
    let answered = || async {
        let status = match crate::support::send(&client, method, url, headers, body).await {
            Ok(a) => a.status.as_u16(),
            Err(e) if format!("{e:?}").contains("ProxyAuthRequired") => 407,
            Err(e) => panic!("{e:?}"),
        };
        last.set(status);
        (status == want).then_some(status)
    };
    let within = poll::SOON;
    let got = poll::eventually(within, answered).await;
    got.unwrap_or(last.get())
}

async fn principals_follow_across_replicas(
    a: &crate::support::Toolgate,
    b: &crate::support::Toolgate,
    fakes: &crate::support::fakes::Fakes,
) {
    const DAVE: &str = "demo-dave-token";
    let issued = a
        .admin(
            "POST",
            "/api/agents/support-bot-staging/tokens",
            Some(DAVE),
            Some(serde_json::json!({"ttl": "10m"})),
        )
        .await
        .json();
    let (id, token) = (
        issued["id"].as_str().unwrap(),
        issued["token"].as_str().unwrap(),
    );
    let read = (
        "GET",
        "https://api.github.com/repos/acme/widgets",
        &[][..],
        "",
    );
    let staging = ("support-bot-staging", token);
    assert_eq!(until_status(a, staging, read, 200).await, 200);
    let revoked = b
        .admin("DELETE", &format!("/api/tokens/{id}"), Some(DAVE), None)
        .await;
    assert_eq!(revoked.status, 200, "{}", revoked.text());
    assert_eq!(
        until_status(a, staging, read, 407).await,
        407,
        "A refuses it"
    );

    let prod = ("support-bot-prod", "demo-prod-token");
    let form = [crate::support::FORM, ("idempotency-key", "replica-grant")];
    let create = (
        "POST",
        "https://api.stripe.com/v1/payment_intents",
        &form[..],
        "amount=500&currency=usd",
    );
    assert_eq!(until_status(a, prod, create, 403).await, 403);
    let granted = b
        .admin(
            "POST",
            "/api/grants",
            Some(DAVE),
            Some(serde_json::json!({"agent": "support-bot-prod",
                "tool": "stripe.payment_intents.create", "for": "10m", "reason": "replicas"})),
        )
        .await;
    assert_eq!(granted.status, 201, "{}", granted.text());
    assert_eq!(until_status(a, prod, create, 200).await, 200, "A lends it");
    let grant = granted.json()["id"].as_str().unwrap().to_string();
    let revoked = b
        .admin("DELETE", &format!("/api/grants/{grant}"), Some(DAVE), None)
        .await;
    assert_eq!(revoked.status, 200, "{}", revoked.text());
    let other = [crate::support::FORM, ("idempotency-key", "replica-grant-2")];
    let again = ("POST", create.1, &other[..], create.3);
    assert_eq!(
        until_status(a, prod, again, 403).await,
        403,
        "A stops lending it"
    );
    // Until A hears of the revocation (or its copy goes stale, within a second) the second
    // call may go out, once: its idempotency key keeps the retries from sending it again.
    let sent = fakes.count("POST", "/v1/payment_intents");
    assert!((1..=2).contains(&sent), "sent {sent} times");
}

/// Three `toolgate serve` processes on one database, with more approvers of refunds than the
/// examples have.
struct Replicas {
    _base: tempfile::TempDir,
    running: Vec<crate::support::process::Started>,
    ca_pem: String,
}

impl Replicas {
    fn admin(&self, i: usize) -> std::net::SocketAddr {
        self.running[i].2.parse().unwrap()
    }

    fn agent(&self, i: usize) -> crate::support::TestClient {
        crate::support::client_via(
            self.running[i].1,
            Some(("support-bot-staging", "demo-staging-token")),
            &self.ca_pem,
            http::Version::HTTP_11,
        )
    }
}

/// Approvers of refunds, beside carol: (id, token).
const RACERS: [(&str, &str); 2] = [
    ("erin@example.com", "race-erin-token"),
    ("frank@example.com", "race-frank-token"),
];

async fn three_replicas(
    cluster: &Cluster,
    fakes: &crate::support::fakes::Fakes,
    pki: &crate::support::Pki,
) -> Replicas {
    use crate::support::process::{copy_dir, start_serve};
    use sha2::Digest;
    let base = tempfile::tempdir().unwrap();
    let policies = base.path().join("policies");
    copy_dir(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policies"),
        &policies,
    );
    let mut agents = std::fs::read_to_string(policies.join("agents.toml")).unwrap();
    for (id, token) in RACERS {
        let sha = hex::encode(sha2::Sha256::digest(token.as_bytes()));
        agents.push_str(&format!(
            "\n[[approver]]\nid = \"{id}\"\ntoken_sha256 = \"{sha}\"\ngroups = [\"payments-leads\"]\n"
        ));
    }
    std::fs::write(policies.join("agents.toml"), agents).unwrap();
    std::fs::create_dir_all(base.path().join("certs")).unwrap();
    let upstream = format!("api.stripe.com:443={}", fakes.addr);
    let ca = pki.ca_path.to_string_lossy().into_owned();
    let mut running = Vec::new();
    for i in 0..3 {
        // Each replica its own data dir; the policies and the CA (and seal key) are shared.
        let dir = base.path().join(format!("replica-{i}"));
        std::fs::create_dir_all(&dir).unwrap();
        std::os::unix::fs::symlink(&policies, dir.join("policies")).unwrap();
        std::os::unix::fs::symlink(base.path().join("certs"), dir.join("certs")).unwrap();
        running.push(start_serve(
            env!("CARGO_BIN_EXE_toolgate"),
            &dir,
            &[
                "--database-url",
                &cluster.url,
                "--connect-to",
                &upstream,
                "--upstream-ca",
                &ca,
            ],
        ));
    }
    let ca_pem = std::fs::read_to_string(base.path().join("certs/ca.pem")).unwrap();
    Replicas {
        _base: base,
        running,
        ca_pem,
    }
}

/// Holds a slow refund of `pi` on replica 0; returns the held call and its proposal's id.
async fn hold_refund(
    r: &Replicas,
    pi: &str,
) -> (tokio::task::JoinHandle<crate::support::Answer>, String) {
    let client = r.agent(0);
    let body = refund_body(pi);
    let held = tokio::spawn(async move {
        crate::support::send(
            &client,
            "POST",
            "https://api.stripe.com/v1/refunds",
            &[crate::support::FORM, ("idempotency-key", "race-first-try")],
            body,
        )
        .await
        .unwrap()
    });
    (held, crate::support::pending_proposal(r.admin(0), pi).await)
}

fn refund_body(pi: &str) -> String {
    format!("payment_intent={pi}&amount=100&metadata[note]=slow-upstream")
}

/// How many refunds of `pi` the upstream received.
fn refunds_of(fakes: &crate::support::fakes::Fakes, pi: &str) -> usize {
    fakes
        .seen()
        .iter()
        .filter(|s| s.method == "POST" && s.path == "/v1/refunds" && s.body.contains(pi))
        .count()
}

async fn decide_at(
    admin: std::net::SocketAddr,
    token: &'static str,
    id: &str,
    action: &str,
) -> crate::support::Answer {
    let path = format!("/api/proposals/{id}/{action}");
    let body = serde_json::json!({"comment": format!("race {action}")});
    crate::support::admin_at(admin, "POST", &path, Some(token), Some(body)).await
}

async fn proposal_at(r: &Replicas, i: usize, id: &str) -> serde_json::Value {
    crate::support::admin_at(
        r.admin(i),
        "GET",
        &format!("/api/proposals/{id}"),
        Some("demo-carol-token"),
        None,
    )
    .await
    .json()
}

/// The kinds of the events in a proposal's story, as replica `i` reads it.
async fn story_kinds(r: &Replicas, i: usize, id: &str) -> Vec<String> {
    let story = crate::support::admin_at(
        r.admin(i),
        "GET",
        &format!("/api/audit/story/{id}"),
        Some("demo-carol-token"),
        None,
    )
    .await
    .json();
    story["events"]
        .as_array()
        .map(|events| {
            events
                .iter()
                .filter_map(|e| e["kind"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Issue 23, rows 1 and 2: three replica processes on one PostgreSQL database. Three
/// approvers approve one slow refund at the same moment on three replicas while the agent
/// sends it again on two of them: it is sent once, committed once, and every other decision
/// gets 409. A denial racing an approval on another replica is final: either the denial wins
/// and nothing is sent, or the commit had started and the denial gets 409; never both.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_decisions_on_replica_processes_send_once_and_deny_is_final() {
    let Some(cluster) = Cluster::start("racing_decisions_on_replica_processes") else {
        return;
    };
    let pki = crate::support::Pki::new("test upstream CA");
    let fakes = crate::support::fakes::Fakes::start(
        pki.server_config(&["api.stripe.com"]),
        crate::support::fakes::Keys::examples(),
    )
    .await;
    let r = three_replicas(&cluster, &fakes, &pki).await;
    let approvers = [
        ("carol@example.com", "demo-carol-token"),
        RACERS[0],
        RACERS[1],
    ];

    // Row 1, a bounded number of trials (the refunds' rate limit is 10 a minute).
    for trial in 0..4 {
        let pi = format!("pi_race_{trial}");
        let (held, id) = hold_refund(&r, &pi).await;
        let start = Arc::new(tokio::sync::Barrier::new(5));
        let mut approvals = Vec::new();
        for (i, (_, token)) in approvers.iter().enumerate() {
            let (admin, id, start, token) = (r.admin(i), id.clone(), start.clone(), *token);
            approvals.push(tokio::spawn(async move {
                start.wait().await;
                decide_at(admin, token, &id, "approve").await
            }));
        }
        let mut resends = Vec::new();
        for i in 1..3 {
            let (client, body, start) = (r.agent(i), refund_body(&pi), start.clone());
            resends.push(tokio::spawn(async move {
                start.wait().await;
                let key = format!("race-retry-{i}");
                crate::support::send(
                    &client,
                    "POST",
                    "https://api.stripe.com/v1/refunds",
                    &[crate::support::FORM, ("idempotency-key", key.as_str())],
                    body,
                )
                .await
                .unwrap()
            }));
        }
        let mut won = 0;
        for a in approvals {
            let a = a.await.unwrap();
            match a.status.as_u16() {
                200 => won += 1,
                409 => assert_eq!(a.json()["error"]["code"], "invalid_state", "{}", a.text()),
                other => panic!("trial {trial}: an approval got {other}: {}", a.text()),
            }
        }
        assert_eq!(
            won, 1,
            "trial {trial}: one approval of a one-approval proposal"
        );
        let held = held.await.unwrap();
        assert_eq!(held.status, 200, "trial {trial}: {}", held.text());
        for resend in resends {
            let resend = resend.await.unwrap();
            // Joined the proposal: its stored answer, or still being sent when the hold ended.
            assert!(
                resend.status == 200 || resend.status == 423,
                "trial {trial}: a resend got {}: {}",
                resend.status,
                resend.text()
            );
        }
        assert_eq!(
            refunds_of(&fakes, &pi),
            1,
            "trial {trial}: sent exactly once"
        );
        let p = proposal_at(&r, 2, &id).await;
        assert_eq!(p["state"], "committed", "trial {trial}: {p}");
        let kinds = story_kinds(&r, 1, &id).await;
        let count = |k: &str| kinds.iter().filter(|x| *x == k).count();
        assert_eq!(count("approval"), 1, "trial {trial}: {kinds:?}");
        assert_eq!(count("commit"), 1, "trial {trial}: {kinds:?}");
    }

    // Row 2: deny on replica 0 and approve on replica 1 at the same moment.
    let mut outcomes = std::collections::BTreeSet::new();
    for trial in 0..4 {
        let pi = format!("pi_deny_race_{trial}");
        let (held, id) = hold_refund(&r, &pi).await;
        let start = Arc::new(tokio::sync::Barrier::new(2));
        let deny = {
            let (admin, id, start) = (r.admin(0), id.clone(), start.clone());
            tokio::spawn(async move {
                start.wait().await;
                decide_at(admin, "demo-carol-token", &id, "deny").await
            })
        };
        let approve = {
            let (admin, id, start) = (r.admin(1), id.clone(), start.clone());
            tokio::spawn(async move {
                start.wait().await;
                decide_at(admin, RACERS[0].1, &id, "approve").await
            })
        };
        let (deny, approve) = (deny.await.unwrap(), approve.await.unwrap());
        let held = held.await.unwrap();
        let p = proposal_at(&r, 2, &id).await;
        let statuses = (deny.status.as_u16(), approve.status.as_u16());
        outcomes.insert(statuses);
        match statuses {
            // The denial landed before any commit started: final, nothing sent, whatever the
            // approval got (409 naming `denied`, or 200 just before the denial).
            (200, a) => {
                assert!(a == 200 || a == 409, "trial {trial}: approve {a}");
                if a == 409 {
                    assert!(approve.text().contains("denied"), "{}", approve.text());
                }
                assert_eq!(p["state"], "denied", "trial {trial}: {p}");
                assert_eq!(held.status, 403, "trial {trial}: {}", held.text());
                assert_eq!(held.json()["error"]["code"], "approval_denied");
                // The agent sending it again is refused too, on any replica.
                let again = crate::support::send(
                    &r.agent(2),
                    "POST",
                    "https://api.stripe.com/v1/refunds",
                    &[crate::support::FORM, ("idempotency-key", "race-after-deny")],
                    refund_body(&pi),
                )
                .await
                .unwrap();
                assert_eq!(again.status, 403, "{}", again.text());
                assert_eq!(
                    refunds_of(&fakes, &pi),
                    0,
                    "trial {trial}: a denied call is never sent"
                );
            }
            // The commit had started: the denial gets 409 naming that state; sent once.
            (409, 200) => {
                let text = deny.text();
                assert!(
                    text.contains("committing") || text.contains("committed"),
                    "trial {trial}: {text}"
                );
                assert_eq!(held.status, 200, "{}", held.text());
                assert_eq!(p["state"], "committed", "trial {trial}: {p}");
                assert_eq!(refunds_of(&fakes, &pi), 1);
            }
            other => panic!(
                "trial {trial}: deny and approve answered {other:?}: {} / {}",
                deny.text(),
                approve.text()
            ),
        }
    }
    eprintln!("deny/approve outcomes seen: {outcomes:?}");
}

const THINGS: &str = r#"
[[tool]]
name = "stripe.things.get"
host = "api.stripe.com"
method = "GET"
path = "/v1/things/{id}"
credential = { staging = "stripe-test" }

[[tool]]
name = "stripe.delayed.get"
host = "api.stripe.com"
method = "GET"
path = "/delay/{ms}"
credential = { staging = "stripe-test" }
"#;

/// One read of thing `i` through `client`: its status, error code (if refused) and request id.
async fn read_thing(client: &crate::support::TestClient, i: usize) -> (u16, String, String) {
    let url = format!("https://api.stripe.com/v1/things/t{i}");
    let got = crate::support::send(client, "GET", &url, &[], "")
        .await
        .unwrap();
    let code = match got.status.as_u16() {
        200 => String::new(),
        _ => got.code(),
    };
    let id = got.headers["toolgate-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    (got.status.as_u16(), code, id)
}

/// Audit before forward on PostgreSQL: while the database is stopped, reads are refused with
/// 503 `store_unavailable` and nothing more reaches the upstream; the events of reads forwarded
/// as it stopped are kept and written once it is back; then every request the upstream got has
/// its event, and the chain verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_database_stopped_nothing_is_forwarded_and_no_event_is_lost() {
    use crate::support::*;
    let Some(cluster) =
        Cluster::start("with_the_database_stopped_nothing_is_forwarded_and_no_event_is_lost")
    else {
        return;
    };
    let cluster = Arc::new(cluster);
    let url = cluster.url.clone();
    let extra = [("things.toml", THINGS.to_string())];
    let (_pki, upstream, gate) = GateBuilder::examples()
        .policies(&extra)
        .config(move |c| {
            c.database_url = Some(url);
            c.upstream_timeout = Duration::from_secs(10);
        })
        .with_upstream()
        .await;
    let client = staging(&gate);
    let mut answered = Vec::new();
    for i in 0..5 {
        let got = read_thing(&client, i).await;
        assert_eq!(got.0, 200, "{got:?}");
        answered.push(got);
    }

    // Slow reads are in flight as the database stops: forwarded before, answered after.
    let slow: Vec<_> = (0..3)
        .map(|i| {
            let client = staging(&gate);
            tokio::spawn(async move {
                let url = format!("https://api.stripe.com/delay/{}", 1500 + i);
                let got = send(&client, "GET", &url, &[], "").await.unwrap();
                assert_eq!(got.status, 200, "{}", got.text());
                let id = got.headers["toolgate-request-id"].to_str().unwrap();
                (200u16, String::new(), id.to_string())
            })
        })
        .collect();
    // Reads keep coming while the database stops (some are in flight as it goes).
    let reader = {
        let (addr, ca) = (gate.addr, gate.ca_pem.clone());
        tokio::spawn(async move {
            let client = client_via(
                addr,
                Some(("support-bot-staging", "demo-staging-token")),
                &ca,
                http::Version::HTTP_11,
            );
            let mut got = Vec::new();
            for i in 100..400 {
                got.push(read_thing(&client, i).await);
                if got
                    .iter()
                    .rev()
                    .take(5)
                    .filter(|g| g.1 == "store_unavailable")
                    .count()
                    == 5
                {
                    break;
                }
                // A sleep: the pace of reads that keep coming while the database stops.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            got
        })
    };
    let forwarded = || {
        let slow = upstream
            .received()
            .iter()
            .filter(|r| r.path.starts_with("/delay/"))
            .count();
        std::future::ready(slow == 3)
    };
    poll::until("the slow reads are forwarded", poll::SOON, forwarded).await;
    let c = cluster.clone();
    tokio::task::spawn_blocking(move || c.stop()).await.unwrap();
    let during = reader.await.unwrap();
    assert!(
        during
            .iter()
            .rev()
            .take(5)
            .all(|g| g.1 == "store_unavailable"),
        "reads are refused once the database is gone: {during:?}"
    );
    for g in &during {
        assert!(
            matches!(
                (g.0, g.1.as_str()),
                (200, "") | (503, "store_unavailable") | (503, "internal_error")
            ),
            "{g:?}"
        );
    }
    answered.extend(during.iter().filter(|g| g.0 == 200).cloned());
    for read in slow {
        answered.push(read.await.unwrap());
    }

    // Stopped: every read is refused, and nothing more reaches the upstream.
    let sent = upstream.count();
    for i in 500..510 {
        let got = read_thing(&client, i).await;
        assert_eq!(
            (got.0, got.1.as_str()),
            (503, "store_unavailable"),
            "{got:?}"
        );
    }
    // A sleep: a window in which a read forwarded behind its refusal would show.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        upstream.count(),
        sent,
        "nothing was forwarded while the log could not be written"
    );
    // Alive, but not ready: a load balancer sends agents elsewhere; nothing restarts it.
    let ready = gate.admin("GET", "/readyz", None, None).await;
    assert_eq!(ready.status, 503, "{}", ready.text());
    assert_eq!(ready.json()["error"]["code"], "store_unavailable");
    assert_eq!(gate.admin("GET", "/healthz", None, None).await.status, 200);

    // Back: reads flow again without a restart.
    let c = cluster.clone();
    tokio::task::spawn_blocking(move || c.start_again())
        .await
        .unwrap();
    let mut i = 600;
    let flowing = || {
        i += 1;
        let read = read_thing(&client, i);
        async move {
            let got = read.await;
            if got.0 != 200 {
                assert_eq!(got.1, "store_unavailable", "{got:?}");
            }
            (got.0 == 200).then_some(got)
        }
    };
    let what = "reads flow again once the database is back";
    answered.push(poll::until_some(what, Duration::from_secs(20), flowing).await);

    // The events of the reads answered while the database was gone were refused by it, kept,
    // and written again.
    let metrics = gate
        .admin("GET", "/metrics", Some("demo-carol-token"), None)
        .await
        .text();
    let failures: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("toolgate_audit_write_failures_total "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(failures > 0, "{metrics}");
    assert!(metrics.contains("toolgate_audit_writable 1"), "{metrics}");
    let ready = gate.admin("GET", "/readyz", None, None).await;
    assert_eq!(ready.status, 200, "{}", ready.text());

    // Every request the upstream received has its event (written once the log could be),
    // matched by its path, and every answered one by its request id.
    let paths: Vec<String> = upstream.received().iter().map(|r| r.path.clone()).collect();
    assert!(paths.len() > 5, "{paths:?}");
    let missing = |all: &[serde_json::Value]| -> Vec<String> {
        let told = |p: &String| {
            all.iter().any(|e| {
                e["kind"] == "request"
                    && e["payload"]["path"] == p.as_str()
                    && e["payload"]["response"]["status"] == 200
            })
        };
        paths.iter().filter(|p| !told(p)).cloned().collect()
    };
    let all_told = || async {
        let all = exported(&gate).await;
        missing(&all).is_empty().then_some(all)
    };
    let Some(all) = poll::eventually(poll::SOON, all_told).await else {
        let missing = missing(&exported(&gate).await);
        panic!("forwarded without an event: {missing:?}");
    };
    for (_, _, id) in &answered {
        assert!(
            all.iter()
                .any(|e| e["request_id"] == id.as_str() && e["kind"] == "request"),
            "no event for {id}"
        );
    }
    // Each forwarded request is told once, and the chain verifies.
    for p in &paths {
        let told = all
            .iter()
            .filter(|e| e["kind"] == "request" && e["payload"]["path"] == p.as_str())
            .count();
        assert_eq!(told, 1, "{p}");
    }
    let v = gate
        .admin("GET", "/api/audit/verify", Some("demo-carol-token"), None)
        .await
        .json();
    assert_eq!(v["ok"], true, "{v}");
}

/// An undo is sent at most once across replicas: two approvers undoing one call at the same
/// moment through two replicas get one undo sent (200) and one 409 naming it under way or done.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_undos_on_two_replicas_send_one() {
    use crate::support::*;
    let Some(cluster) = Cluster::start("racing_undos_on_two_replicas_send_one") else {
        return;
    };
    let (pki, fakes) = example_apis().await;
    let (a, b) = two_gates(&cluster, &pki, fakes.addr, &[]).await;
    let agent = client_via(
        a.addr,
        Some(("support-bot-staging", "demo-staging-token")),
        &a.ca_pem,
        http::Version::HTTP_11,
    );
    for trial in 0..5 {
        let key = format!("undo-race-{trial}");
        let created = send(
            &agent,
            "POST",
            "https://api.stripe.com/v1/customers",
            &[FORM, ("idempotency-key", key.as_str())],
            format!("email=undo{trial}%40acme.com"),
        )
        .await
        .unwrap();
        assert_eq!(created.status, 200, "{}", created.text());
        let rid = created.headers["toolgate-request-id"]
            .to_str()
            .unwrap()
            .to_string();
        let start = Arc::new(tokio::sync::Barrier::new(2));
        let undo = |addr: std::net::SocketAddr| {
            let (start, path) = (start.clone(), format!("/api/rollback/{rid}"));
            tokio::spawn(async move {
                start.wait().await;
                admin_at(addr, "POST", &path, Some("demo-carol-token"), None).await
            })
        };
        let (on_a, on_b) = (undo(a.admin_addr), undo(b.admin_addr));
        let mut statuses = vec![
            on_a.await.unwrap().status.as_u16(),
            on_b.await.unwrap().status.as_u16(),
        ];
        statuses.sort();
        assert_eq!(statuses, vec![200, 409], "trial {trial}");
    }
    assert_eq!(
        fakes.count("DELETE", "/v1/customers/"),
        5,
        "one undo sent per call"
    );
}

/// Issue 25: with `send = "on_approval"` (the example refunds) the approval itself sends the
/// call. Two in-process gateways on one database: approvals on both at once, while the call is
/// held on A and sent again through B: one approval wins, its commit sends the refund once, and
/// whoever else claims it (the held call, the resend) gets its answer without sending again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn approvals_racing_on_two_gateways_send_an_on_approval_call_once() {
    use crate::support::*;
    let Some(cluster) = Cluster::start("approvals_racing_on_two_gateways") else {
        return;
    };
    let (pki, fakes) = example_apis().await;
    let erin = vec![(
        "erin.toml",
        format!(
            "[[approver]]\nid = \"erin@example.com\"\ntoken_sha256 = \"{}\"\ngroups = [\"payments-leads\"]\n",
            sha256_hex("erin-token")
        ),
    )];
    let (a, b) = two_gates(&cluster, &pki, fakes.addr, &erin).await;
    let agent = Some(("support-bot-staging", "demo-staging-token"));
    for trial in 0..3 {
        let pi = format!("pi_two_gates_{trial}");
        let body = format!("payment_intent={pi}&amount=100");
        let held = {
            let (client, body) = (
                client_via(a.addr, agent, &a.ca_pem, http::Version::HTTP_11),
                body.clone(),
            );
            tokio::spawn(async move {
                send(
                    &client,
                    "POST",
                    "https://api.stripe.com/v1/refunds",
                    &[FORM, ("idempotency-key", "two-gates-held")],
                    body,
                )
                .await
                .unwrap()
            })
        };
        let id = pending_proposal(a.admin_addr, &pi).await;
        let start = Arc::new(tokio::sync::Barrier::new(3));
        let approve = |admin: std::net::SocketAddr, token: &'static str| {
            let (id, start) = (id.clone(), start.clone());
            tokio::spawn(async move {
                start.wait().await;
                admin_at(
                    admin,
                    "POST",
                    &format!("/api/proposals/{id}/approve"),
                    Some(token),
                    Some(serde_json::json!({"comment": "race"})),
                )
                .await
            })
        };
        let on_a = approve(a.admin_addr, "demo-carol-token");
        let on_b = approve(b.admin_addr, "erin-token");
        let resend = {
            let (client, body, start) = (
                client_via(b.addr, agent, &a.ca_pem, http::Version::HTTP_11),
                body.clone(),
                start.clone(),
            );
            tokio::spawn(async move {
                start.wait().await;
                send(
                    &client,
                    "POST",
                    "https://api.stripe.com/v1/refunds",
                    &[FORM, ("idempotency-key", "two-gates-resend")],
                    body,
                )
                .await
                .unwrap()
            })
        };
        let (on_a, on_b) = (on_a.await.unwrap(), on_b.await.unwrap());
        let mut statuses = [on_a.status.as_u16(), on_b.status.as_u16()];
        statuses.sort();
        assert_eq!(
            statuses,
            [200, 409],
            "trial {trial}: one approval wins: {} / {}",
            on_a.text(),
            on_b.text()
        );
        let held = held.await.unwrap();
        assert_eq!(held.status, 200, "trial {trial}: {}", held.text());
        let resend = resend.await.unwrap();
        assert!(
            resend.status == 200 || resend.status == 423,
            "trial {trial}: {}",
            resend.text()
        );
        assert_eq!(
            fakes
                .seen()
                .iter()
                .filter(|s| s.method == "POST" && s.path == "/v1/refunds" && s.body.contains(&pi))
                .count(),
            1,
            "trial {trial}: sent exactly once"
        );
        let story = a
            .admin(
                "GET",
                &format!("/api/audit/story/{id}"),
                Some("demo-carol-token"),
                None,
            )
            .await
            .json();
        let commits = story["events"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["kind"] == "commit")
            .count();
        assert_eq!(commits, 1, "trial {trial}: {story}");
        let p = b
            .admin(
                "GET",
                &format!("/api/proposals/{id}"),
                Some("demo-carol-token"),
                None,
            )
            .await
            .json();
        assert_eq!(p["state"], "committed", "trial {trial}: {p}");
        assert_eq!(p["send"], "on_approval");
    }
}
