//! Hints: "something may have changed these names", from whichever source saw it.
//!
//! A hint is never reported as such. The confirmer re-reads the watched paths a hint concerns and
//! reports a change only if the content or target really changed, carrying the hint's attribution.

use std::{ffi::OsString, fmt};

use serde::{Deserialize, Serialize, Serializer};

/// Who changed a file, as the kernel saw it at the syscall. Absent for inotify and resync.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Writer {
    /// Thread id that made the syscall.
    pub pid: u32,
    /// Process id (thread group id).
    pub tgid: u32,
    /// Command name of the thread (`comm`, at most 15 bytes).
    pub comm: String,
    /// Real uid.
    pub uid: u32,
    /// Real gid.
    pub gid: u32,
    /// cgroup v2 id: identifies the pod/container on a Kubernetes node.
    pub cgroup_id: u64,
}

/// Where a hint or change came from; printed as `source`. The name ([`Source::as_str`]) is what
/// audit records, the `change_events_total` label and `--output text` show, so `Serialize` and
/// `Display` are built on it; `Deserialize` reads the same names back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Source {
    /// The eBPF programs (with writer attribution).
    Ebpf,
    /// The inotify fallback (no attribution).
    Inotify,
    /// The periodic content resync (the backstop for everything hooks cannot see).
    Resync,
}

impl Source {
    /// The stable name (`ebpf`, `inotify`, `resync`).
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Source::Ebpf => "ebpf",
            Source::Inotify => "inotify",
            Source::Resync => "resync",
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Source {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// The operation of a write-open's hint: the writing has not finished, so it asks for no read;
/// it only joins the operations judged when its paths are next read (`monitor::attribution`).
pub(crate) const OPENED: &str = "open";

impl Hint {
    /// True for a write-open's hint ([`OPENED`]), which asks for no read of its own.
    pub(crate) fn is_open(&self) -> bool {
        self.source == Source::Ebpf && self.operation == OPENED
    }
}

/// Which watched paths a hint concerns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Scope {
    /// Every watched path whose resolution involves one of these basenames.
    Names(Vec<OsString>),
    /// Every watched path (resync, or a kernel path too long to know its basename).
    All,
}

/// A finished operation that may have changed watched files.
#[derive(Debug, Clone)]
pub(crate) struct Hint {
    /// The paths to re-check.
    pub scope: Scope,
    /// Where it was seen.
    pub source: Source,
    /// Who did it, when known.
    pub writer: Option<Writer>,
    /// `CLOCK_MONOTONIC` nanoseconds when the syscall returned (kernel timestamp), when known.
    pub kernel_ts_ns: Option<u64>,
    /// The operation, for the record (`close`, `rename`, `exit`, `IN_CLOSE_WRITE`, `resync`, ...).
    pub operation: &'static str,
    /// The directory entries the operation touched, placed when the event was read (kernel
    /// events only): the evidence [`super::attribution`] judges the writer on. Empty for inotify
    /// and resync, which cannot attribute.
    pub touched: Vec<Touched>,
}

/// A directory entry an operation touched (a rename's both sides, a link, a symlink, an unlink, a
/// truncate by path, a write-open's name): its basename, and where its directory is when the
/// agent could tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Touched {
    /// The entry's basename.
    pub name: OsString,
    /// Its directory; `None` when the name could not be placed (a path relative to a directory
    /// fd, or relative to the working directory of a writer gone before the agent read it).
    pub dir: Option<DirRef>,
    /// The file a write through it ended on (device, inode), when the kernel read it at the close:
    /// evidence of its own, whatever the name's placement.
    pub file: Option<(u64, u64)>,
}

/// Where a touched entry's directory is: the directory identified by `base` (device and inode),
/// then `below` (the path argument's own directory components under it, when it was relative).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DirRef {
    /// Device and inode of the directory the components start from.
    pub base: (u64, u64),
    /// Directory components of the path argument below `base` (`a/b` of `a/b/tls.crt`), empty
    /// when `base` is the entry's directory itself.
    pub below: Vec<OsString>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_name_is_its_json_and_reads_back() {
        for source in [Source::Ebpf, Source::Inotify, Source::Resync] {
            let json = serde_json::to_string(&source).expect("serialise");
            assert_eq!(json, format!("\"{}\"", source.as_str()));
            assert_eq!(source.to_string(), source.as_str());
            let back: Source = serde_json::from_str(&json).expect("deserialise");
            assert_eq!(back, source);
        }
    }
}
