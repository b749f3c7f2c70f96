//! A person's token for a call: as stored while it has time left, else refreshed first, by one
//! replica at a time (a lease written into the sealed record by compare-and-set).

use super::*;

impl Vault {
    /// `user`'s token from `conn` for a call: as stored while it has time left, else refreshed
    /// first (by one replica at a time: the others wait for its token).
    pub async fn served(
        &self,
        upstream: &Upstream,
        conn: &Connection,
        user: &str,
    ) -> Result<Served, Unavailable> {
        let key = conn_key(&conn.name, user);
        let failed = |e: StoreError| Unavailable::Failed(e.to_string());
        for _ in 0..WAIT_ROUNDS {
            let Some((raw, held)) = self.read::<Held>(&key).await.map_err(failed)? else {
                return Err(Unavailable::Missing);
            };
            // The sealed record says whose it is: one moved under another person's key (by
            // someone who can write the store but not seal) serves no one.
            if held.user != user || held.connection != conn.name {
                return Err(Unavailable::Failed(format!(
                    "the stored connection under {user}'s key is not theirs; it was not used"
                )));
            }
            match &held.state {
                State::Live => {}
                State::Broken { reason } => return Err(Unavailable::Broken(reason.clone())),
                State::Revoked => return Err(Unavailable::Revoked),
            }
            let now = now_unix();
            if fresh(&held, now)
                || (held.refresh.is_none() && held.expires_unix.is_none_or(|e| e > now))
            {
                return Ok(Served {
                    access: held.access,
                    scopes: held.scopes,
                });
            }
            if held.lease_until_ms.is_some_and(|l| l > now_ms()) {
                tokio::time::sleep(WAIT_STEP).await;
                continue;
            }
            let mut leased = held.clone();
            leased.lease_until_ms = Some(now_ms() + LEASE_MS);
            let sealed = self.seal(&leased).map_err(failed)?;
            if self
                .store
                .vault_swap(&key, Some(&raw), Some(&sealed))
                .await
                .map_err(failed)?
            {
                return self.refresh(upstream, conn, &key, sealed, leased).await;
            }
        }
        Err(Unavailable::Failed(
            "another refresh of this connection did not finish in time; retry".into(),
        ))
    }

    /// Refreshes a connection this replica holds the lease of. A rotated refresh token
    /// replaces the old one; `invalid_grant` breaks the connection (the person must link it
    /// again); any other failure gives the lease back and leaves the connection as it was.
    pub(super) async fn refresh(
        &self,
        upstream: &Upstream,
        conn: &Connection,
        key: &str,
        leased_raw: Vec<u8>,
        leased: Held,
    ) -> Result<Served, Unavailable> {
        let failed = |e: StoreError| Unavailable::Failed(e.to_string());
        let Some(refresh) = leased.refresh.clone() else {
            let reason = "its token expired and the provider gave no refresh token".to_string();
            return self.broken(key, &leased_raw, leased, reason).await;
        };
        let body = form_urlencoded::Serializer::new(String::new())
            .append_pair("grant_type", "refresh_token")
            .append_pair("refresh_token", &refresh)
            .finish();
        let answer = to_provider(upstream, conn, &conn.token, body).await;
        match answer {
            Ok(answer) => {
                let next = issued(conn, &leased.user, &answer, Some(&leased))
                    .map_err(Unavailable::Failed)?;
                let sealed = self.seal(&next).map_err(failed)?;
                if !self
                    .store
                    .vault_swap(key, Some(&leased_raw), Some(&sealed))
                    .await
                    .map_err(failed)?
                {
                    return Err(Unavailable::Failed(
                        "the connection changed while it was refreshed (revoked?); retry".into(),
                    ));
                }
                let rotated = next.refresh != leased.refresh;
                self.event(
                    Kind::ConnectionRefreshed,
                    &next,
                    json!({"rotated": rotated}),
                )
                .await;
                Ok(Served {
                    access: next.access,
                    scopes: next.scopes,
                })
            }
            Err(f) if f.error.as_deref() == Some("invalid_grant") => {
                let reason = format!("the provider refused its refresh token ({})", f.message);
                self.broken(key, &leased_raw, leased, reason).await
            }
            Err(f) => {
                let mut back = leased;
                back.lease_until_ms = None;
                if let Ok(sealed) = self.seal(&back) {
                    let _ = self
                        .store
                        .vault_swap(key, Some(&leased_raw), Some(&sealed))
                        .await;
                }
                Err(Unavailable::Failed(format!(
                    "the token could not be refreshed: {}",
                    f.message
                )))
            }
        }
    }

    pub(super) async fn broken(
        &self,
        key: &str,
        leased_raw: &[u8],
        leased: Held,
        reason: String,
    ) -> Result<Served, Unavailable> {
        let mut next = leased;
        next.state = State::Broken {
            reason: reason.clone(),
        };
        next.access = String::new();
        next.refresh = None;
        next.lease_until_ms = None;
        let sealed = self
            .seal(&next)
            .map_err(|e| Unavailable::Failed(e.to_string()))?;
        // Broken only if nobody changed it meanwhile (a relink, a revocation, another
        // replica's refresh): otherwise what it is now stands, and the call tries again.
        let swapped = self
            .store
            .vault_swap(key, Some(leased_raw), Some(&sealed))
            .await
            .map_err(|e| Unavailable::Failed(e.to_string()))?;
        if !swapped {
            return Err(Unavailable::Failed(
                "the connection changed while it was refreshed; retry".into(),
            ));
        }
        self.event(Kind::ConnectionBroken, &next, json!({"reason": reason}))
            .await;
        Err(Unavailable::Broken(reason))
    }
}

/// Whether a token has time left before it should be refreshed.
pub(super) fn fresh(held: &Held, now: u64) -> bool {
    let Some(expires) = held.expires_unix else {
        return true;
    };
    let ahead = held
        .lifetime
        .map_or(REFRESH_AHEAD, |l| (l / 2).min(REFRESH_AHEAD));
    expires > now + ahead
}
