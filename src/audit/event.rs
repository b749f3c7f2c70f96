//! The event: its stored form, its hash chain, and what the indexes find it by.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::Kind;
use crate::store::{Index, StoredEvent};

/// One event of the log. The field order is the hashing order: do not reorder.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Event {
    pub seq: u64,
    pub time: String,
    pub unix_ms: u64,
    pub kind: Kind,
    #[serde(default)]
    pub request_id: Option<String>,
    #[serde(default)]
    pub job: Option<String>,
    #[serde(default)]
    pub proposal: Option<String>,
    #[serde(default)]
    pub agent: Option<String>,
    #[serde(default)]
    pub owner: Option<String>,
    #[serde(default)]
    pub tool: Option<String>,
    #[serde(default)]
    pub tool_version: Option<u32>,
    /// The issued token the call came in with (its id, never the token). Left out when none,
    /// so events from before it existed hash as they were written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// The person the call acted for. Left out when none (events before it hash as written).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    pub payload: Value,
    pub prev: String,
    #[serde(default)]
    pub hash: String,
}

impl Event {
    /// sha256 over the event with an empty `hash`, chained to `prev`.
    pub fn compute_hash(&self) -> String {
        let mut copy = self.clone();
        copy.hash = String::new();
        let bytes = serde_json::to_vec(&copy).unwrap_or_default();
        hex::encode(Sha256::digest(&bytes))
    }
}

/// What a caller records; the writer adds the sequence and the chain. The time is when it
/// was recorded (the request's time), not when the writer got to it.
#[derive(Debug, Clone, Default)]
pub struct Record {
    pub kind: Kind,
    /// Milliseconds since the epoch; 0: stamped when recorded.
    pub at_ms: u64,
    pub request_id: Option<String>,
    pub job: Option<String>,
    pub proposal: Option<String>,
    pub agent: Option<String>,
    pub owner: Option<String>,
    pub tool: Option<String>,
    pub tool_version: Option<u32>,
    /// The id of the issued token the call came in with.
    pub token: Option<String>,
    /// The person the call acts for.
    pub user: Option<String>,
    pub payload: Value,
}

/// The tail of an event serialised with an empty hash: `hash` is the last field.
const EMPTY_HASH_TAIL: &[u8] = b"\"hash\":\"\"}";

impl Event {
    /// The stored form and the hash in one serialisation: the bytes hashed are the event with
    /// an empty `hash` (as `compute_hash`), and the hash is then written into them.
    pub fn seal(&mut self) -> Vec<u8> {
        self.hash.clear();
        let mut bytes = serde_json::to_vec(self).unwrap_or_default();
        let hash = hex::encode(Sha256::digest(&bytes));
        if bytes.ends_with(EMPTY_HASH_TAIL) {
            bytes.truncate(bytes.len() - 2);
            bytes.extend_from_slice(hash.as_bytes());
            bytes.extend_from_slice(b"\"}");
        } else {
            // Not reached while `hash` is the last field; stay correct if it ever is not.
            let mut sealed = self.clone();
            sealed.hash = hash.clone();
            bytes = serde_json::to_vec(&sealed).unwrap_or_default();
        }
        self.hash = hash;
        bytes
    }

    /// What the indexes find this event by.
    pub fn index_keys(&self) -> Vec<(Index, String)> {
        let mut keys = Vec::with_capacity(8);
        let named = [
            (Index::Request, &self.request_id),
            (Index::Proposal, &self.proposal),
            (Index::Job, &self.job),
            (Index::Agent, &self.agent),
            (Index::Tool, &self.tool),
            (Index::Token, &self.token),
            (Index::User, &self.user),
        ];
        for (index, value) in named {
            if let Some(v) = value.as_deref().filter(|v| !v.is_empty()) {
                keys.push((index, v.to_string()));
            }
        }
        keys.push((Index::Kind, self.kind.as_str().to_string()));
        if let Some(code) = self.payload.get("code").and_then(Value::as_str) {
            keys.push((Index::Code, code.to_string()));
        }
        // A call made at a model's request is found by that model call's request id.
        let model_request = self.payload["requested_by"]["model_request"].as_str();
        if let Some(m) = model_request.filter(|m| !m.is_empty()) {
            keys.push((Index::ModelRequest, m.to_string()));
        }
        // A model answer that asked for tool calls, by its agent: what a replica reads back of
        // the others' answers to join a call.
        let asked = self.payload["tool_calls"]
            .as_array()
            .is_some_and(|c| !c.is_empty());
        if let (Kind::ModelUsage, Some(agent), true) = (&self.kind, &self.agent, asked) {
            keys.push((Index::ModelAnswer, agent.clone()));
        }
        keys
    }

    /// The event as the log stores it.
    pub fn stored(&self, bytes: Vec<u8>) -> StoredEvent {
        StoredEvent {
            seq: self.seq,
            unix_ms: self.unix_ms,
            bytes,
            keys: self.index_keys(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealing_hashes_what_verify_recomputes() {
        let mut e = Event {
            seq: 7,
            time: "t".into(),
            unix_ms: 1,
            kind: Kind::Request,
            request_id: Some("req_1".into()),
            job: None,
            proposal: None,
            agent: Some("bot".into()),
            owner: None,
            tool: None,
            tool_version: None,
            token: None,
            user: None,
            payload: serde_json::json!({"code": "validation_error", "x": "\"}"}),
            prev: "abc".into(),
            hash: "stale".into(),
        };
        let bytes = e.seal();
        let read: Event = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(read, e);
        // Without a token the event is written as before the field existed: old chains verify.
        assert!(!String::from_utf8_lossy(&bytes).contains("\"token\""));
        assert_eq!(read.compute_hash(), read.hash);
        e.token = Some("tok_1".into());
        let bytes = e.seal();
        let read: Event = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(read.token.as_deref(), Some("tok_1"));
        assert_eq!(read.compute_hash(), read.hash);
        let keys = e.index_keys();
        assert!(keys.contains(&(Index::Request, "req_1".into())));
        assert!(keys.contains(&(Index::Code, "validation_error".into())));
        assert!(!keys.iter().any(|(i, _)| *i == Index::Job));
    }

    /// An event as the untyped writer stored it (kind as text) reads, hashes and is written
    /// again byte for byte, whatever its kind: one this build knows, or one it does not.
    #[test]
    fn a_stored_event_reads_and_hashes_as_it_was_written() {
        let newer = ["quota.changed"];
        let names = Kind::KNOWN.iter().map(Kind::as_str).chain(newer);
        for kind in names {
            let unsealed = format!(
                r#"{{"seq":3,"time":"2026-11-22T05:30:04Z","unix_ms":1,"kind":"{kind}","request_id":"req_1","job":null,"proposal":null,"agent":"bot","owner":null,"tool":"t.x","tool_version":2,"payload":{{"code":"x","method":"GET","response":{{"status":200}}}},"prev":"ab","hash":""}}"#
            );
            let hash = hex::encode(Sha256::digest(unsealed.as_bytes()));
            let stored = unsealed.replace(r#""hash":"""#, &format!(r#""hash":"{hash}""#));
            let e: Event = serde_json::from_str(&stored).unwrap();
            assert_eq!(e.kind.as_str(), kind);
            assert_eq!(e.compute_hash(), hash, "{kind}");
            assert_eq!(serde_json::to_string(&e).unwrap(), stored);
            assert_eq!(e.clone().seal(), stored.as_bytes());
            assert!(e.index_keys().contains(&(Index::Kind, kind.to_string())));
        }
    }
}
