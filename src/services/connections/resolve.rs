//! The one resolution point of a call's credential: a shared secret as it is, a person's
//! token from their connection or exchanged for their assertion, or the refusal saying what to
//! do (with a link for the person to connect).

use super::*;

/// A call's credential as it is injected: a shared secret as the policy holds it, or a
/// person's token (then what served the call: the connection or exchange and the scopes, for
/// the call's audit event; never the token).
pub struct Resolved {
    pub credential: Option<Arc<Credential>>,
    pub used: Option<Value>,
}

impl Vault {
    /// The one place a call's credential is made ready to inject, for every path a call goes
    /// out by (a request, an MCP message, a GraphQL operation, the commit of an approved
    /// call): a shared secret as it is; a per-user credential filled with the token of the
    /// person the call acts for (from their connection, or exchanged for their assertion). No
    /// person, or no live connection: refused, saying what to do (for a missing or broken
    /// connection, with a fresh link for the person to connect).
    pub async fn credential(
        &self,
        upstream: &Upstream,
        policy: &Policy,
        cred: Option<&Arc<Credential>>,
        user: Option<&EndUser>,
        admin_url: &str,
    ) -> Result<Resolved, Refusal> {
        let Some(cred) = cred else {
            return Ok(Resolved {
                credential: None,
                used: None,
            });
        };
        let Some(source) = cred.source() else {
            return Ok(Resolved {
                credential: Some(cred.clone()),
                used: None,
            });
        };
        let Some(user) = user else {
            return Err(Refusal::new(
                Code::PolicyViolation,
                format!("credential {} sends the token of the person the call acts for, and this call names no person: send Toolgate-User-Assertion, or use a token issued --for-user", cred.name),
            ));
        };
        let (served, mut used) = match source {
            PerUser::Exchange(x) => {
                let s = self
                    .exchanged(upstream, cred, x, &user.id, user.assertion.as_ref())
                    .await?;
                (s, json!({"exchange": cred.name, "audience": x.audience}))
            }
            PerUser::Connection(name) => {
                let conn = policy.connection(name).ok_or_else(|| {
                    Refusal::new(Code::Internal, format!("connection {name} is not defined"))
                })?;
                match self.served(upstream, conn, &user.id).await {
                    Ok(s) => (s, json!({"connection": name})),
                    Err(why) => return Err(self.unavailable(&user.id, name, why, admin_url).await),
                }
            }
        };
        let filled = cred.with_token(&served.access).map_err(|why| {
            Refusal::new(
                Code::UpstreamError,
                format!("credential {}: {why}", cred.name),
            )
        })?;
        used["credential"] = json!(cred.name);
        used["scopes"] = json!(served.scopes);
        Ok(Resolved {
            credential: Some(Arc::new(filled)),
            used: Some(used),
        })
    }

    /// The refusal for a person whose connection gives no token: with a fresh link when they
    /// must connect (again).
    async fn unavailable(
        &self,
        user: &str,
        name: &str,
        why: Unavailable,
        admin_url: &str,
    ) -> Refusal {
        let what = match why {
            Unavailable::Failed(m) => {
                return Refusal::new(
                    Code::UpstreamError,
                    format!("{user}'s connection {name} could not give a token now: {m}; nothing was sent, retry later"),
                )
            }
            Unavailable::Missing => format!("{user} has not connected {name}"),
            Unavailable::Revoked => format!("{user}'s connection {name} was revoked: reconnect"),
            Unavailable::Broken(r) => format!("{user}'s connection {name} is broken ({r}): reconnect"),
        };
        let link = match self.offer(user, name).await {
            Ok(l) => match admin_url.trim_end_matches('/') {
                "" => format!("{} on toolgate's admin listener", l.path),
                base => format!("{base}{}", l.path),
            },
            Err(e) => {
                return Refusal::new(
                    Code::StoreUnavailable,
                    format!(
                        "{what}, and no link could be made for them now ({e}); nothing was sent"
                    ),
                )
            }
        };
        Refusal::new(
            Code::UserConnectionRequired,
            format!("{what}. Ask them to open {link} (good for {} minutes, once) to connect, then retry the call; nothing was sent", LINK_FOR.as_secs() / 60),
        )
    }
}
