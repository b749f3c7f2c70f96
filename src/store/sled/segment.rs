//! The audit log's event blocks on disk: append-only segment files under `<data-dir>/events/`,
//! one writer, each block framed with its length and a CRC-32 of its bytes. sled keeps where
//! each block is (the directory, in the log); a segment that is full is synced and a new one
//! started.
//!
//! A frame: `len: u32 BE | crc32(payload): u32 BE | payload (len bytes)`. A frame whose length is
//! 0 or past `MAX_FRAME`, that runs past the end of the file, or whose checksum is wrong ends
//! the readable part of a segment (a torn tail, after a crash mid-write).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::StoreError;

/// A segment is closed and a new one started once it holds this much.
pub(super) const SEGMENT_BYTES: u64 = 64 << 20;
/// No frame is larger (a corrupt length must not ask for gigabytes).
pub(super) const MAX_FRAME: usize = 256 << 20;
/// The length and checksum before a frame's payload.
pub(super) const HEADER: usize = 8;
/// The most segment files kept open for reading (the least recently read is closed).
const READERS: usize = 64;

/// Where a block is: its segment, the offset of its frame, and the frame's payload length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Loc {
    pub seg: u64,
    pub off: u64,
    pub len: u32,
}

/// The payload framed: length, checksum, bytes.
pub(super) fn frame(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + HEADER);
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(&crc32fast::hash(payload).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// The header of the frame at `buf[0..]`: its payload length, if that is a length a frame can
/// have and fits in `buf`.
fn frame_len(buf: &[u8]) -> Option<usize> {
    let len = u32::from_be_bytes(buf.get(..4)?.try_into().ok()?) as usize;
    (len > 0 && len <= MAX_FRAME && HEADER + len <= buf.len()).then_some(len)
}

/// The payload of the frame at the start of `buf`, if it is whole and its checksum holds.
pub(super) fn unframe(buf: &[u8]) -> Option<&[u8]> {
    let len = frame_len(buf)?;
    let crc = u32::from_be_bytes(buf.get(4..8)?.try_into().ok()?);
    let payload = buf.get(HEADER..HEADER + len)?;
    (crc32fast::hash(payload) == crc).then_some(payload)
}

/// (In tests: the reference `read_frames` is checked against.) The whole frames at the start
/// of a segment's bytes (offset and payload each), and where
/// the readable part ends: the first frame that is torn or damaged, or the end.
#[cfg(test)]
pub(super) fn frames(buf: &[u8]) -> (Vec<(u64, &[u8])>, u64) {
    let mut out = Vec::new();
    let mut off = 0usize;
    while let Some(payload) = buf.get(off..).and_then(unframe) {
        out.push((off as u64, payload));
        off += HEADER + payload.len();
    }
    (out, off as u64)
}

/// Reads the whole frames at the start of the segment file at `path` one at a time (in memory:
/// one frame), handing each to `each` with its offset. Returns where the readable part ends,
/// and the file's length.
pub(super) fn read_frames(
    path: &Path,
    mut each: impl FnMut(u64, &[u8]),
) -> Result<(u64, u64), StoreError> {
    use std::io::Read;
    let file = File::open(path).map_err(|e| io_err("could not open", path, e))?;
    let size = file
        .metadata()
        .map_err(|e| io_err("could not read", path, e))?
        .len();
    let mut r = std::io::BufReader::with_capacity(1 << 20, file);
    let (mut off, mut header, mut payload) = (0u64, [0u8; HEADER], Vec::new());
    while off + HEADER as u64 <= size {
        r.read_exact(&mut header)
            .map_err(|e| io_err("could not read", path, e))?;
        let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
        if len == 0 || len > MAX_FRAME || off + (HEADER + len) as u64 > size {
            break;
        }
        payload.resize(len, 0);
        r.read_exact(&mut payload)
            .map_err(|e| io_err("could not read", path, e))?;
        if crc32fast::hash(&payload).to_be_bytes() != header[4..8] {
            break;
        }
        each(off, &payload);
        off += (HEADER + len) as u64;
    }
    Ok((off, size))
}

fn io_err(what: &str, path: &Path, e: std::io::Error) -> StoreError {
    StoreError::from_message(format!("{what} {}: {e}", path.display()))
}

/// The segment being appended to.
struct Active {
    id: u64,
    file: Arc<File>,
    len: u64,
    /// Written since the last sync.
    dirty: bool,
}

/// In tests: what reached the disk and what sled was given, in order. Every `Indexed` must
/// come after a `Synced` of its segment up to its end (see `the_order_held`).
#[cfg(test)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Step {
    /// Segment `seg` durable up to `upto` bytes (an `fdatasync` returned).
    Synced { seg: u64, upto: u64 },
    /// sled took (not yet durably) an entry of a block of `seg` that ends at `end`.
    Indexed { seg: u64, end: u64 },
    /// sled's files were flushed.
    Flushed,
    /// The segments' directory was synced (a file in it created or removed).
    DirSynced,
}

/// In tests: the steps of one store, shared by its segments, its log and its flush thread.
#[cfg(test)]
pub(super) type Journal = Arc<Mutex<Vec<Step>>>;

#[cfg(test)]
pub(super) fn note(journal: &Journal, step: Step) {
    journal.lock().unwrap_or_else(|p| p.into_inner()).push(step);
}

/// In tests: where in the journal sled took an entry of a block not yet durable, if it did.
#[cfg(test)]
pub(super) fn out_of_order(steps: &[Step]) -> Option<usize> {
    let mut synced: HashMap<u64, u64> = HashMap::new();
    for (i, step) in steps.iter().enumerate() {
        match *step {
            Step::Synced { seg, upto } => {
                let s = synced.entry(seg).or_default();
                *s = (*s).max(upto);
            }
            Step::Indexed { seg, end } if synced.get(&seg).copied().unwrap_or(0) < end => {
                return Some(i)
            }
            Step::Indexed { .. } | Step::Flushed | Step::DirSynced => {}
        }
    }
    None
}

/// The segment files of one log.
pub(super) struct Segments {
    dir: PathBuf,
    max_bytes: u64,
    active: Mutex<Active>,
    /// Held across a sync: a caller that finds nothing left to sync returns only once the
    /// `fdatasync` that covers its appends (another caller's, maybe) has returned.
    syncing: Mutex<()>,
    /// Open descriptors of segments read lately (at most `READERS`), each with when it was
    /// last used.
    readers: Mutex<HashMap<u64, (Arc<File>, u64)>>,
    /// The first sync (or cut) that failed: from then on every append and sync fails with it
    /// until a restart, whose recovery reads what is on disk. A failed `fdatasync` may have
    /// dropped the dirty pages, and a later one returns Ok without writing them: it is never
    /// retried into a false success.
    failed: Mutex<Option<String>>,
    /// In tests: faults injected into the next file operations.
    #[cfg(test)]
    pub(super) faults: Faults,
    #[cfg(test)]
    journal: Journal,
}

/// In tests: the next `fdatasync`, write or cut (`set_len`) of a segment fails (a write writes
/// half its bytes first).
#[cfg(test)]
#[derive(Default)]
pub(super) struct Faults {
    pub sync: std::sync::atomic::AtomicBool,
    pub write: std::sync::atomic::AtomicBool,
    pub cut: std::sync::atomic::AtomicBool,
}

#[cfg(test)]
fn injected(flag: &std::sync::atomic::AtomicBool, what: &str) -> std::io::Result<()> {
    if flag.swap(false, std::sync::atomic::Ordering::SeqCst) {
        return Err(std::io::Error::other(format!("{what} failed (test)")));
    }
    Ok(())
}

/// A segment's file name: its number, zero-padded, so names sort as numbers.
fn name(id: u64) -> String {
    format!("{id:012}.seg")
}

impl Segments {
    /// Opens the segments under `dir` (created if missing), appending to the last one (or to
    /// a first one).
    pub(super) fn open(dir: &Path, max_bytes: u64) -> Result<Segments, StoreError> {
        create_dir(dir)?;
        let id = Self::list(dir)?.last().copied().unwrap_or(1);
        let active = Self::open_active(dir, id)?;
        Ok(Segments {
            dir: dir.to_path_buf(),
            max_bytes,
            active: Mutex::new(active),
            syncing: Mutex::new(()),
            readers: Mutex::new(HashMap::new()),
            failed: Mutex::new(None),
            #[cfg(test)]
            faults: Faults::default(),
            #[cfg(test)]
            journal: Journal::default(),
        })
    }

    /// In tests: the steps go to `journal` (the flush thread's).
    #[cfg(test)]
    pub(super) fn journaled(mut self, journal: Journal) -> Segments {
        self.journal = journal;
        self
    }

    /// In tests: sled took an entry of the block at `loc`.
    #[cfg(test)]
    pub(super) fn note_indexed(&self, loc: Loc) {
        let end = loc.off + HEADER as u64 + u64::from(loc.len);
        note(&self.journal, Step::Indexed { seg: loc.seg, end });
    }

    /// The segment numbers on disk, ascending.
    pub(super) fn list(dir: &Path) -> Result<Vec<u64>, StoreError> {
        let mut ids = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(|e| io_err("could not read", dir, e))? {
            let entry = entry.map_err(|e| io_err("could not read", dir, e))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if let Some(id) = name.strip_suffix(".seg").and_then(|n| n.parse().ok()) {
                ids.push(id);
            }
        }
        ids.sort_unstable();
        Ok(ids)
    }

    /// The segment numbers on disk, ascending.
    pub(super) fn ids(&self) -> Result<Vec<u64>, StoreError> {
        Self::list(&self.dir)
    }

    /// Bytes the segments take.
    pub(super) fn bytes(&self) -> u64 {
        Self::list(&self.dir)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|id| std::fs::metadata(self.path(id)).ok())
            .map(|m| m.len())
            .sum()
    }

    pub(super) fn path(&self, id: u64) -> PathBuf {
        self.dir.join(name(id))
    }

    /// The error every append and sync returns once a sync or a cut failed.
    fn broken(&self) -> Result<(), StoreError> {
        match &*self.failed.lock().unwrap_or_else(|p| p.into_inner()) {
            Some(e) => Err(StoreError::from_message(format!(
                "the audit log is closed until toolgate restarts (its recovery reads what reached the disk): {e}"
            ))),
            None => Ok(()),
        }
    }

    /// Records `err` as the permanent failure (the first one stays) and returns it.
    fn fail(&self, err: StoreError) -> StoreError {
        let mut failed = self.failed.lock().unwrap_or_else(|p| p.into_inner());
        failed.get_or_insert_with(|| err.to_string());
        tracing::error!(
            "audit segment failure; the audit log refuses writes until a restart: {err}"
        );
        err
    }

    /// Writes `bytes` at the end of `file` (in tests: maybe half of them, then an error).
    fn write_file(&self, mut file: &File, bytes: &[u8]) -> std::io::Result<()> {
        #[cfg(test)]
        if injected(&self.faults.write, "write").is_err() {
            file.write_all(&bytes[..bytes.len() / 2])?;
            return injected(&std::sync::atomic::AtomicBool::new(true), "write");
        }
        file.write_all(bytes)
    }

    /// Cuts `file` to `len` bytes.
    fn cut_file(&self, file: &File, len: u64) -> std::io::Result<()> {
        #[cfg(test)]
        injected(&self.faults.cut, "set_len")?;
        file.set_len(len)
    }

    /// `fdatasync` of segment `id`, `upto` bytes long; a failure is permanent (`failed`).
    fn sync_file(&self, id: u64, file: &File, _upto: u64) -> Result<(), StoreError> {
        #[cfg(test)]
        injected(&self.faults.sync, "fdatasync")
            .map_err(|e| self.fail(io_err("could not sync", &self.path(id), e)))?;
        file.sync_data()
            .map_err(|e| self.fail(io_err("could not sync", &self.path(id), e)))?;
        #[cfg(test)]
        note(
            &self.journal,
            Step::Synced {
                seg: id,
                upto: _upto,
            },
        );
        Ok(())
    }

    /// Opens (creating) segment `id` for appending; a new file is made durable in its
    /// directory at once.
    fn open_active(dir: &Path, id: u64) -> Result<Active, StoreError> {
        let path = dir.join(name(id));
        let existed = path.exists();
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .open(&path)
            .map_err(|e| io_err("could not open", &path, e))?;
        if !existed {
            sync_dir(dir)?;
        }
        let len = file
            .metadata()
            .map_err(|e| io_err("could not read", &path, e))?
            .len();
        Ok(Active {
            id,
            file: Arc::new(file),
            len,
            dirty: false,
        })
    }

    /// The number of the segment being appended to.
    pub(super) fn active_id(&self) -> u64 {
        self.active.lock().unwrap_or_else(|p| p.into_inner()).id
    }

    /// Appends one framed payload (not yet durable: `sync`); a full segment is synced and the
    /// next one started first.
    pub(super) fn append(&self, payload: &[u8]) -> Result<Loc, StoreError> {
        if payload.is_empty() || payload.len() > MAX_FRAME {
            // It could not be read back: its frame would end the readable part.
            return Err(StoreError::from_message(format!(
                "an audit block of {} bytes cannot be written (a block holds 1 to {MAX_FRAME} bytes); write fewer or smaller events at once",
                payload.len()
            )));
        }
        let framed = frame(payload);
        let mut a = self.active.lock().unwrap_or_else(|p| p.into_inner());
        self.broken()?;
        if a.len > 0 && a.len + framed.len() as u64 > self.max_bytes {
            self.sync_file(a.id, &a.file, a.len)?;
            *a = Self::open_active(&self.dir, a.id + 1)?;
        }
        let off = a.len;
        if let Err(e) = self.write_file(&a.file, &framed) {
            // A partial write is cut back: the next write (O_APPEND: at the file's end) must
            // land where `a.len` says. If it cannot be cut, nothing more is written.
            let err = io_err("could not write", &self.path(a.id), e);
            if let Err(cut) = self.cut_file(&a.file, off) {
                return Err(self.fail(io_err(
                    &format!("{err}; could not cut the partial write back"),
                    &self.path(a.id),
                    cut,
                )));
            }
            return Err(err);
        }
        a.len += framed.len() as u64;
        a.dirty = true;
        Ok(Loc {
            seg: a.id,
            off,
            len: payload.len() as u32,
        })
    }

    /// Takes back the block just appended at `loc` (its entries could not be written: a
    /// recovery must not index it). When the file cannot be cut, the next block starts a new
    /// segment, and the error says the block stays.
    pub(super) fn unappend(&self, loc: Loc) -> Result<(), StoreError> {
        let mut a = self.active.lock().unwrap_or_else(|p| p.into_inner());
        if a.id != loc.seg || a.len != loc.off + HEADER as u64 + u64::from(loc.len) {
            return Err(StoreError::from_message(format!(
                "the audit block at offset {} of {} is not the last one written",
                loc.off,
                self.path(loc.seg).display()
            )));
        }
        match self.cut_file(&a.file, loc.off) {
            Ok(()) => {
                a.len = loc.off;
                // The cut is durable before the caller is told the block is gone: a power
                // loss must not bring the block back for an open to index.
                self.sync_file(a.id, &a.file, a.len)?;
                a.dirty = false;
                Ok(())
            }
            Err(e) => {
                let err = io_err("could not cut", &self.path(a.id), e);
                *a = Self::open_active(&self.dir, a.id + 1)?;
                Err(err)
            }
        }
    }

    /// Makes every append so far durable (`fdatasync` of the segment being written; a segment
    /// closed earlier was synced when it closed).
    pub(super) fn sync(&self) -> Result<(), StoreError> {
        let _one = self.syncing.lock().unwrap_or_else(|p| p.into_inner());
        // Appends go on meanwhile (the active lock is not held across the `fdatasync`): only
        // the bytes written before it are known durable, and a later append marks it dirty.
        // A failed sync is never tried again (`failed`): its pages may be gone.
        let (id, file, _upto) = {
            let mut a = self.active.lock().unwrap_or_else(|p| p.into_inner());
            self.broken()?;
            if !a.dirty {
                return Ok(());
            }
            a.dirty = false;
            (a.id, a.file.clone(), a.len)
        };
        self.sync_file(id, &file, _upto)?;
        Ok(())
    }

    /// Makes segment `id` durable as it is on disk (one a recovery indexes: a kill leaves its
    /// bytes in the page cache, not yet on disk).
    pub(super) fn sync_whole(&self, id: u64) -> Result<(), StoreError> {
        let path = self.path(id);
        let file = File::open(&path).map_err(|e| io_err("could not open", &path, e))?;
        file.sync_data()
            .map_err(|e| io_err("could not sync", &path, e))?;
        #[cfg(test)]
        note(
            &self.journal,
            Step::Synced {
                seg: id,
                upto: file.metadata().map(|m| m.len()).unwrap_or(0),
            },
        );
        Ok(())
    }

    /// Whether appends wait for a sync.
    #[cfg(test)]
    pub(super) fn dirty(&self) -> bool {
        self.active.lock().unwrap_or_else(|p| p.into_inner()).dirty
    }

    fn reader(&self, id: u64) -> Result<Arc<File>, StoreError> {
        let mut readers = self.readers.lock().unwrap_or_else(|p| p.into_inner());
        let tick = readers.values().map(|(_, t)| *t).max().unwrap_or(0) + 1;
        if let Some((f, used)) = readers.get_mut(&id) {
            *used = tick;
            return Ok(f.clone());
        }
        if readers.len() >= READERS {
            let oldest = readers
                .iter()
                .min_by_key(|(_, (_, t))| *t)
                .map(|(id, _)| *id);
            if let Some(oldest) = oldest {
                readers.remove(&oldest);
            }
        }
        let path = self.path(id);
        let f = Arc::new(File::open(&path).map_err(|e| io_err("could not open", &path, e))?);
        readers.insert(id, (f.clone(), tick));
        Ok(f)
    }

    /// In tests: how many segment files are open for reading.
    #[cfg(test)]
    fn open_readers(&self) -> usize {
        self.readers.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// The payload of the block at `loc`; an error when it is missing or damaged.
    pub(super) fn read(&self, loc: Loc) -> Result<Vec<u8>, StoreError> {
        if loc.len as usize > MAX_FRAME {
            return Err(StoreError::from_message(format!(
                "the audit directory's entry for offset {} of {} is damaged (length {})",
                loc.off,
                self.path(loc.seg).display(),
                loc.len
            )));
        }
        let mut buf = vec![0u8; HEADER + loc.len as usize];
        let path = self.path(loc.seg);
        self.reader(loc.seg)?
            .read_exact_at(&mut buf, loc.off)
            .map_err(|e| io_err(&format!("could not read offset {} of", loc.off), &path, e))?;
        match unframe(&buf) {
            Some(p) if p.len() == loc.len as usize => Ok(p.to_vec()),
            _ => Err(StoreError::from_message(format!(
                "the audit block at offset {} of {} is damaged (its length or checksum is wrong)",
                loc.off,
                path.display()
            ))),
        }
    }

    /// Deletes a segment none of whose blocks is in the log any more (never the one being
    /// written).
    pub(super) fn remove(&self, id: u64) -> Result<(), StoreError> {
        if id == self.active_id() {
            return Ok(());
        }
        // The readers' lock is held across the unlink: no reader opens the file between its
        // descriptor's closing and the unlink (and keeps a deleted file open).
        let mut readers = self.readers.lock().unwrap_or_else(|p| p.into_inner());
        readers.remove(&id);
        let path = self.path(id);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_err("could not remove", &path, e)),
        }
        drop(readers);
        // The unlink is durable (a power loss does not bring the segment back).
        sync_dir(&self.dir)?;
        #[cfg(test)]
        note(&self.journal, Step::DirSynced);
        Ok(())
    }
}

/// Makes the entries of directory `dir` (files created or removed) durable.
pub(super) fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_err("could not sync", dir, e))
}

/// Creates directory `dir` if it is missing, durably (its parent synced).
pub(super) fn create_dir(dir: &Path) -> Result<(), StoreError> {
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::create_dir_all(dir).map_err(|e| io_err("could not create", dir, e))?;
    match dir.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => sync_dir(parent),
        _ => Ok(()),
    }
}

/// Cuts the segment file at `path` to `len` bytes (a torn tail), durably.
pub(super) fn truncate(path: &Path, len: u64) -> Result<(), StoreError> {
    let f = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| io_err("could not open", path, e))?;
    f.set_len(len)
        .and_then(|()| f.sync_all())
        .map_err(|e| io_err("could not truncate", path, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_full_segment_is_closed_and_the_next_one_started() {
        let dir = tempfile::tempdir().unwrap();
        let segs = Segments::open(dir.path(), 100).unwrap();
        let a = segs.append(&[1u8; 60]).unwrap();
        let b = segs.append(&[2u8; 60]).unwrap();
        assert_eq!((a.seg, a.off, b.seg, b.off), (1, 0, 2, 0));
        segs.sync().unwrap();
        assert_eq!(segs.read(a).unwrap(), [1u8; 60]);
        assert_eq!(segs.read(b).unwrap(), [2u8; 60]);
        assert_eq!(Segments::list(dir.path()).unwrap(), [1, 2]);
        segs.remove(1).unwrap();
        assert_eq!(
            segs.journal.lock().unwrap().last(),
            Some(&Step::DirSynced),
            "the unlink was made durable"
        );
        segs.remove(2).unwrap();
        assert_eq!(
            Segments::list(dir.path()).unwrap(),
            [2],
            "the active one stays"
        );
        let again = Segments::open(dir.path(), 100).unwrap();
        assert_eq!(again.active_id(), 2);
    }

    /// A directory entry with a length past any frame's is damage, read without asking for
    /// the memory it names.
    #[test]
    fn a_length_past_any_frame_is_refused_before_reading() {
        let dir = tempfile::tempdir().unwrap();
        let segs = Segments::open(dir.path(), 100).unwrap();
        let a = segs.append(&[1u8; 10]).unwrap();
        let huge = Loc { len: u32::MAX, ..a };
        let err = segs.read(huge).unwrap_err().to_string();
        assert!(err.contains("damaged"), "{err}");
    }

    fn set(flag: &std::sync::atomic::AtomicBool) {
        flag.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// A failed `fdatasync` is never retried into a success (the kernel may have dropped the
    /// pages and answer Ok next time): every later sync and append fails, until a reopen.
    #[test]
    fn a_failed_sync_fails_every_later_sync_and_append() {
        let dir = tempfile::tempdir().unwrap();
        let segs = Segments::open(dir.path(), 1 << 20).unwrap();
        segs.append(&[1u8; 10]).unwrap();
        set(&segs.faults.sync);
        assert!(segs.sync().is_err());
        let again = segs.sync().unwrap_err().to_string();
        assert!(again.contains("until toolgate restarts"), "{again}");
        assert!(segs.append(&[2u8; 10]).is_err());
        assert!(segs.sync().is_err());
        drop(segs);
        let segs = Segments::open(dir.path(), 1 << 20).unwrap();
        segs.append(&[3u8; 10]).unwrap();
        segs.sync().unwrap();
    }

    /// The same for the `fdatasync` that closes a full segment.
    #[test]
    fn a_failed_sync_at_a_roll_fails_every_later_append() {
        let dir = tempfile::tempdir().unwrap();
        let segs = Segments::open(dir.path(), 100).unwrap();
        segs.append(&[1u8; 60]).unwrap();
        set(&segs.faults.sync);
        assert!(segs.append(&[2u8; 60]).is_err());
        assert!(segs.append(&[2u8; 60]).is_err());
        assert!(segs.sync().is_err());
        assert_eq!(
            Segments::list(dir.path()).unwrap(),
            [1],
            "no segment after it"
        );
    }

    /// A partial write that cannot be cut back leaves the file longer than the segment's
    /// length: nothing more is appended (it would land past the offset its `Loc` records).
    #[test]
    fn a_partial_write_that_cannot_be_cut_back_stops_appends() {
        let dir = tempfile::tempdir().unwrap();
        let segs = Segments::open(dir.path(), 1 << 20).unwrap();
        let a = segs.append(&[1u8; 10]).unwrap();
        set(&segs.faults.write);
        assert!(segs.append(&[2u8; 40]).is_err());
        // Cut back: the next block is where its Loc says.
        let b = segs.append(&[3u8; 10]).unwrap();
        assert_eq!(segs.read(b).unwrap(), [3u8; 10]);
        set(&segs.faults.write);
        set(&segs.faults.cut);
        assert!(segs.append(&[4u8; 40]).is_err());
        match segs.append(&[5u8; 10]) {
            Err(e) => assert!(e.to_string().contains("until toolgate restarts"), "{e}"),
            Ok(c) => panic!(
                "appended after an uncut partial write; reads {:?}",
                segs.read(c)
            ),
        }
        assert!(segs.sync().is_err());
        assert_eq!(segs.read(a).unwrap(), [1u8; 10]);
    }

    /// A block larger than a frame can hold is refused, not acknowledged and unreadable.
    #[test]
    fn a_block_past_the_largest_frame_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let segs = Segments::open(dir.path(), 1 << 20).unwrap();
        // Zeroed pages are not touched: refused before it is framed.
        let huge = vec![0u8; MAX_FRAME + 1];
        let err = segs.append(&huge).unwrap_err().to_string();
        assert!(err.contains("cannot be written"), "{err}");
        assert!(segs.append(&[]).is_err());
        let a = segs.append(&[1u8; 10]).unwrap();
        assert_eq!((a.off, segs.read(a).unwrap()), (0, vec![1u8; 10]));
    }

    /// Reading many segments keeps at most `READERS` of them open, the most recent.
    #[test]
    fn the_open_readers_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let segs = Segments::open(dir.path(), 20).unwrap();
        let locs: Vec<Loc> = (0..READERS as u8 + 10)
            .map(|n| segs.append(&[n; 16]).unwrap())
            .collect();
        segs.sync().unwrap();
        assert!(locs.last().unwrap().seg > READERS as u64);
        for (n, loc) in locs.iter().enumerate() {
            assert_eq!(segs.read(*loc).unwrap(), [n as u8; 16]);
            assert!(segs.open_readers() <= READERS);
        }
        assert_eq!(segs.open_readers(), READERS);
        // The most recent stay open: reading one again opens nothing.
        let last = *locs.last().unwrap();
        segs.read(last).unwrap();
        assert_eq!(segs.open_readers(), READERS);
        segs.remove(locs[0].seg).unwrap();
        assert!(!segs.path(locs[0].seg).exists());
    }

    fn payloads() -> impl Strategy<Value = Vec<Vec<u8>>> {
        proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..64), 1..8)
    }

    proptest! {
        /// A segment cut anywhere reads as the whole frames before the cut, never more.
        #[test]
        fn a_cut_segment_reads_as_its_whole_frames(ps in payloads(), cut in any::<prop::sample::Index>()) {
            let bytes: Vec<u8> = ps.iter().flat_map(|p| frame(p)).collect();
            let cut = cut.index(bytes.len() + 1);
            let (found, end) = frames(&bytes[..cut]);
            let mut off = 0usize;
            let mut whole = 0;
            for p in &ps {
                if off + HEADER + p.len() > cut { break; }
                off += HEADER + p.len();
                whole += 1;
            }
            prop_assert_eq!(found.len(), whole);
            prop_assert_eq!(end as usize, off);
            for ((_, got), want) in found.iter().zip(&ps) {
                prop_assert_eq!(got, &want.as_slice());
            }
        }

        /// A flipped bit is never read back as a frame: the frames before it read, it and
        /// everything after it do not.
        #[test]
        fn a_flipped_bit_ends_the_readable_part(ps in payloads(), at in any::<prop::sample::Index>(), bit in 0u8..8) {
            let bytes: Vec<u8> = ps.iter().flat_map(|p| frame(p)).collect();
            let at = at.index(bytes.len());
            let mut bad = bytes.clone();
            bad[at] ^= 1 << bit;
            let (found, end) = frames(&bad);
            prop_assert!(end as usize <= at, "read past the damage at {}: {}", at, end);
            for ((off, got), want) in found.iter().zip(&ps) {
                prop_assert_eq!(got, &want.as_slice());
                prop_assert!((*off as usize) < at);
            }
        }

        /// Reading a file frame by frame finds what reading it whole does: cut, damaged or
        /// not.
        #[test]
        fn a_segment_streamed_reads_as_one_read_whole(ps in payloads(), cut in any::<prop::sample::Index>(), at in any::<prop::sample::Index>(), bit in 0u8..8) {
            let mut bytes: Vec<u8> = ps.iter().flat_map(|p| frame(p)).collect();
            let at = at.index(bytes.len());
            bytes[at] ^= 1 << bit;
            bytes.truncate(cut.index(bytes.len() + 1));
            let file = tempfile::NamedTempFile::new().unwrap();
            std::fs::write(file.path(), &bytes).unwrap();
            let mut streamed = Vec::new();
            let (end, size) = read_frames(file.path(), |off, p| streamed.push((off, p.to_vec()))).unwrap();
            let (whole, whole_end) = frames(&bytes);
            let whole: Vec<(u64, Vec<u8>)> = whole.into_iter().map(|(o, p)| (o, p.to_vec())).collect();
            prop_assert_eq!(streamed, whole);
            prop_assert_eq!((end, size), (whole_end, bytes.len() as u64));
        }

        /// Any bytes at all: no panic, and what reads ends within them.
        #[test]
        fn any_bytes_read_without_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let (found, end) = frames(&bytes);
            prop_assert!(end as usize <= bytes.len());
            prop_assert!(found.iter().all(|(o, p)| (*o as usize) + HEADER + p.len() <= end as usize));
        }
    }
}
