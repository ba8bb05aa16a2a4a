//! Files open for writing on watched names, per process and fd, so the agent knows when writing is
//! finished: the last close of the file in that process, the dup2 that replaced it, or the exit.
//!
//! The kernel tracks the same `tgid:fd` pairs to decide which closes to report; here each entry also
//! remembers the name it was opened by and the file's identity (device, inode) read from
//! `/proc/<tgid>/fd/<fd>`, so a watched path can be recognised as "still being written".

use std::{
    collections::{HashMap, HashSet},
    ffi::OsString,
    os::unix::fs::MetadataExt,
};

use crate::monitor::hint::Writer;

/// A write-opened watched file in one process.
#[derive(Debug, Clone)]
pub struct OpenForWrite {
    /// The path argument of the open.
    pub name: OsString,
    /// Device and inode of the open file, when `/proc` could tell.
    pub file: Option<(u64, u64)>,
    /// Who opened it.
    pub writer: Writer,
}

/// All write-opened watched files, keyed by `(tgid, fd)`.
#[derive(Debug, Default)]
pub struct OpenWriters {
    by_fd: HashMap<(u32, i32), OpenForWrite>,
}

impl OpenWriters {
    /// Records a successful write-open. `still_open` is false when a later event of the same batch
    /// already closed it (then `/proc` would not find the fd, or find a reused one).
    pub fn opened(&mut self, tgid: u32, fd: i32, name: OsString, writer: Writer, still_open: bool) {
        let file = if still_open {
            fd_identity(tgid, fd)
        } else {
            None
        };
        self.by_fd
            .insert((tgid, fd), OpenForWrite { name, file, writer });
    }

    /// An fd was closed; returns the entry when no other fd of the process still holds the file.
    pub fn closed(&mut self, tgid: u32, fd: i32) -> Option<OpenForWrite> {
        let entry = self.by_fd.remove(&(tgid, fd))?;
        let still_held = self
            .by_fd
            .iter()
            .any(|(&(t, _), other)| t == tgid && same_file(other, &entry));
        (!still_held).then_some(entry)
    }

    /// `old` was duplicated onto `new` (dup2 onto an open fd closes it first).
    pub fn duplicated(&mut self, tgid: u32, old: i32, new: i32) -> Option<OpenForWrite> {
        if old == new {
            return None;
        }
        let finished = self.closed(tgid, new);
        if let Some(entry) = self.by_fd.get(&(tgid, old)).cloned() {
            self.by_fd.insert((tgid, new), entry);
        }
        finished.filter(|f| {
            !self
                .by_fd
                .iter()
                .any(|(&(t, _), o)| t == tgid && same_file(o, f))
        })
    }

    /// Every fd of `tgid` in `first..=last` was closed.
    pub fn closed_range(&mut self, tgid: u32, first: i32, last: i32) -> Vec<OpenForWrite> {
        let fds: Vec<i32> = self
            .by_fd
            .keys()
            .filter(|&&(t, fd)| t == tgid && fd >= first && fd <= last)
            .map(|&(_, fd)| fd)
            .collect();
        fds.into_iter()
            .filter_map(|fd| self.closed(tgid, fd))
            .collect()
    }

    /// The process exited: all its files are finished.
    pub fn exited(&mut self, tgid: u32) -> Vec<OpenForWrite> {
        let fds: Vec<(u32, i32)> = self
            .by_fd
            .keys()
            .filter(|&&(t, _)| t == tgid)
            .copied()
            .collect();
        fds.into_iter()
            .filter_map(|k| self.by_fd.remove(&k))
            .collect()
    }

    /// The process called execve: fds that vanished (close-on-exec) are finished. Returns them with
    /// their fd numbers so the kernel's table can be cleaned too.
    pub fn executed(&mut self, tgid: u32) -> Vec<(i32, OpenForWrite)> {
        let gone = self.vanished(tgid);
        gone.into_iter()
            .filter_map(|fd| self.by_fd.remove(&(tgid, fd)).map(|e| (fd, e)))
            .collect()
    }

    fn vanished(&self, tgid: u32) -> Vec<i32> {
        self.by_fd
            .keys()
            .filter(|&&(t, fd)| {
                t == tgid && std::fs::symlink_metadata(format!("/proc/{tgid}/fd/{fd}")).is_err()
            })
            .map(|&(_, fd)| fd)
            .collect()
    }

    /// Identities of every file still open for writing (the confirmer's "busy" set).
    pub fn busy_files(&self) -> HashSet<(u64, u64)> {
        self.by_fd.values().filter_map(|e| e.file).collect()
    }

    /// Number of tracked fds.
    pub fn len(&self) -> usize {
        self.by_fd.len()
    }

    /// True when nothing is open for writing.
    pub fn is_empty(&self) -> bool {
        self.by_fd.is_empty()
    }
}

fn same_file(a: &OpenForWrite, b: &OpenForWrite) -> bool {
    match (a.file, b.file) {
        (Some(x), Some(y)) => x == y,
        _ => a.name == b.name,
    }
}

/// Device and inode of `/proc/<tgid>/fd/<fd>` (the magic link follows to the open file, even in
/// another mount namespace).
fn fd_identity(tgid: u32, fd: i32) -> Option<(u64, u64)> {
    std::fs::metadata(format!("/proc/{tgid}/fd/{fd}"))
        .ok()
        .map(|m| (m.dev(), m.ino()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn writer() -> Writer {
        Writer {
            pid: 1,
            tgid: 1,
            comm: "sh".into(),
            uid: 0,
            gid: 0,
            cgroup_id: 0,
        }
    }

    #[test]
    fn shell_redirection_finishes_at_the_restoring_dup2() {
        // dash: open("f") = 3; dup2(3, 1); close(3); write(1); dup2(10, 1).
        let mut w = OpenWriters::default();
        w.opened(42, 3, "f".into(), writer(), false);
        assert!(w.duplicated(42, 3, 1).is_none());
        assert!(w.closed(42, 3).is_none(), "fd 1 still holds the file");
        let done = w
            .duplicated(42, 10, 1)
            .expect("dup2 over fd 1 finishes the write");
        assert_eq!(done.name, "f");
        assert!(w.is_empty());
    }

    #[test]
    fn exit_finishes_every_file_of_the_process() {
        let mut w = OpenWriters::default();
        w.opened(7, 3, "a".into(), writer(), false);
        w.opened(7, 4, "b".into(), writer(), false);
        w.opened(8, 3, "c".into(), writer(), false);
        let mut names: Vec<_> = w.exited(7).into_iter().map(|e| e.name).collect();
        names.sort();
        assert_eq!(names, vec![OsString::from("a"), OsString::from("b")]);
        assert_eq!(w.len(), 1);
    }

    #[test]
    fn close_range_finishes_fds_in_range() {
        let mut w = OpenWriters::default();
        w.opened(7, 3, "a".into(), writer(), false);
        w.opened(7, 9, "b".into(), writer(), false);
        assert_eq!(w.closed_range(7, 0, 5).len(), 1);
        assert_eq!(w.len(), 1);
    }
}
