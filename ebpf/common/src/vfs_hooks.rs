//! Names and slots shared by the fentry/fexit and BPF-LSM programs (`ebpf/programs/src/vfs_hooks.rs`)
//! and the agent that attaches them (`agent/src/monitor/ebpf/vfs_hooks.rs`). These hooks run only
//! when the hooked kernel function runs (a BPF trampoline), unlike a syscall tracepoint, which puts
//! every syscall of the host on the slow entry path; kernels that refuse them (EPERM) keep the
//! tracepoint strategy.

/// Per-CPU invocation counters, one slot per program below: proves a program attached *and* runs.
pub const HITS_MAP: &str = "VFS_HOOK_HITS";

/// Struct member offsets the programs read kernel memory with, resolved by the agent from the
/// running kernel's BTF at load (see [`offsets`]).
pub const OFFSETS_MAP: &str = "VFS_OFFSETS";

/// The fexit program on `vfs_rename` (every rename on any file system goes through it).
pub const FEXIT_VFS_RENAME: &str = "cr_fexit_vfs_rename";
/// The kernel function [`FEXIT_VFS_RENAME`] attaches to.
pub const FEXIT_VFS_RENAME_TARGET: &str = "vfs_rename";
/// Its slot in [`HITS_MAP`].
pub const FEXIT_VFS_RENAME_SLOT: u32 = 0;

/// The BPF-LSM program on the `inode_rename` security hook.
pub const LSM_INODE_RENAME: &str = "cr_lsm_inode_rename";
/// The LSM hook [`LSM_INODE_RENAME`] attaches to.
pub const LSM_INODE_RENAME_TARGET: &str = "inode_rename";
/// Its slot in [`HITS_MAP`].
pub const LSM_INODE_RENAME_SLOT: u32 = 1;

/// Slot in [`HITS_MAP`]: successful renames onto a watched basename, as [`FEXIT_VFS_RENAME`]
/// read the new name through the BTF offsets (`rd->new_dentry->d_name.name`).
pub const WATCHED_RENAME_SLOT: u32 = 2;

/// Slots in [`HITS_MAP`].
pub const SLOTS: u32 = 3;

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
    /// Slots.
    pub const LEN: u32 = 5;

    /// What each slot holds, as (slot, struct, member), for the agent to resolve.
    pub const MEMBERS: [(u32, &str, &str); 4] = [
        (RENAMEDATA_OLD_DENTRY, "renamedata", "old_dentry"),
        (RENAMEDATA_NEW_DENTRY, "renamedata", "new_dentry"),
        (DENTRY_D_NAME, "dentry", "d_name"),
        (QSTR_NAME, "qstr", "name"),
    ];
}
