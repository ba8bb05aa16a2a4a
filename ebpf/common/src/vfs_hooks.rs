//! Names and slots shared by the fentry/fexit and BPF-LSM programs (`ebpf/programs/src/vfs_hooks.rs`)
//! and the agent that attaches them (`agent/src/monitor/ebpf/vfs_hooks.rs`): the `fentry` hook
//! strategy. These hooks run only when the hooked kernel function runs (a BPF trampoline), unlike a
//! syscall tracepoint, which puts every syscall of the host on the slow entry path; kernels that
//! refuse them (EPERM) keep the tracepoint strategy.
//!
//! They write the same [`crate::RawEvent`] records as the syscall programs, so the agent's monitor
//! is shared; names are dentry names (basenames), placed by their parent directory's device and
//! inode ([`crate::RawEvent::dir_dev`], [`crate::RawEvent::dir_ino`]).

/// Struct member offsets the programs read kernel memory with, resolved by the agent from the
/// running kernel's BTF at load (see [`offsets`]).
pub const OFFSETS_MAP: &str = "VFS_OFFSETS";

/// One program of the strategy: its name in the object, the kernel function or LSM hook it
/// attaches to, and how.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hook {
    /// Program name in the object.
    pub program: &'static str,
    /// Kernel function (fentry/fexit) or LSM hook name (BPF-LSM).
    pub target: &'static str,
    /// How it attaches.
    pub kind: HookKind,
}

/// How a [`Hook`] attaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookKind {
    /// A BPF trampoline before a kernel function runs (`BPF_PROG_TYPE_TRACING`, fentry).
    Fentry,
    /// A BPF trampoline after a kernel function returns (`BPF_PROG_TYPE_TRACING`, fexit).
    Fexit,
    /// A BPF-LSM program on a security hook (`BPF_PROG_TYPE_LSM`).
    Lsm,
}

/// Every program of the strategy, in the order the agent attaches them. Completions (fexit)
/// before the entries that park what they complete, and the release of write-opened files before
/// the opens, so that no record is parked without its completion in place.
pub const HOOKS: [Hook; 8] = [
    // rename: the fentry reads both names (after the rename the old dentry carries the new
    // name), the fexit emits once the rename succeeded.
    Hook {
        program: "cr_fexit_vfs_rename",
        target: "vfs_rename",
        kind: HookKind::Fexit,
    },
    Hook {
        program: "cr_fentry_vfs_rename",
        target: "vfs_rename",
        kind: HookKind::Fentry,
    },
    Hook {
        program: "cr_fexit_vfs_unlink",
        target: "vfs_unlink",
        kind: HookKind::Fexit,
    },
    Hook {
        program: "cr_fexit_vfs_link",
        target: "vfs_link",
        kind: HookKind::Fexit,
    },
    Hook {
        program: "cr_fexit_vfs_symlink",
        target: "vfs_symlink",
        kind: HookKind::Fexit,
    },
    Hook {
        program: "cr_fexit_vfs_truncate",
        target: "vfs_truncate",
        kind: HookKind::Fexit,
    },
    // Writes: a file open for writing on a watched name is reported once it has an fd
    // (fd_install), and its writing ends when its last reference is dropped (every fd, dup, fork
    // copy and mapping gone): the `file_free_security` hook.
    Hook {
        program: "cr_lsm_file_free",
        target: "file_free_security",
        kind: HookKind::Lsm,
    },
    Hook {
        program: "cr_fexit_fd_install",
        target: "fd_install",
        kind: HookKind::Fexit,
    },
];

/// `FMODE_WRITE` of `struct file`'s `f_mode` (include/linux/fs.h; the same since 2.6).
pub const FMODE_WRITE: u32 = 0x2;

/// `PF_EXITING` of `struct task_struct`'s `flags` (include/linux/sched.h): the task is in
/// `do_exit`, so a file it releases was held to the end (reported as an exit, like the syscall
/// strategies do).
pub const PF_EXITING: u32 = 0x4;

/// Slots of [`OFFSETS_MAP`]: byte offsets of struct members, as the running kernel lays them out.
pub mod offsets {
    /// `struct renamedata`, member `old_dentry`.
    pub const RENAMEDATA_OLD_DENTRY: u32 = 0;
    /// `struct renamedata`, member `new_dentry`.
    pub const RENAMEDATA_NEW_DENTRY: u32 = 1;
    /// `struct dentry`, member `d_name` (a `struct qstr`).
    pub const DENTRY_D_NAME: u32 = 2;
    /// `struct qstr`, member `name`.
    pub const QSTR_NAME: u32 = 3;
    /// 1 once the agent wrote the others (a program reads nothing before).
    pub const READY: u32 = 4;
    /// `struct file`, member `f_mode`.
    pub const FILE_F_MODE: u32 = 5;
    /// `struct file`, member `f_path` (a `struct path`).
    pub const FILE_F_PATH: u32 = 6;
    /// `struct path`, member `dentry`.
    pub const PATH_DENTRY: u32 = 7;
    /// `struct task_struct`, member `flags`.
    pub const TASK_FLAGS: u32 = 8;
    /// `struct dentry`, member `d_parent`.
    pub const DENTRY_D_PARENT: u32 = 9;
    /// `struct dentry`, member `d_inode`.
    pub const DENTRY_D_INODE: u32 = 10;
    /// `struct inode`, member `i_ino`.
    pub const INODE_I_INO: u32 = 11;
    /// `struct inode`, member `i_sb`.
    pub const INODE_I_SB: u32 = 12;
    /// `struct super_block`, member `s_dev`.
    pub const SUPER_BLOCK_S_DEV: u32 = 13;
    /// Slots.
    pub const LEN: u32 = 14;

    /// What each slot holds, as (slot, struct, member), for the agent to resolve.
    pub const MEMBERS: [(u32, &str, &str); 13] = [
        (RENAMEDATA_OLD_DENTRY, "renamedata", "old_dentry"),
        (RENAMEDATA_NEW_DENTRY, "renamedata", "new_dentry"),
        (DENTRY_D_NAME, "dentry", "d_name"),
        (QSTR_NAME, "qstr", "name"),
        (FILE_F_MODE, "file", "f_mode"),
        (FILE_F_PATH, "file", "f_path"),
        (PATH_DENTRY, "path", "dentry"),
        (TASK_FLAGS, "task_struct", "flags"),
        (DENTRY_D_PARENT, "dentry", "d_parent"),
        (DENTRY_D_INODE, "dentry", "d_inode"),
        (INODE_I_INO, "inode", "i_ino"),
        (INODE_I_SB, "inode", "i_sb"),
        (SUPER_BLOCK_S_DEV, "super_block", "s_dev"),
    ];
}
