//! The bytes of an audit block: the events of one written batch, compressed together.
//!
//! A block in a segment (`SEG`): `SEG | plain length: u32 | zstd frame` of, per event,
//! `seq: u64 | unix_ms: u64 | key count: u8 | (index tag: u8 | length: u16 | value)* |
//! length: u32 | bytes` — the keys travel with the event, so that a block written to its
//! segment before sled took its index entries (a crash between the two) is indexed at open.
//!
//! Earlier versions kept blocks as sled values: `BLOCK` and the plain `(seq, length, bytes)`
//! entries, `ZBLOCK`, the plain length and their zstd frame, or one event's JSON alone. They are
//! read once, to move them into segments.

use crate::store::{Index, StoreError, StoredEvent};

/// An uncompressed block of (seq, length, bytes) entries (a sled value of an earlier version).
pub(super) const BLOCK: u8 = 1;
/// The same compressed with zstd: `ZBLOCK`, the plain block's length (u32), the frame.
pub(super) const ZBLOCK: u8 = 2;
/// A segment's block, compressed (see the module's text).
pub(super) const SEG: u8 = 3;
/// A segment's block stored plain (when compression fails).
pub(super) const SEG_PLAIN: u8 = 4;
/// No block is larger (a corrupt length must not ask for gigabytes).
const MAX_BLOCK: usize = 256 << 20;
/// zstd level for blocks: the events of a batch are alike, so the fast level already keeps
/// a read under 1 KiB on disk.
const ZSTD_LEVEL: i32 = 1;

/// Writes blocks with one zstd context, reused for every batch (only the writer and purge
/// write blocks, so the lock is not contended).
pub(super) struct BlockWriter(std::sync::Mutex<zstd::block::Compressor>);

fn put_event(plain: &mut Vec<u8>, e: &StoredEvent) {
    plain.extend_from_slice(&e.seq.to_be_bytes());
    plain.extend_from_slice(&e.unix_ms.to_be_bytes());
    // The key count is written once the keys are (no list of them per event).
    let count_at = plain.len();
    plain.push(0);
    let keys = e
        .keys
        .iter()
        .filter(|(_, v)| v.len() <= u16::MAX as usize)
        .take(u8::MAX as usize);
    for (index, value) in keys {
        plain[count_at] += 1;
        plain.push(index.tag());
        plain.extend_from_slice(&(value.len() as u16).to_be_bytes());
        plain.extend_from_slice(value.as_bytes());
    }
    plain.extend_from_slice(&(e.bytes.len() as u32).to_be_bytes());
    plain.extend_from_slice(&e.bytes);
}

impl BlockWriter {
    pub(super) fn new() -> BlockWriter {
        BlockWriter(std::sync::Mutex::new(zstd::block::Compressor::new()))
    }

    /// The events of a batch as one segment block.
    pub(super) fn encode(&self, events: &[StoredEvent]) -> Vec<u8> {
        let size = events
            .iter()
            .map(|e| e.bytes.len() + 21 + e.keys.iter().map(|k| k.1.len() + 3).sum::<usize>())
            .sum::<usize>();
        let mut plain = Vec::with_capacity(size);
        for e in events {
            put_event(&mut plain, e);
        }
        let frame = match self.0.lock() {
            Ok(mut z) => z.compress(&plain, ZSTD_LEVEL).ok(),
            Err(_) => None,
        };
        match frame {
            Some(frame) if plain.len() <= MAX_BLOCK => {
                let mut out = Vec::with_capacity(frame.len() + 5);
                out.push(SEG);
                out.extend_from_slice(&(plain.len() as u32).to_be_bytes());
                out.extend_from_slice(&frame);
                out
            }
            _ => {
                plain.insert(0, SEG_PLAIN);
                plain
            }
        }
    }
}

fn corrupt(what: &str) -> StoreError {
    StoreError::from_message(format!("audit block is corrupt: {what}"))
}

/// Reads big-endian numbers and slices off the front of a block, failing (not panicking) at
/// its end.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], StoreError> {
        if self.0.len() < n {
            return Err(corrupt("an entry runs past its end"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u64(&mut self) -> Result<u64, StoreError> {
        let mut b = [0u8; 8];
        b.copy_from_slice(self.take(8)?);
        Ok(u64::from_be_bytes(b))
    }

    fn u32(&mut self) -> Result<u32, StoreError> {
        let mut b = [0u8; 4];
        b.copy_from_slice(self.take(4)?);
        Ok(u32::from_be_bytes(b))
    }

    fn u16(&mut self) -> Result<u16, StoreError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
}

/// The plain bytes of a compressed block (`kind`, plain length, zstd frame).
fn decompressed(v: &[u8]) -> Result<Vec<u8>, StoreError> {
    let mut r = Reader(v.get(1..).unwrap_or_default());
    let len = r.u32()? as usize;
    if len > MAX_BLOCK {
        return Err(corrupt(&format!("length {len} is not a block's")));
    }
    zstd::block::decompress(r.0, len).map_err(|e| corrupt(&e.to_string()))
}

fn get_event(r: &mut Reader<'_>) -> Result<StoredEvent, StoreError> {
    let seq = r.u64()?;
    let unix_ms = r.u64()?;
    let n = r.take(1)?[0];
    let mut keys = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let tag = r.take(1)?[0];
        let len = r.u16()? as usize;
        let value = String::from_utf8_lossy(r.take(len)?).into_owned();
        if let Some(index) = Index::from_tag(tag) {
            keys.push((index, value));
        }
    }
    let len = r.u32()? as usize;
    let bytes = r.take(len)?.to_vec();
    Ok(StoredEvent {
        seq,
        unix_ms,
        bytes,
        keys,
    })
}

/// The events of a segment block, in order. A block that does not read whole is an error.
pub(super) fn decode(payload: &[u8]) -> Result<Vec<StoredEvent>, StoreError> {
    let plain;
    let body = match payload.first() {
        Some(&SEG) => {
            plain = decompressed(payload)?;
            &plain[..]
        }
        Some(&SEG_PLAIN) => &payload[1..],
        _ => return Err(corrupt("not a segment block")),
    };
    let mut r = Reader(body);
    let mut out = Vec::new();
    while !r.0.is_empty() {
        out.push(get_event(&mut r)?);
    }
    if out.is_empty() {
        return Err(corrupt("no events"));
    }
    Ok(out)
}

/// The events a sled value of an earlier version holds: itself under its key's sequence, or a
/// block's. A block that does not decompress is an error.
pub(super) fn legacy_events(key_seq: u64, v: &[u8]) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
    let plain;
    let body = match v.first() {
        Some(&BLOCK) => &v[1..],
        Some(&ZBLOCK) => {
            plain = decompressed(v)?;
            &plain[..]
        }
        _ => return Ok(vec![(key_seq, v.to_vec())]),
    };
    let mut r = Reader(body);
    let mut out = Vec::new();
    while r.0.len() >= 12 {
        let seq = r.u64()?;
        let len = r.u32()? as usize;
        let Ok(bytes) = r.take(len) else {
            break;
        };
        out.push((seq, bytes.to_vec()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn event(seq: u64) -> StoredEvent {
        StoredEvent {
            seq,
            unix_ms: 1_700_000_000_000 + seq,
            bytes: format!(r#"{{"seq":{seq},"kind":"request","agent":"a"}}"#).into_bytes(),
            keys: vec![
                (Index::Agent, "a".into()),
                (Index::Request, format!("req_{seq}")),
            ],
        }
    }

    fn same(a: &[StoredEvent], b: &[StoredEvent]) -> bool {
        a.len() == b.len()
            && a.iter().zip(b).all(|(x, y)| {
                x.seq == y.seq && x.unix_ms == y.unix_ms && x.bytes == y.bytes && x.keys == y.keys
            })
    }

    #[test]
    fn blocks_are_compressed_and_read_back_with_their_keys() {
        let events: Vec<StoredEvent> = (7..107).map(event).collect();
        let plain_len: usize = events.iter().map(|e| e.bytes.len() + 12).sum();
        let z = BlockWriter::new().encode(&events);
        assert_eq!(z[0], SEG);
        assert!(z.len() * 4 < plain_len, "{} vs {plain_len}", z.len());
        assert!(same(&decode(&z).unwrap(), &events));
        let mut bad = z.clone();
        let at = bad.len() / 2;
        bad[at] ^= 0xFF;
        bad.truncate(bad.len() - 3);
        assert!(decode(&bad).is_err());
        let mut huge = z;
        huge[1..5].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(decode(&huge).is_err());
    }

    /// Every index a key can have travels with its event through a block (a block indexed
    /// at open after a crash is found by all of them).
    #[test]
    fn every_index_travels_with_its_event() {
        let mut e = event(1);
        e.keys = Index::ALL
            .iter()
            .map(|i| (*i, format!("value of {i:?}")))
            .collect();
        let back = decode(&BlockWriter::new().encode(std::slice::from_ref(&e))).unwrap();
        assert_eq!(back[0].keys, e.keys);
        assert!(back[0].keys.iter().any(|(i, _)| *i == Index::ModelAnswer));
    }

    #[test]
    fn values_of_earlier_versions_still_read() {
        let events: Vec<(u64, Vec<u8>)> = (7..107).map(|s| (s, event(s).bytes)).collect();
        let mut old = vec![BLOCK];
        for (s, b) in &events {
            old.extend_from_slice(&s.to_be_bytes());
            old.extend_from_slice(&(b.len() as u32).to_be_bytes());
            old.extend_from_slice(b);
        }
        assert_eq!(legacy_events(7, &old).unwrap(), events);
        let mut z = vec![ZBLOCK];
        z.extend_from_slice(&((old.len() - 1) as u32).to_be_bytes());
        z.extend_from_slice(&zstd::block::compress(&old[1..], 1).unwrap());
        assert_eq!(legacy_events(7, &z).unwrap(), events);
        assert_eq!(legacy_events(3, b"{}").unwrap(), [(3, b"{}".to_vec())]);
    }

    proptest! {
        /// A plain block cut or changed anywhere decodes to an error or to events, never a panic.
        #[test]
        fn damaged_blocks_never_panic(cut in any::<prop::sample::Index>(), at in any::<prop::sample::Index>(), x in any::<u8>()) {
            let events: Vec<StoredEvent> = (1..5).map(event).collect();
            let mut plain = vec![SEG_PLAIN];
            for e in &events { put_event(&mut plain, e); }
            let at = at.index(plain.len());
            plain[at] ^= x;
            let cut = cut.index(plain.len() + 1);
            let _ = decode(&plain[..cut]);
            let _ = legacy_events(1, &plain[..cut]);
        }
    }
}
