//! What an event is about: its kind, stored as the same text it always was (`"request"`,
//! `"grant.used"`), so that stored events and their hashes do not change.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Declares the kinds and their stored names once: the enum, `as_str` and the parser cannot
/// disagree.
macro_rules! kinds {
    ($($(#[$doc:meta])* $variant:ident = $name:literal,)*) => {
        /// The kind of an audit event.
        ///
        /// A kind this build does not know (written by a newer version) is kept as
        /// [`Kind::Other`] with its stored text: the event still reads, verifies and is told
        /// by its name.
        #[derive(Debug, Clone, PartialEq, Eq, Hash)]
        pub enum Kind {
            $($(#[$doc])* $variant,)*
            /// A kind this build does not know, as stored.
            Other(String),
        }

        impl Kind {
            /// Every kind this build knows.
            pub const KNOWN: &'static [Kind] = &[$(Kind::$variant,)*];

            /// The stored name.
            pub fn as_str(&self) -> &str {
                match self {
                    $(Kind::$variant => $name,)*
                    Kind::Other(name) => name,
                }
            }

            /// The kind stored as `name`; [`Kind::Other`] when this build does not know it.
            pub fn parse(name: &str) -> Kind {
                match name {
                    $($name => Kind::$variant,)*
                    other => Kind::Other(other.to_string()),
                }
            }
        }
    };
}

kinds! {
    /// What was asked (for a read, with its decision and answer folded in).
    Request = "request",
    /// Whether the call goes on: allowed, held, previewed or refused.
    Decision = "decision",
    /// A call held for approval.
    Proposal = "proposal",
    /// An approver's approval of a proposal.
    Approval = "approval",
    /// An approver's denial of a proposal.
    Denial = "denial",
    /// An approval taken back.
    Revocation = "revocation",
    /// A proposal cancelled.
    Cancellation = "cancellation",
    /// A proposal that expired without a decision.
    Expiry = "expiry",
    /// A call with side effects about to be sent (durable before a byte leaves).
    Commit = "commit",
    /// The upstream's answer.
    Response = "response",
    /// The upstream could not be reached, or failed mid-way.
    UpstreamError = "upstream_error",
    /// An answer that does not match the tool's response contract.
    ResponseSchemaMismatch = "response_schema_mismatch",
    /// A model provider's token usage, when its answer ends.
    ModelUsage = "model_usage",
    /// A previewed call (older logs; the decision says `dry_run` today).
    DryRun = "dry_run",
    /// A retried call answered with the stored outcome of the first.
    IdempotentReplay = "idempotent_replay",
    /// A commit whose outcome is unknown (its replica died while sending).
    OutcomeUnknown = "outcome_unknown",
    /// A kill switch thrown or reset.
    KillSwitch = "kill_switch",
    /// An undo of a committed call.
    Rollback = "rollback",
    /// A recorded call sent again to a sandbox.
    Replay = "replay",
    /// The policies read again.
    PolicyReload = "policy_reload",
    /// A grant made.
    GrantAdded = "grant.added",
    /// A call let through by a grant.
    GrantUsed = "grant.used",
    /// A grant revoked.
    GrantRevoked = "grant.revoked",
    /// A grant that ended.
    GrantExpired = "grant.expired",
    /// An agent token issued.
    TokenIssued = "token.issued",
    /// An agent token revoked.
    TokenRevoked = "token.revoked",
    /// Events older than a cut removed.
    Purge = "purge",
    /// A store copied into this one.
    StoreImport = "store.import",
    /// A person linked their account through a `[[connection]]`.
    ConnectionLinked = "connection.linked",
    /// A link was opened, but the account connected at the provider was not the person's
    /// (nothing was stored).
    ConnectionRefused = "connection.refused",
    /// A person's connection token was refreshed.
    ConnectionRefreshed = "connection.refreshed",
    /// A person's connection can no longer be refreshed (they must link it again).
    ConnectionBroken = "connection.broken",
    /// A person's connection was revoked.
    ConnectionRevoked = "connection.revoked",
    /// A call was sent with a person's connection token (which connection, which scopes).
    ConnectionUsed = "connection.used",
    /// An approver or reviewer signed in to the page through an identity provider.
    SignIn = "sign_in",
    /// A sign-in through an identity provider was refused.
    SignInRefused = "sign_in.refused",
}

impl Kind {
    /// An approver's act on a proposal (approval, denial, revocation, cancellation).
    pub fn is_approval_act(&self) -> bool {
        matches!(
            self,
            Kind::Approval | Kind::Denial | Kind::Revocation | Kind::Cancellation
        )
    }
}

/// A record made without naming its kind is written with an empty kind, as before kinds were
/// typed; every writer names one.
impl Default for Kind {
    fn default() -> Self {
        Kind::Other(String::new())
    }
}

impl std::fmt::Display for Kind {
    /// The stored name, padded as asked (`{:<17}` lines up a story's columns).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

impl Serialize for Kind {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Kind {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(KindVisitor)
    }
}

/// Reads a kind from its name without copying the name of a kind this build knows.
struct KindVisitor;

impl serde::de::Visitor<'_> for KindVisitor {
    type Value = Kind;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an event kind")
    }

    fn visit_str<E: serde::de::Error>(self, name: &str) -> Result<Kind, E> {
        Ok(Kind::parse(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_round_trips_through_its_stored_name() {
        for kind in Kind::KNOWN {
            let json = serde_json::to_string(kind).unwrap();
            assert_eq!(json, format!("\"{}\"", kind.as_str()));
            let read: Kind = serde_json::from_str(&json).unwrap();
            assert_eq!(&read, kind);
            assert!(!matches!(Kind::parse(kind.as_str()), Kind::Other(_)));
        }
        let names: std::collections::BTreeSet<&str> =
            Kind::KNOWN.iter().map(Kind::as_str).collect();
        assert_eq!(names.len(), Kind::KNOWN.len(), "two kinds share a name");
        // A story's columns line up: the name pads as a string does.
        assert_eq!(format!("{:<9}|", Kind::Request), "request  |");
    }

    #[test]
    fn a_kind_this_build_does_not_know_is_kept_as_written() {
        let read: Kind = serde_json::from_str("\"quota.changed\"").unwrap();
        assert_eq!(read, Kind::Other("quota.changed".into()));
        assert_eq!(serde_json::to_string(&read).unwrap(), "\"quota.changed\"");
    }
}
