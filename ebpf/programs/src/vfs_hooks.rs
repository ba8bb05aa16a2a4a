//! fentry/fexit and BPF-LSM programs: hooks that only the hooked kernel function pays for (a BPF
//! trampoline on `vfs_rename`, a BPF-LSM program on `security_inode_rename`), where syscall
//! tracepoints make every syscall of the host take the slow entry path. For now each one counts its
//! runs in [`VFS_HOOK_HITS`], which proves on a given kernel that it loads, attaches and runs; the
//! agent keeps the tracepoint strategy for events. The names and slots are in
//! `certreload_common::vfs_hooks`.

use aya_ebpf::{
    macros::{fexit, lsm, map},
    maps::PerCpuArray,
    programs::{FExitContext, LsmContext},
};
use certreload_common::vfs_hooks::{FEXIT_VFS_RENAME_SLOT, LSM_INODE_RENAME_SLOT, SLOTS};

#[map]
static VFS_HOOK_HITS: PerCpuArray<u64> = PerCpuArray::with_max_entries(SLOTS, 0);

#[inline(always)]
fn hit(slot: u32) {
    if let Some(p) = VFS_HOOK_HITS.get_ptr_mut(slot) {
        // SAFETY: `p` is this CPU's slot of VFS_HOOK_HITS, valid and aligned for the program run.
        // Tracing and LSM programs run with migration disabled: no other CPU writes this slot.
        unsafe { *p += 1 };
    }
}

/// After every `vfs_rename` (its arguments and return value are in the context; unused so far).
#[fexit(function = "vfs_rename")]
fn cr_fexit_vfs_rename(_ctx: FExitContext) -> i32 {
    hit(FEXIT_VFS_RENAME_SLOT);
    0
}

/// The `inode_rename` security hook. Returns 0: it never denies anything (a non-zero return
/// would refuse the rename).
#[lsm(hook = "inode_rename")]
fn cr_lsm_inode_rename(_ctx: LsmContext) -> i32 {
    hit(LSM_INODE_RENAME_SLOT);
    0
}
