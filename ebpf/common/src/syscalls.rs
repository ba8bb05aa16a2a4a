//! The syscalls certreload hooks, and the names of the programs that hook them.
//!
//! Two attachment strategies exist (see the README's "Hook choice"): one raw tracepoint on
//! `sys_enter`/`sys_exit` that dispatches on the syscall number (x86_64 numbers below, since the BPF
//! object is architecture-neutral but syscall numbers are not), and one classic
//! `syscalls:sys_enter_*` tracepoint per syscall plus a shared `sys_exit_*` program.

/// x86_64 syscall numbers (arch/x86/entry/syscalls/syscall_64.tbl).
pub mod x86_64 {
    #![expect(
        missing_docs,
        reason = "each constant is the syscall its name says; the table cited above documents them"
    )]
    pub const OPEN: i64 = 2;
    pub const CLOSE: i64 = 3;
    pub const DUP: i64 = 32;
    pub const DUP2: i64 = 33;
    pub const FCNTL: i64 = 72;
    pub const TRUNCATE: i64 = 76;
    pub const FTRUNCATE: i64 = 77;
    pub const RENAME: i64 = 82;
    pub const CREAT: i64 = 85;
    pub const LINK: i64 = 86;
    pub const UNLINK: i64 = 87;
    pub const SYMLINK: i64 = 88;
    pub const OPENAT: i64 = 257;
    pub const UNLINKAT: i64 = 263;
    pub const RENAMEAT: i64 = 264;
    pub const LINKAT: i64 = 265;
    pub const SYMLINKAT: i64 = 266;
    pub const DUP3: i64 = 292;
    pub const RENAMEAT2: i64 = 316;
    pub const CLOSE_RANGE: i64 = 436;
    pub const OPENAT2: i64 = 437;

    /// Byte offsets in x86_64 `struct pt_regs` of the six syscall arguments (di, si, dx, r10, r8, r9).
    pub const PT_REGS_ARG_OFFSETS: [usize; 6] = [112, 104, 96, 56, 72, 64];
}

/// `open` flags the programs look at, with the values of the generic Linux ABI that every
/// architecture certreload supports uses (include/uapi/asm-generic/fcntl.h).
pub mod open_flags {
    /// Open for writing only.
    pub const O_WRONLY: u64 = 0o1;
    /// Open for reading and writing.
    pub const O_RDWR: u64 = 0o2;
    /// Create the file if it does not exist.
    pub const O_CREAT: u64 = 0o100;
    /// Truncate the file to length 0.
    pub const O_TRUNC: u64 = 0o1000;
    /// The flags `creat(path, mode)` implies: it is `open(path, O_CREAT | O_WRONLY | O_TRUNC, mode)`
    /// (open(2)), and carries no flags argument of its own.
    pub const CREAT: u64 = O_CREAT | O_WRONLY | O_TRUNC;
}

/// The `dirfd` that makes a relative path argument start at the working directory (`openat(2)`):
/// carried in the event so the agent knows where a relative name starts.
pub const AT_FDCWD: i64 = -100;

/// `fcntl` commands that duplicate an fd.
pub const F_DUPFD: u64 = 0;
/// `fcntl(F_DUPFD_CLOEXEC)`.
pub const F_DUPFD_CLOEXEC: u64 = 1030;

/// Raw-tracepoint programs: (program name, raw tracepoint name).
pub const RAW_PROGRAMS: [(&str, &str); 4] = [
    ("cr_sys_enter", "sys_enter"),
    ("cr_sys_exit", "sys_exit"),
    ("cr_process_exit", "sched_process_exit"),
    ("cr_process_exec", "sched_process_exec"),
];

/// Classic `syscalls` tracepoint programs for the per-syscall strategy: (program name, syscall,
/// needs the exit hook). Each is attached to `syscalls:sys_enter_<syscall>`; `cr_tp_exit` is
/// attached to `syscalls:sys_exit_<syscall>` where the third field says so. close, close_range and
/// ftruncate emit at entry: one hook less on the host's most frequent file syscall. The opens and
/// fcntl emit at entry too and leave the new fd to the agent (`/proc/<tgid>/fd`): an unrelated
/// write-open, the most frequent hooked syscall after close, then runs one program, not two.
pub const TRACEPOINT_PROGRAMS: [(&str, &str, bool); 21] = [
    ("cr_tp_open", "open", false),
    ("cr_tp_openat", "openat", false),
    ("cr_tp_openat2", "openat2", false),
    ("cr_tp_creat", "creat", false),
    ("cr_tp_close", "close", false),
    ("cr_tp_close_range", "close_range", false),
    ("cr_tp_dup", "dup", true),
    ("cr_tp_dup2", "dup2", true),
    ("cr_tp_dup3", "dup3", true),
    ("cr_tp_fcntl", "fcntl", false),
    ("cr_tp_rename", "rename", true),
    ("cr_tp_renameat", "renameat", true),
    ("cr_tp_renameat2", "renameat2", true),
    ("cr_tp_link", "link", true),
    ("cr_tp_linkat", "linkat", true),
    ("cr_tp_symlink", "symlink", true),
    ("cr_tp_symlinkat", "symlinkat", true),
    ("cr_tp_unlink", "unlink", true),
    ("cr_tp_unlinkat", "unlinkat", true),
    ("cr_tp_truncate", "truncate", true),
    ("cr_tp_ftruncate", "ftruncate", false),
];

/// The exit program shared by every classic tracepoint.
pub const TRACEPOINT_EXIT_PROGRAM: &str = "cr_tp_exit";

/// The empty program of the benchmark-only `noop` strategy, and the syscall it is attached to
/// (enter and exit): `vhangup`, which nothing on a server calls.
pub const NOOP_PROGRAM: (&str, &str) = ("cr_tp_noop", "vhangup");
