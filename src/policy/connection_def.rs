//! `[[connection]]` and the per-user forms of `[[credential]]` (DESIGN section 16): an OAuth
//! client a person links their account through once, and credentials that carry that person's
//! token (`connection = "NAME"`) or a token exchanged for their assertion (`exchange = {...}`).
//! Checked at load: https endpoints only, the client secret from the environment or a file
//! (never inline), a credential names exactly one source of its secret.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use super::file::{ConnectionDef, CredentialDef, ExchangeDef};
use super::identity_def::{client_secret, https_url};
use super::types::{ClientAuth, Connection, Credential, Exchange, PerUser};

/// The connection `def` declares in the policy file at `path`.
pub(super) fn compile(
    path: &Path,
    def: &ConnectionDef,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Connection, String> {
    let named = |m: String| format!("connection {:?}: {m}", def.name);
    if def.name.is_empty() || def.client_id.is_empty() {
        return Err(named(
            "name and client_id must be non-empty (the client id as registered at the provider)"
                .into(),
        ));
    }
    https_url("authorize_url", &def.authorize_url).map_err(named)?;
    let token = https_url("token_url", &def.token_url).map_err(named)?;
    let revoke = match &def.revoke_url {
        Some(u) => Some(https_url("revoke_url", u).map_err(named)?),
        None => None,
    };
    let client_secret = client_secret(
        path,
        def.client_secret_env.as_deref(),
        def.client_secret_file.as_deref(),
        env,
    )
    .map_err(named)?;
    let client_auth = match def.client_auth.as_deref() {
        None | Some("client_secret_basic") => ClientAuth::Basic,
        Some("client_secret_post") => ClientAuth::Post,
        Some(other) => {
            return Err(named(format!(
                "client_auth {other:?} is not client_secret_basic or client_secret_post"
            )))
        }
    };
    Ok(Connection {
        client_auth,
        name: def.name.clone(),
        authorize_url: def.authorize_url.clone(),
        token,
        revoke,
        client_id: def.client_id.clone(),
        client_secret,
        scopes: def.scopes.clone(),
        user_claim: def.user_claim.clone(),
    })
}

/// A `[[credential]]` with `connection` or `exchange`: the per-user credential, or None for a
/// credential with a shared secret (`env`/`file`).
pub(super) fn per_user_credential(
    path: &Path,
    def: &CredentialDef,
    connections: &HashMap<String, Arc<Connection>>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<Credential>, String> {
    let source =
        match (&def.connection, &def.exchange) {
            (None, None) => return Ok(None),
            (Some(_), Some(_)) => return Err(
                "name one of connection and exchange: a credential's token comes from one place"
                    .into(),
            ),
            (Some(name), None) => {
                if !connections.contains_key(name) {
                    let mut known: Vec<&str> = connections.keys().map(String::as_str).collect();
                    known.sort();
                    return Err(format!(
                        "connection {name:?} is not defined by any [[connection]] (defined: {})",
                        if known.is_empty() {
                            "none".to_string()
                        } else {
                            known.join(", ")
                        }
                    ));
                }
                PerUser::Connection(name.clone())
            }
            (None, Some(x)) => PerUser::Exchange(Arc::new(exchange(path, x, env)?)),
        };
    if def.env.is_some() || def.file.is_some() {
        return Err("a per-user credential (connection or exchange) takes each person's token: remove env and file, a shared secret has no place in it".into());
    }
    if !def.format.contains("{secret}") {
        return Err(format!(
            "format {:?} must contain {{secret}} (where the person's token goes)",
            def.format
        ));
    }
    let header = http::HeaderName::from_bytes(def.header.as_bytes())
        .map_err(|_| format!("header {:?} is not a valid header name", def.header))?;
    Ok(Some(Credential::per_user(
        def.name.clone(),
        header,
        def.format.clone(),
        source,
    )))
}

fn exchange(
    path: &Path,
    def: &ExchangeDef,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Exchange, String> {
    let at = |m: String| format!("exchange: {m}");
    if def.client_id.is_empty() {
        return Err(at("client_id must be non-empty".into()));
    }
    let token = https_url("token_url", &def.token_url).map_err(at)?;
    let client_secret = client_secret(
        path,
        def.client_secret_env.as_deref(),
        def.client_secret_file.as_deref(),
        env,
    )
    .map_err(at)?;
    if def.audience.is_none() && def.scope.is_none() {
        return Err(at(
            "name the audience or the scope the exchanged token is for".into(),
        ));
    }
    let subject_token_type = match def.subject_token_type.as_deref() {
        None | Some("jwt") => "urn:ietf:params:oauth:token-type:jwt",
        Some("id_token") => "urn:ietf:params:oauth:token-type:id_token",
        Some("access_token") => "urn:ietf:params:oauth:token-type:access_token",
        Some(other) => {
            return Err(at(format!(
                "subject_token_type {other:?} is not jwt, id_token or access_token"
            )))
        }
    };
    Ok(Exchange {
        subject_token_type,
        token,
        audience: def.audience.clone(),
        scope: def.scope.clone(),
        client_id: def.client_id.clone(),
        client_secret,
        identity_provider: def.identity_provider.clone(),
    })
}
