//! What the store tests share: a stored proposal and the proposal races.

/// A pending proposal of call `identity`, as a store keeps it.
pub fn stored_proposal(id: &str, identity: &str) -> toolgate::model::Proposal {
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

/// The proposal store's compare-and-sets against racing writers, through `stores` (one store
/// shared by tasks, or one per replica on a shared database): of concurrent creations of one
/// call's proposal one wins; of concurrent moves from one read state and version one wins;
/// a record moved on is never written back from an older read.
pub async fn proposal_races(stores: &[toolgate::store::Store]) {
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
