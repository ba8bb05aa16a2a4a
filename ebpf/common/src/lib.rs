//! Everything that crosses the kernel boundary between certreload's eBPF programs and its agent.
//!
//! The kernel programs (`ebpf/programs`) and the agent (`agent/`) both compile this crate, so a map
//! name, a constant or an event layout is written exactly once. Every type here is `#[repr(C)]`,
//! fixed-size and pointer-free: the kernel writes it into a ring buffer, the agent reads the bytes back.
#![no_std]

pub mod syscalls;
pub mod vfs_hooks;

/// Bytes kept of each path argument, NUL included. Paths longer than this are truncated in the
/// kernel; the event then carries [`flags::NAME_TRUNCATED`] and the agent treats it as "could be any
/// watched file" (see the README's coverage section).
pub const NAME_LEN: usize = 256;

/// Length of a task's `comm`, as the kernel's `TASK_COMM_LEN`.
pub const COMM_LEN: usize = 16;

/// Size of the event ring buffer. 256 KiB holds ~440 events: far more than a certificate rotation
/// produces between two reads, so a full ring means the agent is stuck, which the drop counter shows.
pub const RINGBUF_BYTES: u32 = 256 * 1024;

/// Capacity of the watched-name filter (distinct basenames, `..data` included) as compiled into
/// the object: the agent sizes the map at load time for its configuration (twice the names, at
/// least this), so this is a floor, not a limit.
pub const MAX_WATCHED_NAMES: u32 = 4096;

/// Capacity of the table of write-opened watched files (`tgid:fd` pairs) and of pending syscalls.
pub const MAX_TRACKED: u32 = 8192;

/// Names of the maps the agent opens; the kernel programs declare maps under exactly these names.
pub mod maps {
    /// Ring buffer of [`super::RawEvent`]s.
    pub const EVENTS: &str = "EVENTS";
    /// `u64` basename hash → `u8` (1): the in-kernel pre-filter, loaded by the agent.
    pub const WATCHED_NAMES: &str = "WATCHED_NAMES";
    /// Array of [`super::SUFFIX_WORDS`] `u64` words: a bitmap indexed by
    /// [`super::suffix_bit`], the first, cheapest stage of the pre-filter (array lookups are
    /// inlined by the verifier: no helper call).
    pub const SUFFIX_BITS: &str = "SUFFIX_BITS";
    /// `u64` (`tgid << 32 | fd`) → `u64` basename hash: fds open for writing on a watched name.
    pub const TRACKED_FDS: &str = "TRACKED_FDS";
    /// `u32` tgid → `u32` number of its tracked fds, so process exit and exec are checked in O(1).
    pub const TRACKED_TGIDS: &str = "TRACKED_TGIDS";
    /// `u32` tgid → `u8` (1): processes with a write-open (or an fcntl dup of a tracked fd)
    /// reported at syscall entry whose new fd the agent has not resolved yet. The kernel reports
    /// every fd syscall of theirs; the agent removes the mark once it has found the fd in
    /// `/proc/<tgid>/fd` and put it in [`TRACKED_FDS`].
    pub const UNRESOLVED_TGIDS: &str = "UNRESOLVED_TGIDS";
    /// Per-CPU `u64` counters indexed by [`super::stats`].
    pub const STATS: &str = "STATS";
    /// Array of [`super::gates::LEN`] `u64` global counts ([`super::gates`]): the agent reads
    /// [`super::gates::PENDING`] to wait for syscalls in flight on a watched name before it
    /// judges who made a change.
    pub const GATES: &str = "GATES";
}

/// Where the syscall programs find the working directory of the calling process
/// (`current->fs->pwd.dentry->d_inode`: inode number and `i_sb->s_dev`), recorded for a relative
/// path argument (`AT_FDCWD`) in [`RawEvent::dir_dev`]/[`RawEvent::dir_ino`], so the agent places
/// the name even when the writer is gone before it reads the event. Struct member offsets move
/// between kernels and rustc emits no CO-RE relocations: the agent resolves them from the running
/// kernel's BTF at load and writes them into [`cwd::MAP`].
pub mod cwd {
    /// `u32` array of byte offsets, indexed by the slots below.
    pub const MAP: &str = "CWD_OFFSETS";
    /// `struct task_struct`, member `fs`.
    pub const TASK_FS: u32 = 0;
    /// `struct fs_struct`, member `pwd` (a `struct path`).
    pub const FS_PWD: u32 = 1;
    /// `struct path`, member `dentry`.
    pub const PATH_DENTRY: u32 = 2;
    /// `struct dentry`, member `d_inode`.
    pub const DENTRY_D_INODE: u32 = 3;
    /// `struct inode`, member `i_ino`.
    pub const INODE_I_INO: u32 = 4;
    /// `struct inode`, member `i_sb`.
    pub const INODE_I_SB: u32 = 5;
    /// `struct super_block`, member `s_dev`.
    pub const SB_S_DEV: u32 = 6;
    /// 1 once the agent wrote the others: the programs read no kernel memory before.
    pub const READY: u32 = 7;
    /// `struct task_struct`, member `files` (for the file behind a closed fd).
    pub const TASK_FILES: u32 = 8;
    /// `struct files_struct`, member `fdt`.
    pub const FILES_FDT: u32 = 9;
    /// `struct fdtable`, member `fd` (the array of `struct file *`).
    pub const FDTABLE_FD: u32 = 10;
    /// `struct fdtable`, member `max_fds`.
    pub const FDTABLE_MAX_FDS: u32 = 11;
    /// `struct file`, member `f_mode`.
    pub const FILE_F_MODE: u32 = 12;
    /// `struct file`, member `f_inode`.
    pub const FILE_F_INODE: u32 = 13;
    /// Slots.
    pub const LEN: u32 = 14;

    /// `FMODE_WRITE` of `struct file`'s `f_mode` (include/linux/fs.h).
    pub const FMODE_WRITE: u32 = 0x2;

    /// What each slot holds, as (slot, struct, member), for the agent to resolve.
    pub const MEMBERS: [(u32, &str, &str); 13] = [
        (TASK_FS, "task_struct", "fs"),
        (FS_PWD, "fs_struct", "pwd"),
        (PATH_DENTRY, "path", "dentry"),
        (DENTRY_D_INODE, "dentry", "d_inode"),
        (INODE_I_INO, "inode", "i_ino"),
        (INODE_I_SB, "inode", "i_sb"),
        (SB_S_DEV, "super_block", "s_dev"),
        (TASK_FILES, "task_struct", "files"),
        (FILES_FDT, "files_struct", "fdt"),
        (FDTABLE_FD, "fdtable", "fd"),
        (FDTABLE_MAX_FDS, "fdtable", "max_fds"),
        (FILE_F_MODE, "file", "f_mode"),
        (FILE_F_INODE, "file", "f_inode"),
    ];
}

/// Indexes of the per-CPU counters in the `STATS` map. The agent sums them over CPUs.
pub mod stats {
    /// Events written to the ring buffer.
    pub const EMITTED: u32 = 0;
    /// Events lost because the ring buffer was full (failed reservation).
    pub const DROPPED: u32 = 1;
    /// Path arguments examined in the kernel and discarded because their basename is not watched.
    pub const FILTERED: u32 = 2;
    /// Watched-file syscalls lost because the pending-syscall table was full.
    pub const PENDING_LOST: u32 = 3;
    /// Write-opened watched fds not tracked because the fd table was full.
    pub const TRACK_LOST: u32 = 4;
    /// Number of counters.
    pub const LEN: u32 = 5;
}

/// Slots of the `GATES` array: global counts the programs read first, so that when nothing is
/// pending or tracked (the normal state) an unrelated syscall costs one array load.
pub mod gates {
    /// Number of tracked write-opened fds (may over-count after exec or close_range; never under).
    pub const TRACKED_FDS: u32 = 0;
    /// Number of syscalls entered on a watched name whose exit has not been seen yet.
    pub const PENDING: u32 = 1;
    /// Number of slots.
    pub const LEN: u32 = 2;
}

/// Declares the event kinds from one table: the plain `u32` constants of [`kind`] that the kernel
/// programs write into [`RawEvent::kind`], and the [`EventKind`] enum the agent decodes them into
/// (with its checked [`EventKind::from_raw`] and the operation names it prints). A kind added here
/// exists on both sides at once; the agent's decoder then fails to compile until it gives the new
/// kind a payload.
macro_rules! event_kinds {
    ($(
        $(#[doc = $doc:literal])*
        $constant:ident = $value:literal, $variant:ident, $operation:literal;
    )*) => {
        /// What happened, as reported by the kernel. Values of [`RawEvent::kind`]; the kernel
        /// programs use these constants, the agent the [`EventKind`] they decode into.
        pub mod kind {
            $(
                $(#[doc = $doc])*
                pub const $constant: u32 = $value;
            )*
        }

        /// The kinds of [`kind`] as an enum, for the agent's decoder. A raw value becomes one only
        /// through [`EventKind::from_raw`], which refuses unknown values instead of transmuting them.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(u32)]
        pub enum EventKind {
            $(
                $(#[doc = $doc])*
                $variant = kind::$constant,
            )*
        }

        impl EventKind {
            /// Every kind, in the order of the table.
            pub const ALL: &'static [EventKind] = &[$(EventKind::$variant),*];

            /// The kind a raw [`RawEvent::kind`] names, or `None` for a value no kind has (an
            /// object and agent built from different sources).
            pub const fn from_raw(value: u32) -> Option<Self> {
                match value {
                    $(kind::$constant => Some(EventKind::$variant),)*
                    _ => None,
                }
            }

            /// The operation's name as the agent prints it in changes and records (`open`,
            /// `rename`, ...).
            pub const fn operation(self) -> &'static str {
                match self {
                    $(EventKind::$variant => $operation,)*
                }
            }
        }
    };
}

event_kinds! {
    /// open/openat/openat2/creat with write intent on a watched name: with the raw strategy it
    /// succeeded and `fd` is the new fd; with the tracepoint strategy it is reported at entry and
    /// `fd` is -1 (the agent resolves it from `/proc/<tgid>/fd`).
    OPEN_WRITE = 1, OpenWrite, "open";
    /// A tracked fd was closed: writing through it is finished.
    CLOSE = 2, Close, "close";
    /// A process exited while holding tracked fds (no close was seen for them).
    EXIT = 3, Exit, "exit";
    /// A process holding tracked fds called execve; close-on-exec fds are gone without a close.
    EXEC = 4, Exec, "exec";
    /// rename/renameat/renameat2: `name` is the source, `name2` the destination.
    RENAME = 5, Rename, "rename";
    /// link/linkat: `name` is the existing path, `name2` the new link.
    LINK = 6, Link, "link";
    /// symlink/symlinkat: `name` is the link target, `name2` the new symlink.
    SYMLINK = 7, Symlink, "symlink";
    /// unlink/unlinkat on a watched name.
    UNLINK = 8, Unlink, "unlink";
    /// truncate(path) on a watched name.
    TRUNCATE = 9, Truncate, "truncate";
    /// ftruncate on a tracked fd.
    FTRUNCATE = 10, Ftruncate, "ftruncate";
    /// dup/dup2/dup3/fcntl(F_DUPFD*) involving a tracked fd: `fd` is the old fd, `fd2` the new one
    /// (-1 for an fcntl reported at entry by the tracepoint strategy: the agent resolves it).
    DUP = 11, Dup, "dup";
    /// close_range over a process that holds tracked fds: `fd`..=`fd2` are closed.
    CLOSE_RANGE = 12, CloseRange, "close_range";
}

/// Bits of [`RawEvent::event_flags`].
pub mod flags {
    /// `name` was longer than [`super::NAME_LEN`] and is truncated: its basename is unknown.
    pub const NAME_TRUNCATED: u32 = 1;
    /// `name2` was longer than [`super::NAME_LEN`] and is truncated.
    pub const NAME2_TRUNCATED: u32 = 2;
}

/// Open flags that mean "this open may change the file's content" (`O_WRONLY | O_RDWR | O_CREAT |
/// O_TRUNC`, the same values on every Linux architecture that uses the generic flags).
pub const OPEN_WRITE_INTENT: u64 = {
    use syscalls::open_flags::{O_CREAT, O_RDWR, O_TRUNC, O_WRONLY};
    O_WRONLY | O_RDWR | O_CREAT | O_TRUNC
};

/// One kernel observation, exactly as the programs write it to the ring buffer.
///
/// It is a hint, not a verdict: the agent re-reads the files it may concern before it reports a
/// change. Every field is plain data so the bytes can be copied out of the ring without parsing.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct RawEvent {
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) when the syscall returned.
    pub ts_ns: u64,
    /// cgroup v2 id of the writer (`bpf_get_current_cgroup_id`): names the pod/container.
    pub cgroup_id: u64,
    /// Syscall return value (fd for opens and dups, 0 or -errno otherwise).
    pub ret: i64,
    /// Raw syscall flags (open flags, rename flags, ...).
    pub syscall_flags: u64,
    /// Thread id of the caller.
    pub pid: u32,
    /// Process id (thread group id) of the caller.
    pub tgid: u32,
    /// Real uid of the caller.
    pub uid: u32,
    /// Real gid of the caller.
    pub gid: u32,
    /// One of [`kind`].
    pub kind: u32,
    /// Bits of [`flags`].
    pub event_flags: u32,
    /// The fd concerned (see [`kind`]); -1 when none. For unlink and truncate, and for the first
    /// name of rename/link/symlink: the directory fd `name` is relative to (`AT_FDCWD`, -100,
    /// for the working directory; -1 when the hook does not say).
    pub fd: i32,
    /// The second fd (dup target, end of close_range); -1 when none. For rename/link/symlink the
    /// directory fd `name2` is relative to, and for a write-open the one `name` is relative to
    /// (as `fd`).
    pub fd2: i32,
    /// `comm` of the calling thread, NUL-padded.
    pub comm: [u8; COMM_LEN],
    /// First path argument as the caller passed it (relative or absolute), NUL-terminated.
    pub name: [u8; NAME_LEN],
    /// Second path argument (rename/link/symlink destination), NUL-terminated; empty when none.
    pub name2: [u8; NAME_LEN],
    /// The directory a relative `name` / `name2` starts from, when the hook read it: the working
    /// directory of a syscall with `AT_FDCWD` ([`cwd`]), a dentry's parent for hooks that see
    /// dentry names; as the kernel's `dev_t` (`sb->s_dev`). 0 when unknown (absolute names, names
    /// relative to a directory fd: the agent places those from `/proc`). For a close, slot 0 holds
    /// the closed file itself when it was open for writing ([`cwd`]).
    pub dir_dev: [u64; 2],
    /// See [`RawEvent::dir_dev`].
    pub dir_ino: [u64; 2],
}

impl RawEvent {
    /// An all-zero event, used by the agent's decoder and tests.
    pub const fn zeroed() -> Self {
        RawEvent {
            ts_ns: 0,
            cgroup_id: 0,
            ret: 0,
            syscall_flags: 0,
            pid: 0,
            tgid: 0,
            uid: 0,
            gid: 0,
            kind: 0,
            event_flags: 0,
            fd: -1,
            fd2: -1,
            comm: [0; COMM_LEN],
            name: [0; NAME_LEN],
            name2: [0; NAME_LEN],
            dir_dev: [0; 2],
            dir_ino: [0; 2],
        }
    }
}

#[cfg(feature = "user")]
// SAFETY: RawEvent is repr(C), Copy, holds only integers and byte arrays, and has no padding
// (checked by `raw_event_has_no_padding`), so any bit pattern is a valid value.
unsafe impl aya::Pod for RawEvent {}

/// FNV-1a offset basis; the basename hash starts here and restarts here after every `/`.
pub const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
/// FNV-1a prime.
pub const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// One step of the basename hash; the kernel's loop and [`basename_hash`] share it so they cannot
/// disagree.
#[inline(always)]
pub const fn basename_hash_step(hash: u64, byte: u8) -> u64 {
    if byte == b'/' {
        FNV_OFFSET
    } else {
        (hash ^ byte as u64).wrapping_mul(FNV_PRIME)
    }
}

/// FNV-1a of the last path component of `path` (bytes after the last `/`, up to a NUL).
///
/// The kernel computes it in one pass over the syscall's path argument without finding the last
/// slash first, which is why the hash restarts at every `/`. The agent uses this function to load
/// the filter, so a name is matched exactly when its basename bytes are equal (modulo collisions,
/// which only cost a needless re-check in userspace).
pub const fn basename_hash(path: &[u8]) -> u64 {
    let mut hash = FNV_OFFSET;
    let mut i = 0;
    while i < path.len() {
        if path[i] == 0 {
            break;
        }
        hash = basename_hash_step(hash, path[i]);
        i += 1;
    }
    hash
}

/// Bytes of a basename's end used by the first filter stage.
pub const SUFFIX_LEN: usize = 8;

/// The first-stage filter key of a path: its last (up to) [`SUFFIX_LEN`] bytes after the last `/`,
/// last byte in the lowest bits. The kernel computes the same by reading the path backwards.
pub const fn suffix_key(path: &[u8]) -> u64 {
    let mut len = 0;
    while len < path.len() && path[len] != 0 {
        len += 1;
    }
    let mut key = 0u64;
    let mut i = 0;
    while i < SUFFIX_LEN && i < len {
        match suffix_key_step(key, i, path[len - 1 - i]) {
            Some(next) => key = next,
            None => break,
        }
        i += 1;
    }
    key
}

/// One step of [`suffix_key`]: adds `byte`, the `i`-th byte from the end of the path, or returns
/// `None` at the `/` that ends the basename. The kernel's backwards loop and [`suffix_key`] share it
/// so they cannot disagree.
#[inline(always)]
pub const fn suffix_key_step(key: u64, i: usize, byte: u8) -> Option<u64> {
    if byte == b'/' {
        None
    } else {
        Some(key | (byte as u64) << (8 * i))
    }
}

/// Words in the suffix bitmap: 1024 × 64 = 65,536 bits, so a few hundred watched names let through
/// well under 1% of unrelated names to the exact second stage.
pub const SUFFIX_WORDS: u32 = 1024;

/// Bit of the suffix bitmap for a [`suffix_key`]: `(word index, bit in word)`.
#[inline(always)]
pub const fn suffix_bit(key: u64) -> (u32, u32) {
    let h = (key.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 48) as u32;
    ((h >> 6) & (SUFFIX_WORDS - 1), h & 63)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basename_hash_ignores_directories() {
        assert_eq!(
            basename_hash(b"/etc/kubernetes/pki/ca.crt"),
            basename_hash(b"ca.crt")
        );
        assert_eq!(
            basename_hash(b"../pki/ca.crt\0garbage"),
            basename_hash(b"ca.crt")
        );
        assert_ne!(basename_hash(b"/pki/ca.crt"), basename_hash(b"/pki/ca.key"));
        assert_eq!(basename_hash(b"..data"), basename_hash(b"/vol/..data"));
    }

    #[test]
    fn suffix_key_is_the_end_of_the_basename() {
        assert_eq!(suffix_key(b"/etc/pki/ca.crt"), suffix_key(b"ca.crt"));
        // Last byte in the lowest bits.
        assert_eq!(suffix_key(b"ca.crt"), u64::from_le_bytes(*b"trc.ac\0\0"));
        // Long basenames: only the last 8 bytes, so the second stage must confirm.
        assert_eq!(
            suffix_key(b"/a/apiserver.crt"),
            suffix_key(b"/b/server.crt")
        );
        assert_ne!(
            basename_hash(b"/a/apiserver.crt"),
            basename_hash(b"/b/server.crt")
        );
        assert_ne!(suffix_key(b"/pki/ca.crt"), suffix_key(b"/pki/ca.key"));
    }

    #[test]
    fn every_kind_constant_decodes_to_its_own_kind() {
        for &k in EventKind::ALL {
            assert_eq!(EventKind::from_raw(k as u32), Some(k));
        }
        assert_eq!(EventKind::from_raw(kind::RENAME), Some(EventKind::Rename));
        assert_eq!(EventKind::Rename.operation(), "rename");
        assert_eq!(EventKind::from_raw(0), None);
        assert_eq!(EventKind::from_raw(kind::CLOSE_RANGE + 1), None);
    }

    #[test]
    fn creat_flags_mean_write_intent() {
        assert_eq!(syscalls::open_flags::CREAT, 0o1101);
        assert_ne!(syscalls::open_flags::CREAT & OPEN_WRITE_INTENT, 0);
    }

    #[test]
    fn raw_event_has_no_padding() {
        let fields = 8 * 4 + 4 * 8 + COMM_LEN + 2 * NAME_LEN + 4 * 8;
        assert_eq!(size_of::<RawEvent>(), fields);
        assert_eq!(align_of::<RawEvent>(), 8);
    }
}
