//! The audit file: append one record, fsync it, and only then return, so that nothing the log
//! reports (a swap, a rejection) can be visible before its record is durable.

use std::{
    fs::{File, OpenOptions},
    io::{Read, Seek, SeekFrom, Write},
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
};

use thiserror::Error;

use super::{chain::ChainHead, event::AuditEvent};
use crate::clock;

/// How many rotated files are kept (`audit.jsonl.1` is the newest).
pub const ROTATED_KEPT: usize = 9;

/// The audit log cannot be written: the agent must not report (or make) changes it cannot record.
#[derive(Debug, Error)]
#[error("audit log {path}: {source}")]
pub struct AuditError {
    /// The file.
    pub path: PathBuf,
    /// The error.
    #[source]
    pub source: std::io::Error,
}

/// An open, append-only audit log.
pub struct AuditLog {
    path: PathBuf,
    file: File,
    size: u64,
    max_size: u64,
    head: ChainHead,
    instance: String,
    observer: Option<tokio::sync::mpsc::UnboundedSender<Observed>>,
}

/// A record handed to an observer (Kubernetes Events) after it is durable.
#[derive(Debug, Clone)]
pub struct Observed {
    /// The record's bundle.
    pub bundle: Option<String>,
    /// What it says.
    pub event: AuditEvent,
}

fn err(path: &Path) -> impl FnOnce(std::io::Error) -> AuditError + '_ {
    move |source| AuditError {
        path: path.to_path_buf(),
        source,
    }
}

/// A random instance id (128 bits from the kernel's CSPRNG), the chain's anchor for a new log.
pub fn new_instance_id() -> String {
    let mut bytes = [0u8; 16];
    let filled = File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes));
    if filled.is_err() {
        // getrandom(2) through libc as a fallback (no /dev in a minimal container).
        // SAFETY: writes at most 16 bytes into our buffer.
        unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    }
    hex::encode(bytes)
}

impl AuditLog {
    /// Opens (or creates) the log at `path`, continuing the existing chain if there is one. A torn
    /// last line (a crash mid-write: never acknowledged) is cut off.
    pub fn open(path: &Path, max_size: u64) -> Result<AuditLog, AuditError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(err(dir))?;
        }
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(0o640)
            .open(path)
            .map_err(err(path))?;
        let mut text = String::new();
        file.read_to_string(&mut text).map_err(err(path))?;
        if !text.is_empty() && !text.ends_with('\n') {
            let keep = text.rfind('\n').map(|i| i + 1).unwrap_or(0);
            file.set_len(keep as u64).map_err(err(path))?;
            text.truncate(keep);
            tracing::warn!(path = %path.display(), "audit log ended with a torn record (crash mid-write); it was cut off");
        }
        let instance = new_instance_id();
        let last = text
            .lines()
            .last()
            .map(str::to_owned)
            .or_else(|| last_line(&rotated(path, 1)));
        let head = match last.as_deref().and_then(ChainHead::after) {
            Some(head) => head,
            None => ChainHead::anchored(&instance),
        };
        file.seek(SeekFrom::End(0)).map_err(err(path))?;
        Ok(AuditLog {
            path: path.to_path_buf(),
            file,
            size: text.len() as u64,
            max_size,
            head,
            instance,
            observer: None,
        })
    }

    /// This run's instance id.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// The log's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The last record written: its `seq` and the SHA-256 of its line (the next record's `prev`),
    /// or `None` while the chain has no record. This is what the witness publishes: it commits to
    /// every record up to `seq`.
    pub fn last_record(&self) -> Option<(u64, String)> {
        let seq = self.head.seq.checked_sub(1)?;
        Some((seq, self.head.prev.clone()))
    }

    /// Hands every durable record to `tx` from now on (the Kubernetes Events publisher).
    pub fn observe(&mut self, tx: tokio::sync::mpsc::UnboundedSender<Observed>) {
        self.observer = Some(tx);
    }

    /// Appends one record, fsyncs it, and mirrors it as a `tracing` event (so it also shows in
    /// `kubectl logs`) and to the observer. Returns the record's `seq`.
    pub fn append(&mut self, bundle: Option<&str>, event: &AuditEvent) -> Result<u64, AuditError> {
        let seq = self.head.seq;
        let line = self
            .head
            .seal(&clock::now_rfc3339(), &self.instance, bundle, event);
        let mut bytes = line.clone().into_bytes();
        bytes.push(b'\n');
        self.file.write_all(&bytes).map_err(err(&self.path))?;
        self.file.sync_data().map_err(err(&self.path))?;
        self.size += bytes.len() as u64;
        tracing::info!(target: "certreload::audit", event = event.name(), bundle = bundle.unwrap_or("-"), seq, "{line}");
        if let Some(tx) = &self.observer {
            let _ = tx.send(Observed {
                bundle: bundle.map(str::to_string),
                event: event.clone(),
            });
        }
        if self.size > self.max_size {
            self.rotate()?;
        }
        Ok(seq)
    }

    /// Renames the full file to `.1` (shifting older ones) and starts a new one; the chain goes on.
    fn rotate(&mut self) -> Result<(), AuditError> {
        for n in (1..ROTATED_KEPT).rev() {
            let from = rotated(&self.path, n);
            if from.exists() {
                std::fs::rename(&from, rotated(&self.path, n + 1)).map_err(err(&from))?;
            }
        }
        std::fs::rename(&self.path, rotated(&self.path, 1)).map_err(err(&self.path))?;
        self.file = OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o640)
            .open(&self.path)
            .map_err(err(&self.path))?;
        if let Some(dir) = self.path.parent() {
            // Make the rename itself durable.
            if let Ok(d) = File::open(dir) {
                let _ = d.sync_all();
            }
        }
        self.size = 0;
        Ok(())
    }
}

/// `audit.jsonl.N`.
pub fn rotated(path: &Path, n: usize) -> PathBuf {
    let mut name = path.as_os_str().to_os_string();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

fn last_line(path: &Path) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()?
        .lines()
        .last()
        .map(str::to_owned)
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
}
