//! The store conformance suite: one set of checks written once over the store traits
//! (`toolgate::store::*`), run against sled (one store that racing tasks share) and against
//! PostgreSQL (two stores on one private cluster, as two replicas hold them). Every
//! compare-and-set has racing writers and exactly one winner.

use std::time::Duration;

use toolgate::model::{
    AgentToken, Grant, GrantEnd, IdemRecord, IdemState, KillSwitch, KillTarget, Session,
};
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
    tokens(stores).await;
    grants(stores).await;
    grant_ends(stores).await;
    sink_cursors(stores).await;
    vault(stores).await;
}

/// The vault's records: a new one is made by one of many racing writers, changed only from
/// the record as read (a stale writer loses), removed once, and listed by key prefix through
/// every replica.
async fn vault(stores: &[Store]) {
    let made = winners(stores, 8, |i, s| async move {
        s.vault_swap("conn/alice/gh", None, Some(format!("r{i}").as_bytes()))
            .await
            .unwrap()
    })
    .await;
    assert_eq!(made, 1, "exactly one writer makes the record");
    let seen = nth(stores, 1)
        .vault_get("conn/alice/gh")
        .await
        .unwrap()
        .unwrap();
    let changed = winners(stores, 8, {
        let seen = seen.clone();
        move |i, s| {
            let seen = seen.clone();
            async move {
                s.vault_swap(
                    "conn/alice/gh",
                    Some(&seen),
                    Some(format!("n{i}").as_bytes()),
                )
                .await
                .unwrap()
            }
        }
    })
    .await;
    assert_eq!(changed, 1, "exactly one writer changes the record as read");
    let now = nth(stores, 0)
        .vault_get("conn/alice/gh")
        .await
        .unwrap()
        .unwrap();
    assert!(now.starts_with(b"n"));
    assert!(!nth(stores, 0)
        .vault_swap("conn/alice/gh", Some(&seen), None)
        .await
        .unwrap());
    nth(stores, 1)
        .vault_swap("conn/bob/gh", None, Some(b"b"))
        .await
        .unwrap();
    nth(stores, 0)
        .vault_swap("link/x", None, Some(b"l"))
        .await
        .unwrap();
    let listed: Vec<String> = nth(stores, 1)
        .vault_scan("conn/")
        .await
        .unwrap()
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(listed, vec!["conn/alice/gh", "conn/bob/gh"]);
    let removed = winners(stores, 8, move |_, s| {
        let now = now.clone();
        async move {
            s.vault_swap("conn/alice/gh", Some(&now), None)
                .await
                .unwrap()
        }
    })
    .await;
    assert_eq!(removed, 1, "a record is removed once");
    assert!(nth(stores, 0)
        .vault_get("conn/alice/gh")
        .await
        .unwrap()
        .is_none());
}

/// An audit sink's cursor: durable, read the same through every replica, and never moved back
/// (of two replicas acknowledging out of order, the furthest wins).
async fn sink_cursors(stores: &[Store]) {
    assert_eq!(nth(stores, 0).cursor_get("s1").await.unwrap(), 0);
    let moved = (0..8u64).map(|i| {
        let store = nth(stores, i as usize);
        async move { store.cursor_advance("s1", 10 + i * 7 % 5).await.unwrap() }
    });
    futures_util::future::join_all(moved).await;
    nth(stores, 1).cursor_advance("s1", 3).await.unwrap();
    nth(stores, 0).cursor_advance("s2", 5).await.unwrap();
    for i in 0..stores.len() {
        assert_eq!(nth(stores, i).cursor_get("s1").await.unwrap(), 14);
    }
    let mut all = nth(stores, 1).cursor_list().await.unwrap();
    all.sort();
    assert_eq!(all, vec![("s1".to_string(), 14), ("s2".to_string(), 5)]);
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
        groups: Vec::new(),
        via: None,
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

/// A token of `agent` issued at 100 that expires at `expires`.
fn token(id: &str, agent: &str, expires: u64) -> AgentToken {
    AgentToken {
        id: id.into(),
        agent: agent.into(),
        job: Some(format!("job-{id}")),
        sha256: format!("sha-{id}"),
        issued_by: "dave@example.com".into(),
        issued_unix: 100,
        expires_unix: expires,
        revoked: false,
        user: None,
    }
}

/// Tokens: issued through one store, found by id and by hash through the other; revoked
/// through the other, the revocation is what both find; the list leaves out the expired ones
/// (revoked ones stay in it until they expire).
async fn tokens(stores: &[Store]) {
    let (a, b) = (nth(stores, 0), nth(stores, 1));
    let live = token("tok_live", "bot-a", 1_000);
    a.token_put(&live).await.unwrap();
    a.token_put(&token("tok_short", "bot-b", 200))
        .await
        .unwrap();
    assert_eq!(
        as_json(b.token_get("tok_live").await.unwrap()),
        as_json(Some(&live))
    );
    assert_eq!(
        as_json(b.token_by_hash("sha-tok_live").await.unwrap()),
        as_json(Some(&live))
    );
    assert!(b.token_get("tok_nobody").await.unwrap().is_none());
    assert!(b.token_by_hash("sha-nobody").await.unwrap().is_none());

    let ids = |list: Vec<AgentToken>| {
        let mut ids: Vec<String> = list.into_iter().map(|t| t.id).collect();
        ids.sort();
        ids
    };
    assert_eq!(
        ids(b.token_list(199).await.unwrap()),
        ["tok_live", "tok_short"]
    );
    // Expired at its second: left out from then on, still found (and not live) by its hash.
    assert_eq!(ids(a.token_list(200).await.unwrap()), ["tok_live"]);
    let short = b.token_by_hash("sha-tok_short").await.unwrap().unwrap();
    assert!(short.live(199) && !short.live(200));

    let mut revoked = live.clone();
    revoked.revoked = true;
    b.token_put(&revoked).await.unwrap();
    for store in [&a, &b] {
        let found = store.token_by_hash("sha-tok_live").await.unwrap().unwrap();
        assert!(found.revoked && !found.live(150), "{found:?}");
        let by_id = as_json(store.token_get("tok_live").await.unwrap());
        assert_eq!(by_id, as_json(Some(&revoked)));
    }
    assert_eq!(
        ids(a.token_list(150).await.unwrap()),
        ["tok_live", "tok_short"]
    );
    assert!(a.token_list(1_000).await.unwrap().is_empty());
}

/// A token as JSON (tokens are compared as they are stored).
fn as_json<T: serde::Serialize>(found: T) -> serde_json::Value {
    serde_json::to_value(found).unwrap()
}

/// A grant of `tool` to `agent` until `until`, not ended.
fn grant(id: &str, agent: &str, until: u64) -> Grant {
    Grant {
        id: id.into(),
        agent: agent.into(),
        tool: "stripe.payment_intents.create".into(),
        granted_by: "dave@example.com".into(),
        reason: "incident 42".into(),
        created_unix: 100,
        until_unix: until,
        ended: None,
    }
}

fn ending(how: &str, at_unix: u64) -> GrantEnd {
    GrantEnd {
        how: how.into(),
        by: "dave@example.com".into(),
        at_unix,
    }
}

/// The ids of the open grants of `agent` (of all when None), sorted.
async fn open_ids(store: &Store, agent: Option<&str>) -> Vec<String> {
    let mut ids: Vec<String> = store
        .grant_open(agent)
        .await
        .unwrap()
        .into_iter()
        .map(|g| g.id)
        .collect();
    ids.sort();
    ids
}

/// Grants: made through one store, found and listed through the other, by agent; one past its
/// time stays open (and not live) until its end is recorded; ended, it leaves the list and ends
/// no more; an end recorded long ago is dropped when the next grant is made.
async fn grants(stores: &[Store]) {
    let (a, b) = (nth(stores, 0), nth(stores, 1));
    let now = toolgate::base::now_unix();
    let lent = grant("grant_lent", "bot-a", now + 3600);
    a.grant_put(&lent).await.unwrap();
    a.grant_put(&grant("grant_past", "bot-b", now - 1))
        .await
        .unwrap();
    assert_eq!(b.grant_get("grant_lent").await.unwrap(), Some(lent.clone()));
    assert_eq!(b.grant_get("grant_nobody").await.unwrap(), None);
    assert_eq!(open_ids(&b, Some("bot-a")).await, ["grant_lent"]);
    assert_eq!(open_ids(&b, Some("bot-c")).await, Vec::<String>::new());
    assert_eq!(open_ids(&b, None).await, ["grant_lent", "grant_past"]);
    // Used while live: its agent's open grant, live now.
    assert!(b.grant_open(Some("bot-a")).await.unwrap()[0].live(now));
    let past = b.grant_get("grant_past").await.unwrap().unwrap();
    assert!(!past.live(now), "past its time it lends nothing");

    // Its expiry recorded (through the other store): it ends once, and leaves the list.
    let expired = b
        .grant_end("grant_past", ending("expired", now))
        .await
        .unwrap();
    let expired = expired.expect("the first end is recorded");
    assert_eq!(expired.ended, Some(ending("expired", now)));
    assert_eq!(
        a.grant_end("grant_past", ending("revoked", now))
            .await
            .unwrap(),
        None
    );
    assert_eq!(a.grant_get("grant_past").await.unwrap(), Some(expired));
    assert_eq!(open_ids(&a, None).await, ["grant_lent"]);

    // Revoked: not live, not open; a grant that is not there does not end.
    let revoked = a
        .grant_end("grant_lent", ending("revoked", now))
        .await
        .unwrap();
    assert!(!revoked.unwrap().live(now));
    assert!(open_ids(&b, Some("bot-a")).await.is_empty());
    assert_eq!(
        b.grant_end("grant_nobody", ending("revoked", now))
            .await
            .unwrap(),
        None
    );

    // An end recorded longer ago than the records are kept is dropped with the next grant.
    let keep = toolgate::store::rules::ENDED_GRANT_KEEP_SECS;
    a.grant_put(&grant("grant_old", "bot-a", 50)).await.unwrap();
    a.grant_end("grant_old", ending("expired", now - keep - 60))
        .await
        .unwrap();
    assert!(b.grant_get("grant_old").await.unwrap().is_some());
    b.grant_put(&grant("grant_new", "bot-a", now + 60))
        .await
        .unwrap();
    assert_eq!(a.grant_get("grant_old").await.unwrap(), None);
    assert!(
        a.grant_get("grant_past").await.unwrap().is_some(),
        "a recent end is kept"
    );
}

/// Ending a grant is a compare-and-set: of 16 tasks ending one grant at once (revoking or
/// recording its expiry, through either store) exactly one ends it, and what is stored is its
/// end; of two tasks on each of 8 grants, one per grant.
async fn grant_ends(stores: &[Store]) {
    let now = toolgate::base::now_unix();
    nth(stores, 0)
        .grant_put(&grant("grant_raced", "bot-a", now + 60))
        .await
        .unwrap();
    let won = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let winners_seen = won.clone();
    let n = winners(stores, 16, move |i, store| {
        let won = winners_seen.clone();
        async move {
            let how = if i % 2 == 0 { "revoked" } else { "expired" };
            let end = ending(how, now + i as u64);
            let ended = store.grant_end("grant_raced", end).await.unwrap();
            let ended = ended.and_then(|g| g.ended);
            won.lock().unwrap().extend(ended.clone());
            ended.is_some()
        }
    })
    .await;
    assert_eq!(n, 1, "exactly one task ends the grant");
    let won = won.lock().unwrap().clone();
    for store in stores {
        let stored = store.grant_get("grant_raced").await.unwrap().unwrap();
        assert_eq!(
            stored.ended.as_ref(),
            won.first(),
            "the winner's end is stored"
        );
    }

    for g in 0..8 {
        let id = format!("grant_pair_{g}");
        nth(stores, g)
            .grant_put(&grant(&id, "bot-b", now + 60))
            .await
            .unwrap();
    }
    let n = winners(stores, 16, |i, store| async move {
        let id = format!("grant_pair_{}", i / 2);
        let ended = store.grant_end(&id, ending("revoked", now)).await.unwrap();
        ended.is_some()
    })
    .await;
    assert_eq!(
        n, 8,
        "one end per grant, and no grant's end stops another's"
    );
    assert!(open_ids(&nth(stores, 1), Some("bot-b")).await.is_empty());
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
