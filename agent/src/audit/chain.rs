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

/// Verifies the chain across `files`, given oldest first.
pub(crate) fn verify_files(files: &[PathBuf]) -> Result<VerifySummary, VerifyError> {
    let mut previous: Option<(u64, Vec<u8>, PathBuf, usize)> = None; // seq, raw line, file, line no
    let mut instances = std::collections::BTreeSet::new();
    let mut records = 0u64;
    let mut first_seq = 0u64;
    let mut discontinuities = Vec::new();
    for path in files {
        let bytes = std::fs::read(path).map_err(|e| VerifyError::Io {
            path: path.clone(),
            message: e.to_string(),
        })?;
        let mut offset = 0usize;
        let body = bytes.strip_suffix(b"\n").unwrap_or(&bytes);
        for (i, raw) in body.split(|&b| b == b'\n').enumerate() {
            let line_no = i + 1;
            let line_offset = offset;
            offset += raw.len() + 1;
            if bytes.is_empty() {
                break;
            }
            let line = std::str::from_utf8(raw).map_err(|e| VerifyError::NotUtf8 {
                path: path.clone(),
                line: line_no,
                offset: (line_offset + e.valid_up_to()) as u64,
            })?;
            let malformed = || VerifyError::Malformed {
                path: path.clone(),
                line: line_no,
            };
            let v: Value = serde_json::from_str(line).map_err(|_| malformed())?;
            let seq = v.get("seq").and_then(Value::as_u64).ok_or_else(malformed)?;
            let prev = v
                .get("prev")
                .and_then(Value::as_str)
                .ok_or_else(malformed)?;
            let instance = v
                .get("instance")
                .and_then(Value::as_str)
                .ok_or_else(malformed)?;
            instances.insert(instance.to_string());
            let replaced = replaced_after(&v, seq, prev);
            let mut discontinuity = |missing: Option<SeqRange>, reason: &str| {
                discontinuities.push(Discontinuity {
                    seq,
                    path: path.clone(),
                    line: line_no,
                    reason: reason.to_string(),
                    missing,
                });
            };
            match (&previous, replaced) {
                (None, replaced) => {
                    first_seq = seq;
                    if seq == 0 && prev == anchor(instance) {
                        // A normal start (a log_replaced here: deleted before any record).
                        if let Some(reason) = v.get("reason").and_then(Value::as_str) {
                            if v.get("event").and_then(Value::as_str) == Some("log_replaced") {
                                discontinuity(None, reason);
                            }
                        }
                    } else if let Some((previous_seq, reason)) = replaced {
                        discontinuity(
                            Some(SeqRange {
                                first: 0,
                                last: previous_seq,
                            }),
                            &reason,
                        );
                    } else {
                        return Err(VerifyError::NoAnchor {
                            found: seq,
                            path: path.clone(),
                        });
                    }
                }
                (Some((pseq, pline, ppath, pline_no)), replaced) => {
                    // checked: a forged record at seq u64::MAX overflowed `pseq + 1` (fuzzing).
                    let expected = pseq.checked_add(1);
                    if expected == Some(seq) {
                        if prev != hex::encode(Sha256::digest(pline)) {
                            return Err(VerifyError::Modified {
                                seq: *pseq,
                                path: ppath.clone(),
                                line: *pline_no,
                                next_path: path.clone(),
                                next_line: line_no,
                            });
                        }
                        if let Some((_, reason)) = replaced {
                            discontinuity(None, &reason);
                        }
                    } else if let Some((previous_seq, reason)) =
                        replaced.filter(|(previous_seq, _)| previous_seq > pseq)
                    {
                        discontinuity(
                            Some(SeqRange {
                                first: pseq + 1,
                                last: previous_seq,
                            }),
                            &reason,
                        );
                    } else {
                        return Err(VerifyError::Missing {
                            expected: expected.unwrap_or(u64::MAX),
                            found: seq,
                            path: path.clone(),
                            line: line_no,
                        });
                    }
                }
            }
            records += 1;
            previous = Some((seq, raw.to_vec(), path.clone(), line_no));
        }
    }
    let (last_seq, last_line, ..) = previous.ok_or(VerifyError::Empty)?;
    Ok(VerifySummary {
        records,
        instances: instances.len(),
        first_seq,
        last_seq,
        last_hash: hex::encode(Sha256::digest(&last_line)),
        discontinuities,
    })
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
