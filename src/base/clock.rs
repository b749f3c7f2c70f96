//! Time and ids.

/// Seconds since the Unix epoch.
pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A new random id with a prefix, such as `req_3f2a…`.
pub fn new_id(prefix: &str) -> String {
    format!("{prefix}_{}", hex::encode(rand::random::<[u8; 12]>()))
}

/// A new request id: `req_`, the time in milliseconds (12 hex digits), then 96 random bits as
/// every id has. Ids made one after another sort one after another, so the audit index of
/// request ids (one entry per call) grows at its end instead of all over its tree.
pub fn new_request_id() -> String {
    format!(
        "req_{:012x}{}",
        now_ms() & 0xffff_ffff_ffff,
        hex::encode(rand::random::<[u8; 12]>())
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_sort_in_the_order_they_were_made_and_stay_unguessable() {
        let first = new_request_id();
        let made = now_ms();
        // Bounded: the clock moves on within a few milliseconds.
        for _ in 0..100_000 {
            if now_ms() > made {
                break;
            }
            std::thread::yield_now();
        }
        let next = new_request_id();
        assert!(first < next, "{first} then {next}");
        assert_eq!(first.len(), "req_".len() + 12 + 24);
        assert!(first[4..].bytes().all(|b| b.is_ascii_hexdigit()));
        // The same millisecond: still two ids (96 random bits each).
        assert_ne!(new_request_id(), new_request_id());
    }
}
