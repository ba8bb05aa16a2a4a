//! Turns hints into confirmed changes by re-reading the files and comparing with what was last seen.
//!
//! This is where kernel noise becomes truth: a hint for `tls.crt` in another directory, a rename
//! that left content identical, or a write still in progress produce nothing. Only a different
//! content hash or a different target is reported.
//!
//! Every read here is a blocking disk read (never a blocking *open*: see [`crate::regular_file`]);
//! the monitor runs the confirmer on tokio's blocking pool, never on a runtime thread.

use std::{
    collections::HashMap,
    io::{self, Read},
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use sha2::{Digest, Sha256};

use super::{
    attribution::Chain,
    change::{ChangeKind, ConfirmedChange},
    hint::Hint,
    watchset::{resolution_hops, WatchSet},
};
use crate::{
    clock,
    regular_file::{self, OpenError},
};

/// Largest file the monitor hashes; anything larger is reported by its size, not its content
/// (certificate material is kilobytes; a multi-megabyte "certificate" is itself an anomaly).
pub(crate) const MAX_HASHED_BYTES: u64 = 64 * 1024 * 1024;

/// Longest a writer that keeps a watched file open can hold back its reload (eBPF mode, where the
/// agent knows who has the file open for writing). Waiting for the close avoids reading a file
/// mid-write; past this bound the file is read anyway: a half-written file is refused by the gate
/// (and the pair wait), and the writer's close or the next resync brings the finished content.
/// inotify mode reads on close or on the same bound after the first write (see `monitor::inotify`).
pub(crate) const WRITER_DEFER_LIMIT: Duration = Duration::from_secs(10);

/// What a watched path's content is, as far as the agent can tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Content {
    /// SHA-256 of the bytes.
    Sha256([u8; 32]),
    /// Something is there but cannot be read as a file (a directory, a symlink loop, no
    /// permission, too large to hash): still a change the layers above must judge.
    Unreadable(String),
}

/// What the agent last saw at a watched path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FileState {
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
    pub(crate) fn read(path: &Path) -> Option<FileState> {
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
        // Non-blocking open, type from fstat: a FIFO or device at the path is reported, not waited on.
        let (mut file, meta) = match regular_file::open(path) {
            Ok(opened) => opened,
            Err(OpenError::Io(e)) if e.kind() == io::ErrorKind::NotFound => return None,
            Err(OpenError::Io(e)) => return unreadable(e.to_string()),
            Err(OpenError::NotRegular(kind)) => return unreadable(format!("is a {kind}")),
        };
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
    pub(crate) fn sha256_hex(&self) -> Option<String> {
        match &self.content {
            Content::Sha256(h) => Some(hex::encode(h)),
            Content::Unreadable(_) => None,
        }
    }

    /// Why it cannot be read, when it cannot.
    pub(crate) fn error(&self) -> Option<String> {
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
pub(crate) fn classify(old: Option<&FileState>, new: Option<&FileState>) -> Option<ChangeKind> {
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
pub(crate) struct Confirmer {
    states: Vec<Option<FileState>>,
    /// Paths not re-read because a writer still had them open: since when, and the hint that
    /// asked (the one reported when the bound expires).
    deferred: HashMap<usize, (Instant, Hint)>,
    /// Operations seen on a deferred path since it was last read: the writers judged when it is
    /// read ([`Chain::judge`]).
    carried: HashMap<usize, Vec<Hint>>,
    writer_limit: Duration,
}

impl Confirmer {
    /// Takes the initial snapshot: what is there at start is the baseline, not a change.
    pub(crate) fn new(watch: &WatchSet) -> Self {
        let states = watch
            .paths()
            .iter()
            .map(|p| FileState::read(&p.absolute))
            .collect();
        Confirmer {
            states,
            deferred: HashMap::new(),
            carried: HashMap::new(),
            writer_limit: WRITER_DEFER_LIMIT,
        }
    }

    /// Sets how long a writer holding a file open may defer its re-read (default
    /// [`WRITER_DEFER_LIMIT`]).
    #[cfg(test)]
    pub(crate) fn with_writer_limit(mut self, limit: Duration) -> Self {
        self.writer_limit = limit;
        self
    }

    /// Marks paths `indexes` as being written (inotify's `IN_MODIFY`: no close yet) without
    /// reading them: they are read on the close, or once [`Confirmer::next_deferred`] is due.
    pub(crate) fn defer(&mut self, indexes: &[usize], hint: &Hint) {
        let now = Instant::now();
        for &i in indexes {
            self.deferred
                .entry(i)
                .or_insert_with(|| (now, hint.clone()));
        }
    }

    /// Keeps `hints` (write-opens, which ask for no read) among the operations judged when path
    /// `i` is next read.
    pub(crate) fn carry(&mut self, i: usize, hints: &[&Hint]) {
        self.carried
            .entry(i)
            .or_default()
            .extend(hints.iter().map(|h| (*h).clone()));
    }

    /// When the oldest deferral reaches the bound (the monitor re-checks then), if any.
    pub(crate) fn next_deferred(&self) -> Option<Instant> {
        self.deferred
            .values()
            .map(|(since, _)| since.checked_add(self.writer_limit).unwrap_or(*since))
            .min()
    }

    /// Re-reads every deferred path whose bound has passed, even if a writer still holds it open,
    /// each on behalf of the hint that deferred it.
    pub(crate) fn check_overdue(&mut self, watch: &WatchSet) -> Vec<ConfirmedChange> {
        let now = Instant::now();
        let due: Vec<(usize, Hint)> = self
            .deferred
            .iter()
            .filter(|(_, (since, _))| now.saturating_duration_since(*since) >= self.writer_limit)
            .map(|(i, (_, hint))| (*i, hint.clone()))
            .collect();
        let mut changes = Vec::new();
        for (i, hint) in due {
            tracing::warn!(path = %watch.paths()[i].given.display(), limit_s = self.writer_limit.as_secs_f64(), "still open for writing past the limit; reading it anyway");
            changes.extend(self.check_path(watch, i, &[&hint], |_| false));
        }
        changes
    }

    /// Re-reads the paths `hint` concerns, except those `busy` says are still being written, and
    /// returns the real changes.
    #[cfg(test)]
    pub(crate) fn check(
        &mut self,
        watch: &WatchSet,
        hint: &Hint,
        busy: impl Fn(&Path) -> bool,
    ) -> Vec<ConfirmedChange> {
        watch
            .resolve(&hint.scope)
            .into_iter()
            .flat_map(|i| self.check_path(watch, i, &[hint], &busy))
            .collect()
    }

    /// Re-reads watched path `i` on behalf of `hints` (the operations of this pass that concern
    /// it, in order: the last one asked), unless `busy` says it is still being written. A change
    /// names the writer the operations seen since the path was last read prove
    /// ([`Chain::judge`]).
    pub(crate) fn check_path(
        &mut self,
        watch: &WatchSet,
        i: usize,
        hints: &[&Hint],
        busy: impl Fn(&Path) -> bool,
    ) -> Option<ConfirmedChange> {
        let path = &watch.paths()[i];
        let mut window = self.carried.remove(&i).unwrap_or_default();
        window.extend(hints.iter().map(|h| (*h).clone()));
        let trigger = window.last()?.clone();
        if busy(&path.absolute) {
            let now = Instant::now();
            let (since, _) = *self
                .deferred
                .entry(i)
                .or_insert_with(|| (now, trigger.clone()));
            if now.saturating_duration_since(since) < self.writer_limit {
                tracing::debug!(path = %path.given.display(), "still open for writing; waiting for close");
                self.carried.insert(i, window);
                return None;
            }
            tracing::warn!(path = %path.given.display(), limit_s = self.writer_limit.as_secs_f64(), "still open for writing past the limit; reading it anyway");
        }
        self.deferred.remove(&i);
        let new = FileState::read(&path.absolute);
        if let Some(error) = new.as_ref().and_then(FileState::error) {
            tracing::warn!(path = %path.given.display(), %error, "watched path cannot be read");
        }
        // Out of descriptors (EMFILE) says nothing about the file: keep the last state; the
        // next hint or resync reads it again (reporting it turned a full fd table into changes).
        let error = new.as_ref().and_then(FileState::error);
        if error.is_some_and(|e| crate::accept::is_exhaustion_message(&e)) {
            self.carried.insert(i, window);
            return None;
        }
        let Some(kind) = classify(self.states[i].as_ref(), new.as_ref()) else {
            self.states[i] = new;
            return None;
        };
        let mut hops = path.hops.clone();
        for hop in resolution_hops(&path.absolute) {
            if !hops.contains(&hop) {
                hops.push(hop);
            }
        }
        let verdict = Chain::new(&hops).judge(&window);
        let shown = verdict.by.map_or(&trigger, |at| &window[at]);
        let latency_us = shown
            .kernel_ts_ns
            .map(|ts| clock::monotonic_ns().saturating_sub(ts) / 1000);
        let change = ConfirmedChange {
            ts: clock::now_rfc3339(),
            path: path.given.clone(),
            kind,
            source: trigger.source,
            writer: verdict.writer,
            attribution: verdict.attribution,
            writers: verdict.writers,
            sha256: new.as_ref().and_then(FileState::sha256_hex),
            error: new.as_ref().and_then(FileState::error),
            latency_us,
            resolved: new.as_ref().map(|s| s.resolved.clone()),
            operation: shown.operation,
            hops,
        };
        self.states[i] = new;
        Some(change)
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
            touched: Vec::new(),
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
    fn a_writer_holding_the_file_open_defers_it_only_up_to_the_limit() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("tls.crt");
        std::fs::write(&path, "A").expect("write");
        let watch = WatchSet::new(std::slice::from_ref(&path));
        let mut c = Confirmer::new(&watch).with_writer_limit(Duration::from_secs(3600));
        std::fs::write(&path, "B").expect("write");
        assert!(c.check(&watch, &hint(&["tls.crt"]), |_| true).is_empty());
        assert!(c.next_deferred().is_some(), "a re-check is scheduled");
        assert!(c.check_overdue(&watch).is_empty(), "not due yet");

        let mut c = Confirmer::new(&watch).with_writer_limit(Duration::ZERO);
        std::fs::write(&path, "C").expect("write");
        let ch = c.check(&watch, &hint(&["tls.crt"]), |_| true);
        assert_eq!(ch.len(), 1, "read although busy: the limit has passed");
        assert_eq!(c.next_deferred(), None);

        std::fs::write(&path, "D").expect("write");
        c.defer(&[0], &hint(&["tls.crt"]));
        let ch = c.check_overdue(&watch);
        assert_eq!(ch.len(), 1, "a deferral is re-read once due");
        assert_eq!(c.next_deferred(), None);
    }

    #[test]
    fn a_fifo_in_place_of_the_file_is_a_change_named_fifo_not_a_hang() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("tls.crt");
        std::fs::write(&path, "A").expect("write");
        let watch = WatchSet::new(std::slice::from_ref(&path));
        let mut c = Confirmer::new(&watch);
        std::fs::remove_file(&path).expect("rm");
        crate::sys::test_support::mkfifo(&path).expect("mkfifo");
        let ch = c.check(&watch, &hint(&["tls.crt"]), |_| false);
        assert_eq!(ch.len(), 1);
        assert_eq!(ch[0].error.as_deref(), Some("is a fifo"));
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
