//! Approver sessions on the admin pages. The cookie is random; the store keeps only its sha256,
//! so a copy of the store signs nobody in. Sessions live in the store, so they survive a
//! restart and are shared by every replica of a shared store.

use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::base::now_unix;
use crate::model::Session;
use crate::store::{SessionStore, StoreError};

pub struct Sessions {
    store: Arc<dyn SessionStore>,
    /// `--session-ttl`.
    ttl: Duration,
}

fn key(cookie: &str) -> String {
    hex::encode(Sha256::digest(cookie.as_bytes()))
}

impl Sessions {
    pub fn new(store: Arc<dyn SessionStore>, ttl: Duration) -> Self {
        Sessions { store, ttl }
    }

    /// How long a session lasts.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Signs `approver` (or a reviewer) in, with `groups` besides their own, `via` an identity
    /// provider or not: returns the cookie value and the session's CSRF token.
    pub async fn create(
        &self,
        approver: &str,
        reviewer: bool,
        (groups, via): (Vec<String>, Option<String>),
    ) -> Result<(String, String), StoreError> {
        let cookie = hex::encode(rand::random::<[u8; 32]>());
        let csrf = hex::encode(rand::random::<[u8; 32]>());
        let session = Session {
            approver: approver.to_string(),
            reviewer,
            csrf: csrf.clone(),
            expires_unix: now_unix() + self.ttl.as_secs(),
            groups,
            via,
        };
        self.store.session_put(&key(&cookie), &session).await?;
        Ok((cookie, csrf))
    }

    /// The live session behind a cookie. A store that cannot answer signs nobody in.
    pub async fn get(&self, cookie: &str) -> Option<Session> {
        match self.store.session_get(&key(cookie)).await {
            Ok(Some(s)) if s.expires_unix > now_unix() => Some(s),
            Ok(_) => None,
            Err(e) => {
                tracing::warn!(error = %e, "the session store is unavailable; treating the request as signed out");
                None
            }
        }
    }

    pub async fn remove(&self, cookie: &str) -> Result<(), StoreError> {
        self.store.session_remove(&key(cookie)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_session_is_found_by_its_cookie_only_and_ends_on_sign_out() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::open(dir.path()).unwrap();
        let sessions = Sessions::new(store.clone(), Duration::from_secs(60));
        let (cookie, csrf) = sessions
            .create("carol", false, (Vec::new(), None))
            .await
            .unwrap();
        let s = sessions.get(&cookie).await.unwrap();
        assert_eq!(
            (s.approver.as_str(), s.csrf.as_str()),
            ("carol", csrf.as_str())
        );
        // The store holds a hash, not the cookie.
        assert!(store.session_get(&cookie).await.unwrap().is_none());
        assert!(sessions.get("not-a-session").await.is_none());
        sessions.remove(&cookie).await.unwrap();
        assert!(sessions.get(&cookie).await.is_none());
    }
}
