//! The bottom layer: helpers that import nothing of the crate. Bodies, host and header
//! handling, time and ids, parsing of durations and sizes, and the shapes of JSON values.

pub mod body;
pub mod clock;
pub mod net;
pub mod parse;
pub mod shape;
pub mod sse;

pub use clock::{new_id, new_request_id, now_ms, now_unix};
pub use net::{authority, split_host_port, strip_hop_by_hop};
pub use parse::{job_id_ok, lifetime_secs, parse_duration, parse_size, JOB_ID_RULE};

/// Audit events that may wait for the writer at once, by default.
pub const AUDIT_QUEUE: usize = 8192;
