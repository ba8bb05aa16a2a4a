//! Turns hints into confirmed changes by re-reading the files and comparing with what was last seen.
//!
//! This is where kernel noise becomes truth: a hint for `tls.crt` in another directory, a rename
//! that left content identical, or a write still in progress produce nothing. Only a different
//! content hash or a different target is reported.

use std::{
    fs::File,
    io::{self, Read},
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use sha2::{Digest, Sha256};

use super::{
    change::{ChangeKind, ConfirmedChange},
    hint::Hint,
    watchset::WatchSet,
};
use crate::clock;

/// Largest file the monitor hashes; anything larger is reported by its size, not its content
/// (certificate material is kilobytes; a multi-megabyte "certificate" is itself an anomaly).
pub const MAX_HASHED_BYTES: u64 = 64 * 1024 * 1024;

/// What a watched path's content is, as far as the agent can tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    /// SHA-256 of the bytes.
    Sha256([u8; 32]),
    /// Something is there but cannot be read as a file (a directory, a symlink loop, no
    /// permission, too large to hash): still a change the layers above must judge.
    Unreadable(String),
}

/// What the agent last saw at a watched path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileState {
    /// The file the path resolved to.
    pub resolved: PathBuf,
    /// Device of the file (0 when it cannot even be stat'ed, e.g. a symlink loop).
    pub dev: u64,
    /// Inode of the file.
    pub ino: u64,
    /// Its content.
    pub content: Content,
}

impl FileState {
    /// Reads the file at `path` (following symlinks). `None` when nothing is there.
    pub fn read(path: &Path) -> Option<FileState> {
        let resolved = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        let unreadable = |error: String| {
            let meta = std::fs::metadata(path).ok();
            Some(FileState {
                resolved: resolved.clone(),
                dev: meta.as_ref().map_or(0, |m| m.dev()),
                ino: meta.as_ref().map_or(0, |m| m.ino()),
                content: Content::Unreadable(error),
            })
        };
        let mut file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return None,
            Err(e) => return unreadable(e.to_string()),
        };
        let meta = match file.metadata() {
            Ok(m) => m,
            Err(e) => return unreadable(e.to_string()),
        };
        if meta.is_dir() {
            return unreadable("is a directory".into());
        }
        let mut hasher = Sha256::new();
        let mut buf = [0u8; 16 * 1024];
        let mut total = 0u64;
        loop {
            let n = match file.read(&mut buf) {
                Ok(n) => n,
                Err(e) => return unreadable(e.to_string()),
            };
            if n == 0 {
                break;
            }
            total += n as u64;
            if total > MAX_HASHED_BYTES {
                return unreadable(format!("larger than {MAX_HASHED_BYTES} bytes"));
            }
            hasher.update(&buf[..n]);
        }
        Some(FileState {
            resolved,
            dev: meta.dev(),
            ino: meta.ino(),
            content: Content::Sha256(hasher.finalize().into()),
        })
    }

    /// SHA-256 hex, when readable.
    pub fn sha256_hex(&self) -> Option<String> {
        match &self.content {
            Content::Sha256(h) => Some(hex::encode(h)),
            Content::Unreadable(_) => None,
        }
    }

    /// Why it cannot be read, when it cannot.
    pub fn error(&self) -> Option<String> {
        match &self.content {
            Content::Sha256(_) => None,
            Content::Unreadable(e) => Some(e.clone()),
        }
    }

    fn same_file(&self, other: &FileState) -> bool {
        self.dev == other.dev && self.ino == other.ino
    }
}

/// Classifies the move from `old` to `new`; `None` when nothing a consumer cares about changed.
pub fn classify(old: Option<&FileState>, new: Option<&FileState>) -> Option<ChangeKind> {
    match (old, new) {
        (None, None) => None,
        (None, Some(_)) => Some(ChangeKind::Created),
        (Some(_), None) => Some(ChangeKind::Removed),
        (Some(a), Some(b)) if a.content != b.content => Some(if a.same_file(b) {
            ChangeKind::Modified
        } else {
            ChangeKind::Replaced
        }),
        // Same bytes: only a new target counts (a symlink swap to identical content is still a
        // rotation someone performed); a new inode under the same name with the same bytes is not.
        (Some(a), Some(b)) if a.resolved != b.resolved => Some(ChangeKind::Replaced),
        _ => None,
    }
}

/// Last known state of every watched path, and the comparison that yields confirmed changes.
#[derive(Debug)]
pub struct Confirmer {
    states: Vec<Option<FileState>>,
}

impl Confirmer {
    /// Takes the initial snapshot: what is there at start is the baseline, not a change.
    pub fn new(watch: &WatchSet) -> Self {
        let states = watch
            .paths()
            .iter()
            .map(|p| FileState::read(&p.absolute))
            .collect();
        Confirmer { states }
    }

    /// The state last seen for path `index`.
    pub fn state(&self, index: usize) -> Option<&FileState> {
        self.states.get(index).and_then(Option::as_ref)
    }

    /// Re-reads the paths `hint` concerns, except those `busy` says are still being written, and
    /// returns the real changes.
    pub fn check(
        &mut self,
        watch: &WatchSet,
        hint: &Hint,
        busy: impl Fn(&Path) -> bool,
    ) -> Vec<ConfirmedChange> {
        let indexes = watch.resolve(&hint.scope);
        self.check_paths(watch, &indexes, hint, busy)
    }

    /// Like [`Confirmer::check`] for an explicit list of path indexes (the caller has already
    /// decided which hint each path is attributed to).
    pub fn check_paths(
        &mut self,
        watch: &WatchSet,
        indexes: &[usize],
        hint: &Hint,
        busy: impl Fn(&Path) -> bool,
    ) -> Vec<ConfirmedChange> {
        let mut changes = Vec::new();
        for &i in indexes {
            let path = &watch.paths()[i];
            if busy(&path.absolute) {
                tracing::debug!(path = %path.given.display(), "still open for writing; waiting for close");
                continue;
            }
            let new = FileState::read(&path.absolute);
            if let Some(error) = new.as_ref().and_then(FileState::error) {
                tracing::warn!(path = %path.given.display(), %error, "watched path cannot be read");
            }
            let Some(kind) = classify(self.states[i].as_ref(), new.as_ref()) else {
                self.states[i] = new;
                continue;
            };
            let latency_us = hint
                .kernel_ts_ns
                .map(|ts| clock::monotonic_ns().saturating_sub(ts) / 1000);
            changes.push(ConfirmedChange {
                ts: clock::now_rfc3339(),
                path: path.given.clone(),
                kind,
                source: hint.source,
                writer: hint.writer.clone(),
                sha256: new.as_ref().and_then(FileState::sha256_hex),
                error: new.as_ref().and_then(FileState::error),
                latency_us,
                resolved: new.as_ref().map(|s| s.resolved.clone()),
                operation: hint.operation,
            });
            self.states[i] = new;
        }
        changes
    }
}

#[cfg(test)]
mod tests {
    use std::ffi::OsString;

    use super::*;
    use crate::monitor::hint::{Scope, Source};

    fn hint(names: &[&str]) -> Hint {
        Hint {
            scope: Scope::Names(names.iter().map(OsString::from).collect()),
            source: Source::Resync,
            writer: None,
            kernel_ts_ns: None,
            operation: "test",
        }
    }

    #[test]
    fn reports_modification_replacement_removal_and_creation() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("tls.crt");
        std::fs::write(&path, "A").expect("write");
        let watch = WatchSet::new(std::slice::from_ref(&path));
        let mut c = Confirmer::new(&watch);
        let never_busy = |_: &Path| false;

        assert!(
            c.check(&watch, &hint(&["tls.crt"]), never_busy).is_empty(),
            "no change yet"
        );

        std::fs::write(&path, "B").expect("write");
        let ch = c.check(&watch, &hint(&["tls.crt"]), never_busy);
        assert_eq!(ch.len(), 1);
        assert_eq!(ch[0].kind, ChangeKind::Modified);
        assert_eq!(
            ch[0].sha256.as_deref(),
            Some(hex::encode(Sha256::digest(b"B")).as_str())
        );

        let tmp = dir.path().join("tmp");
        std::fs::write(&tmp, "C").expect("write");
        std::fs::rename(&tmp, &path).expect("rename");
        assert_eq!(
            c.check(&watch, &hint(&["tls.crt"]), never_busy)[0].kind,
            ChangeKind::Replaced
        );

        std::fs::remove_file(&path).expect("rm");
        let ch = c.check(&watch, &hint(&["tls.crt"]), never_busy);
        assert_eq!(ch[0].kind, ChangeKind::Removed);
        assert_eq!(ch[0].sha256, None);

        std::fs::write(&path, "D").expect("write");
        assert_eq!(
            c.check(&watch, &hint(&["tls.crt"]), never_busy)[0].kind,
            ChangeKind::Created
        );
    }

    #[test]
    fn ignores_hints_for_other_names_and_busy_paths() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("tls.key");
        std::fs::write(&path, "A").expect("write");
        let watch = WatchSet::new(std::slice::from_ref(&path));
        let mut c = Confirmer::new(&watch);
        std::fs::write(&path, "B").expect("write");
        assert!(c.check(&watch, &hint(&["other.key"]), |_| false).is_empty());
        assert!(
            c.check(&watch, &hint(&["tls.key"]), |_| true).is_empty(),
            "busy path is deferred"
        );
        assert_eq!(c.check(&watch, &hint(&["tls.key"]), |_| false).len(), 1);
    }

    #[test]
    fn a_directory_or_loop_in_place_of_the_file_is_a_change() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("tls.crt");
        std::fs::write(&path, "A").expect("write");
        let watch = WatchSet::new(std::slice::from_ref(&path));
        let mut c = Confirmer::new(&watch);
        std::fs::remove_file(&path).expect("rm");
        std::fs::create_dir(&path).expect("mkdir");
        let ch = c.check(&watch, &hint(&["tls.crt"]), |_| false);
        assert_eq!(ch.len(), 1);
        assert_eq!(
            (ch[0].sha256.as_deref(), ch[0].error.as_deref()),
            (None, Some("is a directory"))
        );
        std::fs::remove_dir(&path).expect("rmdir");
        std::os::unix::fs::symlink(&path, &path).expect("self loop");
        let ch = c.check(&watch, &hint(&["tls.crt"]), |_| false);
        assert!(
            ch[0]
                .error
                .as_deref()
                .is_some_and(|e| e.contains("symbolic links")),
            "{ch:?}"
        );
    }

    #[test]
    fn identical_content_under_a_new_inode_is_not_a_change() {
        let a = FileState {
            resolved: "/x".into(),
            dev: 1,
            ino: 1,
            content: Content::Sha256([1; 32]),
        };
        let b = FileState {
            ino: 2,
            ..a.clone()
        };
        assert_eq!(classify(Some(&a), Some(&b)), None);
        let c = FileState {
            resolved: "/y".into(),
            ..a.clone()
        };
        assert_eq!(classify(Some(&a), Some(&c)), Some(ChangeKind::Replaced));
    }
}
