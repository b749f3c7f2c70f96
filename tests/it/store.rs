//! The store conformance suite: one set of checks written once over the store traits
//! (`toolgate::store::*`), run against sled (one store that racing tasks share) and against
//! PostgreSQL (two stores on one private cluster, as two replicas hold them). Every
//! compare-and-set has racing writers and exactly one winner.

use std::time::Duration;

use toolgate::model::{IdemRecord, IdemState, KillSwitch, KillTarget, Session};
use toolgate::store::Store;

use crate::support::pg::Cluster;

/// Every check, through `stores`: the racing tasks take them in turn, and a write through one
/// is read through another.
async fn conforms(stores: &[Store]) {
    proposals(stores).await;
    idempotency(stores).await;
    budgets(stores).await;
    counters(stores).await;
    kill_switches(stores).await;
    jobs_and_sessions(stores).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sled_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let store = toolgate::store::open(dir.path()).unwrap();
    conforms(&[store]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_conforms_across_two_replicas() {
    let Some(cluster) = Cluster::start("store::postgres_conforms_across_two_replicas") else {
        return;
    };
    let (a, b) = crate::postgres::two_replicas(&cluster).await;
    conforms(&[a, b]).await;
}

/// The store racing task `i` uses.
fn nth(stores: &[Store], i: usize) -> Store {
    stores[i % stores.len()].clone()
}

/// Runs `n` tasks at once, `task(i, store)` each, and counts those that returned true.
async fn winners<F, Fut>(stores: &[Store], n: usize, task: F) -> usize
where
    F: Fn(usize, Store) -> Fut,
    Fut: std::future::Future<Output = bool> + Send + 'static,
{
    let tasks: Vec<_> = (0..n)
        .map(|i| tokio::spawn(task(i, nth(stores, i))))
        .collect();
    let mut won = 0;
    for t in tasks {
        won += usize::from(t.await.unwrap());
    }
    won
}

fn in_flight(request: &str) -> IdemRecord {
    IdemRecord {
        state: IdemState::InFlight,
        payload_sha256: "sha".into(),
        created_unix: 100,
        request_id: request.into(),
        outcome: None,
    }
}

/// Twenty duplicates at once: one in-flight marker wins; only its holder moves it on.
async fn idempotency(stores: &[Store]) {
    let won = winners(stores, 20, |i, store| async move {
        store
            .idem_swap("call-1", None, &in_flight(&format!("req_{i}")))
            .await
            .unwrap()
    })
    .await;
    assert_eq!(won, 1, "exactly one duplicate may send");
    let (a, b) = (nth(stores, 0), nth(stores, 1));
    let held = b.idem_get("call-1").await.unwrap().unwrap();
    assert!(!a
        .idem_swap("call-1", Some("req_nobody"), &in_flight("req_x"))
        .await
        .unwrap());
    // Two holders of the same read moving it on at once: one wins.
    let holder = held.request_id.clone();
    let won = winners(stores, 8, move |i, store| {
        let holder = holder.clone();
        async move {
            let next = in_flight(&format!("req_next_{i}"));
            store
                .idem_swap("call-1", Some(&holder), &next)
                .await
                .unwrap()
        }
    })
    .await;
    assert_eq!(won, 1, "one holder moves it on");
    let now = b.idem_get("call-1").await.unwrap().unwrap();
    assert!(now.request_id.starts_with("req_next_"), "{now:?}");
    a.idem_remove("call-1").await.unwrap();
    assert!(b.idem_get("call-1").await.unwrap().is_none());
    a.idem_put("call-2", &in_flight("req_2")).await.unwrap();
    assert_eq!(a.idem_expire(101).await.unwrap(), 1);
    assert!(b.idem_get("call-2").await.unwrap().is_none());
}

/// A budget of 10 charged 1 at a time by 16 tasks: exactly 10 charges pass.
async fn budgets(stores: &[Store]) {
    let passed = winners(stores, 16, |_, store| async move {
        store
            .budget_add("agent:day", 1.0, 10.0)
            .await
            .unwrap()
            .is_ok()
    })
    .await;
    assert_eq!(passed, 10);
    assert_eq!(nth(stores, 0).budget_get("agent:day").await.unwrap(), 10.0);
    assert_eq!(
        nth(stores, 1)
            .budget_add("agent:day", 1.0, 10.0)
            .await
            .unwrap(),
        Err(10.0)
    );
}

/// A rate limit of 5 a minute holds against 12 racing takers, across stores.
async fn counters(stores: &[Store]) {
    let allowed = winners(stores, 12, |_, store| async move {
        store
            .take_token("agent:tool", 5, Duration::from_secs(60))
            .await
            .unwrap()
            .is_ok()
    })
    .await;
    assert_eq!(allowed, 5, "5 per minute across the stores, not per store");
    let wait = nth(stores, 0)
        .take_token("agent:tool", 5, Duration::from_secs(60))
        .await
        .unwrap()
        .unwrap_err();
    assert!((1..=12).contains(&wait), "retry after {wait}s");
}

/// A kill switch thrown through one store is listed by the other, and lifted likewise.
async fn kill_switches(stores: &[Store]) {
    let (a, b) = (nth(stores, 0), nth(stores, 1));
    let target = KillTarget::Tool("stripe.refunds.create".into());
    let switch = KillSwitch {
        by: "dave@example.com".into(),
        reason: "incident".into(),
        at_unix: 1,
    };
    a.kill_set(&target, Some(&switch)).await.unwrap();
    let listed = b.kill_list().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].0, target);
    b.kill_set(&target, None).await.unwrap();
    assert!(a.kill_list().await.unwrap().is_empty());
}

/// A job belongs to the agent that named it first (or its owner's agents); sessions made
/// through one store are valid through the other.
async fn jobs_and_sessions(stores: &[Store]) {
    let (a, b) = (nth(stores, 0), nth(stores, 1));
    assert_eq!(a.job_claim("job-1", "bot-a", "alice").await.unwrap(), None);
    assert_eq!(b.job_claim("job-1", "bot-a", "alice").await.unwrap(), None);
    assert_eq!(b.job_claim("job-1", "bot-b", "alice").await.unwrap(), None);
    assert_eq!(
        b.job_claim("job-1", "bot-c", "mallory")
            .await
            .unwrap()
            .as_deref(),
        Some("bot-a")
    );
    assert_eq!(a.job_expire(u64::MAX / 2).await.unwrap(), 1);
    let session = Session {
        approver: "carol@example.com".into(),
        reviewer: false,
        csrf: "c".into(),
        expires_unix: toolgate::base::now_unix() + 60,
    };
    a.session_put("k1", &session).await.unwrap();
    assert_eq!(
        b.session_get("k1").await.unwrap().unwrap().approver,
        "carol@example.com"
    );
    b.session_remove("k1").await.unwrap();
    assert!(a.session_get("k1").await.unwrap().is_none());
    assert!(a.ledger_all().await.unwrap().is_empty());
}

/// A pending proposal of call `identity`, as a store keeps it.
fn stored_proposal(id: &str, identity: &str) -> toolgate::model::Proposal {
    serde_json::from_value(serde_json::json!({
        "id": id, "state": "pending", "tool": "stripe.refunds.create", "tool_version": 1,
        "risk": "high", "agent": "bot", "owner": "o", "environment": "staging", "job": "j",
        "request_id": "req_1", "summary": "s", "identity": identity,
        "created_unix": toolgate::base::now_unix(), "expires_unix": toolgate::base::now_unix() + 3600,
        "required": 1, "groups": [], "allow_self_approval": false,
        "request": {"method": "POST", "host": "api.stripe.com", "port": 443,
                    "path_and_query": "/v1/refunds", "headers": [], "body": "", "sha256": ""}
    }))
    .unwrap()
}

/// Proposals: of concurrent creations of one
/// call's proposal one wins; of concurrent moves from one read state and version one wins;
/// a record moved on is never written back from an older read.
async fn proposals(stores: &[toolgate::store::Store]) {
    use toolgate::model::State;
    let n = 16;
    let identity = format!("call-{}", rand_suffix());
    let mut tasks = Vec::new();
    for i in 0..n {
        let store = stores[i % stores.len()].clone();
        let p = stored_proposal(&format!("prop_{i}_{identity}"), &identity);
        tasks.push(tokio::spawn(async move {
            store.proposal_create(&p, None).await.unwrap()
        }));
    }
    let mut created = 0;
    for t in tasks {
        created += usize::from(t.await.unwrap());
    }
    assert_eq!(created, 1, "one proposal per call");
    let seen = stores[0].proposal_for(&identity).await.unwrap().unwrap();
    for loser in 0..n {
        let id = format!("prop_{loser}_{identity}");
        if id != seen.id {
            assert!(
                stores[0].proposal_get(&id).await.unwrap().is_none(),
                "{id} left behind"
            );
        }
    }

    // Decisions from one read: approve, deny, deny, ... one of them lands.
    let mut tasks = Vec::new();
    for i in 0..n {
        let store = stores[i % stores.len()].clone();
        let (seen, mut next) = (seen.clone(), seen.clone());
        next.state = if i % 2 == 0 {
            State::Approved
        } else {
            State::Denied
        };
        tasks.push(tokio::spawn(async move {
            (store.proposal_swap(&seen, &next).await.unwrap(), next.state)
        }));
    }
    let mut won = Vec::new();
    for t in tasks {
        let (ok, state) = t.await.unwrap();
        if ok {
            won.push(state);
        }
    }
    assert_eq!(won.len(), 1, "one decision wins: {won:?}");
    let now = stores[1 % stores.len()]
        .proposal_get(&seen.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(now.state, won[0]);
    assert_eq!(now.version, seen.version + 1);

    // Same state, older version: an approval read before another approval landed loses.
    let mut stale = seen.clone();
    stale.state = now.state;
    let mut over = stale.clone();
    over.note = Some("from a stale read".into());
    assert!(!stores[0].proposal_swap(&stale, &over).await.unwrap());

    // Once committing, nothing read before puts it back to approved.
    if now.state == State::Approved {
        let mut committing = now.clone();
        committing.state = State::Committing;
        assert!(stores[0].proposal_swap(&now, &committing).await.unwrap());
        let mut back = now.clone();
        back.state = State::Approved;
        assert!(!stores[1 % stores.len()]
            .proposal_swap(&now, &back)
            .await
            .unwrap());
        let stored = stores[0].proposal_get(&seen.id).await.unwrap().unwrap();
        assert_eq!(stored.state, State::Committing);
    }

    // A new proposal of the same call replaces only the one its maker read.
    let newer = stored_proposal(&format!("prop_new_{identity}"), &identity);
    assert!(!stores[0]
        .proposal_create(&newer, Some("prop_other"))
        .await
        .unwrap());
    assert!(stores[0]
        .proposal_create(&newer, Some(&seen.id))
        .await
        .unwrap());
    assert_eq!(
        stores[0].proposal_for(&identity).await.unwrap().unwrap().id,
        newer.id
    );
}

fn rand_suffix() -> String {
    format!(
        "{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    )
}
