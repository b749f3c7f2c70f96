//! The audit log at open: a torn tail of the last segment cut off and reported, blocks a crash
//! left unindexed (written to their segment, not yet to sled) indexed, and blocks of earlier
//! versions (kept in sled itself) moved into segments.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

use super::block::{decode, legacy_events, BlockWriter};
use super::log::{
    dir_key, seg_key, tail_seq, u64s, Entry, Postings, SledEventLog, DIR, HIGH, INDEX, SEGS,
};
use super::segment::{read_frames, truncate, Loc, Segments};
use super::*;
use crate::store::{StoredEvent, RECOVERIES};

/// A segment as found at open.
struct Scan {
    seg: u64,
    /// Its whole frames: offset and payload length.
    frames: Vec<(u64, usize)>,
    /// Its blocks after the highest sequence number indexed (written before a crash, not
    /// indexed): offset, payload length, events.
    unindexed: Vec<(u64, usize, Vec<StoredEvent>)>,
    /// Where a torn part started and how long it was (already cut off).
    torn: Option<(u64, u64)>,
}

/// Where the frames the directory lists in segment `seg` start (ascending).
fn indexed_offsets(events: &sled::Tree, seg: u64) -> Result<Vec<u64>, StoreError> {
    let mut offs = Vec::new();
    for item in events.scan_prefix(&seg_key(seg, 0)[..9]) {
        let (k, _) = item?;
        if let Some(v) = events.get(dir_key(tail_seq(&k)))? {
            let entry = Entry::read(&dir_key(tail_seq(&k)), &v)?;
            if entry.loc.seg == seg {
                offs.push(entry.loc.off);
            }
        }
    }
    offs.sort_unstable();
    Ok(offs)
}

/// Reads segment `seg` under `dir` and, when `repair`, cuts off a torn tail (else only
/// reports it): the bytes from the first frame that is not whole on. Appends are serialised and
/// each block is synced before the next is written and before it is indexed, so a crash leaves
/// at most one torn frame, after the last indexed one; whatever those bytes hold (an agent's
/// bytes can look like frames) is not read. Damage at or before an indexed frame is not a torn
/// tail: the segment is refused, never cut (that would drop acknowledged events).
fn scan(
    dir: &Path,
    seg: u64,
    events: &sled::Tree,
    repair: bool,
    high: u64,
) -> Result<Scan, StoreError> {
    let path = dir.join(format!("{seg:012}.seg"));
    let mut frames = Vec::new();
    let mut unindexed = Vec::new();
    let (end, size) = read_frames(&path, |off, payload| {
        frames.push((off, payload.len()));
        if let Ok(events) = decode(payload) {
            if events.first().is_some_and(|e| e.seq > high) {
                unindexed.push((off, payload.len(), events));
            }
        }
    })?;
    let torn = (end < size).then(|| (end, size - end));
    if torn.is_some() {
        // Every block is synced before it is indexed: an indexed frame at the damage (or
        // after it) is damage, never a write a crash cut.
        let indexed_after = indexed_offsets(events, seg)?
            .into_iter()
            .find(|o| *o >= end);
        if let Some(next) = indexed_after {
            let what = if next == end {
                format!("the indexed frame at offset {end} is damaged")
            } else {
                format!("the frame at offset {end} is damaged and the indexed frame at offset {next} follows it")
            };
            return Err(StoreError::from_message(format!(
                "corrupt audit segment {}: {what}; move the segment aside to start (toolgate will not drop acknowledged events)",
                path.display()
            )));
        }
        if repair {
            truncate(&path, end)?;
        }
    }
    Ok(Scan {
        seg,
        frames,
        unindexed,
        torn,
    })
}

/// The segments a crash can have left unindexed blocks or a torn tail in: the one holding the
/// newest indexed block and every later one (all of them when none is indexed).
fn scan_recent(dir: &Path, events: &sled::Tree, repair: bool) -> Result<Vec<Scan>, StoreError> {
    let newest = match events
        .range([DIR].as_slice()..[DIR + 1].as_slice())
        .next_back()
    {
        Some(item) => {
            let (k, v) = item?;
            Entry::read(&k, &v)?.loc.seg
        }
        None => 0,
    };
    let high = events.get([HIGH])?.map(|v| tail_seq(&v)).unwrap_or(0);
    Segments::list(dir)?
        .into_iter()
        .filter(|seg| *seg >= newest)
        .map(|seg| scan(dir, seg, events, repair, high))
        .collect()
}

/// What recovery changed: the blocks indexed, and those the directory knew but the disk no
/// longer has.
#[derive(Default)]
struct Repair {
    batch: sled::Batch,
    indexed: u64,
    /// The last sequence number of the blocks indexed.
    top: u64,
    lost: Vec<Entry>,
    /// Blocks not yet indexed, by first sequence number.
    found: BTreeMap<u64, (Entry, Vec<StoredEvent>)>,
    /// Where the blocks indexed are.
    placed: Vec<Loc>,
}

impl SledEventLog {
    /// Opens the log under `dir` (segments in `dir/events`): recovers the recent segments,
    /// and moves an earlier version's blocks into segments.
    pub(super) fn open(
        db: &sled::Db,
        dir: &Path,
        flusher: Arc<Flusher>,
        segment_bytes: u64,
        repair: bool,
    ) -> Result<SledEventLog, StoreError> {
        let seg_dir = dir.join("events");
        let events = db.open_tree("audit")?;
        if !repair && events.range(..[SEGS].as_slice()).next().is_some() {
            // Moving them writes segments and deletes keys: inspection changes nothing.
            return Err(StoreError::from_message(format!(
                "the audit log under {} is from an earlier version and its events have not been moved into segment files yet; start toolgate on this data dir once (it moves them), then run this command again (this command changed nothing)",
                dir.display()
            )));
        }
        super::segment::create_dir(&seg_dir)?;
        let scans = scan_recent(&seg_dir, &events, repair)?;
        let segments = Segments::open(&seg_dir, segment_bytes)?;
        #[cfg(test)]
        let segments = segments.journaled(flusher.trace.clone());
        let segments = Arc::new(segments);
        let s = segments.clone();
        flusher.before_flush(Box::new(move || s.sync().map_err(|e| e.to_string())));
        let log = SledEventLog {
            events,
            meta: db.open_tree("audit_meta")?,
            flusher,
            blocks: BlockWriter::new(),
            segments,
            writing: std::sync::Mutex::new(()),
            removing: std::sync::Mutex::new(()),
            pending: std::sync::Mutex::new(None),
            #[cfg(test)]
            fail_index: std::sync::atomic::AtomicBool::new(false),
            #[cfg(test)]
            remove_pause: std::sync::Mutex::new(None),
        };
        if let Some(first) = scans.first() {
            log.recover(first.seg, &scans, repair)?;
        }
        if repair {
            log.migrate()?;
        }
        Ok(log)
    }

    /// Makes the directory match the segments from `from` on: entries of blocks no longer
    /// there go (and, when they were the newest, the index entries of their events), blocks
    /// not yet indexed are; a torn tail or a lost block is reported.
    fn recover(&self, from: u64, scans: &[Scan], repair: bool) -> Result<(), StoreError> {
        let high = self.high()?;
        let mut r = Repair::default();
        self.find_lost(from, scans, &mut r)?;
        for s in scans {
            self.index_unindexed(s, high, &mut r);
        }
        Self::index_found(&mut r);
        let torn = scans.iter().any(|s| s.torn.is_some());
        if r.indexed == 0 && r.lost.is_empty() && !torn {
            return Ok(());
        }
        let newest = self.newest_kept(&r)?.max(r.top);
        let gone: Vec<&Entry> = r.lost.iter().filter(|e| e.first > newest).collect();
        if let Some(cut) = gone.iter().map(|e| e.first).min() {
            // Index entries are keyed by their batch's first event: the lost batches' go.
            for item in self.events.range([INDEX].as_slice()..) {
                let (k, _) = item?;
                if tail_seq(&k) >= cut {
                    r.batch.remove(k);
                }
            }
        }
        r.batch.insert(&[HIGH], &newest.to_be_bytes());
        let note = describe(scans, newest, &r.lost);
        if !repair {
            // Inspection changes nothing: the blocks not indexed stay unread, and what a
            // recovery would cut or lose is reported.
            *self.pending.lock().unwrap_or_else(|p| p.into_inner()) = note.map(|n| {
                format!("not yet recovered (start toolgate on this data dir once; this command changed nothing): {n}")
            });
            return Ok(());
        }
        // The blocks indexed are durable before their entries can be.
        for s in scans {
            self.segments.sync_whole(s.seg)?;
        }
        self.apply(std::mem::take(&mut r.batch), &r.placed)?;
        if r.indexed > 0 {
            tracing::info!(
                events = r.indexed,
                "indexed audit events written to their segment before a crash"
            );
        }
        if let Some(note) = note {
            tracing::warn!("audit log recovered at open: {note}");
            self.note_recovery(note)?;
        }
        self.sync()
    }

    /// Directory entries of blocks in segment `from` or later that are not whole frames there.
    fn find_lost(&self, from: u64, scans: &[Scan], r: &mut Repair) -> Result<(), StoreError> {
        let whole: HashMap<(u64, u64), usize> = scans
            .iter()
            .flat_map(|s| s.frames.iter().map(|(off, len)| ((s.seg, *off), *len)))
            .collect();
        let start = seg_key(from, 0);
        for item in self.events.range(start.as_slice()..[SEGS + 1].as_slice()) {
            let (k, _) = item?;
            let seg = u64s(&k[1..]).next().unwrap_or(0);
            let first = tail_seq(&k);
            let entry = match self.events.get(dir_key(first))? {
                Some(v) => Entry::read(&dir_key(first), &v)?,
                None => {
                    r.batch.remove(k);
                    continue;
                }
            };
            if entry.loc.seg != seg {
                r.batch.remove(k);
            } else if whole.get(&(seg, entry.loc.off)) != Some(&(entry.loc.len as usize)) {
                entry.delete(&mut r.batch);
                r.lost.push(entry);
            }
        }
        Ok(())
    }

    /// Indexes the blocks of a segment after the highest sequence indexed.
    fn index_unindexed(&self, tail: &Scan, high: u64, r: &mut Repair) {
        for (off, len, events) in &tail.unindexed {
            let (off, len) = (*off, *len);
            let (Some(first), Some(last)) = (events.first(), events.last()) else {
                continue;
            };
            if first.seq <= high {
                continue;
            }
            let entry = Entry {
                first: first.seq,
                last: last.seq,
                loc: Loc {
                    seg: tail.seg,
                    off,
                    len: len as u32,
                },
            };
            // A batch written again (its first write's index entries failed) replaces the
            // block written first.
            r.found.insert(entry.first, (entry, events.clone()));
        }
    }

    /// Puts the blocks found unindexed into the repair's batch.
    fn index_found(r: &mut Repair) {
        for (entry, events) in std::mem::take(&mut r.found).into_values() {
            entry.put(&mut r.batch);
            r.placed.push(entry.loc);
            Postings::of(&events).write(&mut r.batch);
            r.top = r.top.max(entry.last);
            r.indexed += events.len() as u64;
        }
    }

    /// The last sequence number of the newest block that stays in the directory.
    fn newest_kept(&self, r: &Repair) -> Result<u64, StoreError> {
        let lost: BTreeSet<u64> = r.lost.iter().map(|e| e.first).collect();
        for entry in self.entries_from(0).rev() {
            let entry = entry?;
            if !lost.contains(&entry.first) {
                return Ok(entry.last);
            }
        }
        Ok(0)
    }

    /// Adds a note to the list of recoveries `audit verify` reports.
    fn note_recovery(&self, note: String) -> Result<(), StoreError> {
        let mut notes: Vec<serde_json::Value> = match self.meta.get(RECOVERIES)? {
            Some(v) => serde_json::from_slice(&v)?,
            None => Vec::new(),
        };
        notes.push(serde_json::json!({"at_unix": now_unix(), "note": note}));
        self.meta.insert(RECOVERIES, serde_json::to_vec(&notes)?)?;
        Ok(())
    }

    /// Moves the blocks an earlier version kept in sled (8-byte sequence keys) into segments,
    /// a thousand at a time, each chunk durable before the next: a crash meanwhile leaves
    /// blocks in both places, and the next open moves them again.
    fn migrate(&self) -> Result<(), StoreError> {
        let mut moved = 0u64;
        loop {
            let chunk: Vec<(sled::IVec, sled::IVec)> = self
                .events
                .range(..[SEGS].as_slice())
                .take(1000)
                .collect::<Result<_, _>>()?;
            if chunk.is_empty() {
                break;
            }
            let mut batch = sled::Batch::default();
            let mut top = self.high()?;
            let mut placed = Vec::new();
            for (k, v) in chunk {
                let events = legacy_stored(tail_seq(&k), &v);
                batch.remove(k);
                moved += events.len() as u64;
                if let Some(e) = self.place(&events, &mut batch)? {
                    top = top.max(e.last);
                    placed.push(e.loc);
                }
            }
            batch.insert(&[HIGH], &top.to_be_bytes());
            // The blocks are durable before their entries can be.
            self.segments.sync()?;
            self.apply(batch, &placed)?;
            self.sync()?;
        }
        if moved > 0 {
            tracing::info!(
                events = moved,
                "moved the audit log of an earlier version into segment files"
            );
        }
        Ok(())
    }
}

/// The events of a value of an earlier version; one that does not read is kept whole as its
/// key's event (so that `verify` names it).
fn legacy_stored(seq: u64, v: &[u8]) -> Vec<StoredEvent> {
    let events = legacy_events(seq, v).unwrap_or_else(|_| vec![(seq, v.to_vec())]);
    events
        .into_iter()
        .map(|(seq, bytes)| StoredEvent {
            seq,
            unix_ms: 0,
            bytes,
            keys: Vec::new(),
        })
        .collect()
}

/// What a recovery reports, if anything was lost: the torn tails cut, and every directory
/// entry whose block was not whole on disk.
fn describe(scans: &[Scan], newest: u64, lost: &[Entry]) -> Option<String> {
    let mut parts = Vec::new();
    for s in scans {
        if let Some((off, len)) = s.torn {
            parts.push(format!(
                "torn tail truncated at seq {}, offset {off} of segment {:012}.seg ({len} bytes)",
                newest + 1,
                s.seg
            ));
        }
    }
    for e in lost {
        parts.push(format!(
            "events {}..{} were indexed but their block (offset {} of segment {:012}.seg) was not whole on disk; they are gone",
            e.first, e.last, e.loc.off, e.loc.seg
        ));
    }
    (!parts.is_empty()).then(|| parts.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{EventLog, Index};
    use segment::Step;

    fn stored(seq: u64) -> StoredEvent {
        StoredEvent {
            seq,
            unix_ms: 1_000 * seq,
            bytes: format!(r#"{{"seq":{seq}}}"#).into_bytes(),
            keys: vec![(Index::Request, format!("req_{seq}"))],
        }
    }

    fn seqs(log: &dyn EventLog) -> Vec<u64> {
        log.scan(0).map(|r| r.unwrap().0).collect()
    }

    fn found(log: &dyn EventLog, seq: u64) -> Vec<u64> {
        log.lookup(Index::Request, &format!("req_{seq}"))
            .map(|r| r.unwrap())
            .collect()
    }

    fn notes(log: &dyn EventLog) -> String {
        String::from_utf8(log.meta_get(RECOVERIES).unwrap().unwrap_or_default()).unwrap()
    }

    fn last_segment(dir: &Path) -> std::path::PathBuf {
        let ids = Segments::list(&dir.join("events")).unwrap();
        dir.join("events")
            .join(format!("{:012}.seg", ids.last().unwrap()))
    }

    /// Waits until the store's journal holds a flush after `from` steps.
    fn flushed_after(store: &SledStore, from: usize) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !store.flusher.trace.lock().unwrap()[from..].contains(&Step::Flushed) {
            assert!(std::time::Instant::now() < deadline, "never flushed");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// sled never flushes on its own, and an append syncs its block before sled takes an
    /// entry pointing at it (sled may write its buffers at any time after): the flush thread's
    /// timer flushes writes nobody waited for, and finds the segment synced.
    #[test]
    fn the_segment_is_synced_before_sled_takes_an_entry() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let log = store.event_log().unwrap();
        let from = store.flusher.trace.lock().unwrap().len();
        // Nobody asks for a flush: the thread's timer flushes.
        log.append(vec![stored(1), stored(2)]).unwrap();
        assert!(!store.log.segments.dirty(), "the append synced its block");
        flushed_after(&store, from);
        let steps = store.flusher.trace.lock().unwrap().clone();
        assert_eq!(
            steps[from..]
                .iter()
                .filter(|s| matches!(s, Step::Synced { .. }))
                .count(),
            1,
            "one fdatasync for the batch: {steps:?}"
        );
        assert_eq!(segment::out_of_order(&steps), None, "{steps:?}");
        drop(log);
        drop(store);
        // A reopen finds both events without a recovery: they were durable in order.
        let store = SledStore::open(dir.path()).unwrap();
        let log = store.event_log().unwrap();
        assert_eq!(seqs(log.as_ref()), [1, 2]);
        assert!(notes(log.as_ref()).is_empty());
    }

    /// The journal's check finds an entry sled took before its block was durable (the order
    /// an append had before it synced its block): the check is not vacuous.
    #[test]
    fn an_entry_taken_before_its_block_is_durable_is_caught() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let log = &store.log;
        log.append(vec![stored(1)]).unwrap();
        let mut batch = sled::Batch::default();
        let entry = log.place(&[stored(2)], &mut batch).unwrap().unwrap();
        log.apply(batch, &[entry.loc]).unwrap();
        let steps = store.flusher.trace.lock().unwrap().clone();
        let at = segment::out_of_order(&steps).expect("caught");
        assert_eq!(
            steps[at],
            Step::Indexed {
                seg: entry.loc.seg,
                end: entry.loc.off + segment::HEADER as u64 + u64::from(entry.loc.len)
            }
        );
    }

    /// Fault injection on the order: the writer appending across many small segments, purges
    /// writing blocks again and deleting segments, flushes asked for by other threads and the
    /// flush thread's timer, all at once. Every entry sled took (so every one a flush made
    /// durable) points at segment bytes an `fdatasync` had already made durable.
    #[test]
    fn under_appends_purges_and_flushes_sled_never_indexes_a_block_not_yet_durable() {
        use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open_sized(dir.path(), 400).unwrap();
        let log = store.event_log().unwrap();
        let done = Arc::new(AtomicBool::new(false));
        let flusher = {
            let (log, done) = (log.clone(), done.clone());
            std::thread::spawn(move || {
                let mut n = 0;
                while !done.load(SeqCst) && n < 100_000 {
                    log.sync().unwrap();
                    n += 1;
                }
            })
        };
        for s in (1..=600).step_by(3) {
            log.append(vec![stored(s), stored(s + 1), stored(s + 2)])
                .unwrap();
            if s % 30 == 1 {
                let have = seqs(log.as_ref());
                let doomed: Vec<StoredEvent> = have.iter().take(4).map(|s| stored(*s)).collect();
                log.remove(&doomed).unwrap();
            }
        }
        let from = store.flusher.trace.lock().unwrap().len();
        flushed_after(&store, from);
        done.store(true, SeqCst);
        flusher.join().unwrap();
        let steps = store.flusher.trace.lock().unwrap().clone();
        let count = |f: fn(&Step) -> bool| steps.iter().filter(|s| f(s)).count();
        assert!(
            count(|s| matches!(s, Step::Indexed { .. })) >= 200,
            "{steps:?}"
        );
        assert!(count(|s| matches!(s, Step::Flushed)) > 1, "{steps:?}");
        assert!(Segments::list(&dir.path().join("events")).unwrap().len() > 2);
        assert_eq!(segment::out_of_order(&steps), None, "{steps:?}");
    }

    /// A store closed (the log's writer gone, every handle dropped) opens again in the same
    /// process at once, with what it held, cycle after cycle of appends and purges.
    #[test]
    fn a_closed_store_opens_again_at_once() {
        let dir = tempfile::tempdir().unwrap();
        for round in 0..20u64 {
            let started = std::time::Instant::now();
            let store = SledStore::open_sized(dir.path(), 4096).unwrap();
            assert!(started.elapsed() < std::time::Duration::from_secs(2));
            let log = store.event_log().unwrap();
            let writer = {
                let log = log.clone();
                std::thread::spawn(move || {
                    for s in (round * 40 + 1..=round * 40 + 40).step_by(4) {
                        log.append((s..s + 4).map(stored).collect()).unwrap();
                    }
                    log.sync().unwrap();
                })
            };
            writer.join().unwrap();
            log.remove(&[stored(round * 40 + 1)]).unwrap();
            assert_eq!(seqs(log.as_ref()).len() as u64, 39 * (round + 1));
        }
    }

    /// The last indexed frame cut short is damage, not a crash's torn write (its block was
    /// synced before it was indexed): the store does not open, naming segment and offset, and
    /// the segment is left as it is.
    #[test]
    fn damage_in_the_last_indexed_frame_refuses_naming_segment_and_offset() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = SledStore::open(dir.path()).unwrap();
            let log = store.event_log().unwrap();
            log.append(vec![stored(1), stored(2)]).unwrap();
            log.append(vec![stored(3), stored(4)]).unwrap();
            log.sync().unwrap();
        }
        let path = last_segment(dir.path());
        let bytes = std::fs::read(&path).unwrap();
        let last = *store_frame_offsets(&bytes).last().unwrap();
        segment::truncate(&path, bytes.len() as u64 - 5).unwrap();
        let cut = std::fs::read(&path).unwrap();
        for r in [
            SledStore::open(dir.path()),
            SledStore::open_inspect(dir.path()),
        ] {
            let err = err_of(r);
            assert!(err.contains("corrupt audit segment"), "{err}");
            assert!(err.contains(&format!("offset {last}")), "{err}");
            assert!(err.contains(&path.display().to_string()), "{err}");
            assert_eq!(
                std::fs::read(&path).unwrap(),
                cut,
                "the segment was changed"
            );
        }
    }

    /// A directory entry whose block is not whole on disk while later blocks are is reported
    /// (log and the note `verify` shows), not deleted silently.
    #[test]
    fn every_lost_directory_entry_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = SledStore::open(dir.path()).unwrap();
            let log = store.event_log().unwrap();
            log.append(vec![stored(1), stored(2)]).unwrap();
            log.append(vec![stored(3), stored(4)]).unwrap();
            // The first block's entry names a length its frame does not have.
            let mut e = store.log.entry_at(1).unwrap().unwrap();
            e.loc.len += 1;
            let mut batch = sled::Batch::default();
            e.put(&mut batch);
            store.log.events.apply_batch(batch).unwrap();
            // A torn write after the last block, so that a recovery runs.
            store.log.segments.append(&[9u8; 64]).unwrap();
            log.sync().unwrap();
        }
        let path = last_segment(dir.path());
        let len = std::fs::metadata(&path).unwrap().len();
        segment::truncate(&path, len - 10).unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let log = store.event_log().unwrap();
        assert_eq!(seqs(log.as_ref()), [3, 4]);
        let note = notes(log.as_ref());
        assert!(note.contains("events 1..2 were indexed"), "{note}");
        assert!(note.contains("offset 0 of segment"), "{note}");
    }

    /// A crash's torn write after the last indexed block, megabytes long and holding bytes
    /// that read as a whole frame (an agent's bytes can): cut off and reported, the store
    /// opens with every indexed event.
    #[test]
    fn a_multi_mib_torn_tail_holding_a_frame_is_cut_and_reported() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = SledStore::open(dir.path()).unwrap();
            let log = store.event_log().unwrap();
            log.append(vec![stored(1), stored(2)]).unwrap();
            log.sync().unwrap();
        }
        let path = last_segment(dir.path());
        let good = std::fs::read(&path).unwrap();
        let mut torn = good.clone();
        torn.extend_from_slice(&(4u32 << 20).to_be_bytes());
        torn.extend_from_slice(&[0u8; 4]);
        torn.extend_from_slice(&segment::frame(&BlockWriter::new().encode(&[stored(3)])));
        torn.resize(torn.len() + (3 << 20), 0x5a);
        std::fs::write(&path, &torn).unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let log = store.event_log().unwrap();
        assert_eq!(seqs(log.as_ref()), [1, 2]);
        assert_eq!(std::fs::read(&path).unwrap(), good);
        let note = notes(log.as_ref());
        assert!(note.contains("torn tail truncated at seq 3"), "{note}");
        assert!(note.contains(&format!("offset {}", good.len())), "{note}");
        log.append(vec![stored(3)]).unwrap();
        assert_eq!(seqs(log.as_ref()), [1, 2, 3]);
    }

    fn err_of(r: Result<SledStore, StoreError>) -> String {
        match r {
            Ok(_) => panic!("opened"),
            Err(e) => e.to_string(),
        }
    }

    /// One flipped byte in a block that indexed blocks follow is damage, not a torn tail: the
    /// store does not open (nor with inspection), and the segment is left as it is.
    #[test]
    fn damage_before_indexed_blocks_is_refused_and_never_cut() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = SledStore::open(dir.path()).unwrap();
            let log = store.event_log().unwrap();
            for s in (1..=6).step_by(2) {
                log.append(vec![stored(s), stored(s + 1)]).unwrap();
            }
            log.sync().unwrap();
        }
        let path = last_segment(dir.path());
        let mut bytes = std::fs::read(&path).unwrap();
        let second = store_frame_offsets(&bytes)[1];
        bytes[second as usize + segment::HEADER + 2] ^= 0x40;
        std::fs::write(&path, &bytes).unwrap();
        let err = err_of(SledStore::open(dir.path()));
        assert!(err.contains("corrupt audit segment"), "{err}");
        assert!(err.contains(&format!("offset {second}")), "{err}");
        assert!(err.contains(&path.display().to_string()), "{err}");
        assert_eq!(
            std::fs::read(&path).unwrap(),
            bytes,
            "the segment was changed"
        );
        let err = err_of(SledStore::open_inspect(dir.path()));
        assert!(err.contains("corrupt audit segment"), "{err}");
        assert_eq!(
            std::fs::read(&path).unwrap(),
            bytes,
            "the segment was changed"
        );
    }

    fn store_frame_offsets(bytes: &[u8]) -> Vec<u64> {
        segment::frames(bytes).0.iter().map(|(o, _)| *o).collect()
    }

    /// A frame a crash cut after the last indexed block: inspection reports it and changes
    /// nothing; an open cuts it off and reports it, keeping every indexed event.
    #[test]
    fn a_torn_frame_after_the_indexed_ones_is_cut_at_open_and_only_reported_by_inspection() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = SledStore::open(dir.path()).unwrap();
            let log = store.event_log().unwrap();
            log.append(vec![stored(1), stored(2)]).unwrap();
            log.sync().unwrap();
        }
        let path = last_segment(dir.path());
        let good = std::fs::read(&path).unwrap();
        let mut torn = good.clone();
        let next = segment::frame(&BlockWriter::new().encode(&[stored(3)]));
        torn.extend_from_slice(&next[..next.len() - 3]);
        std::fs::write(&path, &torn).unwrap();
        {
            let store = SledStore::open_inspect(dir.path()).unwrap();
            let log = store.event_log().unwrap();
            assert_eq!(seqs(log.as_ref()), [1, 2]);
            let note = notes(log.as_ref());
            assert!(note.contains("not yet recovered"), "{note}");
            assert!(note.contains("torn tail"), "{note}");
        }
        assert_eq!(
            std::fs::read(&path).unwrap(),
            torn,
            "inspection changed the segment"
        );
        let store = SledStore::open(dir.path()).unwrap();
        let log = store.event_log().unwrap();
        assert_eq!(seqs(log.as_ref()), [1, 2]);
        assert_eq!(std::fs::read(&path).unwrap(), good);
        let note = notes(log.as_ref());
        assert!(note.contains("torn tail truncated at seq 3"), "{note}");
        assert!(!note.contains("not yet recovered"), "{note}");
    }

    #[test]
    fn a_block_written_before_a_crash_but_not_indexed_is_indexed_at_open() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = SledStore::open(dir.path()).unwrap();
            let log = &store.log;
            log.append(vec![stored(1)]).unwrap();
            // The block reaches its segment; the process dies before sled takes its entries.
            let payload = log.blocks.encode(&[stored(2), stored(3)]);
            log.segments.append(&payload).unwrap();
            log.sync().unwrap();
        }
        let store = SledStore::open(dir.path()).unwrap();
        let log = store.event_log().unwrap();
        assert_eq!(seqs(log.as_ref()), [1, 2, 3]);
        assert_eq!(found(log.as_ref(), 3), [3]);
        assert!(notes(log.as_ref()).is_empty(), "nothing was lost");
        // The block a kill left in the page cache was synced before it was indexed.
        let steps = store.flusher.trace.lock().unwrap().clone();
        assert!(
            steps.iter().any(|s| matches!(s, Step::Indexed { .. })),
            "{steps:?}"
        );
        assert_eq!(segment::out_of_order(&steps), None, "{steps:?}");
        drop(log);
        drop(store);
        let store = SledStore::open(dir.path()).unwrap();
        assert_eq!(seqs(store.event_log().unwrap().as_ref()), [1, 2, 3]);
    }

    #[test]
    fn an_unindexed_block_before_a_new_segment_is_indexed_too() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = SledStore::open_sized(dir.path(), 100).unwrap();
            let log = &store.log;
            log.append(vec![stored(1)]).unwrap();
            // Two blocks reach their segments (the second starts a new one); sled takes neither.
            for s in [2, 3] {
                log.segments
                    .append(&log.blocks.encode(&[stored(s)]))
                    .unwrap();
            }
            log.sync().unwrap();
            assert!(Segments::list(&dir.path().join("events")).unwrap().len() >= 3);
        }
        let store = SledStore::open_sized(dir.path(), 100).unwrap();
        let log = store.event_log().unwrap();
        assert_eq!(seqs(log.as_ref()), [1, 2, 3]);
        assert_eq!(found(log.as_ref(), 2), [2]);
    }

    /// The writer appending (and starting segments) while a purge removes the oldest events
    /// and deletes the segments it empties, and a reader scans: every event is in the log exactly once until it
    /// is removed, and what is left reads the same after a reopen.
    #[test]
    fn appends_racing_removals_keep_every_event_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open_sized(dir.path(), 300).unwrap();
        let log = store.event_log().unwrap();
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
        // The newest event appended, and every event a removal was asked for (before it is).
        let written = Arc::new(AtomicU64::new(0));
        let taken = Arc::new(std::sync::Mutex::new(BTreeSet::new()));
        let writer = {
            let (log, written) = (log.clone(), written.clone());
            std::thread::spawn(move || {
                for s in (1..=400).step_by(2) {
                    log.append(vec![stored(s), stored(s + 1)]).unwrap();
                    written.store(s + 1, SeqCst);
                }
            })
        };
        let done = Arc::new(AtomicBool::new(false));
        // A reader (an export, a verify) going through the log meanwhile: never an error, and
        // every event written before it started and not removed is read, once.
        let reader = {
            let (log, done) = (log.clone(), done.clone());
            let (written, taken) = (written.clone(), taken.clone());
            std::thread::spawn(move || {
                let mut scans = 0;
                while !done.load(SeqCst) && scans < 10_000 {
                    let high = written.load(SeqCst);
                    let got: Vec<u64> = log.scan(0).map(|r| r.unwrap().0).collect();
                    assert!(got.windows(2).all(|w| w[0] < w[1]), "{got:?}");
                    let taken = taken.lock().unwrap().clone();
                    let read: BTreeSet<u64> = got.iter().copied().collect();
                    let missing: Vec<u64> = (1..=high)
                        .filter(|s| !taken.contains(s) && !read.contains(s))
                        .collect();
                    assert!(missing.is_empty(), "scan {scans} missed {missing:?}");
                    scans += 1;
                }
                scans
            })
        };
        let mut removed = 0;
        for _ in 0..1000 {
            let have = seqs(log.as_ref());
            // Never the newest (as a purge), a block cut through now and then.
            let doomed: Vec<StoredEvent> = have
                .iter()
                .take(have.len().saturating_sub(1).min(3))
                .map(|s| stored(*s))
                .collect();
            removed += doomed.len();
            taken.lock().unwrap().extend(doomed.iter().map(|e| e.seq));
            log.remove(&doomed).unwrap();
            if writer.is_finished() && removed >= 300 {
                break;
            }
        }
        writer.join().unwrap();
        done.store(true, SeqCst);
        assert!(reader.join().unwrap() > 0);
        let left = seqs(log.as_ref());
        assert_eq!(left.len() + removed, 400, "{left:?}");
        assert!(left.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(*left.last().unwrap(), 400);
        for s in &left {
            assert_eq!(found(log.as_ref(), *s), [*s]);
        }
        // Every segment left but the one being written holds a block.
        let active = store.log.segments.active_id();
        for seg in store.log.segments.ids().unwrap() {
            let held = store.log.events.scan_prefix(&seg_key(seg, 0)[..9]).count();
            assert!(seg == active || held > 0, "segment {seg} is empty");
        }
        drop(log);
        drop(store);
        let store = SledStore::open_sized(dir.path(), 300).unwrap();
        assert_eq!(seqs(store.event_log().unwrap().as_ref()), left);
    }

    /// A purge under way (its batch built: posting lists and blocks read and encoded) does
    /// not hold the writer up: an append completes meanwhile, and both are kept.
    #[test]
    fn an_append_completes_while_a_purge_builds_its_batch() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open_sized(dir.path(), 200).unwrap();
        let log = store.event_log().unwrap();
        for s in [1, 3, 5] {
            log.append(vec![stored(s), stored(s + 1)]).unwrap();
        }
        let (built_tx, built) = std::sync::mpsc::channel();
        let (go, go_rx) = std::sync::mpsc::channel();
        *store.log.remove_pause.lock().unwrap() = Some((built_tx, go_rx));
        let purge = {
            let log = log.clone();
            std::thread::spawn(move || log.remove(&[stored(1), stored(2), stored(3)]))
        };
        built
            .recv_timeout(std::time::Duration::from_secs(10))
            .unwrap();
        let (done_tx, done) = std::sync::mpsc::channel();
        let append = {
            let log = log.clone();
            std::thread::spawn(move || {
                let r = log.append(vec![stored(7)]);
                let _ = done_tx.send(());
                r
            })
        };
        let appended = done.recv_timeout(std::time::Duration::from_secs(10));
        go.send(()).unwrap();
        assert!(appended.is_ok(), "the append waited for the purge");
        append.join().unwrap().unwrap();
        purge.join().unwrap().unwrap();
        assert_eq!(seqs(log.as_ref()), [4, 5, 6, 7]);
        assert_eq!(found(log.as_ref(), 4), [4]);
        assert!(found(log.as_ref(), 3).is_empty());
        drop(log);
        drop(store);
        let store = SledStore::open_sized(dir.path(), 200).unwrap();
        assert_eq!(seqs(store.event_log().unwrap().as_ref()), [4, 5, 6, 7]);
    }

    /// A purge runs alongside the writer: a segment the writer rolled to after the purge looked
    /// at the active one may hold a block placed but not yet indexed (no entry in sled yet), and
    /// must not be taken for empty and deleted. Here the writer's roll and placing are the file
    /// of the next segment appearing while the purge waits after building its batch.
    #[test]
    fn a_purge_never_deletes_a_segment_the_writer_rolled_to_meanwhile() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open_sized(dir.path(), 200).unwrap();
        let log = store.event_log().unwrap();
        for s in [1, 3, 5] {
            log.append(vec![stored(s), stored(s + 1)]).unwrap();
        }
        let active = store.log.segments.active_id();
        let (built_tx, built) = std::sync::mpsc::channel();
        let (go, go_rx) = std::sync::mpsc::channel();
        *store.log.remove_pause.lock().unwrap() = Some((built_tx, go_rx));
        let purge = {
            let log = log.clone();
            std::thread::spawn(move || log.remove(&[stored(1), stored(2)]))
        };
        built
            .recv_timeout(std::time::Duration::from_secs(10))
            .unwrap();
        let next = dir
            .path()
            .join("events")
            .join(format!("{:012}.seg", active + 1));
        std::fs::write(&next, b"a block placed, not yet indexed").unwrap();
        go.send(()).unwrap();
        purge.join().unwrap().unwrap();
        assert!(
            next.exists(),
            "the purge deleted a segment newer than the one it saw active"
        );
        assert_eq!(seqs(log.as_ref()), [3, 4, 5, 6]);
    }

    /// A reader that found a block's entry before a removal wrote the block again elsewhere
    /// (and deleted its segment) reads it where it is now, and a scan under way yields every
    /// surviving event once.
    #[test]
    fn a_block_moved_by_a_removal_is_read_where_it_is_now() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open_sized(dir.path(), 100).unwrap();
        let log = store.event_log().unwrap();
        for s in [1, 3, 5, 7] {
            log.append(vec![stored(s), stored(s + 1)]).unwrap();
        }
        let old = store.log.entry_at(3).unwrap().unwrap();
        let mut scan = log.scan(0);
        assert_eq!(scan.next().unwrap().unwrap().0, 1);
        // Both blocks the scan has not read yet are written again; their segments go.
        log.remove(&[stored(4), stored(5)]).unwrap();
        assert!(!store.log.segments.path(old.loc.seg).exists());
        let (now, events) = store.log.read_live(&old).unwrap().unwrap();
        assert_ne!(now.loc, old.loc);
        assert_eq!(events.iter().map(|e| e.seq).collect::<Vec<_>>(), [3]);
        let rest: Vec<u64> = scan.map(|r| r.unwrap().0).collect();
        assert_eq!(rest, [2, 3, 6, 7, 8]);
    }

    /// An append whose index entries fail is taken back from its segment: the caller was told
    /// it failed, and no reopen brings it back.
    #[test]
    fn a_failed_append_does_not_come_back_at_open() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = SledStore::open(dir.path()).unwrap();
            let log = store.event_log().unwrap();
            log.append(vec![stored(1)]).unwrap();
            let len = std::fs::metadata(last_segment(dir.path())).unwrap().len();
            store
                .log
                .fail_index
                .store(true, std::sync::atomic::Ordering::SeqCst);
            assert!(log.append(vec![stored(2)]).is_err());
            assert_eq!(
                std::fs::metadata(last_segment(dir.path())).unwrap().len(),
                len
            );
            // The cut is durable before the append answers (a power loss must not bring the
            // block back).
            let steps = store.flusher.trace.lock().unwrap().clone();
            let seg = store.log.segments.active_id();
            assert_eq!(
                steps.last(),
                Some(&Step::Synced { seg, upto: len }),
                "{steps:?}"
            );
            log.sync().unwrap();
        }
        let store = SledStore::open(dir.path()).unwrap();
        let log = store.event_log().unwrap();
        assert_eq!(seqs(log.as_ref()), [1]);
        log.append(vec![stored(2)]).unwrap();
        assert_eq!(seqs(log.as_ref()), [1, 2]);
        assert!(notes(log.as_ref()).is_empty());
    }

    /// The flush thread's `fdatasync` fails: the append after it is refused (its own sync
    /// would get Ok from the kernel for pages the failed one dropped), so are flushes, until a
    /// reopen, which reads what is on disk.
    #[test]
    fn a_failed_flush_sync_refuses_every_later_append_until_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = SledStore::open(dir.path()).unwrap();
            let log = store.event_log().unwrap();
            log.append(vec![stored(1)]).unwrap();
            // Written, not yet synced: the flush thread's sync is the one that fails.
            store.log.segments.append(&[7u8; 16]).unwrap();
            store
                .log
                .segments
                .faults
                .sync
                .store(true, std::sync::atomic::Ordering::SeqCst);
            assert!(log.sync().is_err());
            assert!(log.append(vec![stored(2)]).is_err());
            assert!(log.sync().is_err());
        }
        let store = SledStore::open(dir.path()).unwrap();
        let log = store.event_log().unwrap();
        assert_eq!(seqs(log.as_ref()), [1]);
        log.append(vec![stored(2)]).unwrap();
        assert_eq!(seqs(log.as_ref()), [1, 2]);
    }

    /// An old value: a zstd block of (seq, length, bytes) entries, as earlier versions wrote.
    fn legacy_block(events: &[StoredEvent]) -> Vec<u8> {
        let mut plain = Vec::new();
        for e in events {
            plain.extend_from_slice(&e.seq.to_be_bytes());
            plain.extend_from_slice(&(e.bytes.len() as u32).to_be_bytes());
            plain.extend_from_slice(&e.bytes);
        }
        let mut out = vec![super::super::block::ZBLOCK];
        out.extend_from_slice(&(plain.len() as u32).to_be_bytes());
        out.extend_from_slice(&zstd::block::compress(&plain, 1).unwrap());
        out
    }

    /// Writes a log as an earlier version did (blocks in sled) under `dir`.
    fn legacy_store(dir: &Path) {
        let db = sled::Config::new().path(dir.join("store")).open().unwrap();
        let tree = db.open_tree("audit").unwrap();
        tree.insert(1u64.to_be_bytes(), stored(1).bytes).unwrap();
        tree.insert(2u64.to_be_bytes(), legacy_block(&[stored(2), stored(3)]))
            .unwrap();
        let mut batch = sled::Batch::default();
        Postings::of(&[stored(1), stored(2), stored(3)]).write(&mut batch);
        tree.apply_batch(batch).unwrap();
        db.flush().unwrap();
    }

    /// Inspection (`audit verify --data-dir` ...) of a log an earlier version wrote does not
    /// move it (that writes segments and deletes keys): it refuses, saying what to do, and
    /// changes nothing.
    #[test]
    fn inspecting_a_log_of_an_earlier_version_refuses_and_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        legacy_store(dir.path());
        let err = err_of(SledStore::open_inspect(dir.path()));
        assert!(err.contains("earlier version"), "{err}");
        assert!(
            err.contains("start toolgate on this data dir once"),
            "{err}"
        );
        assert!(!dir.path().join("events").exists(), "segments were written");
        {
            let db = sled::Config::new()
                .path(dir.path().join("store"))
                .open()
                .unwrap();
            let tree = db.open_tree("audit").unwrap();
            assert_eq!(
                tree.range(..[SEGS].as_slice()).count(),
                2,
                "keys were moved"
            );
        }
        let store = SledStore::open(dir.path()).unwrap();
        assert_eq!(seqs(store.event_log().unwrap().as_ref()), [1, 2, 3]);
        drop(store);
        let store = SledStore::open_inspect(dir.path()).unwrap();
        assert_eq!(seqs(store.event_log().unwrap().as_ref()), [1, 2, 3]);
    }

    #[test]
    fn a_log_of_an_earlier_version_moves_into_segments_once() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = sled::Config::new()
                .path(dir.path().join("store"))
                .open()
                .unwrap();
            let tree = db.open_tree("audit").unwrap();
            tree.insert(1u64.to_be_bytes(), stored(1).bytes).unwrap();
            tree.insert(2u64.to_be_bytes(), legacy_block(&[stored(2), stored(3)]))
                .unwrap();
            let mut batch = sled::Batch::default();
            Postings::of(&[stored(1), stored(2), stored(3)]).write(&mut batch);
            tree.apply_batch(batch).unwrap();
            db.flush().unwrap();
        }
        let want: Vec<(u64, Vec<u8>)> = (1..4).map(|s| (s, stored(s).bytes)).collect();
        {
            let store = SledStore::open(dir.path()).unwrap();
            let log = store.event_log().unwrap();
            let got: Vec<(u64, Vec<u8>)> = log.scan(0).map(|r| r.unwrap()).collect();
            assert_eq!(got, want);
            assert_eq!(found(log.as_ref(), 2), [2]);
            assert_eq!(log.get(3).unwrap().unwrap(), stored(3).bytes);
            assert_eq!(store.log.events.range(..[SEGS].as_slice()).count(), 0);
            // A crash before the moved values left the tree: one is still there.
            store
                .log
                .events
                .insert(2u64.to_be_bytes(), legacy_block(&[stored(2), stored(3)]))
                .unwrap();
            log.sync().unwrap();
        }
        let store = SledStore::open(dir.path()).unwrap();
        let log = store.event_log().unwrap();
        let got: Vec<(u64, Vec<u8>)> = log.scan(0).map(|r| r.unwrap()).collect();
        assert_eq!(got, want, "moved again, not twice");
        log.append(vec![stored(4)]).unwrap();
        assert_eq!(seqs(log.as_ref()), [1, 2, 3, 4]);
    }

    #[test]
    fn removing_every_event_of_a_segment_deletes_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open_sized(dir.path(), 100).unwrap();
        let log = store.event_log().unwrap();
        for s in 1..=6 {
            log.append(vec![stored(s)]).unwrap();
        }
        let before = Segments::list(&dir.path().join("events")).unwrap();
        assert!(before.len() >= 3, "{before:?}");
        log.remove(&[stored(1), stored(2), stored(3)]).unwrap();
        let after = Segments::list(&dir.path().join("events")).unwrap();
        assert!(after.len() < before.len(), "{before:?} -> {after:?}");
        assert_eq!(seqs(log.as_ref()), [4, 5, 6]);
        // A block partly removed is written again without the removed event.
        log.append(vec![stored(7), stored(8)]).unwrap();
        log.remove(&[stored(4), stored(5), stored(6), stored(7)])
            .unwrap();
        assert_eq!(seqs(log.as_ref()), [8]);
        assert_eq!(found(log.as_ref(), 8), [8]);
        assert!(found(log.as_ref(), 7).is_empty());
        drop(log);
        drop(store);
        let store = SledStore::open_sized(dir.path(), 100).unwrap();
        assert_eq!(seqs(store.event_log().unwrap().as_ref()), [8]);
    }
}
