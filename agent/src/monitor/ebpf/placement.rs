//! Places the names a kernel event carries: the directory each touched entry is in, by identity,
//! as the writer saw it (its root, working directory or directory fd, through `/proc/<tgid>`), so
//! that `monitor::attribution` judges operations by the entries they touched, not by basename.
//!
//! Placing happens when the event is read, while the writer usually still runs. A name that
//! cannot be placed (relative to a writer gone meanwhile, or a hook that does not say where it
//! starts) keeps only its basename: it can make a change ambiguous, never prove a writer.

use std::{
    ffi::{OsStr, OsString},
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use super::decode::NameBase;
use crate::monitor::hint::{DirRef, Touched};

/// The entry `name` (a path argument of process `tgid`, starting at `base`) touched; `None` for
/// an empty name (an argument the kernel could not read: nothing is known of it).
pub(crate) fn place(tgid: u32, name: &OsStr, base: NameBase) -> Option<Touched> {
    if name.is_empty() {
        return None;
    }
    let path = Path::new(name);
    let Some(basename) = path.file_name() else {
        return Some(unplaced(name));
    };
    let parent = path.parent().unwrap_or(Path::new(""));
    let at = |base| DirRef {
        base,
        below: Vec::new(),
    };
    let dir = match base {
        _ if path.is_absolute() => absolute_dir(tgid, parent).map(at),
        // Read by the kernel at the syscall: exact even if the writer is gone or moved since.
        NameBase::Dir { dev, ino } => components(parent).map(|below| DirRef {
            base: (dev, ino),
            below,
        }),
        NameBase::Cwd => identity(&proc_path(tgid, "cwd").join(parent)).map(at),
        NameBase::DirFd(fd) => identity(&proc_path(tgid, &format!("fd/{fd}")).join(parent)).map(at),
        NameBase::Unknown => None,
    };
    Some(Touched {
        name: basename.to_os_string(),
        dir,
        file: None,
    })
}

/// The directory components of a relative path argument's parent (`a/b` of `a/b/tls.crt`), or
/// `None` when one is `.` or `..`: those are not matched against the hops lexically, so the name
/// stays unplaced.
fn components(parent: &Path) -> Option<Vec<OsString>> {
    parent
        .components()
        .map(|c| match c {
            std::path::Component::Normal(n) => Some(n.to_os_string()),
            _ => None,
        })
        .collect()
}

/// A name whose directory is unknown: it may be any entry with its basename.
fn unplaced(name: &OsStr) -> Touched {
    Touched {
        name: Path::new(name)
            .file_name()
            .map_or_else(|| name.to_os_string(), OsStr::to_os_string),
        dir: None,
        file: None,
    }
}

/// The directory an absolute path argument's `parent` is, in the writer's root while it runs
/// (another mount namespace included); once it is gone, in the agent's own.
fn absolute_dir(tgid: u32, parent: &Path) -> Option<(u64, u64)> {
    let root = proc_path(tgid, "root");
    let rest = parent.strip_prefix("/").unwrap_or(parent);
    if std::fs::metadata(&root).is_ok() {
        identity(&root.join(rest))
    } else {
        identity(parent)
    }
}

fn proc_path(tgid: u32, what: &str) -> PathBuf {
    PathBuf::from(format!("/proc/{tgid}/{what}"))
}

fn identity(dir: &Path) -> Option<(u64, u64)> {
    std::fs::metadata(dir).ok().map(|m| (m.dev(), m.ino()))
}

/// An entry that may be any watched name: a path argument too long for the kernel to keep.
pub(crate) fn anything() -> Touched {
    Touched {
        name: OsString::new(),
        dir: None,
        file: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity_of(p: &Path) -> (u64, u64) {
        identity(p).expect("stat")
    }

    #[test]
    fn names_are_placed_in_the_writers_directories() {
        let dir = tempfile::tempdir().expect("tempdir");
        let me = std::process::id();
        let abs = dir.path().join("tls.crt");
        let placed = place(me, abs.as_os_str(), NameBase::Unknown).expect("placed");
        assert_eq!(placed.name, "tls.crt");
        assert_eq!(placed.dir.map(|d| d.base), Some(identity_of(dir.path())));
        let cwd = std::env::current_dir().expect("cwd");
        let rel = place(me, OsStr::new("tls.crt"), NameBase::Cwd).expect("placed");
        assert_eq!(rel.dir.map(|d| d.base), Some(identity_of(&cwd)));
        let opened = std::fs::File::open(dir.path()).expect("open dir");
        let fd = std::os::fd::AsRawFd::as_raw_fd(&opened);
        let at = place(me, OsStr::new("tls.crt"), NameBase::DirFd(fd)).expect("placed");
        assert_eq!(at.dir.map(|d| d.base), Some(identity_of(dir.path())));
        let unknown = place(me, OsStr::new("tls.crt"), NameBase::Unknown).expect("kept");
        assert_eq!(
            (unknown.name.as_os_str(), unknown.dir),
            (OsStr::new("tls.crt"), None)
        );
        assert_eq!(place(me, OsStr::new(""), NameBase::Cwd), None);
        let kernel = NameBase::Dir { dev: 1, ino: 2 };
        let deep = place(me, OsStr::new("a/b/tls.crt"), kernel).expect("placed");
        let below: Vec<OsString> = vec!["a".into(), "b".into()];
        assert_eq!(
            deep.dir,
            Some(DirRef {
                base: (1, 2),
                below
            })
        );
        let up = place(me, OsStr::new("../tls.crt"), kernel).expect("kept");
        assert_eq!(up.dir, None, "`..` is not matched lexically");
    }
}
