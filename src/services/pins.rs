//! What MCP servers last listed for their pinned tools: the pin each tool had when toolgate
//! last saw it listed (by an agent's `tools/list`, or by toolgate's own look before a pinned
//! call). A call of a pinned tool goes on only while the server's current listing matches.

use std::time::Duration;

use super::fresh::Fresh;

/// How long a listing seen is trusted before a pinned call looks again.
pub const FRESH: Duration = Duration::from_secs(30);

pub struct Pins {
    /// (endpoint, MCP tool name) -> its pin as last listed ("": not listed at all).
    seen: Fresh<(String, String), String>,
}

impl Default for Pins {
    fn default() -> Self {
        Pins {
            seen: Fresh::new(FRESH),
        }
    }
}

impl Pins {
    /// Remembers what `endpoint` listed for `tool` (`None`: it was not listed at all).
    pub fn saw(&self, endpoint: &str, tool: &str, pin: Option<String>) {
        self.seen.put(
            (endpoint.to_string(), tool.to_string()),
            pin.unwrap_or_default(),
        );
    }

    /// The pin `tool` had when `endpoint` last listed it, if seen within [`FRESH`] (`Some("")`:
    /// the server no longer lists it).
    pub fn fresh(&self, endpoint: &str, tool: &str) -> Option<String> {
        self.seen.get(&(endpoint.to_string(), tool.to_string()))
    }
}
