//! Which agent opened each MCP session. A server's `Mcp-Session-Id` is a bearer of the session's
//! state; toolgate binds it to the agent (and the issued token, if any) whose `initialize` the
//! server answered with it, and lets no other agent use it. Kept like the pins: in memory,
//! bounded, each binding dropped after [`IDLE`] without use. A session toolgate does not know
//! (opened elsewhere, before a restart, or dropped) is refused as the spec's unknown session,
//! which a client answers by opening a new one.

use std::time::Duration;

use sha2::{Digest, Sha256};

use super::fresh::Fresh;

/// How long a session stays bound without a request.
pub const IDLE: Duration = Duration::from_secs(8 * 3600);

/// Who opened a session: the agent, and the issued token it came in with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opener {
    pub agent: String,
    pub token: Option<String>,
}

/// How a session stands for the agent that uses it.
#[derive(Debug, PartialEq, Eq)]
pub enum Standing {
    /// It opened it.
    Own,
    /// Another agent opened it (or this agent, with another issued token).
    Another(Opener),
    /// toolgate does not know it.
    Unknown,
}

pub struct McpSessions {
    /// sha256(endpoint, session id) -> who opened it. The session id itself is not kept.
    open: Fresh<String, Opener>,
}

impl Default for McpSessions {
    fn default() -> Self {
        McpSessions {
            open: Fresh::new(IDLE),
        }
    }
}

fn key(endpoint: &str, session: &str) -> String {
    let mut h = Sha256::new();
    h.update(endpoint.as_bytes());
    h.update([0]);
    h.update(session.as_bytes());
    hex::encode(h.finalize())
}

impl McpSessions {
    /// The server at `endpoint` opened `session` for `opener`.
    pub fn opened(&self, endpoint: &str, session: &str, opener: Opener) {
        self.open.put(key(endpoint, session), opener);
    }

    /// How `session` stands for `who`; a use by its opener keeps it bound for another [`IDLE`].
    pub fn standing(&self, endpoint: &str, session: &str, who: &Opener) -> Standing {
        let key = key(endpoint, session);
        match self.open.get(&key) {
            Some(opener) if opener == *who => {
                self.open.put(key, opener);
                Standing::Own
            }
            Some(opener) => Standing::Another(opener),
            None => Standing::Unknown,
        }
    }

    /// The session ended (deleted by its opener, or unknown to the server).
    pub fn ended(&self, endpoint: &str, session: &str) {
        self.open.forget(&key(endpoint, session));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_stands_for_its_opener_only() {
        let sessions = McpSessions::default();
        let a = Opener {
            agent: "a".into(),
            token: None,
        };
        let b = Opener {
            agent: "b".into(),
            token: None,
        };
        let a_token = Opener {
            agent: "a".into(),
            token: Some("tok_1".into()),
        };
        sessions.opened("h:443/mcp", "s1", a.clone());
        assert_eq!(sessions.standing("h:443/mcp", "s1", &a), Standing::Own);
        assert_eq!(
            sessions.standing("h:443/mcp", "s1", &b),
            Standing::Another(a.clone())
        );
        assert!(matches!(
            sessions.standing("h:443/mcp", "s1", &a_token),
            Standing::Another(_)
        ));
        // Another server's session of the same id is another session.
        assert_eq!(sessions.standing("g:443/mcp", "s1", &a), Standing::Unknown);
        sessions.ended("h:443/mcp", "s1");
        assert_eq!(sessions.standing("h:443/mcp", "s1", &a), Standing::Unknown);
    }
}
