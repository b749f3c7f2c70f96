//! One-time links to connect an account, and the authorizations they begin: a link is taken
//! once (compare-and-set), its authorization (state, PKCE verifier, the browser's cookie) is
//! stored and taken once at the callback, which exchanges the code and stores the tokens.

use super::*;

impl Vault {
    /// A one-time link for `user` to connect `connection`, good for `ttl`.
    pub async fn make_link(
        &self,
        user: &str,
        connection: &str,
        ttl: Duration,
    ) -> Result<Link, StoreError> {
        let token = random();
        let rec = LinkRec {
            user: user.to_string(),
            connection: connection.to_string(),
            expires_unix: now_unix() + ttl.as_secs(),
        };
        let raw = self.seal(&rec)?;
        let key = format!("link/{}", sha_hex(&token));
        if !self.store.vault_swap(&key, None, Some(&raw)).await? {
            return Err(StoreError::from_message(
                "a link collided; ask again".into(),
            ));
        }
        Ok(Link {
            path: format!("/connect/{token}"),
            expires_unix: rec.expires_unix,
        })
    }

    /// The link a refusal offers `user` to connect `connection`: the one offered before while
    /// it is unused and has more than half its time left, else a new one. An agent retrying
    /// a refused call shows the same link and adds no record.
    pub(super) async fn offer(&self, user: &str, connection: &str) -> Result<Link, StoreError> {
        #[derive(Serialize, Deserialize)]
        struct Offered {
            token: String,
            expires_unix: u64,
        }
        let key = format!("offer/{}", pair_hash(connection, user));
        let seen = self.read::<Offered>(&key).await.ok().flatten();
        if let Some((_, o)) = &seen {
            let unused = self
                .store
                .vault_get(&format!("link/{}", sha_hex(&o.token)))
                .await?
                .is_some();
            if unused && o.expires_unix > now_unix() + LINK_FOR.as_secs() / 2 {
                return Ok(Link {
                    path: format!("/connect/{}", o.token),
                    expires_unix: o.expires_unix,
                });
            }
        }
        let link = self.make_link(user, connection, LINK_FOR).await?;
        let offered = Offered {
            token: link.path.trim_start_matches("/connect/").to_string(),
            expires_unix: link.expires_unix,
        };
        // Remembered for the next refusal; one not remembered only costs a new link.
        let raw = self.seal(&offered)?;
        let before = seen.map(|(raw, _)| raw);
        let _ = self
            .store
            .vault_swap(&key, before.as_deref(), Some(&raw))
            .await;
        Ok(link)
    }

    /// Opens a link, once: the authorization under way is stored and the browser is sent to
    /// the provider with the state, the PKCE challenge (S256) and the scopes.
    pub async fn open_link(
        &self,
        policy: &Policy,
        token: &str,
        redirect_uri: &str,
    ) -> Result<Opened, String> {
        let key = format!("link/{}", sha_hex(token));
        let rec: LinkRec = self
            .take(&key)
            .await
            .map_err(|e| e.to_string())?
            .ok_or("This link is unknown or was used already. Ask for a new one.")?;
        if rec.expires_unix <= now_unix() {
            return Err("This link expired. Ask for a new one.".into());
        }
        let conn = policy
            .connection(&rec.connection)
            .ok_or_else(|| format!("No connection is named {:?} any more.", rec.connection))?;
        let (state, verifier, binding) = (random(), random(), random());
        let auth = AuthRec {
            user: rec.user,
            connection: rec.connection,
            verifier,
            redirect_uri: redirect_uri.to_string(),
            binding: sha_hex(&binding),
            expires_unix: now_unix() + AUTHORIZE_FOR.as_secs(),
        };
        let raw = self.seal(&auth).map_err(|e| e.to_string())?;
        let akey = format!("auth/{}", sha_hex(&state));
        let stored = self.store.vault_swap(&akey, None, Some(&raw)).await;
        if !stored.map_err(|e| e.to_string())? {
            return Err("Could not begin; open a new link.".into());
        }
        Ok(Opened {
            authorize: authorize_url(conn, &auth, &state),
            binding_cookie: binding,
        })
    }

    /// The provider sent the browser back with `code` for `state`: the code is exchanged
    /// (client_secret_basic, the PKCE verifier) and the tokens are stored, live.
    pub async fn finish(
        &self,
        upstream: &Upstream,
        policy: &Policy,
        state: &str,
        code: &str,
        binding_cookie: Option<&str>,
    ) -> Result<Summary, String> {
        use subtle::ConstantTimeEq;
        let akey = format!("auth/{}", sha_hex(state));
        let unknown = "This sign-in is unknown, was finished already or began in another browser: open a new link.";
        let Some((raw, auth)) = self
            .read::<AuthRec>(&akey)
            .await
            .map_err(|e| e.to_string())?
        else {
            return Err(unknown.into());
        };
        let cookie = sha_hex(binding_cookie.unwrap_or(""));
        if !bool::from(cookie.as_bytes().ct_eq(auth.binding.as_bytes())) {
            return Err(unknown.into());
        }
        let taken = self.store.vault_swap(&akey, Some(&raw), None).await;
        if !taken.map_err(|e| e.to_string())? {
            return Err(unknown.into());
        }
        if auth.expires_unix <= now_unix() {
            return Err("This sign-in took too long. Open a new link.".into());
        }
        let conn = policy
            .connection(&auth.connection)
            .ok_or_else(|| format!("No connection is named {:?} any more.", auth.connection))?;
        let body = form_urlencoded::Serializer::new(String::new())
            .append_pair("grant_type", "authorization_code")
            .append_pair("code", code)
            .append_pair("redirect_uri", &auth.redirect_uri)
            .append_pair("code_verifier", &auth.verifier)
            .finish();
        let answer = to_provider(upstream, conn, &conn.token, body)
            .await
            .map_err(|f| format!("The provider did not give a token: {}", f.message))?;
        if let Err(why) = whose(conn, &auth.user, &answer) {
            let payload = json!({"connection": conn.name, "reason": why});
            self.refused(&auth.user, payload).await;
            return Err(why);
        }
        let held = issued(conn, &auth.user, &answer, None)?;
        self.put(&held).await.map_err(|e| e.to_string())?;
        self.event(Kind::ConnectionLinked, &held, json!({})).await;
        let disconnect = self
            .make_disconnect(&held.user, &held.connection)
            .await
            .map_err(|e| e.to_string())?;
        Ok(Summary {
            disconnect: Some(disconnect),
            ..summary(&held)
        })
    }

    /// The person's own link to disconnect (kept by them, shown once on the "Connected" page):
    /// good until it is used, or the connection is linked again.
    async fn make_disconnect(&self, user: &str, connection: &str) -> Result<String, StoreError> {
        let token = random();
        let rec = LinkRec {
            user: user.to_string(),
            connection: connection.to_string(),
            expires_unix: u64::MAX,
        };
        let raw = self.seal(&rec)?;
        let key = format!("unlink/{}", sha_hex(&token));
        if !self.store.vault_swap(&key, None, Some(&raw)).await? {
            return Err(StoreError::from_message(
                "a link collided; link again".into(),
            ));
        }
        Ok(format!("/connect/disconnect/{token}"))
    }

    /// Who a disconnect link is for (it is not used up by being looked at).
    pub async fn disconnect_for(&self, token: &str) -> Result<(String, String), String> {
        let key = format!("unlink/{}", sha_hex(token));
        match self
            .read::<LinkRec>(&key)
            .await
            .map_err(|e| e.to_string())?
        {
            Some((_, rec)) => Ok((rec.user, rec.connection)),
            None => Err("This disconnect link is unknown or was used already.".into()),
        }
    }

    /// Disconnects through the person's own link, once: the connection is revoked (and the
    /// provider told), as an admin's revocation does, by the person.
    pub async fn disconnect(
        &self,
        upstream: &Upstream,
        policy: &Policy,
        token: &str,
    ) -> Result<(String, String), String> {
        let key = format!("unlink/{}", sha_hex(token));
        let rec: LinkRec = self
            .take(&key)
            .await
            .map_err(|e| e.to_string())?
            .ok_or("This disconnect link is unknown or was used already.")?;
        let conn = policy.connection(&rec.connection).map(|c| &**c);
        self.revoke(upstream, conn, &rec.user, &rec.connection, &rec.user)
            .await
            .map_err(|e| e.to_string())?;
        Ok((rec.user, rec.connection))
    }

    /// Removes the links and authorizations under way whose time is up (compare-and-set: one
    /// taken meanwhile is left to its taker); returns how many.
    pub async fn sweep(&self) -> Result<usize, StoreError> {
        #[derive(Deserialize)]
        struct Until {
            expires_unix: u64,
        }
        let now = now_unix();
        let mut removed = 0;
        for prefix in ["link/", "auth/", "offer/"] {
            for (key, raw) in self.store.vault_scan(prefix).await? {
                // A record that cannot be opened (another seal key) is of no use to anyone.
                let over = self
                    .open::<Until>(&raw)
                    .map_or(true, |u| u.expires_unix <= now);
                if over && self.store.vault_swap(&key, Some(&raw), None).await? {
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }
}

/// The provider's authorization URL for an authorization under way.
pub(super) fn authorize_url(conn: &Connection, auth: &AuthRec, state: &str) -> String {
    let challenge = b64(&Sha256::digest(auth.verifier.as_bytes()));
    let mut q = form_urlencoded::Serializer::new(String::new());
    q.append_pair("response_type", "code")
        .append_pair("client_id", &conn.client_id)
        .append_pair("redirect_uri", &auth.redirect_uri)
        .append_pair("state", state)
        .append_pair("code_challenge", &challenge)
        .append_pair("code_challenge_method", "S256");
    if !conn.scopes.is_empty() {
        q.append_pair("scope", &conn.scopes.join(" "));
    }
    let sep = if conn.authorize_url.contains('?') {
        '&'
    } else {
        '?'
    };
    format!("{}{sep}{}", conn.authorize_url, q.finish())
}

/// Whether the account the provider connected is the person's the link was for: its ID token
/// (received from the token endpoint over TLS, as OpenID Connect Core 3.1.3.7 allows in place
/// of its signature) must be for toolgate's client, and its `user_claim` (or, when none is
/// set, its `email` if it has one) must name the person. Someone else who opens a person's
/// link (an agent it was shown to, or anyone it was forwarded to) connects nothing.
fn whose(conn: &Connection, user: &str, answer: &Value) -> Result<(), String> {
    use base64::Engine;
    let token = answer["id_token"].as_str();
    let claims: Value = match token {
        Some(t) => t
            .split('.')
            .nth(1)
            .and_then(|p| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(p).ok())
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or("The provider's ID token could not be read. Nothing was connected.")?,
        None if conn.user_claim.is_some() => {
            return Err("The provider gave no ID token to say whose account this is (ask for the openid scope). Nothing was connected.".into())
        }
        None => return Ok(()),
    };
    let for_us = match &claims["aud"] {
        Value::String(a) => *a == conn.client_id,
        Value::Array(list) => list.iter().any(|a| a.as_str() == Some(&conn.client_id)),
        _ => false,
    };
    if !for_us {
        return Err("The provider's ID token is for another client. Nothing was connected.".into());
    }
    let claim = conn.user_claim.as_deref().unwrap_or("email");
    match (claims[claim].as_str(), conn.user_claim.is_some()) {
        (Some(who), _) if who.eq_ignore_ascii_case(user) => Ok(()),
        (Some(who), _) => Err(format!(
            "This link is for {user}, but the account signed in at the provider is {who}. Nothing was connected: {user} must open their link themselves."
        )),
        (None, true) => Err(format!(
            "The provider's ID token has no {claim} claim to say whose account this is. Nothing was connected."
        )),
        (None, false) => Ok(()),
    }
}
