//! Files open for writing on watched names, per process and fd, so the agent knows when writing is
//! finished: the last close of the file in that process, the dup2 that replaced it, or the exit.
//!
//! The kernel tracks the same `tgid:fd` pairs to decide which closes to report; here each entry also
//! remembers the name it was opened by and the file's identity (device, inode) read from
//! `/proc/<tgid>/fd/<fd>`, so a watched path can be recognised as "still being written".
//!
//! With the tracepoint strategy the kernel reports write-opens and `fcntl` dups at syscall entry,
//! without the new fd (no exit hook: an unrelated open then runs one program, not two). Such an
//! open is [`Unresolved`] until [`OpenWriters::reconcile`] finds the fd holding its file in
//! `/proc/<tgid>/fd` (then it is an ordinary entry, and the kernel is told to report its close),
//! or sees that none does any more after the opening thread went on (the write is finished, or the
//! open failed: either way the path is re-checked). Until then the kernel reports every fd syscall
//! of the process, and the file counts as being written.

use std::{
    collections::{HashMap, HashSet},
    ffi::OsString,
    os::unix::ffi::OsStrExt,
};

use super::fd_resolve::{fd_identity, fd_is_open, name_identity, open_fds};
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

/// A write-open (or an fcntl dup of a tracked fd) reported at syscall entry whose fd is not known
/// yet.
#[derive(Debug, Clone)]
pub struct Unresolved {
    /// The path argument of the open (a dup: the name its fd was opened by).
    name: OsString,
    /// Device and inode of the file, once known (a dup: its fd's; an open: `name` looked up in the
    /// process's root or working directory, once the open has created it).
    file: Option<(u64, u64)>,
    /// Who opened it; `pid` is the thread whose next fd syscall proves the open has returned.
    writer: Writer,
    /// Fd ranges the process closed since (reported at the close's entry: `/proc` may still show
    /// them), and fds it made anew since by a dup.
    closed_since: Vec<(i32, i32)>,
    reopened_since: HashSet<i32>,
    /// The opening thread's last fd syscall since the open (kernel time, operation): the open has
    /// returned by then, so an fd not found is one that is gone.
    progressed: Option<(u64, &'static str)>,
}

impl Unresolved {
    fn closed_since(&self, fd: i32) -> bool {
        !self.reopened_since.contains(&fd)
            && self.closed_since.iter().any(|&(a, b)| a <= fd && fd <= b)
    }
}

/// An fd found holding an unresolved open's file, now tracked here: the kernel must report its
/// close. The caller checks afterwards that it still holds `file` (it may have been closed in
/// between, [`OpenWriters::gone_since_found`]) and calls [`OpenWriters::closed`] if not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FoundFd {
    /// The fd.
    pub fd: i32,
    /// The basename hash of the name it was opened by (the kernel's `TRACKED_FDS` value).
    pub name_hash: u64,
    /// Device and inode of its file.
    pub file: Option<(u64, u64)>,
}

/// What [`OpenWriters::reconcile`] decided for one process's unresolved opens.
#[derive(Debug, Default)]
pub struct Reconciled {
    /// Fds found holding an unresolved file (one per open: the kernel counted one fd for it).
    pub found: Vec<FoundFd>,
    /// Opens whose writing is over (no fd holds their file after the thread went on): with the
    /// kernel time and operation that showed it, when known.
    pub finished: Vec<(OpenForWrite, Option<(u64, &'static str)>)>,
    /// Whether the process still has unresolved opens (the kernel keeps reporting its fd syscalls).
    pub still_unresolved: bool,
}

/// All write-opened watched files, keyed by `(tgid, fd)`, and the opens whose fd is not known yet.
#[derive(Debug, Default)]
pub struct OpenWriters {
    by_fd: HashMap<(u32, i32), OpenForWrite>,
    unresolved: HashMap<u32, Vec<Unresolved>>,
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

    /// A write-open reported at its entry, fd unknown: [`Self::reconcile`] resolves it.
    pub fn opened_unresolved(&mut self, tgid: u32, name: OsString, writer: Writer) {
        self.push_unresolved(tgid, name, None, writer);
    }

    /// `fcntl(F_DUPFD*)` of `old`, reported at its entry, new fd unknown: the file of `old` gets
    /// one more holder, which [`Self::reconcile`] finds.
    pub fn duplicated_unresolved(&mut self, tgid: u32, old: i32, writer: Writer) {
        if let Some(entry) = self.by_fd.get(&(tgid, old)).cloned() {
            self.push_unresolved(tgid, entry.name, entry.file, writer);
        }
    }

    fn push_unresolved(
        &mut self,
        tgid: u32,
        name: OsString,
        file: Option<(u64, u64)>,
        writer: Writer,
    ) {
        self.unresolved.entry(tgid).or_default().push(Unresolved {
            name,
            file,
            writer,
            closed_since: Vec::new(),
            reopened_since: HashSet::new(),
            progressed: None,
        });
    }

    /// An fd syscall of `tgid` by thread `pid` (at kernel time `ts_ns`): `closed` fds are gone,
    /// `made` is a new fd. Unresolved opens of the process learn that their thread went on.
    pub fn saw_fd_syscall(
        &mut self,
        tgid: u32,
        pid: u32,
        ts_ns: u64,
        operation: &'static str,
        closed: Option<(i32, i32)>,
        made: Option<i32>,
    ) {
        for u in self.unresolved.get_mut(&tgid).into_iter().flatten() {
            if let Some((first, last)) = closed {
                u.closed_since.push((first, last));
                u.reopened_since.retain(|fd| *fd < first || *fd > last);
            }
            if let Some(fd) = made {
                u.reopened_since.insert(fd);
            }
            if u.writer.pid == pid {
                u.progressed = Some((ts_ns, operation));
            }
        }
    }

    /// Processes with unresolved opens.
    pub fn unresolved_processes(&self) -> Vec<u32> {
        self.unresolved.keys().copied().collect()
    }

    /// Looks for the fds of `tgid`'s unresolved opens in `/proc/<tgid>/fd`: a found fd becomes an
    /// ordinary entry; an open none holds after its thread went on is finished. A process that is
    /// gone is left to its exit event.
    pub fn reconcile(&mut self, tgid: u32) -> Reconciled {
        let mut out = Reconciled::default();
        let Some(pending) = self.unresolved.remove(&tgid) else {
            return out;
        };
        let Some(fds) = open_fds(tgid) else {
            out.still_unresolved = true;
            self.unresolved.insert(tgid, pending);
            return out;
        };
        let mut kept = Vec::new();
        for mut u in pending {
            u.file = u.file.or_else(|| name_identity(tgid, &u.name));
            let holders: Vec<i32> = fds
                .iter()
                .filter(|&&(fd, file)| {
                    Some(file) == u.file
                        && !u.closed_since(fd)
                        && !self.by_fd.contains_key(&(tgid, fd))
                })
                .map(|&(fd, _)| fd)
                .collect();
            if let Some(&first) = holders.first() {
                self.resolve(tgid, &u, &holders);
                out.found.push(FoundFd {
                    fd: first,
                    name_hash: certreload_common::basename_hash(u.name.as_bytes()),
                    file: u.file,
                });
            } else if u.progressed.is_some() {
                let done = OpenForWrite {
                    name: u.name,
                    file: u.file,
                    writer: u.writer,
                };
                if !self.held_by_other_fd(tgid, &done) {
                    out.finished.push((done, u.progressed));
                }
            } else {
                kept.push(u);
            }
        }
        out.still_unresolved = !kept.is_empty();
        if !kept.is_empty() {
            self.unresolved.insert(tgid, kept);
        }
        out
    }

    /// Every fd found holding `u`'s file becomes an entry (only the first is handed to the kernel:
    /// it counted one tracked fd for the open).
    fn resolve(&mut self, tgid: u32, u: &Unresolved, holders: &[i32]) {
        for &fd in holders {
            self.by_fd.insert(
                (tgid, fd),
                OpenForWrite {
                    name: u.name.clone(),
                    file: u.file,
                    writer: u.writer.clone(),
                },
            );
        }
    }

    /// True when `fd` of `tgid` no longer holds `file` (closed between the `/proc` scan and now).
    pub fn gone_since_found(tgid: u32, fd: i32, file: Option<(u64, u64)>) -> bool {
        file.is_none() || fd_identity(tgid, fd) != file
    }

    fn held_by_other_fd(&self, tgid: u32, entry: &OpenForWrite) -> bool {
        self.by_fd
            .iter()
            .any(|(&(t, _), other)| t == tgid && same_file(other, entry))
    }

    /// An fd was closed; returns the entry when no other fd of the process still holds the file
    /// (nor an unresolved dup of it, which [`Self::reconcile`] then finishes).
    pub fn closed(&mut self, tgid: u32, fd: i32) -> Option<OpenForWrite> {
        let entry = self.by_fd.remove(&(tgid, fd))?;
        let dup_pending = self.unresolved.get(&tgid).is_some_and(|us| {
            us.iter()
                .any(|u| u.file.is_some() && u.file == entry.file && u.name == entry.name)
        });
        (!self.held_by_other_fd(tgid, &entry) && !dup_pending).then_some(entry)
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

    /// The process exited: all its files are finished, unresolved opens included.
    pub fn exited(&mut self, tgid: u32) -> Vec<OpenForWrite> {
        let fds: Vec<(u32, i32)> = self
            .by_fd
            .keys()
            .filter(|&&(t, _)| t == tgid)
            .copied()
            .collect();
        let mut done: Vec<OpenForWrite> = fds
            .into_iter()
            .filter_map(|k| self.by_fd.remove(&k))
            .collect();
        for u in self.unresolved.remove(&tgid).unwrap_or_default() {
            let entry = OpenForWrite {
                name: u.name,
                file: u.file,
                writer: u.writer,
            };
            if !done.iter().any(|d| same_file(d, &entry)) {
                done.push(entry);
            }
        }
        done
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
            .filter(|&&(t, fd)| t == tgid && !fd_is_open(tgid, fd))
            .map(|&(_, fd)| fd)
            .collect()
    }

    /// Identities of every file still open for writing, unresolved opens included (the
    /// confirmer's "busy" set).
    pub fn busy_files(&self) -> HashSet<(u64, u64)> {
        let unresolved = self.unresolved.values().flatten().filter_map(|u| u.file);
        self.by_fd
            .values()
            .filter_map(|e| e.file)
            .chain(unresolved)
            .collect()
    }

    /// Number of tracked fds.
    pub fn len(&self) -> usize {
        self.by_fd.len()
    }

    /// True when nothing is open for writing (nor unresolved).
    pub fn is_empty(&self) -> bool {
        self.by_fd.is_empty() && self.unresolved.is_empty()
    }
}

fn same_file(a: &OpenForWrite, b: &OpenForWrite) -> bool {
    match (a.file, b.file) {
        (Some(x), Some(y)) => x == y,
        _ => a.name == b.name,
    }
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
    fn an_open_reported_at_entry_is_resolved_from_proc() {
        // This test process is the writer: its fd is found in /proc/self/fd by the file's identity.
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("tls.crt");
        let file = std::fs::File::create(&path).expect("create");
        let fd = std::os::fd::AsRawFd::as_raw_fd(&file);
        let tgid = std::process::id();
        let mut w = OpenWriters::default();
        w.opened_unresolved(tgid, path.clone().into_os_string(), writer());
        let out = w.reconcile(tgid);
        assert_eq!(out.found.len(), 1, "{out:?}");
        assert_eq!(out.found[0].fd, fd);
        assert!(!out.still_unresolved && out.finished.is_empty());
        assert!(!OpenWriters::gone_since_found(tgid, fd, out.found[0].file));
        assert_eq!(w.busy_files().len(), 1, "the file is being written");
        drop(file);
        assert!(OpenWriters::gone_since_found(tgid, fd, out.found[0].file));
        let done = w.closed(tgid, fd).expect("its close finishes the write");
        assert_eq!(done.name, path.into_os_string());
        assert!(w.is_empty());
    }

    #[test]
    fn an_unresolved_open_finishes_once_its_thread_went_on_and_no_fd_holds_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("tls.crt");
        std::fs::write(&path, "written and closed").expect("write");
        let tgid = std::process::id();
        let mut w = OpenWriters::default();
        w.opened_unresolved(tgid, path.into_os_string(), writer());
        // The open may not have returned yet: nothing is decided.
        let out = w.reconcile(tgid);
        assert!(out.still_unresolved && out.found.is_empty() && out.finished.is_empty());
        assert_eq!(
            w.busy_files().len(),
            1,
            "counted as being written meanwhile"
        );
        // Another thread's syscall proves nothing about the opening thread.
        w.saw_fd_syscall(tgid, 2, 10, "close", Some((5, 5)), None);
        assert!(w.reconcile(tgid).still_unresolved);
        w.saw_fd_syscall(tgid, 1, 20, "close", Some((5, 5)), None);
        let out = w.reconcile(tgid);
        assert!(!out.still_unresolved);
        assert_eq!(out.finished.len(), 1);
        assert_eq!(out.finished[0].1, Some((20, "close")));
        assert!(w.is_empty());
    }

    #[test]
    fn an_fd_closed_after_the_open_is_not_taken_for_its_holder() {
        // The close is reported at its entry: /proc may still show the fd when the agent looks.
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("tls.crt");
        let file = std::fs::File::create(&path).expect("create");
        let fd = std::os::fd::AsRawFd::as_raw_fd(&file);
        let tgid = std::process::id();
        let mut w = OpenWriters::default();
        w.opened_unresolved(tgid, path.into_os_string(), writer());
        w.saw_fd_syscall(tgid, 1, 30, "close", Some((fd, fd)), None);
        let out = w.reconcile(tgid);
        assert!(out.found.is_empty(), "{out:?}");
        assert_eq!(out.finished.len(), 1);
        drop(file);
    }

    #[test]
    fn an_fcntl_dup_reported_at_entry_keeps_the_write_open_after_the_original_closes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("tls.crt");
        let file = std::fs::File::create(&path).expect("create");
        let fd = std::os::fd::AsRawFd::as_raw_fd(&file);
        let tgid = std::process::id();
        let mut w = OpenWriters::default();
        w.opened(tgid, fd, path.into_os_string(), writer(), true);
        w.duplicated_unresolved(tgid, fd, writer());
        let copy = file.try_clone().expect("dup");
        let copy_fd = std::os::fd::AsRawFd::as_raw_fd(&copy);
        drop(file);
        w.saw_fd_syscall(tgid, 1, 40, "close", Some((fd, fd)), None);
        assert!(w.closed(tgid, fd).is_none(), "the dup still holds the file");
        let out = w.reconcile(tgid);
        assert_eq!(
            out.found.iter().map(|f| f.fd).collect::<Vec<_>>(),
            vec![copy_fd]
        );
        drop(copy);
        assert!(
            w.closed(tgid, copy_fd).is_some(),
            "the last close finishes it"
        );
        assert!(w.is_empty());
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
