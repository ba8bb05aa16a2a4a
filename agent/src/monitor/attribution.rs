//! Who made a confirmed change: a writer is named only when the kernel's events prove it.
//!
//! The rule. A change of a watched path is attributed to a writer when, among the operations seen
//! since the path was last read, that writer's (and only that writer's) touched a directory entry
//! on the path's resolution chain: the path itself, a symlink met while resolving it (`..data`),
//! or the file it resolves to, before or after the change. "Touched" is judged by identity, not by
//! name: an entry is its directory's device and inode plus its basename, placed when the event
//! was read (in the writer's own root and working directory). Otherwise the change carries no
//! writer and says why:
//!
//! - `unseen`: no operation seen touched the chain (a write through `mmap`, io_uring, an fd
//!   inherited or passed, a change found by the resync, or a hint from a same-named file
//!   elsewhere);
//! - `ambiguous`: more than one writer did, or an operation that may have (its name could not be
//!   placed, or it finished while the path was being read); every such writer is named.
//!
//! The monitor drains the kernel's queued events before each read and again after it (waiting for
//! syscalls in flight on a watched name to finish), so an operation that finished before the read
//! is never judged after a later one, and one that may have finished during the read makes the
//! change ambiguous instead of being missed.

use std::{
    collections::HashMap,
    ffi::OsStr,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use super::{
    change::ConfirmedChange,
    hint::{Hint, Touched, Writer},
};

/// How far the events go in naming a change's writer; printed as `attribution`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Attribution {
    /// Exactly one writer's operations touched the path's chain: `writer` names it.
    Proven,
    /// No operation seen touched it: `writer` is null.
    Unseen,
    /// Several writers may have made it: `writer` is null, `writers` names them.
    Ambiguous,
}

impl Attribution {
    /// The stable name (`proven`, `unseen`, `ambiguous`).
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Attribution::Proven => "proven",
            Attribution::Unseen => "unseen",
            Attribution::Ambiguous => "ambiguous",
        }
    }
}

/// The attribution of one change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Verdict {
    /// What the events prove.
    pub attribution: Attribution,
    /// The writer, when proven.
    pub writer: Option<Writer>,
    /// The writers, when ambiguous (in the order their operations were seen).
    pub writers: Vec<Writer>,
    /// Index (in the judged hints) of the proven writer's last operation on the chain.
    pub by: Option<usize>,
}

impl Verdict {
    /// No writer could be proven, nor suspected.
    pub(crate) fn unseen() -> Self {
        Verdict {
            attribution: Attribution::Unseen,
            writer: None,
            writers: Vec::new(),
            by: None,
        }
    }

    /// Adds writers that may have made the change too (operations that finished while the path
    /// was being read, or a read that could not wait for syscalls in flight): a proven writer is
    /// then one of several.
    pub(crate) fn widen(&mut self, others: impl IntoIterator<Item = Writer>) {
        let mut writers: Vec<Writer> = self
            .writer
            .take()
            .into_iter()
            .chain(std::mem::take(&mut self.writers))
            .collect();
        for w in others {
            if !writers.iter().any(|known| known.tgid == w.tgid) {
                writers.push(w);
            }
        }
        if writers.is_empty() {
            *self = Verdict::unseen();
            return;
        }
        self.attribution = Attribution::Ambiguous;
        self.writers = writers;
        self.by = None;
    }
}

/// Whether an operation touched a chain: surely, maybe (its entry could not be placed but has a
/// chain entry's basename), or not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Touch {
    No,
    Maybe,
    Yes,
}

/// The entries of a path's resolution chain, with the identities of their directories looked up
/// once per judgement.
pub(crate) struct Chain<'a> {
    hops: &'a [PathBuf],
    dirs: HashMap<PathBuf, Option<(u64, u64)>>,
}

impl<'a> Chain<'a> {
    /// The chain of `hops`: every path visited while resolving a watched path, before and after
    /// the change ([`super::watchset::resolution_hops`]).
    pub(crate) fn new(hops: &'a [PathBuf]) -> Self {
        Chain {
            hops,
            dirs: HashMap::new(),
        }
    }

    /// Judges `hints` (every operation seen since the path was last read, in order).
    pub(crate) fn judge<'h>(&mut self, hints: impl IntoIterator<Item = &'h Hint>) -> Verdict {
        let mut proven: Vec<(u32, usize)> = Vec::new();
        let mut suspects: Vec<Writer> = Vec::new();
        for (i, hint) in hints.into_iter().enumerate() {
            let Some(writer) = &hint.writer else {
                continue;
            };
            match self.touch_any(&hint.touched) {
                Touch::Yes => {
                    proven.retain(|&(tgid, _)| tgid != writer.tgid);
                    proven.push((writer.tgid, i));
                }
                Touch::Maybe => {}
                Touch::No => continue,
            }
            if !suspects.iter().any(|w| w.tgid == writer.tgid) {
                suspects.push(writer.clone());
            }
        }
        match (proven.as_slice(), suspects.len()) {
            (_, 0) => Verdict::unseen(),
            ([(tgid, at)], 1) => Verdict {
                attribution: Attribution::Proven,
                writer: suspects.into_iter().find(|w| w.tgid == *tgid),
                writers: Vec::new(),
                by: Some(*at),
            },
            _ => Verdict {
                attribution: Attribution::Ambiguous,
                writer: None,
                writers: suspects,
                by: None,
            },
        }
    }

    /// Writers among `hints` whose operations touched (or may have touched) the chain.
    pub(crate) fn touching<'h>(
        &mut self,
        hints: impl IntoIterator<Item = &'h Hint>,
    ) -> Vec<Writer> {
        hints
            .into_iter()
            .filter(|h| self.touch_any(&h.touched) != Touch::No)
            .filter_map(|h| h.writer.clone())
            .collect()
    }

    fn touch_any(&mut self, touched: &[Touched]) -> Touch {
        touched
            .iter()
            .map(|t| self.touch(t))
            .max()
            .unwrap_or(Touch::No)
    }

    fn touch(&mut self, t: &Touched) -> Touch {
        if let Some(file) = t.file {
            // The file written is known: it is the one the path resolves to now (the first hop is
            // the path itself, followed through its symlinks), or not.
            return match self.hops.first().and_then(|h| self.file_identity(h)) {
                Some(now) if now == file => Touch::Yes,
                _ => Touch::No,
            };
        }
        let mut best = Touch::No;
        for i in 0..self.hops.len() {
            let hop = &self.hops[i];
            let Some(name) = hop.file_name() else {
                continue;
            };
            // An empty name is one the kernel could not keep (a path argument too long): it may be
            // any entry.
            if t.name.is_empty() {
                return Touch::Maybe;
            }
            if name != t.name {
                continue;
            }
            let Some(dir) = &t.dir else {
                best = Touch::Maybe;
                continue;
            };
            let Some(start) = strip_below(hop.parent(), &dir.below) else {
                continue;
            };
            let start = start.to_path_buf();
            if self.dir_identity(&start) == Some(dir.base) {
                return Touch::Yes;
            }
        }
        best
    }

    fn file_identity(&mut self, path: &Path) -> Option<(u64, u64)> {
        let path = path.to_path_buf();
        self.dir_identity(&path)
    }

    fn dir_identity(&mut self, dir: &Path) -> Option<(u64, u64)> {
        *self
            .dirs
            .entry(dir.to_path_buf())
            .or_insert_with(|| std::fs::metadata(dir).ok().map(|m| (m.dev(), m.ino())))
    }
}

/// Widens the attribution of changes just confirmed with the operations drained right after
/// their read (`during`, in order): one that touched a change's chain may have finished before
/// the read or after it, so that change's writer is one of several. When the kernel did not settle
/// (a syscall on a watched name still in flight after the wait), no change keeps a writer alone.
pub(crate) fn judge_after_read(changes: &mut [ConfirmedChange], during: &[Hint], settled: bool) {
    for change in changes {
        let known = |w: &Writer| {
            change
                .writer
                .iter()
                .chain(&change.writers)
                .any(|k| k.tgid == w.tgid)
        };
        // The proven writer going on (its next open or close) is no other suspect.
        let others: Vec<Writer> = Chain::new(&change.hops)
            .touching(during)
            .into_iter()
            .filter(|w| !known(w))
            .collect();
        if others.is_empty() && (settled || change.attribution != Attribution::Proven) {
            continue;
        }
        let mut verdict = Verdict {
            attribution: change.attribution,
            writer: change.writer.take(),
            writers: std::mem::take(&mut change.writers),
            by: None,
        };
        verdict.widen(others);
        change.attribution = verdict.attribution;
        change.writer = verdict.writer;
        change.writers = verdict.writers;
    }
}

/// `parent` without its last `below.len()` components, which must be `below`: the directory a
/// relative path argument started from, if this hop is where it leads.
fn strip_below<'p>(parent: Option<&'p Path>, below: &[std::ffi::OsString]) -> Option<&'p Path> {
    let mut dir = parent?;
    for component in below.iter().rev() {
        if dir.file_name() != Some(OsStr::new(component)) {
            return None;
        }
        dir = dir.parent()?;
    }
    Some(dir)
}

#[cfg(test)]
mod tests {
    use std::ffi::OsString;

    use super::*;
    use crate::monitor::hint::{DirRef, Scope, Source};

    fn writer(tgid: u32, comm: &str) -> Writer {
        Writer {
            pid: tgid,
            tgid,
            comm: comm.into(),
            uid: 0,
            gid: 0,
            cgroup_id: 0,
        }
    }

    fn identity(p: &Path) -> (u64, u64) {
        let m = std::fs::metadata(p).expect("stat");
        (m.dev(), m.ino())
    }

    fn op(w: Writer, name: &str, dir: Option<DirRef>) -> Hint {
        Hint {
            scope: Scope::Names(vec![OsString::from(name)]),
            source: Source::Ebpf,
            writer: Some(w),
            kernel_ts_ns: Some(1),
            operation: "close",
            touched: vec![Touched {
                name: name.into(),
                dir,
                file: None,
            }],
        }
    }

    fn at(dir: &Path) -> Option<DirRef> {
        Some(DirRef {
            base: identity(dir),
            below: Vec::new(),
        })
    }

    #[test]
    fn a_same_named_file_elsewhere_proves_nothing() {
        let (watched, decoy) = (
            tempfile::tempdir().expect("a"),
            tempfile::tempdir().expect("b"),
        );
        let hops = vec![watched.path().join("tls.crt")];
        let decoy_op = op(writer(9, "decoy"), "tls.crt", at(decoy.path()));
        let verdict = Chain::new(&hops).judge([&decoy_op]);
        assert_eq!(verdict, Verdict::unseen());
        let real = op(writer(7, "cp"), "tls.crt", at(watched.path()));
        let verdict = Chain::new(&hops).judge([&decoy_op, &real]);
        assert_eq!(verdict.attribution, Attribution::Proven);
        assert_eq!(verdict.writer.map(|w| w.comm), Some("cp".to_string()));
        assert_eq!(verdict.by, Some(1));
    }

    #[test]
    fn two_writers_on_the_chain_are_ambiguous_and_both_named() {
        let dir = tempfile::tempdir().expect("dir");
        let ts = dir.path().join("..ts2");
        std::fs::create_dir(&ts).expect("mkdir");
        let hops = vec![
            dir.path().join("tls.crt"),
            dir.path().join("..data"),
            ts.join("tls.crt"),
        ];
        let content = op(writer(5, "sh"), "tls.crt", at(&ts));
        let swap = op(writer(6, "mv"), "..data", at(dir.path()));
        let verdict = Chain::new(&hops).judge([&content, &swap]);
        assert_eq!(verdict.attribution, Attribution::Ambiguous);
        let tgids: Vec<u32> = verdict.writers.iter().map(|w| w.tgid).collect();
        assert_eq!(tgids, vec![5, 6]);
        // One writer's several operations still prove it.
        let again = op(writer(6, "mv"), "tls.crt", at(dir.path()));
        let verdict = Chain::new(&hops).judge([&swap, &again]);
        assert_eq!(verdict.writer.map(|w| w.tgid), Some(6));
    }

    #[test]
    fn a_relative_name_is_placed_from_its_base_directory() {
        let dir = tempfile::tempdir().expect("dir");
        std::fs::create_dir(dir.path().join("sub")).expect("mkdir");
        let hops = vec![dir.path().join("sub").join("tls.crt")];
        let relative = DirRef {
            base: identity(dir.path()),
            below: vec!["sub".into()],
        };
        let w = op(writer(3, "sh"), "tls.crt", Some(relative.clone()));
        assert_eq!(
            Chain::new(&hops).judge([&w]).attribution,
            Attribution::Proven
        );
        let wrong = DirRef {
            below: vec!["other".into()],
            ..relative
        };
        let w = op(writer(3, "sh"), "tls.crt", Some(wrong));
        assert_eq!(Chain::new(&hops).judge([&w]), Verdict::unseen());
    }

    #[test]
    fn an_unplaced_name_only_makes_it_ambiguous() {
        let dir = tempfile::tempdir().expect("dir");
        let hops = vec![dir.path().join("tls.crt")];
        let unplaced = op(writer(4, "rm"), "tls.crt", None);
        let verdict = Chain::new(&hops).judge([&unplaced]);
        assert_eq!(verdict.attribution, Attribution::Ambiguous);
        assert_eq!(verdict.writers.len(), 1);
        let proven = op(writer(7, "cp"), "tls.crt", at(dir.path()));
        let verdict = Chain::new(&hops).judge([&unplaced, &proven]);
        assert_eq!(verdict.attribution, Attribution::Ambiguous);
        let mut widened = Chain::new(&hops).judge([&proven]);
        widened.widen([writer(8, "late")]);
        let file = std::fs::File::create(&hops[0]).expect("create");
        drop(file);
        let ended = |f| Hint {
            touched: vec![Touched {
                name: "tls.crt".into(),
                dir: None,
                file: Some(f),
            }],
            ..op(writer(9, "sh"), "tls.crt", None)
        };
        let verdict = Chain::new(&hops).judge([&ended(identity(&hops[0]))]);
        assert_eq!(
            verdict.attribution,
            Attribution::Proven,
            "the closed file is the path's"
        );
        let verdict = Chain::new(&hops).judge([&ended(identity(dir.path()))]);
        assert_eq!(verdict, Verdict::unseen(), "another file was closed");
        assert_eq!(
            (widened.attribution, widened.writer, widened.writers.len()),
            (Attribution::Ambiguous, None, 2)
        );
    }
}
