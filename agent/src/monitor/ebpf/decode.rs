//! Decoding of the kernel's [`RawEvent`] bytes into typed events.
#![expect(
    unsafe_code,
    reason = "a ring buffer record is read as the plain-old-data RawEvent (read_unaligned, after its size is checked); the tests view one as bytes"
)]

use std::{ffi::OsString, os::unix::ffi::OsStringExt};

use certreload_common::{flags, kind, RawEvent};
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

/// What the kernel saw, typed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelEventKind {
    /// A watched name was opened for writing; `fd` is the new fd.
    OpenWrite,
    /// A tracked fd was closed.
    Close,
    /// A process holding tracked fds exited.
    Exit,
    /// A process holding tracked fds called execve.
    Exec,
    /// `name` was renamed to `name2`.
    Rename,
    /// `name2` was hard-linked to `name`.
    Link,
    /// `name2` was created as a symlink to `name`.
    Symlink,
    /// `name` was unlinked.
    Unlink,
    /// `name` was truncated by path.
    Truncate,
    /// A tracked fd was truncated.
    Ftruncate,
    /// `fd` was duplicated to `fd2`.
    Dup,
    /// fds `fd..=fd2` were closed at once.
    CloseRange,
}

impl KernelEventKind {
    /// The operation's name as printed in changes.
    pub fn operation(self) -> &'static str {
        match self {
            Self::OpenWrite => "open",
            Self::Close => "close",
            Self::Exit => "exit",
            Self::Exec => "exec",
            Self::Rename => "rename",
            Self::Link => "link",
            Self::Symlink => "symlink",
            Self::Unlink => "unlink",
            Self::Truncate => "truncate",
            Self::Ftruncate => "ftruncate",
            Self::Dup => "dup",
            Self::CloseRange => "close_range",
        }
    }

    fn from_raw(value: u32) -> Result<Self, DecodeError> {
        Ok(match value {
            kind::OPEN_WRITE => Self::OpenWrite,
            kind::CLOSE => Self::Close,
            kind::EXIT => Self::Exit,
            kind::EXEC => Self::Exec,
            kind::RENAME => Self::Rename,
            kind::LINK => Self::Link,
            kind::SYMLINK => Self::Symlink,
            kind::UNLINK => Self::Unlink,
            kind::TRUNCATE => Self::Truncate,
            kind::FTRUNCATE => Self::Ftruncate,
            kind::DUP => Self::Dup,
            kind::CLOSE_RANGE => Self::CloseRange,
            other => return Err(DecodeError::Kind(other)),
        })
    }
}

/// One decoded kernel event.
#[derive(Debug, Clone)]
pub struct KernelEvent {
    /// What happened.
    pub kind: KernelEventKind,
    /// Who did it.
    pub writer: Writer,
    /// `CLOCK_MONOTONIC` ns when the syscall returned.
    pub ts_ns: u64,
    /// First path argument (empty when none).
    pub name: OsString,
    /// Second path argument (empty when none).
    pub name2: OsString,
    /// True when a path was too long to know its basename.
    pub name_truncated: bool,
    /// The fd concerned.
    pub fd: i32,
    /// The second fd (dup target, close_range end).
    pub fd2: i32,
}

/// Decodes one ring-buffer record.
pub fn decode(bytes: &[u8]) -> Result<KernelEvent, DecodeError> {
    let expected = std::mem::size_of::<RawEvent>();
    if bytes.len() != expected {
        return Err(DecodeError::Size {
            got: bytes.len(),
            expected,
        });
    }
    // SAFETY: the length matches and RawEvent is plain old data (every bit pattern is valid);
    // read_unaligned copes with the ring buffer's 8-byte (not necessarily 64-byte) alignment.
    let raw: RawEvent = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
    Ok(KernelEvent {
        kind: KernelEventKind::from_raw(raw.kind)?,
        writer: Writer {
            pid: raw.pid,
            tgid: raw.tgid,
            comm: String::from_utf8_lossy(until_nul(&raw.comm)).into_owned(),
            uid: raw.uid,
            gid: raw.gid,
            cgroup_id: raw.cgroup_id,
        },
        ts_ns: raw.ts_ns,
        name: OsString::from_vec(until_nul(&raw.name).to_vec()),
        name2: OsString::from_vec(until_nul(&raw.name2).to_vec()),
        name_truncated: raw.event_flags & (flags::NAME_TRUNCATED | flags::NAME2_TRUNCATED) != 0,
        fd: raw.fd,
        fd2: raw.fd2,
    })
}

fn until_nul(bytes: &[u8]) -> &[u8] {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    &bytes[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes_of(raw: &RawEvent) -> Vec<u8> {
        // SAFETY: RawEvent is repr(C) without padding; viewing it as bytes is sound.
        unsafe {
            std::slice::from_raw_parts(
                (raw as *const RawEvent).cast::<u8>(),
                std::mem::size_of::<RawEvent>(),
            )
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
        assert_eq!(ev.kind, KernelEventKind::Rename);
        assert_eq!(ev.writer.comm, "mv");
        assert_eq!((ev.writer.pid, ev.writer.tgid), (7, 6));
        assert_eq!(ev.name, "/a/x");
        assert_eq!(ev.name2, "..data");
        assert!(!ev.name_truncated);
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
