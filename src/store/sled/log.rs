//! The audit log on sled and segment files: event blocks appended to segments, their
//! directory and indexes (posting lists) in sled.

use std::collections::BTreeSet;

use super::block::{decode, BlockWriter};
use super::segment::{Loc, Segments};
use super::*;

/// The audit log: event blocks (one per written batch) in append-only segment files; one sled
/// tree holds where each block is and the index entries, written in one atomic batch after the
/// block. Keys of that tree:
///
/// - `0xFC segment first-seq`: empty, one per block in that segment (whether a segment still
///   holds any block);
/// - `0xFD`: the highest sequence number indexed (a block after it in a segment was written
///   before a crash, and is indexed at open);
/// - `0xFE first-seq`: the directory: segment, offset, length and last sequence of the block
///   whose first event is `first-seq`;
/// - `0xFF ...`: the index entries. An index entry is a posting list per written batch:
///   `0xFF tag value 0x00 first-seq` holds the sequence numbers of that batch's events with that
///   value, so a batch of a thousand reads by one agent writes one agent entry, not a thousand.
///   The time index is the same per second: `0xFF 'T' second first-seq` holds (milliseconds,
///   sequence) pairs.
///
/// Earlier versions kept the blocks in the tree itself under 8-byte sequence keys (first byte
/// 0); they are moved into segments at open.
pub(super) struct SledEventLog {
    pub(super) events: sled::Tree,
    pub(super) meta: sled::Tree,
    pub(super) flusher: Arc<Flusher>,
    pub(super) blocks: BlockWriter,
    pub(super) segments: Arc<Segments>,
    /// One writer of blocks at a time: an append, or a removal (which writes blocks it cuts
    /// through again, and deletes the segments it empties: none may be taking a block whose
    /// index entries are not written yet).
    pub(super) writing: std::sync::Mutex<()>,
    /// One removal at a time: it reads posting lists and blocks without holding `writing`
    /// (appends only add keys of their own), and takes `writing` only to place, sync and apply.
    pub(super) removing: std::sync::Mutex<()>,
    /// Opened for inspection: what a recovery would report (it is not run).
    pub(super) pending: std::sync::Mutex<Option<String>>,
    /// In tests: the next index write fails.
    #[cfg(test)]
    pub(super) fail_index: std::sync::atomic::AtomicBool,
    /// In tests: the next removal says when its batch is built, and waits to go on.
    #[cfg(test)]
    pub(super) remove_pause: std::sync::Mutex<Option<RemovePause>>,
}

/// In tests: a removal sends on the first once its batch is built, and waits on the second.
#[cfg(test)]
pub(super) type RemovePause = (std::sync::mpsc::Sender<()>, std::sync::mpsc::Receiver<()>);

/// One event a scan yields: its sequence number and bytes.
type ScanItem = Result<(u64, Vec<u8>), StoreError>;

/// How often a reader follows a block that removals keep moving before it gives up.
const MOVES: usize = 1000;

impl Drop for SledEventLog {
    /// Dropping `events` (its last handle) flushes sled: the segment is synced first.
    fn drop(&mut self) {
        if let Err(e) = self.segments.sync() {
            tracing::warn!("could not sync the audit segment at close: {e}");
        }
    }
}

pub(super) const SEGS: u8 = 0xFC;
pub(super) const HIGH: u8 = 0xFD;
pub(super) const DIR: u8 = 0xFE;
pub(super) const INDEX: u8 = 0xFF;
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

pub(super) fn u64s(bytes: &[u8]) -> impl Iterator<Item = u64> + '_ {
    bytes
        .chunks_exact(8)
        .filter_map(|c| <[u8; 8]>::try_from(c).ok())
        .map(u64::from_be_bytes)
}

/// The posting lists of a group of events: sequence numbers by index and value (borrowed from
/// the events: no key is built per event), time entries by second.
#[derive(Default)]
pub(super) struct Postings<'a> {
    named: std::collections::BTreeMap<(crate::store::Index, &'a str), Vec<u64>>,
    times: std::collections::BTreeMap<u64, Vec<(u64, u64)>>,
}

impl<'a> Postings<'a> {
    pub(super) fn of(events: &'a [crate::store::StoredEvent]) -> Postings<'a> {
        let mut p = Postings::default();
        for e in events {
            for (index, value) in &e.keys {
                p.named
                    .entry((*index, value.as_str()))
                    .or_default()
                    .push(e.seq);
            }
            p.times
                .entry(e.unix_ms / 1000)
                .or_default()
                .push((e.unix_ms, e.seq));
        }
        p
    }

    /// The prefixes of the index entries these events are under.
    fn prefixes(&self) -> impl Iterator<Item = Vec<u8>> + '_ {
        self.named
            .keys()
            .filter_map(|(index, value)| index_prefix(*index, value))
    }

    pub(super) fn write(self, batch: &mut sled::Batch) {
        for ((index, value), seqs) in self.named {
            let Some(mut key) = index_prefix(index, value) else {
                continue;
            };
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

/// A directory entry: where a block is, and its first and last sequence numbers.
#[derive(Debug, Clone, Copy)]
pub(super) struct Entry {
    pub first: u64,
    pub last: u64,
    pub loc: Loc,
}

pub(super) fn dir_key(first: u64) -> [u8; 9] {
    let mut k = [DIR; 9];
    k[1..].copy_from_slice(&first.to_be_bytes());
    k
}

pub(super) fn seg_key(seg: u64, first: u64) -> [u8; 17] {
    let mut k = [SEGS; 17];
    k[1..9].copy_from_slice(&seg.to_be_bytes());
    k[9..].copy_from_slice(&first.to_be_bytes());
    k
}

/// The sequence number at the end of a key (0 if it has none).
pub(super) fn tail_seq(k: &[u8]) -> u64 {
    k.len()
        .checked_sub(8)
        .and_then(|at| u64s(&k[at..]).next())
        .unwrap_or(0)
}

impl Entry {
    fn value(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(28);
        v.extend_from_slice(&self.loc.seg.to_be_bytes());
        v.extend_from_slice(&self.loc.off.to_be_bytes());
        v.extend_from_slice(&self.loc.len.to_be_bytes());
        v.extend_from_slice(&self.last.to_be_bytes());
        v
    }

    pub(super) fn read(k: &[u8], v: &[u8]) -> Result<Entry, StoreError> {
        let mut n = u64s(v);
        let (Some(seg), Some(off), Some(len), Some(last)) = (
            n.next(),
            n.next(),
            v.get(16..20),
            v.get(20..28).and_then(|b| u64s(b).next()),
        ) else {
            return Err(StoreError::from_message(format!(
                "the audit directory's entry for {} is damaged",
                tail_seq(k)
            )));
        };
        let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]);
        Ok(Entry {
            first: tail_seq(k),
            last,
            loc: Loc { seg, off, len },
        })
    }

    /// Writes the entry (and its segment's key) into `batch`.
    pub(super) fn put(&self, batch: &mut sled::Batch) {
        batch.insert(&dir_key(self.first), self.value());
        batch.insert(&seg_key(self.loc.seg, self.first), &[]);
    }

    pub(super) fn delete(&self, batch: &mut sled::Batch) {
        batch.remove(&dir_key(self.first));
        batch.remove(&seg_key(self.loc.seg, self.first));
    }
}

impl SledEventLog {
    /// The directory entry of the block holding `seq`, if any.
    pub(super) fn entry_at(&self, seq: u64) -> Result<Option<Entry>, StoreError> {
        match self
            .events
            .range([DIR].as_slice()..=dir_key(seq).as_slice())
            .next_back()
        {
            Some(item) => {
                let (k, v) = item?;
                Ok(Some(Entry::read(&k, &v)?))
            }
            None => Ok(None),
        }
    }

    /// Directory entries from the block starting at `first` on, in sequence order.
    pub(super) fn entries_from(
        &self,
        first: u64,
    ) -> impl DoubleEndedIterator<Item = Result<Entry, StoreError>> + Send + '_ {
        self.events
            .range(dir_key(first).as_slice()..[DIR + 1].as_slice())
            .map(|item| {
                let (k, v) = item?;
                Entry::read(&k, &v)
            })
    }

    pub(super) fn read_block(
        &self,
        e: &Entry,
    ) -> Result<Vec<crate::store::StoredEvent>, StoreError> {
        decode(&self.segments.read(e.loc)?).map_err(|err| {
            StoreError::from_message(format!(
                "events {}..{} are not readable: {err}",
                e.first, e.last
            ))
        })
    }

    /// The events of a block the directory listed, read where it is now: a removal writes
    /// a block it cuts through again elsewhere (the entry is looked up again and the block
    /// read there), or drops it (None; the events it kept are under another first event).
    pub(super) fn read_live(
        &self,
        e: &Entry,
    ) -> Result<Option<(Entry, Vec<crate::store::StoredEvent>)>, StoreError> {
        let mut e = *e;
        for _ in 0..MOVES {
            match self.read_block(&e) {
                Ok(events) => return Ok(Some((e, events))),
                Err(err) => match self.events.get(dir_key(e.first))? {
                    Some(v) => {
                        let now = Entry::read(&dir_key(e.first), &v)?;
                        if now.loc == e.loc {
                            return Err(err);
                        }
                        e = now;
                    }
                    None => return Ok(None),
                },
            }
        }
        Err(StoreError::from_message(format!(
            "events {}..{} moved more than {MOVES} times while being read",
            e.first, e.last
        )))
    }

    /// The block holding `seq` or, when none does, the first after it, read where it is now;
    /// None past the end.
    fn block_from(
        &self,
        seq: u64,
    ) -> Result<Option<(Entry, Vec<crate::store::StoredEvent>)>, StoreError> {
        for _ in 0..MOVES {
            let entry = match self.entry_at(seq)?.filter(|e| e.last >= seq) {
                Some(e) => e,
                None => match self.entries_from(seq).next().transpose()? {
                    Some(e) => e,
                    None => return Ok(None),
                },
            };
            if let Some(found) = self.read_live(&entry)? {
                return Ok(Some(found));
            }
        }
        Err(StoreError::from_message(format!(
            "the block holding event {seq} moved more than {MOVES} times while being read"
        )))
    }

    /// Writes a batch of entries pointing at the blocks at `placed`, which must be durable
    /// already: sled writes its buffers to its files whenever they fill (unsynced), and the
    /// disk may take those pages before the segment's. In tests, notes each entry in the
    /// journal, and fails when told to.
    pub(super) fn apply(&self, batch: sled::Batch, placed: &[Loc]) -> Result<(), StoreError> {
        #[cfg(test)]
        for loc in placed {
            self.segments.note_indexed(*loc);
        }
        #[cfg(not(test))]
        let _ = placed;
        #[cfg(test)]
        if self
            .fail_index
            .swap(false, std::sync::atomic::Ordering::SeqCst)
        {
            return Err(StoreError::from_message(
                "index write failed (test)".to_string(),
            ));
        }
        self.events.apply_batch(batch)?;
        Ok(())
    }

    /// The highest sequence number indexed so far.
    pub(super) fn high(&self) -> Result<u64, StoreError> {
        Ok(self.events.get([HIGH])?.map(|v| tail_seq(&v)).unwrap_or(0))
    }

    /// Appends a block to the segment being written, and puts its entry in `batch` (replacing
    /// an entry of a block written earlier under the same first event).
    pub(super) fn place(
        &self,
        events: &[crate::store::StoredEvent],
        batch: &mut sled::Batch,
    ) -> Result<Option<Entry>, StoreError> {
        self.place_encoded(events, &self.blocks.encode(events), batch)
    }

    /// The same, with the events' block encoded already.
    fn place_encoded(
        &self,
        events: &[crate::store::StoredEvent],
        block: &[u8],
        batch: &mut sled::Batch,
    ) -> Result<Option<Entry>, StoreError> {
        let (Some(first), Some(last)) = (events.first(), events.last()) else {
            return Ok(None);
        };
        let loc = self.segments.append(block)?;
        if let Some(old) = self.events.get(dir_key(first.seq))? {
            Entry::read(&dir_key(first.seq), &old)?.delete(batch);
        }
        let entry = Entry {
            first: first.seq,
            last: last.seq,
            loc,
        };
        entry.put(batch);
        Ok(Some(entry))
    }

    /// In tests: waits where `remove_pause` says.
    #[cfg(test)]
    fn paused_in_remove(&self) {
        let pause = self
            .remove_pause
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some((built, go)) = pause {
            let _ = built.send(());
            let _ = go.recv();
        }
    }

    /// Deletes the segments no block is left in, once the removal is durable. Only segments
    /// older than the one being written when it looks: appends and a removal's rewritten
    /// blocks go to the active segment alone, so an older one can never gain a block, while
    /// the active one (or one the writer rolled to meanwhile, which runs alongside) may hold a
    /// block placed but not yet indexed. Every older segment is looked at, not only those this
    /// removal touched: one emptied while it was being written is deleted by a later removal.
    fn drop_empty_segments(&self) -> Result<(), StoreError> {
        let active = self.segments.active_id();
        let mut empty = Vec::new();
        for seg in self.segments.ids()?.into_iter().filter(|s| *s < active) {
            let prefix = &seg_key(seg, 0)[..9];
            if self.events.scan_prefix(prefix).next().is_none() {
                empty.push(seg);
            }
        }
        if empty.is_empty() {
            return Ok(());
        }
        self.sync()?;
        for seg in empty {
            self.segments.remove(seg)?;
        }
        Ok(())
    }
}

impl EventLog for SledEventLog {
    fn last(&self) -> Result<Option<Vec<u8>>, StoreError> {
        let Some(entry) = self.entries_from(0).next_back().transpose()? else {
            return Ok(None);
        };
        Ok(self.read_block(&entry)?.pop().map(|e| e.bytes))
    }

    fn append(&self, events: Vec<crate::store::StoredEvent>) -> Result<(), StoreError> {
        let _one = self.writing.lock().unwrap_or_else(|p| p.into_inner());
        let mut batch = sled::Batch::default();
        let Some(entry) = self.place(&events, &mut batch)? else {
            return Ok(());
        };
        Postings::of(&events).write(&mut batch);
        // One `fdatasync` per batch (the writer's group commit), before sled holds an entry
        // pointing at the block; the flush that acknowledges durable events then finds the
        // segment synced already.
        let indexed = self
            .segments
            .sync()
            .and_then(|()| self.high())
            .and_then(|high| {
                if entry.last > high {
                    batch.insert(&[HIGH], &entry.last.to_be_bytes());
                }
                self.apply(batch, &[entry.loc])
            });
        if let Err(e) = indexed {
            // The caller is told the append failed: the block must not come back at open.
            if let Err(cut) = self.segments.unappend(entry.loc) {
                tracing::warn!(
                    "an audit block whose index entries failed stays in its segment: {cut}"
                );
            }
            return Err(e);
        }
        Ok(())
    }

    fn index(&self, events: &[crate::store::StoredEvent]) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        Postings::of(events).write(&mut batch);
        self.events.apply_batch(batch)?;
        Ok(())
    }

    fn get(&self, seq: u64) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .block_from(seq)?
            .and_then(|(_, events)| events.into_iter().find(|e| e.seq == seq).map(|e| e.bytes)))
    }

    fn scan(
        &self,
        from_seq: u64,
    ) -> Box<dyn Iterator<Item = Result<(u64, Vec<u8>), StoreError>> + Send + '_> {
        // Block by block, each looked up afresh from the sequence number after the last one
        // yielded: a removal meanwhile moves blocks, and no surviving event is skipped or
        // yielded twice.
        let mut next = from_seq;
        let mut done = false;
        Box::new(
            std::iter::from_fn(move || -> Option<Vec<ScanItem>> {
                if done {
                    return None;
                }
                match self.block_from(next) {
                    Ok(Some((entry, events))) => {
                        let from = next;
                        next = entry.last.max(from).saturating_add(1);
                        done = entry.last == u64::MAX;
                        Some(
                            events
                                .into_iter()
                                .filter(|e| e.seq >= from)
                                .map(|e| Ok((e.seq, e.bytes)))
                                .collect(),
                        )
                    }
                    Ok(None) => None,
                    Err(e) => {
                        done = true;
                        Some(vec![Err(e)])
                    }
                }
            })
            .flatten(),
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

    /// The batch is built (posting lists rewritten, blocks cut through read and encoded again)
    /// without holding `writing`: the writer waits only while the blocks are placed, synced and
    /// indexed; the flush and the deletion of emptied segments come after.
    fn remove(&self, events: &[crate::store::StoredEvent]) -> Result<(), StoreError> {
        let _purge = self.removing.lock().unwrap_or_else(|p| p.into_inner());
        let gone: BTreeSet<u64> = events.iter().map(|e| e.seq).collect();
        let postings = Postings::of(events);
        let mut batch = sled::Batch::default();
        for prefix in postings.prefixes() {
            self.drop_postings(&prefix, &gone, false, &mut batch)?;
        }
        for second in postings.times.keys() {
            self.drop_postings(&time_prefix(*second), &gone, true, &mut batch)?;
        }
        // Each block holding a removed event is dropped, or written again without it.
        let mut done = BTreeSet::new();
        let mut again = Vec::new();
        for seq in &gone {
            let Some(entry) = self.entry_at(*seq)?.filter(|e| e.last >= *seq) else {
                continue;
            };
            if !done.insert(entry.first) {
                continue;
            }
            let kept: Vec<crate::store::StoredEvent> = self
                .read_block(&entry)?
                .into_iter()
                .filter(|e| !gone.contains(&e.seq))
                .collect();
            entry.delete(&mut batch);
            let block = self.blocks.encode(&kept);
            again.push((kept, block));
        }
        #[cfg(test)]
        self.paused_in_remove();
        {
            let _one = self.writing.lock().unwrap_or_else(|p| p.into_inner());
            let mut placed = Vec::new();
            for (kept, block) in &again {
                placed.extend(self.place_encoded(kept, block, &mut batch)?.map(|e| e.loc));
            }
            self.segments.sync()?;
            self.apply(batch, &placed)?;
        }
        self.drop_empty_segments()
    }

    fn meta_get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let stored = self.meta.get(key)?.map(|v| v.to_vec());
        let pending = self
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        match pending {
            Some(note) if key == crate::store::RECOVERIES => {
                let mut notes: Vec<serde_json::Value> = match &stored {
                    Some(v) => serde_json::from_slice(v)?,
                    None => Vec::new(),
                };
                notes.push(serde_json::json!({"at_unix": now_unix(), "note": note}));
                Ok(Some(serde_json::to_vec(&notes)?))
            }
            _ => Ok(stored),
        }
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
}
