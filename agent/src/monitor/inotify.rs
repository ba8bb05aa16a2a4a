//! The fallback source: inotify (through `notify`) on the directories of the watched paths.
//!
//! Used when eBPF cannot load. It watches directories, not files, so renames onto a watched name
//! and `..data` symlink swaps are seen; it cannot attribute a change to a writer, and it sees every
//! file of those directories (filtering happens here, in userspace).

use std::{collections::BTreeSet, os::unix::fs::MetadataExt, path::PathBuf};

use notify::{
    event::{AccessKind, AccessMode, CreateKind, ModifyKind, RemoveKind, RenameMode},
    Event, EventKind, RecommendedWatcher, RecursiveMode, Watcher,
};
use thiserror::Error;
use tokio::sync::mpsc;

use super::hint::{Hint, Scope, Source};

/// The inotify watcher could not be set up.
#[derive(Debug, Error)]
#[error("inotify: {0}")]
pub(crate) struct InotifyError(#[from] notify::Error);

/// A running inotify watcher and the stream of its events.
pub(crate) struct InotifySource {
    watcher: RecommendedWatcher,
    events: mpsc::UnboundedReceiver<notify::Result<Event>>,
    watched: BTreeSet<PathBuf>,
    raw_events: u64,
}

impl InotifySource {
    /// Starts watching `directories` (missing ones are skipped and retried on [`Self::watch`]).
    pub(crate) fn start(directories: &BTreeSet<PathBuf>) -> Result<Self, InotifyError> {
        let (tx, events) = mpsc::unbounded_channel();
        let watcher = notify::recommended_watcher(move |res| {
            // The receiver only goes away at shutdown.
            tx.send(res).ok();
        })?;
        let mut source = InotifySource {
            watcher,
            events,
            watched: BTreeSet::new(),
            raw_events: 0,
        };
        source.watch(directories);
        Ok(source)
    }

    /// Adds watches for directories not yet watched (after a symlink swap, new ones may appear).
    pub(crate) fn watch(&mut self, directories: &BTreeSet<PathBuf>) {
        for dir in directories.difference(&self.watched.clone()) {
            match self.watcher.watch(dir, RecursiveMode::NonRecursive) {
                Ok(()) => {
                    self.watched.insert(dir.clone());
                }
                Err(e) => {
                    tracing::debug!(dir = %dir.display(), error = %e, "cannot watch directory (yet)")
                }
            }
        }
    }

    /// inotify events received, related or not (inotify cannot filter by name in the kernel).
    pub(crate) fn raw_events(&self) -> u64 {
        self.raw_events
    }

    /// Waits for the next event that can finish a change and turns it into a hint.
    pub(crate) async fn next_hint(&mut self) -> Option<Hint> {
        loop {
            let event = match self.events.recv().await? {
                Ok(event) => event,
                Err(e) => {
                    tracing::warn!(error = %e, "inotify error; the resync will catch up");
                    continue;
                }
            };
            self.raw_events += 1;
            if let Some(hint) = to_hint(&event) {
                return Some(hint);
            }
        }
    }
}

/// The operation of a hint that only says "a write is in progress" (`IN_MODIFY`): the monitor
/// defers the path (read on `IN_CLOSE_WRITE`, or once the writer-hold bound
/// [`super::confirm::WRITER_DEFER_LIMIT`] has passed, as in eBPF mode) instead of reading it.
pub(crate) const STILL_WRITING: &str = "IN_MODIFY";

/// Maps an inotify event to a hint, or `None` when it says nothing about a watched file's content.
fn to_hint(event: &Event) -> Option<Hint> {
    let operation = match event.kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => "IN_CLOSE_WRITE",
        EventKind::Modify(ModifyKind::Data(_)) => STILL_WRITING,
        EventKind::Modify(ModifyKind::Name(RenameMode::To | RenameMode::Both)) => "IN_MOVED_TO",
        EventKind::Modify(ModifyKind::Name(_)) => "IN_MOVED_FROM",
        EventKind::Remove(RemoveKind::File | RemoveKind::Any | RemoveKind::Other) => "IN_DELETE",
        EventKind::Create(CreateKind::File | CreateKind::Any | CreateKind::Other) => {
            // A new regular file with one link is being written: wait for IN_CLOSE_WRITE. A symlink
            // or a hard link (more than one link) is complete as soon as it exists.
            let complete = event.paths.iter().any(|p| {
                std::fs::symlink_metadata(p)
                    .map(|m| m.file_type().is_symlink() || m.nlink() > 1)
                    .unwrap_or(false)
            });
            if !complete {
                return None;
            }
            "IN_CREATE"
        }
        _ => return None,
    };
    let names = event
        .paths
        .iter()
        .filter_map(|p| p.file_name().map(|n| n.to_os_string()))
        .collect();
    Some(Hint {
        scope: Scope::Names(names),
        source: Source::Inotify,
        writer: None,
        kernel_ts_ns: None,
        operation,
        touched: Vec::new(),
    })
}
