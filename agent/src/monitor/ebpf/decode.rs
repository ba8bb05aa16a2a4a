//! Decoding of the kernel's [`RawEvent`] bytes into typed events: one [`Operation`] variant per
//! [`EventKind`], carrying the arguments of that kind under their own names, after a shared
//! [`EventHeader`] (writer, timestamp). The raw record's `name`/`name2`/`fd`/`fd2` change meaning
//! with the kind; nothing past this module sees them.
#![expect(
    unsafe_code,
    reason = "a ring buffer record is read as the plain-old-data RawEvent (read_unaligned, after its size is checked); the tests view one as bytes"
)]

use std::{ffi::OsString, os::unix::ffi::OsStringExt};

use certreload_common::{flags, EventKind, RawEvent};
use thiserror::Error;

use crate::monitor::hint::Writer;

/// A record that cannot be a [`RawEvent`]: the object and the agent disagree, which is a build bug.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum DecodeError {
    /// The ring buffer item has the wrong size.
    #[error("ring buffer record of {got} bytes, expected {expected}: eBPF object and agent do not match")]
    Size {
        /// Bytes received.
        got: usize,
        /// `size_of::<RawEvent>()`.
        expected: usize,
    },
    /// The kind field holds no known value.
    #[error("unknown event kind {0}: eBPF object and agent do not match")]
    Kind(u32),
}

/// One decoded kernel event: who made the syscall and when, then what it did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelEvent {
    /// What every kind carries.
    pub header: EventHeader,
    /// The operation, with the arguments its kind has.
    pub op: Operation,
}

/// The part of a kernel event that does not depend on its kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventHeader {
    /// Who made the syscall: the attribution a confirmed change carries.
    pub writer: Writer,
    /// `CLOCK_MONOTONIC` ns when the kernel saw the syscall complete (for close, close_range,
    /// ftruncate, exit and exec: when it began, since those are reported at entry).
    pub ts_ns: u64,
    /// A path argument was longer than the kernel keeps ([`certreload_common::NAME_LEN`]): its
    /// basename is unknown, so the event may concern any watched file.
    pub path_truncated: bool,
    /// Where the operation's first and second name arguments start (the open's, unlink's and
    /// truncate's name is the first; a rename's or link's destination and a symlink's link the
    /// second), so the agent can place the entries they touched.
    pub bases: [NameBase; 2],
    /// For a close: the file the fd referred to when it was open for writing (device as `stat`
    /// reports it, inode), when the hook read it.
    pub file: Option<(u64, u64)>,
}

/// Where a name argument starts, as the hook saw it: what the agent needs to find the directory
/// the named entry is in (`monitor::attribution`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameBase {
    /// A relative name starts at the writer's working directory (`AT_FDCWD`); an absolute one at
    /// its root.
    Cwd,
    /// A relative name starts at this directory fd of the writer.
    DirFd(i32),
    /// The hook read the entry's directory itself (a dentry's parent): device (as `stat` reports
    /// it) and inode.
    Dir {
        /// Device, as `st_dev`.
        dev: u64,
        /// Inode.
        ino: u64,
    },
    /// The hook does not say.
    Unknown,
}

impl NameBase {
    /// The base a raw record gives name argument `which` (0 or 1) of `kind`.
    fn of(kind: EventKind, raw: &RawEvent, which: usize) -> Self {
        let dirfd = match (kind, which) {
            (EventKind::OpenWrite, 0) => raw.fd2,
            (EventKind::Unlink | EventKind::Truncate, 0)
            | (EventKind::Rename | EventKind::Link | EventKind::Symlink, 0) => raw.fd,
            (EventKind::Rename | EventKind::Link | EventKind::Symlink, 1) => raw.fd2,
            _ => return NameBase::Unknown,
        };
        if raw.dir_ino[which] != 0 {
            return NameBase::Dir {
                dev: user_dev(raw.dir_dev[which]),
                ino: raw.dir_ino[which],
            };
        }
        match dirfd {
            -100 => NameBase::Cwd,
            fd if fd >= 0 => NameBase::DirFd(fd),
            _ => NameBase::Unknown,
        }
    }
}

/// The kernel's internal `dev_t` (`MAJOR << 20 | MINOR`, as `sb->s_dev` holds it) as `stat`
/// reports it (glibc's `makedev` encoding).
fn user_dev(kernel: u64) -> u64 {
    let (major, minor) = (kernel >> 20, kernel & 0xf_ffff);
    ((major & 0xffff_f000) << 32)
        | ((major & 0xfff) << 8)
        | ((minor & 0xffff_ff00) << 12)
        | (minor & 0xff)
}

/// What the kernel saw, one variant per [`EventKind`] with that kind's arguments. Paths are the
/// arguments as the caller passed them (relative or absolute); an argument the kernel could not
/// read is empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operation {
    /// A watched name was opened with write intent (open, openat, openat2, creat).
    OpenWrite {
        /// The path opened.
        name: OsString,
        /// The new fd: writing through it ends at its last close.
        fd: i32,
    },
    /// A watched name was opened with write intent, reported at the open's entry (the tracepoint
    /// strategy runs no exit hook on opens): the new fd, if the open succeeds, is found by the
    /// agent in `/proc/<tgid>/fd` (see [`crate::monitor::ebpf::writers`]).
    OpenWriteUnresolved {
        /// The path opened.
        name: OsString,
    },
    /// A tracked fd was closed.
    Close {
        /// The fd closed.
        fd: i32,
    },
    /// A process holding tracked fds exited: they are released without a close.
    Exit,
    /// A process holding tracked fds called execve: its close-on-exec fds are gone.
    Exec,
    /// A rename (rename, renameat, renameat2).
    Rename {
        /// The name that was moved.
        from: OsString,
        /// The name it now has (replacing what was there).
        to: OsString,
    },
    /// A hard link (link, linkat).
    Link {
        /// The path that already existed.
        existing: OsString,
        /// The new name for the same file.
        link: OsString,
    },
    /// A symlink was created (symlink, symlinkat).
    Symlink {
        /// The text the link holds: not a path that changed.
        target: OsString,
        /// The new symlink.
        link: OsString,
    },
    /// A watched name was unlinked (unlink, unlinkat).
    Unlink {
        /// The path removed.
        name: OsString,
    },
    /// A watched name was truncated by path.
    Truncate {
        /// The path truncated.
        name: OsString,
    },
    /// A tracked fd was truncated: its content changes, and its close reports it.
    Ftruncate {
        /// The fd truncated.
        fd: i32,
    },
    /// A tracked fd was duplicated (dup, dup2, dup3, fcntl F_DUPFD*); dup2 onto an open fd closes
    /// that fd first.
    Dup {
        /// The fd duplicated.
        old: i32,
        /// The fd that now refers to the same file.
        new: i32,
    },
    /// `fcntl(F_DUPFD*)` of a tracked fd, reported at entry (no exit hook on fcntl): the new fd is
    /// found by the agent in `/proc/<tgid>/fd`, as for [`Operation::OpenWriteUnresolved`].
    DupUnresolved {
        /// The fd duplicated.
        old: i32,
    },
    /// A process holding tracked fds closed a range of fds at once.
    CloseRange {
        /// The first fd closed.
        first: i32,
        /// The last fd closed (inclusive; capped at `i32::MAX` by the kernel program).
        last: i32,
    },
}

impl Operation {
    /// Builds the operation of `kind` from the fields its kind uses (see [`certreload_common::kind`]
    /// for which raw field holds what).
    fn of(kind: EventKind, raw: &RawEvent) -> Self {
        let name = || path(&raw.name);
        let name2 = || path(&raw.name2);
        match kind {
            EventKind::OpenWrite if raw.fd < 0 => Self::OpenWriteUnresolved { name: name() },
            EventKind::OpenWrite => Self::OpenWrite {
                name: name(),
                fd: raw.fd,
            },
            EventKind::Close => Self::Close { fd: raw.fd },
            EventKind::Exit => Self::Exit,
            EventKind::Exec => Self::Exec,
            EventKind::Rename => Self::Rename {
                from: name(),
                to: name2(),
            },
            EventKind::Link => Self::Link {
                existing: name(),
                link: name2(),
            },
            EventKind::Symlink => Self::Symlink {
                target: name(),
                link: name2(),
            },
            EventKind::Unlink => Self::Unlink { name: name() },
            EventKind::Truncate => Self::Truncate { name: name() },
            EventKind::Ftruncate => Self::Ftruncate { fd: raw.fd },
            EventKind::Dup if raw.fd2 < 0 => Self::DupUnresolved { old: raw.fd },
            EventKind::Dup => Self::Dup {
                old: raw.fd,
                new: raw.fd2,
            },
            EventKind::CloseRange => Self::CloseRange {
                first: raw.fd,
                last: raw.fd2,
            },
        }
    }

    /// The kind this operation was decoded from.
    pub fn kind(&self) -> EventKind {
        match self {
            Self::OpenWrite { .. } | Self::OpenWriteUnresolved { .. } => EventKind::OpenWrite,
            Self::Close { .. } => EventKind::Close,
            Self::Exit => EventKind::Exit,
            Self::Exec => EventKind::Exec,
            Self::Rename { .. } => EventKind::Rename,
            Self::Link { .. } => EventKind::Link,
            Self::Symlink { .. } => EventKind::Symlink,
            Self::Unlink { .. } => EventKind::Unlink,
            Self::Truncate { .. } => EventKind::Truncate,
            Self::Ftruncate { .. } => EventKind::Ftruncate,
            Self::Dup { .. } | Self::DupUnresolved { .. } => EventKind::Dup,
            Self::CloseRange { .. } => EventKind::CloseRange,
        }
    }

    /// The operation's name as printed in changes (`open`, `rename`, ...), from the kind table.
    pub fn as_str(&self) -> &'static str {
        self.kind().operation()
    }
}

/// Decodes one ring-buffer record: its size and kind are checked before any field is used.
pub fn decode(bytes: &[u8]) -> Result<KernelEvent, DecodeError> {
    let raw = read_raw(bytes)?;
    let kind = EventKind::from_raw(raw.kind).ok_or(DecodeError::Kind(raw.kind))?;
    Ok(KernelEvent {
        header: EventHeader {
            writer: Writer {
                pid: raw.pid,
                tgid: raw.tgid,
                comm: String::from_utf8_lossy(until_nul(&raw.comm)).into_owned(),
                uid: raw.uid,
                gid: raw.gid,
                cgroup_id: raw.cgroup_id,
            },
            ts_ns: raw.ts_ns,
            path_truncated: raw.event_flags & (flags::NAME_TRUNCATED | flags::NAME2_TRUNCATED) != 0,
            bases: [NameBase::of(kind, &raw, 0), NameBase::of(kind, &raw, 1)],
            file: (kind == EventKind::Close && raw.dir_ino[0] != 0)
                .then(|| (user_dev(raw.dir_dev[0]), raw.dir_ino[0])),
        },
        op: Operation::of(kind, &raw),
    })
}

/// Copies a record of exactly `size_of::<RawEvent>()` bytes out of the ring.
fn read_raw(bytes: &[u8]) -> Result<RawEvent, DecodeError> {
    let expected = size_of::<RawEvent>();
    if bytes.len() != expected {
        return Err(DecodeError::Size {
            got: bytes.len(),
            expected,
        });
    }
    // SAFETY: the length matches and RawEvent is plain old data (every bit pattern is valid);
    // read_unaligned copes with the ring buffer's 8-byte (not necessarily 64-byte) alignment.
    Ok(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) })
}

/// A NUL-terminated path argument, as the bytes the caller passed.
fn path(bytes: &[u8]) -> OsString {
    OsString::from_vec(until_nul(bytes).to_vec())
}

fn until_nul(bytes: &[u8]) -> &[u8] {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    &bytes[..end]
}

#[cfg(test)]
mod tests {
    use certreload_common::kind;

    use super::*;

    fn bytes_of(raw: &RawEvent) -> Vec<u8> {
        // SAFETY: RawEvent is repr(C) without padding; viewing it as bytes is sound.
        unsafe {
            std::slice::from_raw_parts((raw as *const RawEvent).cast::<u8>(), size_of::<RawEvent>())
        }
        .to_vec()
    }

    #[test]
    fn decodes_a_rename_record() {
        let mut raw = RawEvent::zeroed();
        raw.kind = kind::RENAME;
        raw.pid = 7;
        raw.tgid = 6;
        raw.comm[..2].copy_from_slice(b"mv");
        raw.name[..4].copy_from_slice(b"/a/x");
        raw.name2[..6].copy_from_slice(b"..data");
        let ev = decode(&bytes_of(&raw)).expect("decodes");
        assert_eq!(
            ev.op,
            Operation::Rename {
                from: "/a/x".into(),
                to: "..data".into()
            }
        );
        assert_eq!(ev.op.as_str(), "rename");
        assert_eq!(ev.header.writer.comm, "mv");
        assert_eq!((ev.header.writer.pid, ev.header.writer.tgid), (7, 6));
        assert!(!ev.header.path_truncated);
        // zeroed() leaves fd and fd2 at -1: a hook that does not say where names start.
        assert_eq!(ev.header.bases, [NameBase::Unknown; 2]);
    }

    #[test]
    fn name_bases_come_from_the_directory_fds_or_the_hooks_directory() {
        let mut raw = RawEvent::zeroed();
        raw.kind = kind::RENAME;
        raw.fd = -100;
        raw.fd2 = 7;
        let ev = decode(&bytes_of(&raw)).expect("decodes");
        assert_eq!(ev.header.bases, [NameBase::Cwd, NameBase::DirFd(7)]);
        raw.kind = kind::OPEN_WRITE;
        raw.fd = -1;
        raw.fd2 = -100;
        let ev = decode(&bytes_of(&raw)).expect("decodes");
        assert_eq!(ev.header.bases, [NameBase::Cwd, NameBase::Unknown]);
        // A dentry's parent from the fentry hooks: major 8, minor 1 is st_dev 0x801.
        raw.dir_dev = [(8 << 20) | 1, 0];
        raw.dir_ino = [42, 0];
        let ev = decode(&bytes_of(&raw)).expect("decodes");
        assert_eq!(
            ev.header.bases[0],
            NameBase::Dir {
                dev: 0x801,
                ino: 42
            }
        );
        raw.kind = kind::CLOSE;
        let ev = decode(&bytes_of(&raw)).expect("decodes");
        assert_eq!(ev.header.bases, [NameBase::Unknown; 2]);
        assert_eq!(ev.header.file, Some((0x801, 42)), "the closed file");
        raw.dir_ino = [0, 0];
        assert_eq!(decode(&bytes_of(&raw)).expect("decodes").header.file, None);
    }

    #[test]
    fn each_kind_gets_its_own_payload() {
        let mut raw = RawEvent::zeroed();
        raw.fd = 3;
        raw.fd2 = 9;
        raw.name[..6].copy_from_slice(b"target");
        raw.name2[..4].copy_from_slice(b"link");
        raw.event_flags = flags::NAME2_TRUNCATED;
        raw.kind = kind::SYMLINK;
        let symlink = decode(&bytes_of(&raw)).expect("decodes");
        assert_eq!(
            symlink.op,
            Operation::Symlink {
                target: "target".into(),
                link: "link".into()
            }
        );
        assert!(symlink.header.path_truncated);
        raw.kind = kind::DUP;
        let dup = decode(&bytes_of(&raw)).expect("decodes").op;
        assert_eq!(dup, Operation::Dup { old: 3, new: 9 });
        raw.kind = kind::OPEN_WRITE;
        let open = decode(&bytes_of(&raw)).expect("decodes").op;
        assert_eq!(
            open,
            Operation::OpenWrite {
                name: "target".into(),
                fd: 3
            }
        );
        // Reported at entry (tracepoint strategy): no fd yet.
        raw.fd2 = -1;
        raw.kind = kind::DUP;
        let dup = decode(&bytes_of(&raw)).expect("decodes").op;
        assert_eq!(dup, Operation::DupUnresolved { old: 3 });
        raw.fd = -1;
        raw.kind = kind::OPEN_WRITE;
        let open = decode(&bytes_of(&raw)).expect("decodes").op;
        assert_eq!(
            open,
            Operation::OpenWriteUnresolved {
                name: "target".into()
            }
        );
        raw.fd = 3;
        raw.fd2 = 9;
        raw.kind = kind::CLOSE_RANGE;
        let range = decode(&bytes_of(&raw)).expect("decodes").op;
        assert_eq!(range, Operation::CloseRange { first: 3, last: 9 });
    }

    #[test]
    fn every_kind_decodes_to_an_operation_of_that_kind() {
        for &kind in EventKind::ALL {
            let mut raw = RawEvent::zeroed();
            raw.kind = kind as u32;
            let ev = decode(&bytes_of(&raw)).expect("every known kind decodes");
            assert_eq!(ev.op.kind(), kind);
            assert_eq!(ev.op.as_str(), kind.operation());
        }
    }

    #[test]
    fn rejects_records_of_the_wrong_size_or_kind() {
        assert!(matches!(
            decode(&[0u8; 12]),
            Err(DecodeError::Size { got: 12, .. })
        ));
        let mut raw = RawEvent::zeroed();
        raw.kind = 99;
        assert_eq!(decode(&bytes_of(&raw)).err(), Some(DecodeError::Kind(99)));
    }
}
