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

use super::fd_resolve::{fd_identity, fd_is_open, name_identity, FdQuery, FdScan, ScanRequest};
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
    /// Whether what happened since the search started calls for another search now (the opening
    /// thread went on, a found fd was closed meanwhile, or opens came after it) rather than at
    /// the process's next fd syscall.
    pub search_again: bool,
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

    /// What a search of `/proc/<tgid>/fd` must look for: `tgid`'s unresolved opens as known now
    /// (`None`: it has none). The file each open's name leads to is looked up here, on the
    /// caller's thread (one stat each): the exit may finish the write before the search does.
    pub(super) fn scan_request(&mut self, tgid: u32) -> Option<ScanRequest> {
        let pending = self.unresolved.get_mut(&tgid)?;
        for u in pending.iter_mut().filter(|u| u.file.is_none()) {
            u.file = name_identity(tgid, &u.name);
        }
        let queries = pending
            .iter()
            .map(|u| FdQuery {
                name: u.name.clone(),
                file: u.file,
                closed_since: u.closed_since.clone(),
                reopened_since: u.reopened_since.clone(),
                returned: u.progressed.is_some(),
            })
            .collect();
        let tracked = self
            .by_fd
            .keys()
            .filter(|&&(t, _)| t == tgid)
            .map(|&(_, fd)| fd)
            .collect();
        Some(ScanRequest {
            tgid,
            queries,
            tracked,
        })
    }

    /// Looks for the fds of `tgid`'s unresolved opens in `/proc/<tgid>/fd` now and applies the
    /// answer ([`Self::apply_scan`]): the tests' synchronous search (the monitor's runs on the
    /// blocking pool).
    #[cfg(test)]
    pub fn reconcile(&mut self, tgid: u32) -> Reconciled {
        match self.scan_request(tgid) {
            Some(request) => self.apply_scan(super::fd_resolve::scan(request)),
            None => Reconciled::default(),
        }
    }

    /// Applies a search's answer: a found fd becomes an ordinary entry; an open none held after
    /// its thread went on (both as of the search's start) is finished; a process that is gone is
    /// left to its exit event. Events applied since the search started win: an fd closed since
    /// is not taken, and the open waits for another search ([`Reconciled::search_again`]).
    pub(super) fn apply_scan(&mut self, scan: FdScan) -> Reconciled {
        let mut out = Reconciled::default();
        let tgid = scan.request.tgid;
        let Some(mut pending) = self.unresolved.remove(&tgid) else {
            return out;
        };
        let asked = &scan.request.queries;
        let same_opens = pending.len() >= asked.len()
            && pending.iter().zip(asked).all(|(u, q)| u.name == q.name);
        let Some(answers) = scan.answers.filter(|_| same_opens) else {
            // Exiting, or the opens are not those asked about (the process exited and its id
            // was reused): nothing is decided.
            out.still_unresolved = true;
            out.search_again = !same_opens;
            self.unresolved.insert(tgid, pending);
            return out;
        };
        let later = pending.split_off(answers.len());
        let mut kept = Vec::new();
        for ((mut u, q), answer) in pending.into_iter().zip(asked).zip(answers) {
            u.file = u.file.or(answer.file);
            match answer.fd {
                Some(fd) if !u.closed_since(fd) && !self.by_fd.contains_key(&(tgid, fd)) => {
                    self.resolve(tgid, &u, fd);
                    out.found.push(FoundFd {
                        fd,
                        name_hash: certreload_common::basename_hash(u.name.as_bytes()),
                        file: u.file,
                    });
                }
                // Closed since the search started: another search decides.
                Some(_) => {
                    out.search_again = true;
                    kept.push(u);
                }
                None if q.returned => {
                    let done = OpenForWrite {
                        name: u.name,
                        file: u.file,
                        writer: u.writer,
                    };
                    if !self.held_by_other_fd(tgid, &done) {
                        out.finished.push((done, u.progressed));
                    }
                }
                None => {
                    out.search_again |= u.progressed.is_some();
                    kept.push(u);
                }
            }
        }
        out.search_again |= !later.is_empty();
        kept.extend(later);
        out.still_unresolved = !kept.is_empty();
        if !kept.is_empty() {
            self.unresolved.insert(tgid, kept);
        }
        out
    }

    /// The fd found holding `u`'s file becomes an entry (only that one: the kernel counted one
    /// tracked fd for the open).
    fn resolve(&mut self, tgid: u32, u: &Unresolved, fd: i32) {
        self.by_fd.insert(
            (tgid, fd),
            OpenForWrite {
                name: u.name.clone(),
                file: u.file,
                writer: u.writer.clone(),
            },
        );
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
    use std::{fs::File, os::fd::AsRawFd, path::PathBuf};

    use super::*;

    /// A file this test process holds open for writing: the process is the writer, so `/proc`
    /// really lists its fd.
    struct HeldFile {
        _dir: tempfile::TempDir,
        path: PathBuf,
        file: File,
        fd: i32,
        tgid: u32,
    }

    fn held_file() -> HeldFile {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("tls.crt");
        let file = File::create(&path).expect("create");
        let fd = file.as_raw_fd();
        HeldFile {
            _dir: dir,
            path,
            file,
            fd,
            tgid: std::process::id(),
        }
    }

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
        let held = held_file();
        let (path, file, fd, tgid) = (held.path, held.file, held.fd, held.tgid);
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
        let held = held_file();
        let (path, file, fd, tgid) = (held.path, held.file, held.fd, held.tgid);
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
        let held = held_file();
        let (path, file, fd, tgid) = (held.path, held.file, held.fd, held.tgid);
        let mut w = OpenWriters::default();
        w.opened(tgid, fd, path.into_os_string(), writer(), true);
        w.duplicated_unresolved(tgid, fd, writer());
        let copy = file.try_clone().expect("dup");
        let copy_fd = copy.as_raw_fd();
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

    /// The search runs off the monitor's thread: an fd closed while it ran is not taken, and the
    /// open is searched for again rather than finished.
    #[test]
    fn an_fd_found_but_closed_while_the_search_ran_is_searched_again() {
        let held = held_file();
        let mut w = OpenWriters::default();
        w.opened_unresolved(held.tgid, held.path.into_os_string(), writer());
        let request = w.scan_request(held.tgid).expect("an unresolved open");
        let scan = super::super::fd_resolve::scan(request);
        w.saw_fd_syscall(held.tgid, 1, 50, "close", Some((held.fd, held.fd)), None);
        let out = w.apply_scan(scan);
        assert!(out.found.is_empty() && out.finished.is_empty(), "{out:?}");
        assert!(out.still_unresolved && out.search_again);
        drop(held.file);
        let out = w.reconcile(held.tgid);
        assert_eq!(
            out.finished.len(),
            1,
            "the next search finishes it: {out:?}"
        );
        assert!(w.is_empty());
    }

    /// The opening thread went on only after the search started: that search saw no fd (the open
    /// may not have returned yet), which proves nothing; another search decides.
    #[test]
    fn a_search_started_before_the_open_returned_finishes_nothing() {
        let held = held_file();
        let mut w = OpenWriters::default();
        let other = held.path.with_file_name("other.crt");
        w.opened_unresolved(held.tgid, other.clone().into_os_string(), writer());
        let scan = super::super::fd_resolve::scan(w.scan_request(held.tgid).expect("unresolved"));
        std::fs::write(&other, "written and closed").expect("write");
        w.saw_fd_syscall(
            held.tgid,
            1,
            60,
            "close",
            Some((held.fd + 1, held.fd + 1)),
            None,
        );
        let out = w.apply_scan(scan);
        assert!(out.finished.is_empty() && out.still_unresolved && out.search_again);
        let out = w.reconcile(held.tgid);
        assert_eq!(out.finished.len(), 1, "{out:?}");
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
