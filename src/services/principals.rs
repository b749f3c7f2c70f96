//! What the request path reads of issued tokens and grants on every call, kept for at most
//! [`FRESH`]: a revocation or a grant made through this process is seen by its next request, one
//! made through another replica as soon as its announcement arrives (and within [`FRESH`] if
//! the announcement is lost). Expiry needs no store: every use compares the record's end with
//! the clock.

use std::time::Duration;

use tracing::warn;

use super::fresh::Fresh;

use crate::model::{AgentToken, Grant};
use crate::store::{Store, StoreError, Topic};

/// How long a record read from the store is used without reading it again.
pub const FRESH: Duration = Duration::from_secs(1);

pub struct Principals {
    store: Store,
    /// Token id -> its record (None: no such token).
    tokens: Fresh<String, Option<AgentToken>>,
    /// Agent -> its grants that have not ended.
    grants: Fresh<String, Vec<Grant>>,
}

impl Principals {
    pub fn new(store: &Store) -> Principals {
        Principals {
            store: store.clone(),
            tokens: Fresh::new(FRESH),
            grants: Fresh::new(FRESH),
        }
    }

    /// The token record of `id`, as fresh as [`FRESH`].
    pub async fn token(&self, id: &str) -> Result<Option<AgentToken>, StoreError> {
        if let Some(t) = self.tokens.get(id) {
            return Ok(t);
        }
        let t = self.store.token_get(id).await?;
        self.tokens.put(id.to_string(), t.clone());
        Ok(t)
    }

    /// Keeps a token record just read from the store (by its hash, when a tunnel opens), so
    /// that the tunnel's first request does not read it again.
    pub fn seen_token(&self, t: &AgentToken) {
        self.tokens.put(t.id.clone(), Some(t.clone()));
    }

    /// The grants of `agent` that have not ended, as fresh as [`FRESH`].
    pub async fn grants_of(&self, agent: &str) -> Result<Vec<Grant>, StoreError> {
        if let Some(g) = self.grants.get(agent) {
            return Ok(g);
        }
        let g = self.store.grant_open(Some(agent)).await?;
        self.grants.put(agent.to_string(), g.clone());
        Ok(g)
    }

    /// A token changed (revoked): forgotten here, and announced to the other replicas.
    pub async fn token_changed(&self, id: &str) {
        self.tokens.forget(id);
        self.announce(Topic::Token(id.to_string())).await;
    }

    /// An agent's grants changed (added, revoked, ended): forgotten here, and announced.
    pub async fn grants_changed(&self, agent: &str) {
        self.grants.forget(agent);
        self.announce(Topic::Grants(agent.to_string())).await;
    }

    async fn announce(&self, topic: Topic) {
        if let Err(e) = self.store.announce(&topic).await {
            warn!(error = %e, %topic, "could not tell the other replicas; they see it within a second");
        }
    }

    /// Forgets the token another replica announced changed.
    pub fn token_heard(&self, id: &str) {
        self.tokens.forget(id);
    }

    /// Forgets the grants of the agent another replica announced changed.
    pub fn grants_heard(&self, agent: &str) {
        self.grants.forget(agent);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_revocation_through_this_process_is_seen_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::open(dir.path()).unwrap();
        let principals = Principals::new(&store);
        let mut t = AgentToken {
            id: "tok_1".into(),
            agent: "bot".into(),
            job: None,
            sha256: "ab".repeat(32),
            issued_by: "dave".into(),
            issued_unix: 1,
            expires_unix: u64::MAX,
            revoked: false,
            user: None,
        };
        store.token_put(&t).await.unwrap();
        assert!(!principals.token("tok_1").await.unwrap().unwrap().revoked);
        t.revoked = true;
        store.token_put(&t).await.unwrap();
        // Read within FRESH: the copy is used...
        assert!(!principals.token("tok_1").await.unwrap().unwrap().revoked);
        // ...until the change is told (here, or announced by another replica).
        principals.token_heard("tok_1");
        assert!(principals.token("tok_1").await.unwrap().unwrap().revoked);
        t.revoked = false;
        store.token_put(&t).await.unwrap();
        principals.token_changed("tok_1").await;
        assert!(!principals.token("tok_1").await.unwrap().unwrap().revoked);
    }
}
