//! The audit file: append one record, fsync it, and only then return, so that nothing the log
//! reports (a swap, a rejection) can be visible before its record is durable.
//!
//! What the file guarantees, and how:
//! - **A failed append leaves no trace.** The chain head (`seq`, `prev`) advances only after the
//!   write and the fsync succeeded; on any failure the file is cut back to the size it had
//!   before (`ftruncate`), so no partial line stays for the next record to be glued onto. If even
//!   the cut fails (an append-only or immutable file), the tail is remembered as dirty and cut
//!   before the next append. So `append` returning `Err` means: nothing was recorded, the head
//!   is unchanged, and a later append succeeds once the disk is writable again.
//!   `audit::health` says whether the last append failed and how many did.
//! - **A deleted or replaced file is noticed.** Before each append the open descriptor
//!   (`fstat`) is compared with the path (`stat`, device and inode). If the file is gone or
//!   another one is in its place, the agent opens the path again and first writes a
//!   `log_replaced` record linked to the last record it wrote, so the new file continues the chain
//!   and `audit verify` names the discontinuity instead of finding a fresh, "intact" log.
//!   A replacement that is a copy of this log (it ends with our last record) is continued; any
//!   other non-empty replacement is moved aside to `<file>.replaced.<unix time>` and kept.
//! - **One agent per file.** `open` takes `flock(LOCK_EX|LOCK_NB)` on the sibling `<file>.lock`
//!   and writes its pid there; a second agent fails to start naming the file and that pid. The
//!   lock is on a sibling, not on the log itself, because the log's inode changes at every
//!   rotation (and when the file is deleted or replaced) while the lock must stay with the path.
//! - **A torn tail is cut on bytes.** A crash mid-write leaves a last line without its newline,
//!   possibly ending inside a multi-byte UTF-8 character; `open` reads only the end of the file
//!   (never the whole log), cuts after the last `\n`, and takes the chain head from the last
//!   complete line. A last complete line that is not a record is an error naming its offset.
//!
//! What an unkeyed hash chain cannot tell, on its own: a log truncated at a line boundary (the
//! last records removed) or a whole chain re-forged from its anchor still verifies, since anyone
//! with write access can recompute every hash. Detecting those needs a witness outside the node
//! that holds the chain head (see the audit witness).

use std::{
    fs::{File, OpenOptions},
    io::{self, Read, Write},
    os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt},
    path::{Path, PathBuf},
};

use thiserror::Error;

use super::{chain::ChainHead, event::AuditEvent};
use crate::clock;

/// How many rotated files are kept (`audit.jsonl.1` is the newest).
pub(crate) const ROTATED_KEPT: usize = 9;

/// The longest last line `open` reads back to find the chain head. Records are a few KiB at most
/// (an action's output is cut to 4 KiB); a longer last line is not something this agent wrote.
pub(crate) const MAX_RECORD: u64 = 1 << 20;

/// How much of the file's end is read at a time while looking for the last line.
const TAIL_CHUNK: u64 = 64 * 1024;

/// The audit log cannot be written: the agent must not report (or make) changes it cannot record.
#[derive(Debug, Error)]
#[error("audit log {path}: {source}")]
pub struct AuditError {
    /// The path the write was for: the log, its lock file or a rotated copy.
    pub path: PathBuf,
    /// What the operating system refused (a full disk and a read-only mount are the usual causes).
    #[source]
    pub source: io::Error,
}

/// An open, append-only audit log.
pub struct AuditLog {
    path: PathBuf,
    file: File,
    /// Device and inode of `file`, compared with the path before each append.
    identity: (u64, u64),
    /// The lock on `<path>.lock`, held while the log is open.
    _lock: File,
    /// Bytes of complete, durable records in `file`: where a failed append is cut back to.
    size: u64,
    /// A failed append's bytes could not be cut off: cut them before the next write.
    dirty_tail: bool,
    /// A `log_replaced` record that must precede the next record (writing it failed).
    pending: Option<AuditEvent>,
    max_size: u64,
    head: ChainHead,
    instance: String,
    observer: Option<tokio::sync::mpsc::UnboundedSender<Observed>>,
    /// Appends that failed since open (for the log line; `/readyz` reads [`super::health`]).
    failed_appends: u64,
}

/// A record handed to an observer (Kubernetes Events) after it is durable.
#[derive(Debug, Clone)]
pub(crate) struct Observed {
    /// The record's bundle.
    pub bundle: Option<String>,
    /// What it says.
    pub event: AuditEvent,
}

fn err(path: &Path) -> impl FnOnce(io::Error) -> AuditError + '_ {
    move |source| AuditError {
        path: path.to_path_buf(),
        source,
    }
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

/// A random instance id (128 bits from the kernel's CSPRNG), the chain's anchor for a new log.
pub(crate) fn new_instance_id() -> String {
    let mut bytes = [0u8; 16];
    let filled = File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes));
    if filled.is_err() {
        // getrandom(2) as a fallback (no /dev in a minimal container). Should that fail as well,
        // the id is what the buffer holds, as before: the log still opens.
        crate::sys::random::fill(&mut bytes).ok();
    }
    hex::encode(bytes)
}

/// `<path>.lock`, the file whose `flock` says which agent owns the log.
pub(crate) fn lock_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_os_string();
    name.push(".lock");
    PathBuf::from(name)
}

/// Takes the exclusive lock on `path`'s lock file and writes our pid into it.
fn lock(path: &Path) -> Result<File, AuditError> {
    let lock_path = lock_path(path);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o640)
        .open(&lock_path)
        .map_err(err(&lock_path))?;
    // std's try_lock is flock(LOCK_EX | LOCK_NB) on Linux; WouldBlock is EWOULDBLOCK.
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::Error(e)) => return Err(err(&lock_path)(e)),
        Err(std::fs::TryLockError::WouldBlock) => return Err(held_by_another(&mut file, path)),
    }
    // The pid is for the error message above only: the lock itself is the flock, so a lock file
    // without it still locks.
    file.set_len(0)
        .and_then(|()| file.write_all_at(format!("{}\n", std::process::id()).as_bytes(), 0))
        .ok();
    Ok(file)
}

/// The error when another agent holds the lock on `path`'s lock file `file`, naming the pid it
/// wrote there.
fn held_by_another(file: &mut File, path: &Path) -> AuditError {
    let lock_path = lock_path(path);
    let mut holder = String::new();
    // Without the pid (unreadable, or not written yet) the message names only the lock.
    file.read_to_string(&mut holder).ok();
    let holder = match holder.trim().parse::<u32>() {
        Ok(pid) => format!(" (pid {pid})"),
        Err(_) => String::new(),
    };
    err(path)(io::Error::new(
        io::ErrorKind::WouldBlock,
        format!(
            "in use by another certreload agent{holder}, which holds the lock {}; two agents must not write one audit log (give each its own [audit] path)",
            lock_path.display()
        ),
    ))
}

/// Where the complete lines of `file` (`len` bytes) end (just after the last `\n`), and the last
/// complete line without its newline. Reads from the end, in chunks, at most [`MAX_RECORD`]
/// bytes beyond the torn tail.
fn scan_tail(file: &File, len: u64) -> io::Result<(u64, Option<Vec<u8>>)> {
    let mut pos = len;
    let mut buf: Vec<u8> = Vec::new();
    let mut good_end: Option<u64> = None;
    loop {
        let search_to = match good_end {
            Some(end) => (end - 1 - pos) as usize,
            None => buf.len(),
        };
        match buf[..search_to].iter().rposition(|&b| b == b'\n') {
            Some(i) if good_end.is_none() => {
                good_end = Some(pos + i as u64 + 1);
                continue;
            }
            Some(i) => {
                let end = good_end.map_or(0, |e| (e - 1 - pos) as usize);
                return Ok((good_end.unwrap_or(0), Some(buf[i + 1..end].to_vec())));
            }
            None if pos == 0 => {
                return Ok(match good_end {
                    Some(end) => (end, Some(buf[..(end - 1) as usize].to_vec())),
                    None => (0, None),
                });
            }
            None => {}
        }
        let scanned = len - pos;
        let limit = good_end.map_or(0, |e| len - e) + MAX_RECORD;
        if scanned > limit {
            return Err(invalid(format!(
                "no line end within the last {scanned} bytes (a record is at most {MAX_RECORD} bytes): not an audit log"
            )));
        }
        let step = TAIL_CHUNK.min(pos);
        pos -= step;
        let mut chunk = vec![0u8; step as usize];
        file.read_exact_at(&mut chunk, pos)?;
        chunk.extend_from_slice(&buf);
        buf = chunk;
    }
}

/// The chain head after `line` (the last complete line of `path`, at byte `offset`), or an error
/// saying precisely why it is not a record.
fn head_after(path: &Path, offset: u64, line: &[u8]) -> Result<ChainHead, AuditError> {
    let text = std::str::from_utf8(line).map_err(|e| {
        err(path)(invalid(format!(
            "the last record (byte {offset}) is not UTF-8 (invalid byte at {}): not written by certreload; move the file aside to start a new log",
            offset + e.valid_up_to() as u64
        )))
    })?;
    ChainHead::after(text).ok_or_else(|| {
        err(path)(invalid(format!(
            "the last record (byte {offset}) is not an audit record (invalid JSON or no seq); move the file aside to start a new log"
        )))
    })
}

/// The chain head after the last record of the existing file `path`, if any (a rotated file,
/// read only).
fn head_of_file(path: &Path) -> Result<Option<ChainHead>, AuditError> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(err(path)(e)),
    };
    let len = file.metadata().map_err(err(path))?.len();
    match scan_tail(&file, len).map_err(err(path))? {
        (end, Some(line)) => head_after(path, end - line.len() as u64 - 1, &line).map(Some),
        (_, None) => Ok(None),
    }
}

fn open_append(path: &Path) -> Result<File, AuditError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(err(dir))?;
    }
    OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .mode(0o640)
        .open(path)
        .map_err(err(path))
}

fn identity(file: &File, path: &Path) -> Result<(u64, u64), AuditError> {
    let meta = file.metadata().map_err(err(path))?;
    Ok((meta.dev(), meta.ino()))
}

/// Makes a rename or creation in `path`'s directory durable.
fn sync_dir(path: &Path) {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if let Err(e) = File::open(dir).and_then(|d| d.sync_all()) {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot fsync the audit log's directory; a crash now may lose the log's latest rename or creation");
        }
    }
}

impl AuditLog {
    /// Opens (or creates) the log at `path`, continuing the existing chain if there is one. A torn
    /// last line (a crash mid-write: never acknowledged) is cut off. Fails if another agent has
    /// the log open (see `lock_path`).
    pub fn open(path: &Path, max_size: u64) -> Result<AuditLog, AuditError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(err(dir))?;
        }
        // Lock first: the tail must not be cut under another agent's write.
        let lock = lock(path)?;
        let file = open_append(path)?;
        let len = file.metadata().map_err(err(path))?.len();
        let (good_end, last) = scan_tail(&file, len).map_err(err(path))?;
        if good_end < len {
            file.set_len(good_end).map_err(err(path))?;
            file.sync_data().map_err(err(path))?;
            tracing::warn!(path = %path.display(), cut = len - good_end, "audit log ended with a torn record (crash mid-write); it was cut off");
        }
        let instance = new_instance_id();
        let head = match last {
            Some(line) => head_after(path, good_end - line.len() as u64 - 1, &line)?,
            None => {
                head_of_file(&rotated(path, 1))?.unwrap_or_else(|| ChainHead::anchored(&instance))
            }
        };
        Ok(AuditLog {
            path: path.to_path_buf(),
            identity: identity(&file, path)?,
            file,
            _lock: lock,
            size: good_end,
            dirty_tail: false,
            pending: None,
            max_size,
            head,
            instance,
            observer: None,
            failed_appends: 0,
        })
    }

    /// This run's instance id.
    pub(crate) fn instance(&self) -> &str {
        &self.instance
    }

    /// The log's path.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The last record written: its `seq` and the SHA-256 of its line (the next record's `prev`),
    /// or `None` while the chain has no record. This is what the witness publishes: it commits to
    /// every record up to `seq`.
    pub(crate) fn last_record(&self) -> Option<(u64, String)> {
        let seq = self.head.seq.checked_sub(1)?;
        Some((seq, self.head.prev.clone()))
    }

    /// Hands every durable record to `tx` from now on (the Kubernetes Events publisher).
    pub(crate) fn observe(&mut self, tx: tokio::sync::mpsc::UnboundedSender<Observed>) {
        self.observer = Some(tx);
    }

    /// Appends one record, fsyncs it, and mirrors it as a `tracing` event (so it also shows in
    /// `kubectl logs`) and to the observer. Returns the record's `seq`. On `Err` nothing was
    /// recorded and the chain head is unchanged (see the module doc).
    pub(crate) fn append(
        &mut self,
        bundle: Option<&str>,
        event: &AuditEvent,
    ) -> Result<u64, AuditError> {
        let result = self.append_inner(bundle, event);
        if let Err(e) = &result {
            self.failed_appends += 1;
            tracing::error!(error = %e, event = event.name(), failed_appends = self.failed_appends, "audit record not written; nothing of it is in the log");
        }
        result
    }

    fn append_inner(
        &mut self,
        bundle: Option<&str>,
        event: &AuditEvent,
    ) -> Result<u64, AuditError> {
        self.follow_path()?;
        if let Some(replaced) = self.pending.clone() {
            self.write_record(None, &replaced)?;
            self.pending = None;
        }
        let seq = self.write_record(bundle, event)?;
        if self.size > self.max_size {
            // The record is durable: a failed rotation is not a failed append. The next
            // append tries again.
            if let Err(e) = self.rotate() {
                tracing::warn!(error = %e, "cannot rotate the audit log; records go on into the current file");
            }
        }
        Ok(seq)
    }

    /// Writes and fsyncs one record; advances the head only once it is durable, and cuts the file
    /// back to the last good offset otherwise.
    fn write_record(
        &mut self,
        bundle: Option<&str>,
        event: &AuditEvent,
    ) -> Result<u64, AuditError> {
        if self.dirty_tail {
            self.file.set_len(self.size).map_err(err(&self.path))?;
            self.dirty_tail = false;
            tracing::info!(path = %self.path.display(), size = self.size, "cut the audit log back to its last complete record");
        }
        let mut head = self.head.clone();
        let seq = head.seq;
        let line = head.seal(&clock::now_rfc3339(), &self.instance, bundle, event);
        let mut bytes = line.clone().into_bytes();
        bytes.push(b'\n');
        let written = self
            .file
            .write_all(&bytes)
            .and_then(|()| self.file.sync_data());
        if let Err(e) = written {
            // O_APPEND writes at the end whatever the offset: cutting the length is enough.
            match self.file.set_len(self.size) {
                Ok(()) => {
                    // The append has already failed and is reported below; the cut is durable at
                    // the next successful append's sync at the latest.
                    self.file.sync_data().ok();
                }
                Err(cut) => {
                    self.dirty_tail = true;
                    tracing::warn!(path = %self.path.display(), error = %cut, "cannot cut a failed audit append back yet; it is cut before the next one");
                }
            }
            return Err(err(&self.path)(e));
        }
        self.head = head;
        self.size += bytes.len() as u64;
        // The record once, as its JSON line (the message): repeating its event, bundle and seq
        // as fields printed each record twice over in `kubectl logs` (issue 14).
        tracing::info!(target: "certreload::audit", "{line}");
        if let Some(tx) = &self.observer {
            // Best effort: the observer may have stopped before the log (at shutdown).
            tx.send(Observed {
                bundle: bundle.map(str::to_string),
                event: event.clone(),
            })
            .ok();
        }
        Ok(seq)
    }

    /// Checks that the path still names the open file; if it was deleted or replaced, opens the
    /// path again and queues the `log_replaced` record that links the new file to the chain.
    fn follow_path(&mut self) -> Result<(), AuditError> {
        let reason = match std::fs::metadata(&self.path) {
            Ok(m) if (m.dev(), m.ino()) == self.identity => return Ok(()),
            Ok(_) => "replaced",
            Err(e) if e.kind() == io::ErrorKind::NotFound => "deleted",
            Err(e) => return Err(err(&self.path)(e)),
        };
        let mut file = open_append(&self.path)?;
        let len = file.metadata().map_err(err(&self.path))?.len();
        let mut size = 0;
        let mut moved_aside = None;
        if len > 0 {
            // A copy of this very log (it ends with our last record) is continued; anything
            // else is kept aside, never appended to.
            let ours = match scan_tail(&file, len) {
                Ok((end, Some(line))) => std::str::from_utf8(&line)
                    .ok()
                    .and_then(ChainHead::after)
                    .filter(|h| *h == self.head)
                    .map(|_| end),
                _ => None,
            };
            match ours {
                Some(end) => {
                    if end < len {
                        file.set_len(end).map_err(err(&self.path))?;
                    }
                    size = end;
                }
                None => {
                    let since_epoch = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_secs());
                    let mut aside = self.path.as_os_str().to_os_string();
                    aside.push(format!(".replaced.{since_epoch}"));
                    let aside = PathBuf::from(aside);
                    std::fs::rename(&self.path, &aside).map_err(err(&self.path))?;
                    moved_aside = Some(aside);
                    file = open_append(&self.path)?;
                    if file.metadata().map_err(err(&self.path))?.len() != 0 {
                        return Err(err(&self.path)(io::Error::other(
                            "yet another file appeared at the audit log's path while the agent moved a replacement aside",
                        )));
                    }
                }
            }
        }
        self.adopt(file, size, reason, moved_aside)
    }

    fn adopt(
        &mut self,
        file: File,
        size: u64,
        reason: &str,
        moved_aside: Option<PathBuf>,
    ) -> Result<(), AuditError> {
        sync_dir(&self.path);
        tracing::error!(path = %self.path.display(), reason, last_seq = ?self.head.seq.checked_sub(1), moved_aside = ?moved_aside, "the audit log was {reason} while the agent ran; a log_replaced record continues the chain in the new file");
        self.identity = identity(&file, &self.path)?;
        self.file = file;
        self.size = size;
        self.dirty_tail = false;
        self.pending = Some(AuditEvent::LogReplaced {
            previous_seq: self.head.seq.checked_sub(1),
            previous_hash: self.head.prev.clone(),
            reason: reason.to_string(),
            moved_aside,
        });
        Ok(())
    }

    /// Renames the full file to `.1` (shifting older ones) and starts a new one; the chain goes on.
    /// If the new file cannot be created, `.1` is renamed back so the path keeps the log.
    fn rotate(&mut self) -> Result<(), AuditError> {
        for n in (1..ROTATED_KEPT).rev() {
            let from = rotated(&self.path, n);
            if from.exists() {
                std::fs::rename(&from, rotated(&self.path, n + 1)).map_err(err(&from))?;
            }
        }
        let first = rotated(&self.path, 1);
        std::fs::rename(&self.path, &first).map_err(err(&self.path))?;
        let file = match open_append(&self.path).and_then(|f| {
            let id = identity(&f, &self.path)?;
            Ok((f, id))
        }) {
            Ok(opened) => opened,
            Err(e) => {
                if let Err(back) = std::fs::rename(&first, &self.path) {
                    tracing::error!(path = %self.path.display(), rotated = %first.display(), error = %back, "cannot move the rotated audit log back after a failed rotation");
                }
                return Err(e);
            }
        };
        (self.file, self.identity) = file;
        sync_dir(&self.path);
        self.size = 0;
        self.dirty_tail = false;
        Ok(())
    }
}

/// `audit.jsonl.N`.
pub(crate) fn rotated(path: &Path, n: usize) -> PathBuf {
    let mut name = path.as_os_str().to_os_string();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::chain::verify_files;

    fn stopped(reason: &str) -> AuditEvent {
        AuditEvent::AgentStopped {
            reason: reason.into(),
        }
    }

    #[test]
    fn records_are_chained_across_restarts_and_rotations() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("log/audit.jsonl");
        let mut log = AuditLog::open(&path, 600).expect("open");
        for i in 0..5 {
            log.append(Some("b"), &stopped(&format!("r{i}")))
                .expect("append");
        }
        drop(log);
        let mut log = AuditLog::open(&path, 600).expect("reopen");
        for i in 0..5 {
            log.append(None, &stopped(&format!("s{i}")))
                .expect("append");
        }
        let mut files: Vec<PathBuf> = (1..=ROTATED_KEPT)
            .rev()
            .map(|n| rotated(&path, n))
            .filter(|p| p.exists())
            .collect();
        assert!(!files.is_empty(), "600 bytes forces rotation");
        files.push(path.clone());
        let summary = verify_files(&files).expect("intact across files");
        assert_eq!(summary.records, 10);
        assert_eq!(summary.instances, 2);
        // Without the rotated files the chain does not start at its anchor: said, not hidden.
        assert!(verify_files(&[path]).is_err());
    }

    #[test]
    fn a_torn_last_line_is_cut_and_the_chain_continues() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.jsonl");
        let mut log = AuditLog::open(&path, 1 << 20).expect("open");
        log.append(None, &stopped("a")).expect("append");
        drop(log);
        let mut f = OpenOptions::new().append(true).open(&path).expect("open");
        f.write_all(b"{\"seq\":1,\"ts\":").expect("torn write");
        let mut log = AuditLog::open(&path, 1 << 20).expect("reopen");
        log.append(None, &stopped("b")).expect("append");
        assert_eq!(verify_files(&[path]).expect("intact").records, 2);
    }

    fn records(path: &Path) -> Vec<serde_json::Value> {
        std::fs::read_to_string(path)
            .expect("read")
            .lines()
            .map(|l| serde_json::from_str(l).expect("a record"))
            .collect()
    }

    #[test]
    fn a_failed_append_records_nothing_and_the_next_one_cuts_a_dirty_tail() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.jsonl");
        let mut log = AuditLog::open(&path, 1 << 20).expect("open");
        log.append(None, &stopped("a")).expect("append");
        let head = log.head.clone();
        // The same file through a read-only descriptor: the write fails, and so does the cut
        // (as with an append-only or immutable file).
        let writable = std::mem::replace(&mut log.file, File::open(&path).expect("read-only"));
        assert!(log.append(None, &stopped("lost")).is_err());
        assert_eq!(
            log.head, head,
            "the head does not advance on a failed append"
        );
        assert!(log.dirty_tail);
        // What a short write would have left: part of a line, no newline.
        OpenOptions::new()
            .append(true)
            .open(&path)
            .and_then(|mut f| f.write_all(b"{\"seq\":1,\"ts\":\"20"))
            .expect("partial line");
        log.file = writable;
        assert_eq!(log.append(None, &stopped("b")).expect("append"), 1);
        let summary = verify_files(std::slice::from_ref(&path)).expect("no gap, no glued line");
        assert_eq!((summary.records, summary.last_seq), (2, 1));
        assert_eq!(records(&path)[1]["reason"], "b");
    }

    #[test]
    fn a_second_open_is_refused_naming_the_file_and_the_holder() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.jsonl");
        let mut first = AuditLog::open(&path, 1 << 20).expect("open");
        let e = AuditLog::open(&path, 1 << 20)
            .err()
            .expect("a second open is refused")
            .to_string();
        assert!(e.contains(&path.display().to_string()), "{e}");
        assert!(e.contains(&format!("pid {}", std::process::id())), "{e}");
        first
            .append(None, &stopped("a"))
            .expect("the first still writes");
        drop(first);
        AuditLog::open(&path, 1 << 20).expect("free again once the first is closed");
    }

    #[test]
    fn a_deleted_log_is_reopened_and_continued_after_a_log_replaced_record() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.jsonl");
        let mut log = AuditLog::open(&path, 1 << 20).expect("open");
        for i in 0..3 {
            log.append(None, &stopped(&format!("r{i}")))
                .expect("append");
        }
        let last_hash = log.head.prev.clone();
        std::fs::remove_file(&path).expect("rm");
        assert_eq!(log.append(None, &stopped("after")).expect("append"), 4);
        let new = records(&path);
        assert_eq!(new.len(), 2);
        assert_eq!(new[0]["event"], "log_replaced");
        assert_eq!(new[0]["reason"], "deleted");
        assert_eq!(new[0]["previous_seq"], 2);
        assert_eq!(new[0]["previous_hash"], last_hash.as_str());
        assert_eq!(new[0]["prev"], last_hash.as_str());
        let summary = verify_files(std::slice::from_ref(&path)).expect("verifies");
        assert!(!summary.intact());
        assert_eq!((summary.first_seq, summary.last_seq), (3, 4));
        let text = summary.to_string();
        assert!(
            text.contains("starts after a discontinuity at seq 2"),
            "{text}"
        );
        assert!(text.contains("deleted"), "{text}");
        drop(log);
        // A restart continues the chain of the new file.
        let mut log = AuditLog::open(&path, 1 << 20).expect("reopen");
        assert_eq!(log.append(None, &stopped("restarted")).expect("append"), 5);
    }

    #[test]
    fn a_log_renamed_away_is_continued_in_the_new_file_without_a_gap() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.jsonl");
        let mut log = AuditLog::open(&path, 1 << 20).expect("open");
        log.append(None, &stopped("a")).expect("append");
        // logrotate's `create`: rename, then an empty file in its place.
        std::fs::rename(&path, rotated(&path, 1)).expect("mv");
        std::fs::write(&path, b"").expect("create");
        log.append(None, &stopped("b")).expect("append");
        let summary = verify_files(&[rotated(&path, 1), path.clone()]).expect("verifies");
        assert!(summary.intact(), "{summary}");
        assert_eq!(summary.records, 3);
        assert_eq!(summary.discontinuities.len(), 1);
        assert_eq!(summary.discontinuities[0].reason, "replaced");
    }

    #[test]
    fn a_foreign_replacement_is_moved_aside_and_a_copy_of_the_log_is_continued() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.jsonl");
        let mut log = AuditLog::open(&path, 1 << 20).expect("open");
        log.append(None, &stopped("a")).expect("append");
        // A copy of the log put in its place (cp + mv) is continued in place.
        let copy = dir.path().join("copy");
        std::fs::copy(&path, &copy).expect("cp");
        std::fs::rename(&copy, &path).expect("mv");
        log.append(None, &stopped("b")).expect("append");
        assert_eq!(
            verify_files(std::slice::from_ref(&path))
                .expect("verifies")
                .records,
            3
        );
        // Anything else is kept aside, never appended to.
        std::fs::write(&copy, b"{\"seq\":0,\"forged\":true}\n").expect("write");
        std::fs::rename(&copy, &path).expect("mv");
        log.append(None, &stopped("c")).expect("append");
        let new = records(&path);
        assert_eq!(new[0]["event"], "log_replaced");
        let aside = PathBuf::from(new[0]["moved_aside"].as_str().expect("moved aside"));
        assert_eq!(
            std::fs::read(&aside).expect("kept"),
            b"{\"seq\":0,\"forged\":true}\n"
        );
        let summary = verify_files(&[path]).expect("verifies");
        assert_eq!(summary.first_seq, 3);
    }

    #[test]
    fn a_torn_tail_ending_inside_a_utf8_character_is_cut() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.jsonl");
        let mut log = AuditLog::open(&path, 1 << 20).expect("open");
        log.append(None, &stopped("a")).expect("append");
        drop(log);
        let mut f = OpenOptions::new().append(true).open(&path).expect("open");
        // "é" is C3 A9: the write stopped after its first byte.
        f.write_all(b"{\"seq\":1,\"reason\":\"caf\xC3")
            .expect("torn write");
        let mut log = AuditLog::open(&path, 1 << 20).expect("reopen");
        log.append(None, &stopped("b")).expect("append");
        assert_eq!(verify_files(&[path]).expect("intact").records, 2);
    }

    #[test]
    fn a_last_record_that_is_not_utf8_is_an_error_naming_its_offset() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.jsonl");
        let mut log = AuditLog::open(&path, 1 << 20).expect("open");
        log.append(None, &stopped("a")).expect("append");
        drop(log);
        let good = std::fs::metadata(&path).expect("stat").len();
        let mut f = OpenOptions::new().append(true).open(&path).expect("open");
        f.write_all(b"{\"seq\":1,\xFF}\n").expect("write");
        let e = AuditLog::open(&path, 1 << 20)
            .err()
            .expect("refused")
            .to_string();
        assert!(e.contains("not UTF-8"), "{e}");
        assert!(e.contains(&format!("byte {good}")), "{e}");
    }

    #[test]
    fn the_tail_is_found_across_chunks_without_reading_the_whole_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("f");
        let long = "x".repeat(3 * TAIL_CHUNK as usize);
        std::fs::write(&path, format!("{long}\nfirst\n{long}\ntorn")).expect("write");
        let file = File::open(&path).expect("open");
        let len = file.metadata().expect("stat").len();
        let (end, last) = scan_tail(&file, len).expect("scan");
        assert_eq!(end, len - 4);
        assert_eq!(last.expect("a line"), long.as_bytes());
        std::fs::write(&path, "only\n").expect("write");
        let file = File::open(&path).expect("open");
        assert_eq!(
            scan_tail(&file, 5).expect("scan"),
            (5, Some(b"only".to_vec()))
        );
        assert_eq!(scan_tail(&file, 0).expect("scan"), (0, None));
        // No newline within a record's length of the end: not a log, said without reading on.
        std::fs::write(&path, vec![b'y'; (MAX_RECORD + 3 * TAIL_CHUNK) as usize]).expect("write");
        let file = File::open(&path).expect("open");
        let len = file.metadata().expect("stat").len();
        assert!(scan_tail(&file, len).is_err());
    }
}
