//! Names and slots shared by the fentry/fexit and BPF-LSM programs (`ebpf/programs/src/vfs_hooks.rs`)
//! and the agent that attaches them (`agent/src/monitor/ebpf/vfs_hooks.rs`). These hooks run only
//! when the hooked kernel function runs (a BPF trampoline), unlike a syscall tracepoint, which puts
//! every syscall of the host on the slow entry path; kernels that refuse them (EPERM) keep the
//! tracepoint strategy.

/// Per-CPU invocation counters, one slot per program below: proves a program attached *and* runs.
pub const HITS_MAP: &str = "VFS_HOOK_HITS";

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

/// Slots in [`HITS_MAP`].
pub const SLOTS: u32 = 2;
