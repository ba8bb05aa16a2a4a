//! What `/proc` tells about a writer's fds: the file an fd holds, the fds holding a file, whether
//! the process is exiting, and the file an open's path argument names for that process.
//!
//! Write tracking ([`super::writers`]) asks these questions for opens the kernel reported at their
//! entry, without the new fd. They stat files under `/proc/<tgid>`, so their cost grows with the
//! writer's fd table (a writer holding 10,000 fds: tens of milliseconds); they are kept here, apart
//! from the bookkeeping, so that cost has one place:
//!
//! - [`scan`] looks for each open's fd in ascending order and stops at the lowest one holding its
//!   file (the kernel gives an open the lowest free fd), stating only the fds below it;
//! - [`Scans`] runs those searches on tokio's blocking pool, one per process at a time, so the
//!   monitor keeps turning kernel events into hints meanwhile. The events stay in order: write
//!   tracking applies every event as it comes, and applies a search's answer only against what it
//!   knew when the search started ([`ScanRequest`]).

use std::{
    collections::HashSet,
    ffi::{OsStr, OsString},
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use tokio::sync::mpsc;

/// One open (or fcntl dup) whose fd is sought, with what was known of it when the search started.
#[derive(Debug, Clone)]
pub(super) struct FdQuery {
    /// The path argument of the open.
    pub(super) name: OsString,
    /// Device and inode of its file, when already known (else looked up by `name`).
    pub(super) file: Option<(u64, u64)>,
    /// Fd ranges the process closed since the open, and fds it made anew since by a dup: a closed
    /// fd still listed in `/proc` is not the open's.
    pub(super) closed_since: Vec<(i32, i32)>,
    /// See `closed_since`.
    pub(super) reopened_since: HashSet<i32>,
    /// Whether the opening thread had made another fd syscall when the search started: the open
    /// had returned, so an fd not found then is one that is gone.
    pub(super) returned: bool,
}

impl FdQuery {
    /// True when `fd` was closed after the open (and not made again since).
    pub(super) fn closed_since(&self, fd: i32) -> bool {
        !self.reopened_since.contains(&fd)
            && self.closed_since.iter().any(|&(a, b)| a <= fd && fd <= b)
    }
}

/// The searches for one process's unresolved opens.
#[derive(Debug, Clone)]
pub(super) struct ScanRequest {
    /// The process.
    pub(super) tgid: u32,
    /// Its unresolved opens, in the order write tracking holds them.
    pub(super) queries: Vec<FdQuery>,
    /// Fds of the process write tracking already knows (they belong to other opens).
    pub(super) tracked: HashSet<i32>,
}

/// What `/proc` answered for one [`FdQuery`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct FdAnswer {
    /// Device and inode of the open's file (the query's, or looked up by its name).
    pub(super) file: Option<(u64, u64)>,
    /// The lowest fd holding that file that is neither tracked, closed since, nor another query's.
    pub(super) fd: Option<i32>,
}

/// A finished [`ScanRequest`].
#[derive(Debug, Clone)]
pub(super) struct FdScan {
    /// The request, as it was sent.
    pub(super) request: ScanRequest,
    /// One answer per query, in order; `None`: the process is gone or exiting (its exit event
    /// ends its writes).
    pub(super) answers: Option<Vec<FdAnswer>>,
}

/// Answers `request` from `/proc/<tgid>/fd`: per query, the lowest fd holding its file. Fds are
/// stated in ascending order, once each, and only up to the last answer found.
pub(super) fn scan(request: ScanRequest) -> FdScan {
    let tgid = request.tgid;
    let Some(mut table) = FdTable::read(tgid) else {
        return FdScan {
            request,
            answers: None,
        };
    };
    let mut claimed: HashSet<i32> = HashSet::new();
    let answers = request
        .queries
        .iter()
        .map(|q| {
            let file = q.file.or_else(|| name_identity(tgid, &q.name));
            let fd = file.and_then(|file| {
                table.lowest_holding(file, |fd| {
                    request.tracked.contains(&fd) || q.closed_since(fd) || claimed.contains(&fd)
                })
            });
            claimed.extend(fd);
            FdAnswer { file, fd }
        })
        .collect();
    FdScan {
        request,
        answers: Some(answers),
    }
}

/// An fd's file identity once stated (`Some(None)`: it could not be, e.g. closed meanwhile);
/// `None` until then.
type Stated = Option<Option<(u64, u64)>>;

/// The fds of one process, ascending, with their files' identities stated on demand.
struct FdTable {
    tgid: u32,
    fds: Vec<(i32, Stated)>,
}

impl FdTable {
    /// Lists `/proc/<tgid>/fd` (`None`: the process is gone or exiting).
    fn read(tgid: u32) -> Option<FdTable> {
        if exiting(tgid) {
            // Its fd table is already released, so /proc lists none: that is not "closed by its
            // last fd syscall"; the exit event, still on its way, ends the write.
            return None;
        }
        let dir = std::fs::read_dir(format!("/proc/{tgid}/fd")).ok()?;
        let mut fds: Vec<(i32, Stated)> = dir
            .filter_map(Result::ok)
            .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
            .map(|fd| (fd, None))
            .collect();
        fds.sort_unstable_by_key(|&(fd, _)| fd);
        Some(FdTable { tgid, fds })
    }

    /// The lowest fd not `excluded` that holds `file`.
    fn lowest_holding(&mut self, file: (u64, u64), excluded: impl Fn(i32) -> bool) -> Option<i32> {
        let tgid = self.tgid;
        self.fds.iter_mut().find_map(|(fd, identity)| {
            if excluded(*fd) {
                return None;
            }
            let held = *identity.get_or_insert_with(|| fd_identity(tgid, *fd));
            (held == Some(file)).then_some(*fd)
        })
    }
}

/// The fd searches in flight, on tokio's blocking pool: at most one per process (a process's
/// later opens wait for the next search, which sees them all).
#[derive(Debug)]
pub(super) struct Scans {
    done_tx: mpsc::UnboundedSender<FdScan>,
    done_rx: mpsc::UnboundedReceiver<FdScan>,
    in_flight: HashSet<u32>,
}

impl Default for Scans {
    fn default() -> Self {
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        Scans {
            done_tx,
            done_rx,
            in_flight: HashSet::new(),
        }
    }
}

impl Scans {
    /// True while a search for `tgid` runs.
    pub(super) fn in_flight(&self, tgid: u32) -> bool {
        self.in_flight.contains(&tgid)
    }

    /// Starts `request` on the blocking pool (must run inside a tokio runtime), unless a search
    /// for its process already runs.
    pub(super) fn start(&mut self, request: ScanRequest) {
        if !self.in_flight.insert(request.tgid) {
            return;
        }
        let done = self.done_tx.clone();
        tokio::task::spawn_blocking(move || {
            // The receiver lives as long as the monitor; after it, nobody needs the answer.
            done.send(scan(request)).ok();
        });
    }

    /// Waits for the next finished search (cancel-safe).
    pub(super) async fn finished(&mut self) -> Option<FdScan> {
        let scan = self.done_rx.recv().await?;
        self.in_flight.remove(&scan.request.tgid);
        Some(scan)
    }

    /// A finished search, if one is waiting.
    pub(super) fn try_finished(&mut self) -> Option<FdScan> {
        let scan = self.done_rx.try_recv().ok()?;
        self.in_flight.remove(&scan.request.tgid);
        Some(scan)
    }
}

/// Device and inode of `/proc/<tgid>/fd/<fd>` (the magic link follows to the open file, even in
/// another mount namespace).
pub(super) fn fd_identity(tgid: u32, fd: i32) -> Option<(u64, u64)> {
    std::fs::metadata(format!("/proc/{tgid}/fd/{fd}"))
        .ok()
        .map(|m| (m.dev(), m.ino()))
}

/// True while `fd` of `tgid` is open (the link itself exists, whatever it points to).
pub(super) fn fd_is_open(tgid: u32, fd: i32) -> bool {
    std::fs::symlink_metadata(format!("/proc/{tgid}/fd/{fd}")).is_ok()
}

/// True when `tgid` is a zombie or dead (state `Z` or `X` in `/proc/<tgid>/stat`, the field after
/// the command name's closing parenthesis), or its stat cannot be read.
pub(super) fn exiting(tgid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{tgid}/stat")) else {
        return true;
    };
    let state = stat
        .rfind(')')
        .and_then(|end| stat[end + 1..].split_whitespace().next());
    matches!(state, Some("Z" | "X" | "x"))
}

/// Device and inode of the file `name` (an open's path argument) names for process `tgid`: looked
/// up in its root (absolute) or working directory (relative), so in its own mount namespace. An
/// `openat` relative to a directory fd other than the working directory is not resolved (its
/// close is then still found through the exit, or the writer-hold bound).
pub(super) fn name_identity(tgid: u32, name: &OsStr) -> Option<(u64, u64)> {
    let path = Path::new(name);
    let full: PathBuf = match path.strip_prefix("/") {
        Ok(rest) => Path::new(&format!("/proc/{tgid}/root")).join(rest),
        Err(_) => Path::new(&format!("/proc/{tgid}/cwd")).join(path),
    };
    std::fs::metadata(full).ok().map(|m| (m.dev(), m.ino()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two fds of this process hold the file: the lower is the open's (the kernel gives the
    /// lowest free fd), unless it is excluded.
    #[test]
    fn the_search_answers_the_lowest_fd_holding_the_file() {
        use std::os::fd::AsRawFd;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("tls.crt");
        let first = std::fs::File::create(&path).expect("create");
        let second = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .expect("open again");
        let (low, high) = (first.as_raw_fd(), second.as_raw_fd());
        assert!(low < high);
        let query = FdQuery {
            name: path.into_os_string(),
            file: None,
            closed_since: Vec::new(),
            reopened_since: HashSet::new(),
            returned: true,
        };
        let request = |tracked: &[i32]| ScanRequest {
            tgid: std::process::id(),
            queries: vec![query.clone(), query.clone()],
            tracked: tracked.iter().copied().collect(),
        };
        let file = fd_identity(std::process::id(), low);
        let answers = scan(request(&[])).answers.expect("this process is alive");
        assert_eq!(
            answers,
            vec![
                FdAnswer {
                    file,
                    fd: Some(low)
                },
                FdAnswer {
                    file,
                    fd: Some(high)
                }
            ],
            "each open gets its own fd, lowest first"
        );
        let answers = scan(request(&[low])).answers.expect("alive");
        assert_eq!(answers[0].fd, Some(high), "a tracked fd is another open's");
        assert_eq!(answers[1].fd, None);
    }

    /// A zombie lists no fds in /proc; it must read as exiting (its exit event ends the write), not
    /// as a live process that closed the file (CI saw a shell's write ended by "close").
    #[test]
    fn a_zombie_is_exiting_and_lists_no_fds() {
        assert!(!exiting(std::process::id()));
        let mut child = std::process::Command::new("true")
            .spawn()
            .expect("spawn true");
        let pid = child.id();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !exiting(pid) {
            assert!(
                std::time::Instant::now() < deadline,
                "{pid} never became a zombie"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(
            FdTable::read(pid).is_none(),
            "an exiting process is left to its exit event"
        );
        child.wait().expect("reap");
        assert!(exiting(pid), "a reaped process is gone");
    }
}
