//! The disk spool: where records wait while the broker is unreachable or slow.
//!
//! Layout of the spool directory (created owner-only):
//! - `NNNNNNNNNNNNNNNNNNNN.seg`: segment files, appended in order. Each holds
//!   frames `[len: u32 LE][crc32: u32 LE][payload]`, where the payload is
//!   `[type: u8][seq: u64 LE][encoded record]`. The type and seq are copied out
//!   of the record so that dropped records can be reported without decoding.
//! - `cursor`: `SEGMENT OFFSET`, the position up to which records were
//!   delivered. It is replaced atomically (write, then rename).
//!
//! Records are read back oldest first. Delivery moves the cursor; segments
//! behind it are deleted. At the byte cap the oldest whole segment is dropped
//! and its undelivered records are returned to the caller, which reports
//! their sequence ranges. On open, a torn tail (a crash mid-write) is
//! truncated at the last whole frame and reported; it is never fatal.
#![deny(clippy::unwrap_used, clippy::expect_used)]

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::config::FsyncPolicy;

const FRAME_HEADER: u64 = 8;
const PAYLOAD_HEADER: usize = 9;
/// A frame longer than this is corruption, not a record (records are capped at 1 MiB).
const MAX_FRAME: u32 = 64 * 1024 * 1024;

/// What kind of record an entry holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    /// A metrics record; `seq` is its tick number.
    Metrics,
    /// A status record; `seq` is unused.
    Status,
}

/// One spooled record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Record type.
    pub kind: EntryKind,
    /// Tick number (metrics records).
    pub seq: u64,
    /// The encoded record.
    pub bytes: Vec<u8>,
}

impl Entry {
    fn frame_len(&self) -> u64 {
        FRAME_HEADER + (PAYLOAD_HEADER + self.bytes.len()) as u64
    }
}

/// A position in the spool: the segment and the byte offset within it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Pos {
    segment: u64,
    offset: u64,
}

/// What opening the spool found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct OpenReport {
    /// Undelivered records found.
    pub records: u64,
    /// Bytes cut from a torn or corrupt tail.
    pub truncated_bytes: u64,
}

struct Segment {
    id: u64,
    file: File,
    len: u64,
}

/// The spool. Not thread-safe; the publisher owns it.
pub struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    segment_bytes: u64,
    fsync: FsyncPolicy,
    segments: VecDeque<Segment>,
    /// Everything before this has been delivered (persisted in `cursor`).
    committed: Pos,
    /// Everything before this has been handed out by [`Spool::next_unsent`].
    sent: Pos,
    records: u64,
}

fn segment_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:020}.seg"))
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

impl Spool {
    /// Opens (or creates) the spool in `dir`, recovering from a crash.
    pub fn open(
        dir: &Path,
        max_bytes: u64,
        segment_bytes: u64,
        fsync: FsyncPolicy,
    ) -> io::Result<(Spool, OpenReport)> {
        create_private_dir(dir)?;
        let mut ids: Vec<u64> = fs::read_dir(dir)?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                name.strip_suffix(".seg")?.parse().ok()
            })
            .collect();
        ids.sort_unstable();
        let committed = read_cursor(dir)?.unwrap_or(Pos {
            segment: ids.first().copied().unwrap_or(0),
            offset: 0,
        });
        let mut report = OpenReport::default();
        let mut segments = VecDeque::new();
        for id in ids {
            let path = segment_path(dir, id);
            if id < committed.segment {
                fs::remove_file(&path)?;
                continue;
            }
            let file = OpenOptions::new().read(true).append(true).open(&path)?;
            let on_disk = file.metadata()?.len();
            let start = if id == committed.segment {
                committed.offset.min(on_disk)
            } else {
                0
            };
            // Count whole frames; cut the file at the first bad one.
            let mut at = start;
            while at < on_disk {
                match read_frame(&file, at, on_disk) {
                    Ok(Some((_, next))) => {
                        report.records += 1;
                        at = next;
                    }
                    Ok(None) | Err(_) => break,
                }
            }
            if at < on_disk {
                report.truncated_bytes += on_disk - at;
                file.set_len(at)?;
            }
            segments.push_back(Segment { id, file, len: at });
        }
        let mut spool = Spool {
            dir: dir.to_owned(),
            max_bytes,
            segment_bytes,
            fsync,
            segments,
            committed,
            sent: committed,
            records: report.records,
        };
        if spool.segments.is_empty() {
            spool.roll(committed.segment.max(1))?;
            spool.committed = Pos {
                segment: spool.last_id(),
                offset: 0,
            };
            spool.sent = spool.committed;
        }
        Ok((spool, report))
    }

    fn last_id(&self) -> u64 {
        self.segments.back().map_or(0, |s| s.id)
    }

    fn roll(&mut self, id: u64) -> io::Result<()> {
        let path = segment_path(&self.dir, id);
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)?;
        let len = file.metadata()?.len();
        self.segments.push_back(Segment { id, file, len });
        Ok(())
    }

    /// Undelivered records.
    pub fn records(&self) -> u64 {
        self.records
    }

    /// Bytes on disk.
    pub fn bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.len).sum()
    }

    /// Whether every record has been delivered.
    pub fn is_empty(&self) -> bool {
        self.records == 0
    }

    /// Appends a record. At the byte cap, the oldest segments are dropped
    /// first; their undelivered records are returned.
    pub fn append(&mut self, entry: &Entry) -> io::Result<Vec<(EntryKind, u64)>> {
        let frame_len = entry.frame_len();
        if frame_len > self.segment_bytes.min(self.max_bytes) {
            return Err(invalid(format!(
                "record of {} bytes does not fit a spool segment of {} bytes",
                entry.bytes.len(),
                self.segment_bytes
            )));
        }
        if self
            .segments
            .back()
            .is_some_and(|s| s.len > 0 && s.len + frame_len > self.segment_bytes)
        {
            self.roll(self.last_id() + 1)?;
        }
        let mut dropped = Vec::new();
        while self.bytes() + frame_len > self.max_bytes && self.segments.len() > 1 {
            dropped.extend(self.drop_oldest()?);
        }
        let mut buf = Vec::with_capacity(frame_len as usize);
        let payload_len = (PAYLOAD_HEADER + entry.bytes.len()) as u32;
        let mut hasher = crc32fast::Hasher::new();
        let kind = match entry.kind {
            EntryKind::Metrics => 0u8,
            EntryKind::Status => 1u8,
        };
        let seq = entry.seq.to_le_bytes();
        hasher.update(&[kind]);
        hasher.update(&seq);
        hasher.update(&entry.bytes);
        buf.extend_from_slice(&payload_len.to_le_bytes());
        buf.extend_from_slice(&hasher.finalize().to_le_bytes());
        buf.push(kind);
        buf.extend_from_slice(&seq);
        buf.extend_from_slice(&entry.bytes);
        let fsync = self.fsync;
        let seg = self
            .segments
            .back_mut()
            .ok_or_else(|| invalid("spool has no segment".into()))?;
        seg.file.write_all(&buf)?;
        if fsync == FsyncPolicy::Always {
            seg.file.sync_data()?;
        }
        seg.len += frame_len;
        self.records += 1;
        Ok(dropped)
    }

    fn drop_oldest(&mut self) -> io::Result<Vec<(EntryKind, u64)>> {
        let Some(seg) = self.segments.pop_front() else {
            return Ok(Vec::new());
        };
        let mut at = if seg.id == self.committed.segment {
            self.committed.offset
        } else {
            0
        };
        if seg.id < self.committed.segment {
            at = seg.len;
        }
        let mut dropped = Vec::new();
        while at < seg.len {
            match read_frame(&seg.file, at, seg.len)? {
                Some((entry, next)) => {
                    dropped.push((entry.kind, entry.seq));
                    at = next;
                }
                None => break,
            }
        }
        self.records = self.records.saturating_sub(dropped.len() as u64);
        let next = Pos {
            segment: self.segments.front().map_or(seg.id + 1, |s| s.id),
            offset: 0,
        };
        self.committed = self.committed.max(next);
        self.sent = self.sent.max(next);
        write_cursor(&self.dir, self.committed)?;
        fs::remove_file(segment_path(&self.dir, seg.id))?;
        Ok(dropped)
    }

    /// The next record not yet handed out, with the position just after it.
    pub fn next_unsent(&mut self) -> io::Result<Option<(Entry, Pos)>> {
        loop {
            let Some(seg) = self.segments.iter().find(|s| s.id >= self.sent.segment) else {
                return Ok(None);
            };
            if seg.id > self.sent.segment {
                self.sent = Pos {
                    segment: seg.id,
                    offset: 0,
                };
            }
            if self.sent.offset < seg.len {
                let (entry, next) = read_frame(&seg.file, self.sent.offset, seg.len)?
                    .ok_or_else(|| invalid(format!("spool segment {} ends mid-frame", seg.id)))?;
                self.sent.offset = next;
                return Ok(Some((entry, self.sent)));
            }
            if seg.id == self.last_id() {
                return Ok(None);
            }
            self.sent = Pos {
                segment: seg.id + 1,
                offset: 0,
            };
        }
    }

    /// Hands out everything after the delivered position again (after a
    /// failed delivery).
    pub fn rewind(&mut self) {
        self.sent = self.committed;
    }

    /// Marks everything before `pos` delivered: persists the cursor and
    /// deletes segments that are wholly behind it.
    pub fn ack(&mut self, pos: Pos, records: u64) -> io::Result<()> {
        if pos <= self.committed {
            // Already dropped at the cap, or acknowledged twice.
            return Ok(());
        }
        self.committed = pos;
        self.records = self.records.saturating_sub(records);
        write_cursor(&self.dir, pos)?;
        while self.segments.len() > 1
            && self.segments.front().is_some_and(|s| {
                s.id < pos.segment
                    || (s.id == pos.segment && pos.offset >= s.len && s.id != self.last_id())
            })
        {
            if let Some(seg) = self.segments.pop_front() {
                fs::remove_file(segment_path(&self.dir, seg.id))?;
            }
        }
        Ok(())
    }
}

fn read_frame(file: &File, at: u64, end: u64) -> io::Result<Option<(Entry, u64)>> {
    if at + FRAME_HEADER > end {
        return Ok(None);
    }
    let mut header = [0u8; FRAME_HEADER as usize];
    file.read_exact_at(&mut header, at)?;
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
    let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    if (len as usize) < PAYLOAD_HEADER || len > MAX_FRAME {
        return Err(invalid(format!("bad frame length {len} at offset {at}")));
    }
    let next = at + FRAME_HEADER + u64::from(len);
    if next > end {
        return Ok(None);
    }
    let mut payload = vec![0u8; len as usize];
    file.read_exact_at(&mut payload, at + FRAME_HEADER)?;
    if crc32fast::hash(&payload) != crc {
        return Err(invalid(format!("checksum mismatch at offset {at}")));
    }
    let kind = match payload[0] {
        0 => EntryKind::Metrics,
        1 => EntryKind::Status,
        k => return Err(invalid(format!("unknown entry type {k} at offset {at}"))),
    };
    let mut seq = [0u8; 8];
    seq.copy_from_slice(&payload[1..PAYLOAD_HEADER]);
    let bytes = payload.split_off(PAYLOAD_HEADER);
    Ok(Some((
        Entry {
            kind,
            seq: u64::from_le_bytes(seq),
            bytes,
        },
        next,
    )))
}

fn read_cursor(dir: &Path) -> io::Result<Option<Pos>> {
    let text = match fs::read_to_string(dir.join("cursor")) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut parts = text.split_whitespace().map(str::parse::<u64>);
    match (parts.next(), parts.next()) {
        (Some(Ok(segment)), Some(Ok(offset))) => Ok(Some(Pos { segment, offset })),
        _ => Err(invalid(format!(
            "unreadable spool cursor {:?}",
            text.trim()
        ))),
    }
}

fn write_cursor(dir: &Path, pos: Pos) -> io::Result<()> {
    let tmp = dir.join("cursor.tmp");
    fs::write(&tmp, format!("{} {}\n", pos.segment, pos.offset))?;
    fs::rename(tmp, dir.join("cursor"))
}

fn create_private_dir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    // An existing directory keeps its mode unless we tighten it.
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
}

/// What the publisher needs of a spool: a trait, so that the publisher's
/// state machine is tested without a disk ([`Spool`] is the real one).
pub trait SpoolStore: Send + 'static {
    /// Appends a record; returns the undelivered records dropped at the cap.
    fn append(&mut self, entry: &Entry) -> io::Result<Vec<(EntryKind, u64)>>;
    /// The next record not yet handed out, with the position just after it.
    fn next_unsent(&mut self) -> io::Result<Option<(Entry, Pos)>>;
    /// Marks everything before `pos` (`records` of them) delivered.
    fn ack(&mut self, pos: Pos, records: u64) -> io::Result<()>;
    /// Hands out everything after the delivered position again.
    fn rewind(&mut self);
    /// Whether every record has been delivered.
    fn is_empty(&self) -> bool;
    /// Bytes held.
    fn bytes(&self) -> u64;
    /// Undelivered records.
    fn records(&self) -> u64;
}

impl SpoolStore for Spool {
    fn append(&mut self, entry: &Entry) -> io::Result<Vec<(EntryKind, u64)>> {
        Spool::append(self, entry)
    }
    fn next_unsent(&mut self) -> io::Result<Option<(Entry, Pos)>> {
        Spool::next_unsent(self)
    }
    fn ack(&mut self, pos: Pos, records: u64) -> io::Result<()> {
        Spool::ack(self, pos, records)
    }
    fn rewind(&mut self) {
        Spool::rewind(self);
    }
    fn is_empty(&self) -> bool {
        Spool::is_empty(self)
    }
    fn bytes(&self) -> u64 {
        Spool::bytes(self)
    }
    fn records(&self) -> u64 {
        Spool::records(self)
    }
}

impl Pos {
    /// A position: the segment and the byte offset within it.
    pub fn new(segment: u64, offset: u64) -> Pos {
        Pos { segment, offset }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(seq: u64, size: usize) -> Entry {
        Entry {
            kind: EntryKind::Metrics,
            seq,
            bytes: vec![seq as u8; size],
        }
    }

    fn open(dir: &Path, max: u64, seg: u64) -> (Spool, OpenReport) {
        Spool::open(dir, max, seg, FsyncPolicy::Never).unwrap()
    }

    fn drain(s: &mut Spool) -> Vec<u64> {
        let mut seqs = Vec::new();
        while let Some((e, pos)) = s.next_unsent().unwrap() {
            seqs.push(e.seq);
            s.ack(pos, 1).unwrap();
        }
        seqs
    }

    #[test]
    fn replays_in_order_across_segments_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, _) = open(dir.path(), 1 << 20, 4096);
        for seq in 0..50 {
            assert!(s.append(&entry(seq, 300)).unwrap().is_empty());
        }
        // Deliver ten, then "crash" and reopen.
        for _ in 0..10 {
            let (_, pos) = s.next_unsent().unwrap().unwrap();
            s.ack(pos, 1).unwrap();
        }
        drop(s);
        let (mut s, report) = open(dir.path(), 1 << 20, 4096);
        assert_eq!(
            report,
            OpenReport {
                records: 40,
                truncated_bytes: 0
            }
        );
        assert_eq!(drain(&mut s), (10..50).collect::<Vec<_>>());
        assert!(s.is_empty());
        // Delivered segments are deleted, the active one is kept.
        let segs = fs::read_dir(dir.path()).unwrap().filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "seg")
        });
        assert_eq!(segs.count(), 1);
    }

    #[test]
    fn torn_tail_is_truncated_and_reported() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, _) = open(dir.path(), 1 << 20, 1 << 16);
        for seq in 0..3 {
            s.append(&entry(seq, 100)).unwrap();
        }
        drop(s);
        let seg = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|x| x == "seg"))
            .unwrap();
        let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
        f.write_all(&[200, 0, 0, 0, 1, 2]).unwrap(); // half a frame header
        drop(f);
        let (mut s, report) = open(dir.path(), 1 << 20, 1 << 16);
        assert_eq!(
            report,
            OpenReport {
                records: 3,
                truncated_bytes: 6
            }
        );
        s.append(&entry(3, 100)).unwrap();
        assert_eq!(drain(&mut s), vec![0, 1, 2, 3]);
    }

    #[test]
    fn corrupt_frame_is_cut_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, _) = open(dir.path(), 1 << 20, 1 << 16);
        for seq in 0..3 {
            s.append(&entry(seq, 100)).unwrap();
        }
        drop(s);
        let seg = segment_path(dir.path(), 1);
        let mut bytes = fs::read(&seg).unwrap();
        let second_frame_payload = (FRAME_HEADER as usize + PAYLOAD_HEADER + 100) + 20;
        bytes[second_frame_payload] ^= 0xff;
        fs::write(&seg, bytes).unwrap();
        let (mut s, report) = open(dir.path(), 1 << 20, 1 << 16);
        assert_eq!(report.records, 1);
        assert!(report.truncated_bytes > 0);
        assert_eq!(drain(&mut s), vec![0]);
    }

    #[test]
    fn cap_drops_oldest_segments_and_says_which() {
        let dir = tempfile::tempdir().unwrap();
        // Segments hold 3 frames of 117 bytes; the cap holds 3 segments.
        let (mut s, _) = open(dir.path(), 3 * 400, 400);
        let mut dropped = Vec::new();
        for seq in 0..20 {
            dropped.extend(s.append(&entry(seq, 100)).unwrap());
        }
        assert!(s.bytes() <= 3 * 400);
        let dropped: Vec<u64> = dropped.into_iter().map(|(_, seq)| seq).collect();
        let kept = drain(&mut s);
        // Nothing vanished: every record was delivered or reported dropped.
        let mut all: Vec<u64> = dropped.iter().chain(kept.iter()).copied().collect();
        all.sort_unstable();
        assert_eq!(all, (0..20).collect::<Vec<_>>());
        // The oldest went first.
        assert_eq!(dropped, (0..dropped.len() as u64).collect::<Vec<_>>());
    }

    #[test]
    fn rewind_hands_out_unacknowledged_records_again() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, _) = open(dir.path(), 1 << 20, 1 << 16);
        for seq in 0..3 {
            s.append(&entry(seq, 10)).unwrap();
        }
        let (_, p0) = s.next_unsent().unwrap().unwrap();
        s.ack(p0, 1).unwrap();
        let _ = s.next_unsent().unwrap().unwrap();
        s.rewind();
        assert_eq!(drain(&mut s), vec![1, 2]);
    }

    #[test]
    fn spool_directory_is_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let spool_dir = dir.path().join("spool");
        let _ = open(&spool_dir, 1 << 20, 1 << 16);
        let mode = fs::metadata(&spool_dir).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
    }
}
