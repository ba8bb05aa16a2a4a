//! The hash chain that makes the audit log tamper-evident.
//!
//! Record *n* carries `prev`, the SHA-256 of the exact bytes of record *n−1*'s line; record 0
//! carries the SHA-256 of an anchor built from the random instance id it names. Every record also
//! carries `seq`, so a deleted, modified or reordered record breaks the chain at a place that can
//! be named. The chain continues across restarts and size rotations (the new file's first record
//! links to the last record of the rotated one), so `verify` takes all files, oldest first. As with
//! any hash chain without an external witness, a change to the very last record can only be seen
//! if its JSON no longer parses; likewise a log cut at a line boundary (its last records removed)
//! or a chain re-forged whole from a new anchor verifies: anyone who can write the file can
//! recompute every hash. Only a witness outside the node, holding the chain head, detects those.
//!
//! A `log_replaced` record (the agent found its audit file deleted or replaced and continued the
//! chain in a new file) is where verification may resume after records it cannot see: it repeats
//! the seq and hash it follows, so a file that starts with one verifies, and the summary names
//! the discontinuity and the seqs missing from the given files rather than calling them intact.

use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use thiserror::Error;

/// The `prev` of record 0 for `instance`.
pub(crate) fn anchor(instance: &str) -> String {
    hex::encode(Sha256::digest(format!(
        "certreload-audit-anchor:{instance}"
    )))
}

/// SHA-256 (hex) of a record's line, without its newline: the next record's `prev`.
pub(crate) fn link(line: &str) -> String {
    hex::encode(Sha256::digest(line.as_bytes()))
}

/// The position in the chain the next record takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainHead {
    /// Next record's `seq`.
    pub seq: u64,
    /// Next record's `prev`.
    pub prev: String,
}

impl ChainHead {
    /// A new chain anchored in `instance`.
    pub(crate) fn anchored(instance: &str) -> Self {
        ChainHead {
            seq: 0,
            prev: anchor(instance),
        }
    }

    /// The head after the existing last `line` of a log, or `None` if it is not a record (or its
    /// seq is `u64::MAX`, which no record can follow: found by fuzzing, it overflowed).
    pub fn after(line: &str) -> Option<Self> {
        let v: Value = serde_json::from_str(line).ok()?;
        Some(ChainHead {
            seq: v.get("seq")?.as_u64()?.checked_add(1)?,
            prev: link(line),
        })
    }

    /// Serialises a record (`seq`, `ts`, `instance`, `bundle`, the event's fields, `prev`) and
    /// advances the head. Field order is fixed so the bytes are reproducible.
    pub(crate) fn seal(
        &mut self,
        ts: &str,
        instance: &str,
        bundle: Option<&str>,
        event: &impl Serialize,
    ) -> String {
        let mut record = Map::new();
        record.insert("seq".into(), self.seq.into());
        record.insert("ts".into(), ts.into());
        record.insert("instance".into(), instance.into());
        record.insert(
            "bundle".into(),
            bundle.map(Value::from).unwrap_or(Value::Null),
        );
        if let Ok(Value::Object(fields)) = serde_json::to_value(event) {
            record.extend(fields);
        }
        record.insert("prev".into(), self.prev.clone().into());
        let line = Value::Object(record).to_string();
        self.seq += 1;
        self.prev = link(&line);
        line
    }
}

/// Where a verification stopped.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum VerifyError {
    /// A file cannot be read.
    #[error("{path}: {message}")]
    Io {
        /// The file that could not be read, as it was given.
        path: PathBuf,
        /// The I/O error as text, so that a `VerifyError` compares equal in tests.
        message: String,
    },
    /// A line is not a record.
    #[error("{path}:{line}: not an audit record (invalid JSON or missing seq/prev)")]
    Malformed {
        /// The file holding the line.
        path: PathBuf,
        /// 1-based line.
        line: usize,
    },
    /// A line is not UTF-8 (so it cannot be JSON): named by its first invalid byte.
    #[error(
        "{path}:{line}: not an audit record (not UTF-8: invalid byte at file offset {offset})"
    )]
    NotUtf8 {
        /// The file holding the line.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// Byte offset in the file of the first invalid byte.
        offset: u64,
    },
    /// A record's content no longer matches the link the next record holds.
    #[error("record seq {seq} ({path}:{line}) was modified: record seq {} ({next_path}:{next_line}) holds a different hash of it", seq + 1)]
    Modified {
        /// The modified record's seq.
        seq: u64,
        /// Its file.
        path: PathBuf,
        /// Its line.
        line: usize,
        /// The file of the record that links to it.
        next_path: PathBuf,
        /// The line of the record that links to it.
        next_line: usize,
    },
    /// A record is absent (deleted) or out of order.
    #[error(
        "record seq {expected} is missing or out of order: found seq {found} at {path}:{line}"
    )]
    Missing {
        /// The seq that should be here.
        expected: u64,
        /// The seq found.
        found: u64,
        /// The file of the record found in its place.
        path: PathBuf,
        /// Its 1-based line.
        line: usize,
    },
    /// The first record is not the start of a chain.
    #[error("the chain does not start at its anchor: first record is seq {found} at {path}:1 (records before it are missing; pass rotated files too, oldest first)")]
    NoAnchor {
        /// The seq found first.
        found: u64,
        /// The first file given, where the chain should start.
        path: PathBuf,
    },
    /// No record at all.
    #[error("no audit records in the given files")]
    Empty,
}

/// Seqs `first..=last`, both included.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct SeqRange {
    /// First seq.
    pub first: u64,
    /// Last seq.
    pub last: u64,
}

/// A `log_replaced` record: the agent found its audit file deleted or replaced and went on in a
/// new one. Listed so that a lost file is said, never passed over.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Discontinuity {
    /// The seq of the `log_replaced` record.
    pub seq: u64,
    /// Its file.
    pub path: PathBuf,
    /// Its line.
    pub line: usize,
    /// `deleted` or `replaced`.
    pub reason: String,
    /// Records before it that are not in the given files (`None`: the chain is continuous
    /// across it, e.g. the replaced file was passed too).
    pub missing: Option<SeqRange>,
}

/// What a verified chain contains.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerifySummary {
    /// Records checked.
    pub records: u64,
    /// Agent runs (instances) seen.
    pub instances: usize,
    /// First seq (0 unless the files start after a discontinuity).
    pub first_seq: u64,
    /// Last seq.
    pub last_seq: u64,
    /// SHA-256 of the last record's line: the `prev` the next record must carry (what a witness
    /// compares).
    pub last_hash: String,
    /// Every `log_replaced` record met, in order.
    pub discontinuities: Vec<Discontinuity>,
}

impl VerifySummary {
    /// True when every record from the anchor to the last is present and linked: no
    /// discontinuity hides missing records.
    pub(crate) fn intact(&self) -> bool {
        self.discontinuities.iter().all(|d| d.missing.is_none())
    }
}

impl std::fmt::Display for VerifySummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let gaps = self
            .discontinuities
            .iter()
            .filter(|d| d.missing.is_some())
            .count();
        if gaps == 0 {
            write!(f, "intact: ")?;
        } else {
            write!(
                f,
                "verified, with {gaps} discontinuit{}: ",
                if gaps == 1 { "y" } else { "ies" }
            )?;
        }
        write!(
            f,
            "{} records from {} agent run(s), last seq {}",
            self.records, self.instances, self.last_seq
        )?;
        for d in &self.discontinuities {
            let at = format!("{}:{}", d.path.display(), d.line);
            match d.missing {
                Some(SeqRange { first: 0, last }) if d.seq == self.first_seq => write!(
                    f,
                    "; starts after a discontinuity at seq {last}: the agent recorded at seq {} ({at}) that its audit file had been {}, and records 0 to {last} are not in these files",
                    d.seq, d.reason
                )?,
                Some(SeqRange { first, last }) => write!(
                    f,
                    "; discontinuity at seq {last}: records {first} to {last} are not in these files, and the agent recorded at seq {} ({at}) that its audit file had been {}",
                    d.seq, d.reason
                )?,
                None => write!(
                    f,
                    "; the audit file was {} before seq {} ({at}), chain continuous across it",
                    d.reason, d.seq
                )?,
            }
        }
        Ok(())
    }
}

/// The seq and hash a `log_replaced` record says it follows, if `v` is one and they agree with
/// its own `seq` and `prev`.
fn replaced_after(v: &Value, seq: u64, prev: &str) -> Option<(u64, String)> {
    if v.get("event").and_then(Value::as_str) != Some("log_replaced") {
        return None;
    }
    let previous_seq = v.get("previous_seq").and_then(Value::as_u64)?;
    let previous_hash = v.get("previous_hash").and_then(Value::as_str)?;
    let reason = v.get("reason").and_then(Value::as_str)?;
    (previous_seq.checked_add(1) == Some(seq) && previous_hash == prev)
        .then(|| (previous_seq, reason.to_string()))
}

/// Verifies the chain across `files`, given oldest first: each file's records in order, each
/// linked to the one before it, then the summary of what was walked.
pub(crate) fn verify_files(files: &[PathBuf]) -> Result<VerifySummary, VerifyError> {
    let mut walk = ChainWalk::default();
    for path in files {
        walk.file(path)?;
    }
    walk.summary()
}

/// What a walk along the chain has seen so far: the summary's counts and the record the next one
/// must link to. The chain crosses file boundaries, so this outlives each file.
#[derive(Default)]
struct ChainWalk {
    previous: Option<Linked>,
    instances: std::collections::BTreeSet<String>,
    records: u64,
    first_seq: u64,
    discontinuities: Vec<Discontinuity>,
}

/// The last record checked: the next must carry its seq + 1 and the hash of its exact bytes, and
/// an error names where it is.
struct Linked {
    seq: u64,
    raw: Vec<u8>,
    path: PathBuf,
    line: usize,
}

impl ChainWalk {
    /// Checks one file's lines in order. An empty file holds no record (and is not malformed); a
    /// final newline ends the last record rather than starting an empty one.
    fn file(&mut self, path: &Path) -> Result<(), VerifyError> {
        let bytes = std::fs::read(path).map_err(|e| VerifyError::Io {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        if bytes.is_empty() {
            return Ok(());
        }
        let body = bytes.strip_suffix(b"\n").unwrap_or(&bytes);
        let mut offset = 0usize;
        for (i, raw) in body.split(|&b| b == b'\n').enumerate() {
            let record = Record::parse(raw, path, i + 1, offset)?;
            offset += raw.len() + 1;
            self.record(raw, record)?;
        }
        Ok(())
    }

    /// Checks one record against the one before it (or, for the first, against the anchor) and
    /// makes it the one the next must link to.
    fn record(&mut self, raw: &[u8], record: Record) -> Result<(), VerifyError> {
        self.instances.insert(record.instance.clone());
        let discontinuity = match &self.previous {
            None => {
                self.first_seq = record.seq;
                check_start(&record)?
            }
            Some(previous) => check_link(previous, &record)?,
        };
        self.discontinuities.extend(discontinuity);
        self.records += 1;
        self.previous = Some(Linked {
            seq: record.seq,
            raw: raw.to_vec(),
            path: record.path,
            line: record.line,
        });
        Ok(())
    }

    /// The summary of a walk that met at least one record; `Empty` otherwise, since no record
    /// proves nothing.
    fn summary(self) -> Result<VerifySummary, VerifyError> {
        let last = self.previous.ok_or(VerifyError::Empty)?;
        Ok(VerifySummary {
            records: self.records,
            instances: self.instances.len(),
            first_seq: self.first_seq,
            last_seq: last.seq,
            last_hash: hex::encode(Sha256::digest(&last.raw)),
            discontinuities: self.discontinuities,
        })
    }
}

/// One line of a log, parsed as far as the chain checks need: owned, so that it can outlive the
/// file's bytes as the record the next one links to.
struct Record {
    seq: u64,
    prev: String,
    instance: String,
    path: PathBuf,
    /// 1-based line.
    line: usize,
    /// The seq and reason a `log_replaced` record says it follows, when they agree with its own.
    replaced: Option<(u64, String)>,
    /// The reason of any `log_replaced` record: one at seq 0 says the file was lost before any
    /// record, and has nothing to follow.
    replaced_reason: Option<String>,
}

impl Record {
    /// Parses the line `raw` at `line` (1-based), starting at byte `offset` of the file: not
    /// UTF-8, not JSON or without `seq`, `prev` or `instance` is an error naming the place.
    fn parse(raw: &[u8], path: &Path, line: usize, offset: usize) -> Result<Self, VerifyError> {
        let text = std::str::from_utf8(raw).map_err(|e| VerifyError::NotUtf8 {
            path: path.to_path_buf(),
            line,
            offset: (offset + e.valid_up_to()) as u64,
        })?;
        let malformed = || VerifyError::Malformed {
            path: path.to_path_buf(),
            line,
        };
        let v: Value = serde_json::from_str(text).map_err(|_| malformed())?;
        let field = |name: &str| v.get(name).and_then(Value::as_str);
        let seq = v.get("seq").and_then(Value::as_u64).ok_or_else(malformed)?;
        let prev = field("prev").ok_or_else(malformed)?;
        let instance = field("instance").ok_or_else(malformed)?;
        let replaced_reason = field("reason")
            .filter(|_| field("event") == Some("log_replaced"))
            .map(str::to_string);
        Ok(Record {
            seq,
            prev: prev.to_string(),
            instance: instance.to_string(),
            path: path.to_path_buf(),
            line,
            replaced: replaced_after(&v, seq, prev),
            replaced_reason,
        })
    }

    /// The discontinuity this record marks, with the records `missing` before it.
    fn discontinuity(&self, missing: Option<SeqRange>, reason: &str) -> Discontinuity {
        Discontinuity {
            seq: self.seq,
            path: self.path.clone(),
            line: self.line,
            reason: reason.to_string(),
            missing,
        }
    }
}

/// The first record must be where a chain starts: seq 0 at its anchor, or a `log_replaced` record
/// that says which records before it are not in the files.
fn check_start(record: &Record) -> Result<Option<Discontinuity>, VerifyError> {
    if record.seq == 0 && record.prev == anchor(&record.instance) {
        // A normal start (a log_replaced here: deleted before any record).
        Ok(record
            .replaced_reason
            .as_deref()
            .map(|reason| record.discontinuity(None, reason)))
    } else if let Some((previous_seq, reason)) = &record.replaced {
        let missing = SeqRange {
            first: 0,
            last: *previous_seq,
        };
        Ok(Some(record.discontinuity(Some(missing), reason)))
    } else {
        Err(VerifyError::NoAnchor {
            found: record.seq,
            path: record.path.clone(),
        })
    }
}

/// A later record must follow `previous`: the next seq carrying the hash of its line, or a
/// `log_replaced` record that says which records between them are not in the files.
fn check_link(previous: &Linked, record: &Record) -> Result<Option<Discontinuity>, VerifyError> {
    // checked: a forged record at seq u64::MAX overflowed `previous.seq + 1` (fuzzing).
    let expected = previous.seq.checked_add(1);
    if expected == Some(record.seq) {
        if record.prev != hex::encode(Sha256::digest(&previous.raw)) {
            return Err(VerifyError::Modified {
                seq: previous.seq,
                path: previous.path.clone(),
                line: previous.line,
                next_path: record.path.clone(),
                next_line: record.line,
            });
        }
        Ok(record
            .replaced
            .as_ref()
            .map(|(_, reason)| record.discontinuity(None, reason)))
    } else if let Some((previous_seq, reason)) = record
        .replaced
        .as_ref()
        .filter(|(previous_seq, _)| *previous_seq > previous.seq)
    {
        let missing = SeqRange {
            first: previous.seq + 1,
            last: *previous_seq,
        };
        Ok(Some(record.discontinuity(Some(missing), reason)))
    } else {
        Err(VerifyError::Missing {
            expected: expected.unwrap_or(u64::MAX),
            found: record.seq,
            path: record.path.clone(),
            line: record.line,
        })
    }
}

/// Convenience for one file.
pub fn verify_file(path: &Path) -> Result<VerifySummary, VerifyError> {
    verify_files(&[path.to_path_buf()])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_chain(dir: &Path, n: u64) -> (PathBuf, Vec<String>) {
        let mut head = ChainHead::anchored("inst-1");
        let lines: Vec<String> = (0..n)
            .map(|i| {
                head.seal(
                    "2026-11-28T00:00:00Z",
                    "inst-1",
                    Some("b"),
                    &serde_json::json!({"event": "test", "i": i}),
                )
            })
            .collect();
        let path = dir.join("audit.jsonl");
        std::fs::write(&path, lines.join("\n") + "\n").expect("write");
        (path, lines)
    }

    fn rewrite(path: &Path, lines: &[String]) {
        std::fs::write(path, lines.join("\n") + "\n").expect("write");
    }

    #[test]
    fn an_intact_chain_verifies() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (path, lines) = write_chain(dir.path(), 5);
        assert_eq!(
            verify_file(&path),
            Ok(VerifySummary {
                records: 5,
                instances: 1,
                first_seq: 0,
                last_seq: 4,
                last_hash: link(&lines[4]),
                discontinuities: Vec::new(),
            })
        );
    }

    #[test]
    fn a_modified_record_is_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (path, mut lines) = write_chain(dir.path(), 5);
        lines[2] = lines[2].replace("\"i\":2", "\"i\":7");
        rewrite(&path, &lines);
        match verify_file(&path) {
            Err(VerifyError::Modified {
                seq: 2,
                line: 3,
                next_line: 4,
                ..
            }) => {}
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_deleted_record_is_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (path, mut lines) = write_chain(dir.path(), 5);
        lines.remove(3);
        rewrite(&path, &lines);
        assert!(matches!(
            verify_file(&path),
            Err(VerifyError::Missing {
                expected: 3,
                found: 4,
                line: 4,
                ..
            })
        ));
        lines.remove(0);
        rewrite(&path, &lines);
        assert!(matches!(
            verify_file(&path),
            Err(VerifyError::NoAnchor { found: 1, .. })
        ));
    }

    #[test]
    fn reordered_records_are_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (path, mut lines) = write_chain(dir.path(), 5);
        lines.swap(1, 2);
        rewrite(&path, &lines);
        assert!(matches!(
            verify_file(&path),
            Err(VerifyError::Missing {
                expected: 1,
                found: 2,
                line: 2,
                ..
            })
        ));
    }

    #[test]
    fn a_forged_record_with_a_recomputed_seq_still_breaks_the_next_link() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (path, mut lines) = write_chain(dir.path(), 3);
        let forged = lines[1].replace("\"bundle\":\"b\"", "\"bundle\":\"x\"");
        lines[1] = forged;
        rewrite(&path, &lines);
        assert!(matches!(
            verify_file(&path),
            Err(VerifyError::Modified { seq: 1, .. })
        ));
    }

    /// `n` records, then a `log_replaced` one continuing them (as the agent writes it when it
    /// finds its file deleted), then one more; returns the lines.
    fn chain_with_replacement(n: u64) -> Vec<String> {
        let mut head = ChainHead::anchored("inst-1");
        let mut lines: Vec<String> = (0..n)
            .map(|i| {
                head.seal(
                    "t",
                    "inst-1",
                    None,
                    &serde_json::json!({"event": "test", "i": i}),
                )
            })
            .collect();
        let replaced = serde_json::json!({
            "event": "log_replaced",
            "previous_seq": n - 1,
            "previous_hash": head.prev,
            "reason": "deleted",
        });
        lines.push(head.seal("t", "inst-1", None, &replaced));
        lines.push(head.seal("t", "inst-1", None, &serde_json::json!({"event": "test"})));
        lines
    }

    #[test]
    fn a_file_starting_with_log_replaced_verifies_and_says_what_is_missing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let lines = chain_with_replacement(5);
        let old = dir.path().join("old");
        let new = dir.path().join("new");
        rewrite(&old, &lines[..5]);
        rewrite(&new, &lines[5..]);
        // The new file alone: starts after the discontinuity.
        let s = verify_file(&new).expect("verifies");
        assert_eq!((s.first_seq, s.last_seq, s.records), (5, 6, 2));
        assert!(!s.intact());
        assert_eq!(
            s.discontinuities[0].missing,
            Some(SeqRange { first: 0, last: 4 })
        );
        assert!(
            s.to_string().starts_with("verified, with 1 discontinuity"),
            "{s}"
        );
        assert!(
            s.to_string()
                .contains("starts after a discontinuity at seq 4"),
            "{s}"
        );
        // With the lost file found again: continuous, the replacement still listed.
        let s = verify_files(&[old.clone(), new.clone()]).expect("verifies");
        assert!(s.intact());
        assert!(s.to_string().starts_with("intact"), "{s}");
        assert_eq!(s.discontinuities.len(), 1);
        // With only part of it: the gap is named.
        rewrite(&old, &lines[..3]);
        let s = verify_files(&[old, new]).expect("verifies");
        assert_eq!(
            s.discontinuities[0].missing,
            Some(SeqRange { first: 3, last: 4 })
        );
        assert!(
            s.to_string()
                .contains("records 3 to 4 are not in these files"),
            "{s}"
        );
    }

    #[test]
    fn a_log_replaced_record_that_does_not_follow_what_it_claims_is_no_excuse() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut lines = chain_with_replacement(5);
        // Claims to follow seq 3 while its own seq says 5: not a discontinuity, a gap.
        lines[5] = lines[5].replace("\"previous_seq\":4", "\"previous_seq\":3");
        let path = dir.path().join("audit.jsonl");
        rewrite(&path, &lines[5..]);
        assert!(matches!(
            verify_file(&path),
            Err(VerifyError::NoAnchor { found: 5, .. })
        ));
        rewrite(
            &path,
            &lines[..3]
                .iter()
                .chain(&lines[5..])
                .cloned()
                .collect::<Vec<_>>(),
        );
        assert!(matches!(
            verify_file(&path),
            Err(VerifyError::Missing {
                expected: 3,
                found: 5,
                ..
            })
        ));
    }

    #[test]
    fn a_line_that_is_not_utf8_is_named_with_its_offset() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (path, lines) = write_chain(dir.path(), 3);
        let mut bytes = format!("{}\n", lines[0]).into_bytes();
        let offset = bytes.len() as u64 + 2;
        bytes.extend_from_slice(b"{\"\xC3(\n");
        std::fs::write(&path, bytes).expect("write");
        assert_eq!(
            verify_file(&path),
            Err(VerifyError::NotUtf8 {
                path: path.clone(),
                line: 2,
                offset
            })
        );
    }
}
