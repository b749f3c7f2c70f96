//! The audit log on sled: events in compressed blocks, their indexes as posting lists.

use super::*;

/// The audit log: one tree holds the events (8-byte big-endian sequence keys, whose first
/// byte is 0 for any sequence below 2^56) and, after them, the index entries (keys starting
/// with 0xFF), so that events and their entries are written in one atomic batch.
///
/// An index entry is a posting list per written batch: `0xFF tag value 0x00 first-seq` holds
/// the sequence numbers of that batch's events with that value, so a batch of a thousand reads
/// by one agent writes one agent entry, not a thousand. The time index is the same per second:
/// `0xFF 'T' second first-seq` holds (milliseconds, sequence) pairs.
pub(super) struct SledEventLog {
    pub(super) events: sled::Tree,
    pub(super) meta: sled::Tree,
    pub(super) flusher: Arc<Flusher>,
    pub(super) blocks: BlockWriter,
}

const INDEX: u8 = 0xFF;
const TIME: u8 = b'T';

/// `0xFF tag value 0x00`: the prefix of an index's entries for one value. A value holding a
/// NUL is not indexed (no id, name or code has one).
fn index_prefix(index: crate::store::Index, value: &str) -> Option<Vec<u8>> {
    if value.as_bytes().contains(&0) {
        return None;
    }
    let mut k = Vec::with_capacity(value.len() + 11);
    k.extend_from_slice(&[INDEX, index.tag()]);
    k.extend_from_slice(value.as_bytes());
    k.push(0);
    Some(k)
}

fn time_prefix(second: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(18);
    k.extend_from_slice(&[INDEX, TIME]);
    k.extend_from_slice(&second.to_be_bytes());
    k
}

fn u64s(bytes: &[u8]) -> impl Iterator<Item = u64> + '_ {
    bytes
        .chunks_exact(8)
        .filter_map(|c| <[u8; 8]>::try_from(c).ok())
        .map(u64::from_be_bytes)
}

/// The posting lists of a group of events: index entries by prefix, time entries by second.
#[derive(Default)]
struct Postings {
    named: std::collections::BTreeMap<Vec<u8>, Vec<u64>>,
    times: std::collections::BTreeMap<u64, Vec<(u64, u64)>>,
}

impl Postings {
    fn of(events: &[crate::store::StoredEvent]) -> Postings {
        let mut p = Postings::default();
        for e in events {
            for (index, value) in &e.keys {
                if let Some(prefix) = index_prefix(*index, value) {
                    p.named.entry(prefix).or_default().push(e.seq);
                }
            }
            p.times
                .entry(e.unix_ms / 1000)
                .or_default()
                .push((e.unix_ms, e.seq));
        }
        p
    }

    fn write(self, batch: &mut sled::Batch) {
        for (mut key, seqs) in self.named {
            key.extend_from_slice(&seqs[0].to_be_bytes());
            let value: Vec<u8> = seqs.iter().flat_map(|s| s.to_be_bytes()).collect();
            batch.insert(key, value);
        }
        for (second, pairs) in self.times {
            let mut key = time_prefix(second);
            key.extend_from_slice(&pairs[0].1.to_be_bytes());
            let value: Vec<u8> = pairs
                .iter()
                .flat_map(|(ms, seq)| ms.to_be_bytes().into_iter().chain(seq.to_be_bytes()))
                .collect();
            batch.insert(key, value);
        }
    }
}

impl SledEventLog {
    /// Rewrites the entries under `prefix` without the sequence numbers in `gone`; `pairs`:
    /// the entries are time entries ((ms, seq) pairs).
    fn drop_postings(
        &self,
        prefix: &[u8],
        gone: &std::collections::BTreeSet<u64>,
        pairs: bool,
        batch: &mut sled::Batch,
    ) -> Result<(), StoreError> {
        let width = if pairs { 16 } else { 8 };
        for item in self.events.scan_prefix(prefix) {
            let (k, v) = item?;
            let kept: Vec<u8> = v
                .chunks_exact(width)
                .filter(|c| !u64s(&c[width - 8..]).any(|s| gone.contains(&s)))
                .flatten()
                .copied()
                .collect();
            if kept.is_empty() {
                batch.remove(k);
            } else if kept.len() != v.len() {
                batch.insert(k, kept);
            }
        }
        Ok(())
    }
}

/// A value holding several events (one written batch) starts with `BLOCK` or `ZBLOCK`; a value
/// holding one event is that event's JSON (which starts with `{`), as every earlier version
/// wrote it.
const BLOCK: u8 = 1;
/// A block compressed with zstd: `ZBLOCK`, the plain block's length (u32), the frame.
const ZBLOCK: u8 = 2;
/// No block is larger (a corrupt length must not ask for gigabytes).
const MAX_BLOCK: usize = 256 << 20;
/// zstd level for blocks: the events of a batch are alike, so the fast level already keeps
/// a read under 1 KiB on disk.
const ZSTD_LEVEL: i32 = 1;

/// Writes blocks with one zstd context, reused for every batch (only the writer and purge
/// write blocks, so the lock is not contended).
pub(super) struct BlockWriter(std::sync::Mutex<zstd::block::Compressor>);

impl BlockWriter {
    pub(super) fn new() -> BlockWriter {
        BlockWriter(std::sync::Mutex::new(zstd::block::Compressor::new()))
    }

    /// The events of a batch in one value: (seq, length, bytes) for each, compressed. One key
    /// and one page write per batch instead of one per event.
    fn encode(&self, events: &[(u64, Vec<u8>)]) -> Vec<u8> {
        let size = events.iter().map(|(_, b)| b.len() + 12).sum::<usize>();
        let mut plain = Vec::with_capacity(size);
        for (seq, bytes) in events {
            plain.extend_from_slice(&seq.to_be_bytes());
            plain.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
            plain.extend_from_slice(bytes);
        }
        let frame = match self.0.lock() {
            Ok(mut z) => z.compress(&plain, ZSTD_LEVEL).ok(),
            Err(_) => None,
        };
        match frame {
            Some(frame) if plain.len() <= MAX_BLOCK => {
                let mut out = Vec::with_capacity(frame.len() + 5);
                out.push(ZBLOCK);
                out.extend_from_slice(&(plain.len() as u32).to_be_bytes());
                out.extend_from_slice(&frame);
                out
            }
            // Uncompressed, as the version before wrote blocks.
            _ => {
                plain.insert(0, BLOCK);
                plain
            }
        }
    }
}

/// The events a stored value holds: itself under its key's sequence, or a block's. A block
/// that does not decompress is an error (the chain check reports where).
fn block_events(key_seq: u64, v: &[u8]) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
    let plain;
    let mut rest = match v.first() {
        Some(&BLOCK) => &v[1..],
        Some(&ZBLOCK) if v.len() >= 5 => {
            let len = u32::from_be_bytes([v[1], v[2], v[3], v[4]]) as usize;
            if len > MAX_BLOCK {
                return Err(StoreError::from_message(format!(
                    "audit block at {key_seq}: length {len} is not a block's"
                )));
            }
            plain = zstd::block::decompress(&v[5..], len).map_err(|e| {
                StoreError::from_message(format!("audit block at {key_seq} is corrupt: {e}"))
            })?;
            &plain[..]
        }
        _ => return Ok(vec![(key_seq, v.to_vec())]),
    };
    let mut out = Vec::new();
    while rest.len() >= 12 {
        let seq = u64s(&rest[..8]).next().unwrap_or(0);
        let len = u32::from_be_bytes([rest[8], rest[9], rest[10], rest[11]]) as usize;
        let Some(bytes) = rest.get(12..12 + len) else {
            break;
        };
        out.push((seq, bytes.to_vec()));
        rest = &rest[12 + len..];
    }
    Ok(out)
}

fn key_seq(k: &[u8]) -> u64 {
    <[u8; 8]>::try_from(k).map(u64::from_be_bytes).unwrap_or(0)
}

impl SledEventLog {
    /// The stored value (its key's sequence and bytes) that holds event `seq`, if any.
    fn holding(&self, seq: u64) -> Result<Option<(u64, sled::IVec)>, StoreError> {
        let key = seq.to_be_bytes();
        match self.events.range(..=key.as_slice()).next_back() {
            Some(item) => {
                let (k, v) = item?;
                Ok(Some((key_seq(&k), v)))
            }
            None => Ok(None),
        }
    }
}

impl EventLog for SledEventLog {
    fn last(&self) -> Result<Option<Vec<u8>>, StoreError> {
        let Some(item) = self.events.range(..[INDEX].as_slice()).next_back() else {
            return Ok(None);
        };
        let (k, v) = item?;
        Ok(block_events(key_seq(&k), &v)?.pop().map(|(_, b)| b))
    }

    fn append(&self, events: Vec<crate::store::StoredEvent>) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        let postings = Postings::of(&events);
        match events.as_slice() {
            [] => {}
            [one] => batch.insert(&one.seq.to_be_bytes(), one.bytes.as_slice()),
            [first, ..] => {
                let key = first.seq.to_be_bytes();
                let all: Vec<(u64, Vec<u8>)> =
                    events.into_iter().map(|e| (e.seq, e.bytes)).collect();
                batch.insert(&key, self.blocks.encode(&all));
            }
        }
        postings.write(&mut batch);
        self.events.apply_batch(batch)?;
        Ok(())
    }

    fn index(&self, events: &[crate::store::StoredEvent]) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        Postings::of(events).write(&mut batch);
        self.events.apply_batch(batch)?;
        Ok(())
    }

    fn get(&self, seq: u64) -> Result<Option<Vec<u8>>, StoreError> {
        let Some((k, v)) = self.holding(seq)? else {
            return Ok(None);
        };
        Ok(block_events(k, &v)?
            .into_iter()
            .find(|(s, _)| *s == seq)
            .map(|(_, b)| b))
    }

    fn scan(
        &self,
        from_seq: u64,
    ) -> Box<dyn Iterator<Item = Result<(u64, Vec<u8>), StoreError>> + Send + '_> {
        // From the value holding `from_seq` (a block may start before it).
        let start = match self.holding(from_seq) {
            Ok(Some((k, _))) => k,
            Ok(None) => from_seq,
            Err(e) => return Box::new(std::iter::once(Err(e))),
        };
        let from = start.to_be_bytes();
        Box::new(
            self.events
                .range(from.as_slice()..[INDEX].as_slice())
                .flat_map(move |item| -> Vec<Result<(u64, Vec<u8>), StoreError>> {
                    match item {
                        // A key's sequence (0 if unreadable; the chain check says so).
                        Ok((k, v)) => match block_events(key_seq(&k), &v) {
                            Ok(events) => events
                                .into_iter()
                                .filter(|(s, _)| *s >= from_seq)
                                .map(Ok)
                                .collect(),
                            Err(e) => vec![Err(e)],
                        },
                        Err(e) => vec![Err(e.into())],
                    }
                }),
        )
    }

    fn lookup(&self, index: crate::store::Index, value: &str) -> crate::store::Seqs<'_> {
        let Some(prefix) = index_prefix(index, value) else {
            return Box::new(std::iter::empty());
        };
        Box::new(
            self.events
                .scan_prefix(prefix)
                .flat_map(|item| -> Vec<Result<u64, StoreError>> {
                    match item {
                        Ok((_, v)) => u64s(&v).map(Ok).collect(),
                        Err(e) => vec![Err(e.into())],
                    }
                }),
        )
    }

    fn lookup_rev(
        &self,
        index: crate::store::Index,
        value: &str,
        before: u64,
    ) -> crate::store::Seqs<'_> {
        let Some(prefix) = index_prefix(index, value) else {
            return Box::new(std::iter::empty());
        };
        // Entries are keyed by their first sequence number: those starting below `before`.
        let mut end = prefix.clone();
        end.extend_from_slice(&before.to_be_bytes());
        Box::new(self.events.range(prefix..end).rev().flat_map(
            move |item| -> Vec<Result<u64, StoreError>> {
                match item {
                    Ok((_, v)) => {
                        let mut seqs: Vec<u64> = u64s(&v).filter(|s| *s < before).collect();
                        seqs.reverse();
                        seqs.into_iter().map(Ok).collect()
                    }
                    Err(e) => vec![Err(e.into())],
                }
            },
        ))
    }

    fn in_time(&self, from_ms: u64, until_ms: u64) -> crate::store::Seqs<'_> {
        let start = time_prefix(from_ms / 1000);
        let end = time_prefix((until_ms / 1000).saturating_add(1));
        Box::new(self.events.range(start..end).flat_map(
            move |item| -> Vec<Result<u64, StoreError>> {
                match item {
                    Ok((_, v)) => v
                        .chunks_exact(16)
                        .filter_map(|c| {
                            let mut it = u64s(c);
                            Some((it.next()?, it.next()?))
                        })
                        .filter(|(ms, _)| (from_ms..until_ms).contains(ms))
                        .map(|(_, seq)| Ok(seq))
                        .collect(),
                    Err(e) => vec![Err(e.into())],
                }
            },
        ))
    }

    fn remove(&self, events: &[crate::store::StoredEvent]) -> Result<(), StoreError> {
        let gone: std::collections::BTreeSet<u64> = events.iter().map(|e| e.seq).collect();
        let postings = Postings::of(events);
        let mut batch = sled::Batch::default();
        for prefix in postings.named.keys() {
            self.drop_postings(prefix, &gone, false, &mut batch)?;
        }
        for second in postings.times.keys() {
            self.drop_postings(&time_prefix(*second), &gone, true, &mut batch)?;
        }
        // Each value holding a removed event is removed, or rewritten without it.
        let mut done = std::collections::BTreeSet::new();
        for seq in &gone {
            let Some((k, v)) = self.holding(*seq)? else {
                continue;
            };
            if !done.insert(k) {
                continue;
            }
            let kept: Vec<(u64, Vec<u8>)> = block_events(k, &v)?
                .into_iter()
                .filter(|(s, _)| !gone.contains(s))
                .collect();
            batch.remove(&k.to_be_bytes());
            match kept.as_slice() {
                [] => {}
                [(s, b)] => batch.insert(&s.to_be_bytes(), b.as_slice()),
                [(s, _), ..] => batch.insert(&s.to_be_bytes(), self.blocks.encode(&kept)),
            }
        }
        self.events.apply_batch(batch)?;
        Ok(())
    }

    fn meta_get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.meta.get(key)?.map(|v| v.to_vec()))
    }

    fn meta_put(&self, key: &[u8], value: Vec<u8>) -> Result<(), StoreError> {
        self.meta.insert(key, value)?;
        Ok(())
    }

    fn sync(&self) -> Result<(), StoreError> {
        self.flusher.flush_blocking()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(seq: u64, ms: u64, agent: &str) -> crate::store::StoredEvent {
        crate::store::StoredEvent {
            seq,
            unix_ms: ms,
            bytes: format!("event {seq}").into_bytes(),
            keys: vec![
                (crate::store::Index::Agent, agent.to_string()),
                (crate::store::Index::Request, format!("req_{seq}")),
            ],
        }
    }

    #[test]
    fn the_event_log_finds_events_by_posting_lists_and_forgets_removed_ones() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let log = store.event_log().unwrap();
        let a = crate::store::Index::Agent;
        log.append(vec![
            stored(1, 1_000, "x"),
            stored(2, 1_500, "y"),
            stored(3, 2_100, "x"),
        ])
        .unwrap();
        log.append(vec![stored(4, 2_200, "x")]).unwrap();
        let seqs = |i, v: &str| log.lookup(i, v).collect::<Result<Vec<_>, _>>().unwrap();
        assert_eq!(seqs(a, "x"), [1, 3, 4]);
        assert_eq!(seqs(crate::store::Index::Request, "req_2"), [2]);
        assert!(seqs(a, "nobody").is_empty());
        let mut t: Vec<u64> = log.in_time(1_400, 2_150).collect::<Result<_, _>>().unwrap();
        t.sort();
        assert_eq!(t, [2, 3]);
        assert_eq!(log.last().unwrap().unwrap(), b"event 4");
        assert_eq!(log.scan(3).count(), 2);
        log.remove(&[stored(1, 1_000, "x"), stored(2, 1_500, "y")])
            .unwrap();
        assert_eq!(seqs(a, "x"), [3, 4]);
        assert!(seqs(a, "y").is_empty());
        assert!(log.get(1).unwrap().is_none());
        let t: Vec<u64> = log.in_time(0, u64::MAX).collect::<Result<_, _>>().unwrap();
        assert_eq!(t, [3, 4]);
    }

    #[test]
    fn blocks_are_compressed_and_older_plain_blocks_still_read() {
        let events: Vec<(u64, Vec<u8>)> = (7..107)
            .map(|s| {
                (
                    s,
                    format!(r#"{{"seq":{s},"kind":"request","agent":"a"}}"#).into_bytes(),
                )
            })
            .collect();
        let plain_len: usize = events.iter().map(|(_, b)| b.len() + 12).sum();
        let z = BlockWriter::new().encode(&events);
        assert_eq!(z[0], ZBLOCK);
        assert!(z.len() * 4 < plain_len, "{} vs {plain_len}", z.len());
        assert_eq!(block_events(7, &z).unwrap(), events);
        // A block as the version before wrote it: 0x01 and the plain entries.
        let mut old = vec![BLOCK];
        for (s, b) in &events {
            old.extend_from_slice(&s.to_be_bytes());
            old.extend_from_slice(&(b.len() as u32).to_be_bytes());
            old.extend_from_slice(b);
        }
        assert_eq!(block_events(7, &old).unwrap(), events);
        // One event's JSON is itself.
        assert_eq!(block_events(3, b"{}").unwrap(), [(3, b"{}".to_vec())]);
        // A damaged frame is an error, not a silently shorter log.
        let mut bad = z.clone();
        let at = bad.len() / 2;
        bad[at] ^= 0xFF;
        bad.truncate(bad.len() - 3);
        assert!(block_events(7, &bad).is_err());
        let mut huge = z;
        huge[1..5].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(block_events(7, &huge).is_err());
    }
}
