//! The hash chain that makes the audit log tamper-evident.
//!
//! Record *n* carries `prev`, the SHA-256 of the exact bytes of record *n−1*'s line; record 0
//! carries the SHA-256 of an anchor built from the random instance id it names. Every record also
//! carries `seq`, so a deleted, modified or reordered record breaks the chain at a place that can
//! be named. The chain continues across restarts and size rotations (the new file's first record
//! links to the last record of the rotated one), so `verify` takes all files, oldest first. As with
//! any hash chain without an external witness, a change to the very last record can only be seen
//! if its JSON no longer parses.

use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use thiserror::Error;

/// The `prev` of record 0 for `instance`.
pub fn anchor(instance: &str) -> String {
    hex::encode(Sha256::digest(format!(
        "certreload-audit-anchor:{instance}"
    )))
}

/// SHA-256 (hex) of a record's line, without its newline: the next record's `prev`.
pub fn link(line: &str) -> String {
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
    pub fn anchored(instance: &str) -> Self {
        ChainHead {
            seq: 0,
            prev: anchor(instance),
        }
    }

    /// The head after the existing last `line` of a log, or `None` if it is not a record.
    pub fn after(line: &str) -> Option<Self> {
        let v: Value = serde_json::from_str(line).ok()?;
        Some(ChainHead {
            seq: v.get("seq")?.as_u64()? + 1,
            prev: link(line),
        })
    }

    /// Serialises a record (`seq`, `ts`, `instance`, `bundle`, the event's fields, `prev`) and
    /// advances the head. Field order is fixed so the bytes are reproducible.
    pub fn seal(
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
        /// The file.
        path: PathBuf,
        /// The error.
        message: String,
    },
    /// A line is not a record.
    #[error("{path}:{line}: not an audit record (invalid JSON or missing seq/prev)")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
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
        /// The file.
        path: PathBuf,
        /// The line.
        line: usize,
    },
    /// The first record is not the start of a chain.
    #[error("the chain does not start at its anchor: first record is seq {found} at {path}:1 (records before it are missing; pass rotated files too, oldest first)")]
    NoAnchor {
        /// The seq found first.
        found: u64,
        /// The file.
        path: PathBuf,
    },
    /// No record at all.
    #[error("no audit records in the given files")]
    Empty,
}

/// What an intact chain contains.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerifySummary {
    /// Records checked.
    pub records: u64,
    /// Agent runs (instances) seen.
    pub instances: usize,
    /// Last seq.
    pub last_seq: u64,
}

/// Verifies the chain across `files`, given oldest first.
pub fn verify_files(files: &[PathBuf]) -> Result<VerifySummary, VerifyError> {
    let mut previous: Option<(u64, String, PathBuf, usize)> = None; // seq, raw line, file, line no
    let mut instances = std::collections::BTreeSet::new();
    let mut records = 0u64;
    for path in files {
        let text = std::fs::read_to_string(path).map_err(|e| VerifyError::Io {
            path: path.clone(),
            message: e.to_string(),
        })?;
        for (i, line) in text.lines().enumerate() {
            let line_no = i + 1;
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
            match &previous {
                None => {
                    if seq != 0 || prev != anchor(instance) {
                        return Err(VerifyError::NoAnchor {
                            found: seq,
                            path: path.clone(),
                        });
                    }
                }
                Some((pseq, pline, ppath, pline_no)) => {
                    if seq != pseq + 1 {
                        return Err(VerifyError::Missing {
                            expected: pseq + 1,
                            found: seq,
                            path: path.clone(),
                            line: line_no,
                        });
                    }
                    if prev != link(pline) {
                        return Err(VerifyError::Modified {
                            seq: *pseq,
                            path: ppath.clone(),
                            line: *pline_no,
                            next_path: path.clone(),
                            next_line: line_no,
                        });
                    }
                }
            }
            records += 1;
            previous = Some((seq, line.to_string(), path.clone(), line_no));
        }
    }
    let (last_seq, ..) = previous.ok_or(VerifyError::Empty)?;
    Ok(VerifySummary {
        records,
        instances: instances.len(),
        last_seq,
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
        let (path, _) = write_chain(dir.path(), 5);
        assert_eq!(
            verify_file(&path),
            Ok(VerifySummary {
                records: 5,
                instances: 1,
                last_seq: 4
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
}
