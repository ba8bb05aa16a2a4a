//! fentry/fexit and BPF-LSM programs: hooks that only the hooked kernel function pays for (a BPF
//! trampoline on `vfs_rename`, a BPF-LSM program on `security_inode_rename`), where syscall
//! tracepoints make every syscall of the host take the slow entry path. Each counts its runs in
//! [`VFS_HOOK_HITS`] (proof on a given kernel that it loads, attaches and runs). The fexit on
//! `vfs_rename` also reads the new name (`rd->new_dentry->d_name.name`) through member offsets the
//! agent resolved from the running kernel's BTF and wrote into [`VFS_OFFSETS`] (rustc emits no
//! CO-RE relocations, and `struct renamedata` differs between kernels), hashes it like the
//! syscall hooks do and counts renames onto a watched name. The agent keeps the tracepoint
//! strategy for events until these feed the ring buffer. Names and slots:
//! `certreload_common::vfs_hooks`.

use aya_ebpf::{
    helpers::{bpf_probe_read_kernel, bpf_probe_read_kernel_str_bytes},
    macros::{fexit, lsm, map},
    maps::{Array, PerCpuArray},
    programs::{FExitContext, LsmContext},
};
use certreload_common::{
    basename_hash_step,
    vfs_hooks::{
        offsets, FEXIT_VFS_RENAME_SLOT, LSM_INODE_RENAME_SLOT, SLOTS, WATCHED_RENAME_SLOT,
    },
    FNV_OFFSET, NAME_LEN,
};

use crate::WATCHED_NAMES;

#[map]
static VFS_HOOK_HITS: PerCpuArray<u64> = PerCpuArray::with_max_entries(SLOTS, 0);

#[map]
static VFS_OFFSETS: Array<u32> = Array::with_max_entries(offsets::LEN, 0);

#[inline(always)]
fn hit(slot: u32) {
    if let Some(p) = VFS_HOOK_HITS.get_ptr_mut(slot) {
        // SAFETY: `p` is this CPU's slot of VFS_HOOK_HITS, valid and aligned for the program run.
        // Tracing and LSM programs run with migration disabled: no other CPU writes this slot.
        unsafe { *p += 1 };
    }
}

#[inline(always)]
fn offset(slot: u32) -> Option<usize> {
    VFS_OFFSETS.get(slot).map(|v| *v as usize)
}

/// Hash of the basename of the dentry at member `member` of `struct renamedata *rd`, or `None`
/// before the agent wrote the offsets or when a read fails.
#[inline(always)]
fn renamed_name_hash(rd: *const u8, member: u32) -> Option<u64> {
    if offset(offsets::READY)? == 0 {
        return None;
    }
    let dentry_at = offset(member)?;
    let name_at = offset(offsets::DENTRY_D_NAME)? + offset(offsets::QSTR_NAME)?;
    // SAFETY: kernel pointers read with the checking helper: a bad address is an error, not a
    // fault. The offsets come from the running kernel's BTF.
    let dentry: *const u8 =
        unsafe { bpf_probe_read_kernel(rd.wrapping_add(dentry_at).cast::<*const u8>()) }.ok()?;
    // SAFETY: as above.
    let name: *const u8 =
        unsafe { bpf_probe_read_kernel(dentry.wrapping_add(name_at).cast::<*const u8>()) }.ok()?;
    let mut buf = [0u8; NAME_LEN];
    // SAFETY: as above; `buf` is a NAME_LEN-byte buffer we own.
    let len = unsafe { bpf_probe_read_kernel_str_bytes(name, &mut buf) }
        .ok()?
        .len();
    let mut hash = FNV_OFFSET;
    let mut i = 0;
    while i < NAME_LEN {
        if i >= len {
            break;
        }
        hash = basename_hash_step(hash, buf[i]);
        i += 1;
    }
    Some(hash)
}

/// After every `vfs_rename(struct renamedata *rd)`: its argument is context slot 0, its return
/// value slot 1.
#[fexit(function = "vfs_rename")]
fn cr_fexit_vfs_rename(ctx: FExitContext) -> i32 {
    hit(FEXIT_VFS_RENAME_SLOT);
    let ret: i64 = ctx.arg(1);
    if ret != 0 {
        return 0;
    }
    let rd: *const u8 = ctx.arg(0);
    if let Some(hash) = renamed_name_hash(rd, offsets::RENAMEDATA_NEW_DENTRY) {
        // SAFETY: only whether the entry exists is used; the value is never read.
        if unsafe { WATCHED_NAMES.get(hash).is_some() } {
            hit(WATCHED_RENAME_SLOT);
        }
    }
    0
}

/// The `inode_rename` security hook. Returns 0: it never denies anything (a non-zero return
/// would refuse the rename).
#[lsm(hook = "inode_rename")]
fn cr_lsm_inode_rename(_ctx: LsmContext) -> i32 {
    hit(LSM_INODE_RENAME_SLOT);
    0
}
