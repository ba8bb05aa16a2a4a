//! The `fentry` hook strategy: fentry/fexit trampolines on the VFS functions and BPF-LSM programs,
//! which only the hooked kernel function pays for, where syscall tracepoints put every syscall of
//! the host on the slow entry path. They write the same [`RawEvent`] records as the syscall
//! programs (the agent's monitor is shared), filtered by the same watched-name maps; names are
//! read from dentries (`d_name`: the basename, all the filter and the agent match on) through
//! struct member offsets the agent resolved from the running kernel's BTF and wrote into
//! [`VFS_OFFSETS`] (rustc emits no CO-RE relocations, and `struct renamedata` differs between
//! kernels).
//!
//! - rename: the fentry on `vfs_rename` reads both names and parks the record (after the rename
//!   the old dentry carries the new name); the fexit emits it if the rename succeeded.
//! - unlink, link, symlink, truncate(path): one fexit each, emitted on success.
//! - writes: the fexit on `fd_install` reports a file open for writing on a watched name with its
//!   fd and remembers the file with its opener, and `file_free_security` (LSM) reports the end of
//!   the writing when the file's last reference goes (every fd, dup, fork copy and mapping):
//!   `close`, or `exit` when the opener dies holding it. No fd syscall is hooked.
//!
//! Names and hooks: `certreload_common::vfs_hooks`.

use aya_ebpf::{
    helpers::{
        bpf_get_current_pid_tgid, bpf_probe_read_kernel, bpf_probe_read_kernel_str_bytes,
        generated::{bpf_get_current_task, bpf_ktime_get_ns},
    },
    macros::{fentry, fexit, lsm, map},
    maps::{Array, HashMap},
    programs::{FEntryContext, FExitContext, LsmContext},
};
use certreload_common::{
    flags, gates, kind, stats,
    vfs_hooks::{offsets, FMODE_WRITE, PF_EXITING},
    RawEvent, COMM_LEN, MAX_TRACKED,
};

use crate::{count, emit, fill_task, gate, gate_add, park, scratch, watched_name, PENDING};

#[map]
static VFS_OFFSETS: Array<u32> = Array::with_max_entries(offsets::LEN, 0);

/// Who opened a write-mode file on a watched name, and the fd it got: the writer its release
/// is attributed to.
#[repr(C)]
#[derive(Clone, Copy)]
struct WriteOpen {
    cgroup_id: u64,
    /// The file's `dev_t` and inode, read at `fd_install` (at the release its dentry may be gone).
    file_dev: u64,
    file_ino: u64,
    pid: u32,
    tgid: u32,
    uid: u32,
    gid: u32,
    fd: i32,
    _pad: u32,
    comm: [u8; COMM_LEN],
}

/// `struct file *` → its opener, from `fd_install` to the file's release.
#[map]
static WRITE_OPEN_FILES: HashMap<u64, WriteOpen> = HashMap::with_max_entries(MAX_TRACKED, 0);

/// Slot 0: entries of [`WRITE_OPEN_FILES`], so that releasing any other file of the host (the
/// normal case: none is tracked) costs one array load.
#[map]
static WRITE_OPEN_GATE: Array<u64> = Array::with_max_entries(1, 0);

#[inline(always)]
fn offset(slot: u32) -> Option<usize> {
    VFS_OFFSETS.get(slot).map(|v| *v as usize)
}

/// Reads the pointer at `base + at` in kernel memory.
#[inline(always)]
fn kernel_ptr(base: *const u8, at: usize) -> Option<*const u8> {
    // SAFETY: the checking helper: a bad address is an error, not a fault. Offsets come from the
    // running kernel's BTF.
    unsafe { bpf_probe_read_kernel(base.wrapping_add(at).cast::<*const u8>()) }.ok()
}

/// Copies `dentry`'s name (`d_name.name`) into name `which` of `ev` (0: `name`, 1: `name2`) and
/// tells whether it is watched (see `watched_name`; a name cut short sets that name's truncation
/// flag). False before the agent wrote the offsets, or when a read fails (the name is then empty).
#[inline(always)]
fn dentry_name(ev: &mut RawEvent, which: usize, dentry: *const u8) -> bool {
    let (buf, truncated_flag) = if which == 0 {
        (&mut ev.name, flags::NAME_TRUNCATED)
    } else {
        (&mut ev.name2, flags::NAME2_TRUNCATED)
    };
    buf[0] = 0;
    let Some(name_at) = name_offset() else {
        return false;
    };
    let Some(name) = kernel_ptr(dentry, name_at) else {
        return false;
    };
    // SAFETY: as in `kernel_ptr`; `buf` is a NAME_LEN-byte buffer we own.
    let len = match unsafe { bpf_probe_read_kernel_str_bytes(name, buf) } {
        Ok(s) => s.len(),
        Err(_) => {
            buf[0] = 0;
            return false;
        }
    };
    watched_name(buf, len, truncated_flag, &mut ev.event_flags)
}

/// Records the directory `dentry` is an entry of (its `d_parent`) as the place of name `which`
/// (0: `name`, 1: `name2`), so the agent knows which entry the operation touched; left 0
/// (unknown) when a read fails.
#[inline(always)]
fn place(ev: &mut RawEvent, which: usize, dentry: *const u8) {
    let which = which & 1;
    let dir = offset(offsets::DENTRY_D_PARENT).and_then(|at| kernel_ptr(dentry, at));
    if let Some((dev, ino)) = dir.and_then(dentry_identity) {
        ev.dir_dev[which] = dev;
        ev.dir_ino[which] = ino;
    }
}

/// The kernel's `dev_t` (`d_inode->i_sb->s_dev`) and inode number (`d_inode->i_ino`) of the
/// file or directory `dentry` names.
#[inline(always)]
fn dentry_identity(dentry: *const u8) -> Option<(u64, u64)> {
    let inode = kernel_ptr(dentry, offset(offsets::DENTRY_D_INODE)?)?;
    let sb = kernel_ptr(inode, offset(offsets::INODE_I_SB)?)?;
    let (ino_at, dev_at) = (
        offset(offsets::INODE_I_INO)?,
        offset(offsets::SUPER_BLOCK_S_DEV)?,
    );
    // SAFETY: the checking helper, at offsets from the running kernel's BTF.
    let ino = unsafe { bpf_probe_read_kernel(inode.wrapping_add(ino_at).cast::<u64>()) }.ok()?;
    // SAFETY: as above; `dev_t` is a u32.
    let dev = unsafe { bpf_probe_read_kernel(sb.wrapping_add(dev_at).cast::<u32>()) }.ok()?;
    Some((dev as u64, ino))
}

/// `offsetof(struct dentry, d_name.name)`, once the agent wrote the offsets.
#[inline(always)]
fn name_offset() -> Option<usize> {
    if offset(offsets::READY)? == 0 {
        return None;
    }
    Some(offset(offsets::DENTRY_D_NAME)? + offset(offsets::QSTR_NAME)?)
}

/// A fresh scratch record with no names or fds.
#[inline(always)]
fn blank() -> Option<&'static mut RawEvent> {
    let ev = scratch()?;
    ev.event_flags = 0;
    ev.name[0] = 0;
    ev.name2[0] = 0;
    ev.fd = -1;
    ev.fd2 = -1;
    ev.dir_dev = [0; 2];
    ev.dir_ino = [0; 2];
    Some(ev)
}

/// Emits a path operation that completed with `ret` (0: success) by the current task.
#[inline(always)]
fn emit_done(ev: &mut RawEvent, event_kind: u32, ret: i64) {
    if ret != 0 {
        return;
    }
    fill_task(ev, event_kind, 0);
    ev.ret = 0;
    // SAFETY: the helper takes no argument and only reads the monotonic clock.
    ev.ts_ns = unsafe { bpf_ktime_get_ns() };
    emit(ev);
}

/// Emits what the current thread parked for `event_kind`, completed with `ret`, and un-parks it.
#[inline(always)]
fn complete_parked(event_kind: u32, ret: i64) {
    if gate(gates::PENDING) == 0 {
        return;
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    let Some(ev) = PENDING.get_ptr_mut(pid_tgid) else {
        return;
    };
    // SAFETY: `ev` points at this thread's PENDING entry, aligned and valid for the program run;
    // only this thread's programs use its key, and it is inside the hooked call.
    let ev = unsafe { &mut *ev };
    if ev.kind != event_kind {
        return;
    }
    if ret == 0 {
        ev.ret = 0;
        // SAFETY: the helper takes no argument and only reads the monotonic clock.
        ev.ts_ns = unsafe { bpf_ktime_get_ns() };
        emit(ev);
    }
    if PENDING.remove(pid_tgid).is_ok() {
        gate_add(gates::PENDING, u64::MAX);
    }
}

/// Before `vfs_rename(struct renamedata *rd)`: both names, parked if either is watched.
#[fentry(function = "vfs_rename")]
fn cr_fentry_vfs_rename(ctx: FEntryContext) -> i32 {
    let rd: *const u8 = ctx.arg(0);
    let (Some(old_at), Some(new_at)) = (
        offset(offsets::RENAMEDATA_OLD_DENTRY),
        offset(offsets::RENAMEDATA_NEW_DENTRY),
    ) else {
        return 0;
    };
    let (Some(old), Some(new)) = (kernel_ptr(rd, old_at), kernel_ptr(rd, new_at)) else {
        return 0;
    };
    let Some(ev) = blank() else { return 0 };
    let from = dentry_name(ev, 0, old);
    let to = dentry_name(ev, 1, new);
    if !(from || to) {
        count(stats::FILTERED);
        return 0;
    }
    place(ev, 0, old);
    place(ev, 1, new);
    park(ev, kind::RENAME, 0);
    0
}

/// After `vfs_rename(rd)`: its return value is context slot 1.
#[fexit(function = "vfs_rename")]
fn cr_fexit_vfs_rename(ctx: FExitContext) -> i32 {
    complete_parked(kind::RENAME, ctx.arg(1));
    0
}

/// After `vfs_unlink(idmap, dir, dentry, delegated_inode)` (6.1: `mnt_userns` first; the same
/// slots): the dentry keeps its name.
#[fexit(function = "vfs_unlink")]
fn cr_fexit_vfs_unlink(ctx: FExitContext) -> i32 {
    let ret: i64 = ctx.arg(4);
    if ret != 0 {
        return 0;
    }
    let Some(ev) = blank() else { return 0 };
    let dentry: *const u8 = ctx.arg(2);
    if !dentry_name(ev, 0, dentry) {
        count(stats::FILTERED);
        return 0;
    }
    place(ev, 0, dentry);
    emit_done(ev, kind::UNLINK, ret);
    0
}

/// After `vfs_link(old_dentry, idmap, dir, new_dentry, delegated_inode)`: the new name is matched.
#[fexit(function = "vfs_link")]
fn cr_fexit_vfs_link(ctx: FExitContext) -> i32 {
    let ret: i64 = ctx.arg(5);
    if ret != 0 {
        return 0;
    }
    let Some(ev) = blank() else { return 0 };
    let (existing, link): (*const u8, *const u8) = (ctx.arg(0), ctx.arg(3));
    if !dentry_name(ev, 1, link) {
        count(stats::FILTERED);
        return 0;
    }
    dentry_name(ev, 0, existing);
    place(ev, 0, existing);
    place(ev, 1, link);
    emit_done(ev, kind::LINK, ret);
    0
}

/// After `vfs_symlink(idmap, dir, dentry, oldname)`: the new symlink is matched; the target text
/// is kept for the agent.
#[fexit(function = "vfs_symlink")]
fn cr_fexit_vfs_symlink(ctx: FExitContext) -> i32 {
    let ret: i64 = ctx.arg(4);
    if ret != 0 {
        return 0;
    }
    let Some(ev) = blank() else { return 0 };
    let link: *const u8 = ctx.arg(2);
    if !dentry_name(ev, 1, link) {
        count(stats::FILTERED);
        return 0;
    }
    place(ev, 1, link);
    let target: *const u8 = ctx.arg(3);
    // SAFETY: the kernel copy of the target text, read with the checking helper; `ev.name` is a
    // NAME_LEN-byte buffer we own. A failed read leaves the target empty.
    if unsafe { bpf_probe_read_kernel_str_bytes(target, &mut ev.name) }.is_err() {
        ev.name[0] = 0;
    }
    emit_done(ev, kind::SYMLINK, ret);
    0
}

/// After `vfs_truncate(const struct path *path, loff_t length)` (truncate(2) by path).
#[fexit(function = "vfs_truncate")]
fn cr_fexit_vfs_truncate(ctx: FExitContext) -> i32 {
    let ret: i64 = ctx.arg(2);
    if ret != 0 {
        return 0;
    }
    let path: *const u8 = ctx.arg(0);
    let Some(dentry) = offset(offsets::PATH_DENTRY).and_then(|at| kernel_ptr(path, at)) else {
        return 0;
    };
    let Some(ev) = blank() else { return 0 };
    if !dentry_name(ev, 0, dentry) {
        count(stats::FILTERED);
        return 0;
    }
    place(ev, 0, dentry);
    emit_done(ev, kind::TRUNCATE, ret);
    0
}

/// After `fd_install(unsigned int fd, struct file *file)` (every new fd of the host: open, dup
/// by fcntl, a received fd): a file open for writing (`FMODE_WRITE`) on a watched name, not yet
/// known, is reported with its fd and remembered with its opener until its release. Hooked here,
/// not at `file_open`, because only the installed file is the one the process writes through
/// (overlayfs opens a second, inner file for it) and kernel-internal opens install no fd.
#[fexit(function = "fd_install")]
fn cr_fexit_fd_install(ctx: FExitContext) -> i32 {
    let fd: u32 = ctx.arg(0);
    let file: *const u8 = ctx.arg(1);
    let (Some(mode_at), Some(path_at), Some(dentry_at)) = (
        offset(offsets::FILE_F_MODE),
        offset(offsets::FILE_F_PATH),
        offset(offsets::PATH_DENTRY),
    ) else {
        return 0;
    };
    // SAFETY: the checking helper, at an offset from the running kernel's BTF.
    let mode = unsafe { bpf_probe_read_kernel(file.wrapping_add(mode_at).cast::<u32>()) };
    if mode.unwrap_or(0) & FMODE_WRITE == 0 {
        return 0;
    }
    let Some(dentry) = kernel_ptr(file, path_at + dentry_at) else {
        return 0;
    };
    let Some(ev) = blank() else { return 0 };
    if !dentry_name(ev, 0, dentry) {
        count(stats::FILTERED);
        return 0;
    }
    let key = file as u64;
    // SAFETY: only whether the entry exists is used; the value is never read.
    if unsafe { WRITE_OPEN_FILES.get(key) }.is_some() {
        // A second fd on a file already tracked (fcntl dup, a received fd): its release ends it.
        return 0;
    }
    place(ev, 0, dentry);
    ev.fd = fd as i32;
    fill_task(ev, kind::OPEN_WRITE, mode.unwrap_or(0) as u64);
    ev.ret = fd as i64;
    // SAFETY: the helper takes no argument and only reads the monotonic clock.
    ev.ts_ns = unsafe { bpf_ktime_get_ns() };
    let (file_dev, file_ino) = dentry_identity(dentry).unwrap_or((0, 0));
    let opener = WriteOpen {
        cgroup_id: ev.cgroup_id,
        file_dev,
        file_ino,
        pid: ev.pid,
        tgid: ev.tgid,
        uid: ev.uid,
        gid: ev.gid,
        fd: ev.fd,
        _pad: 0,
        comm: ev.comm,
    };
    if WRITE_OPEN_FILES.insert(key, opener, 0).is_ok() {
        gate_add_files(1);
    } else {
        count(stats::TRACK_LOST);
    }
    emit(ev);
    0
}

/// The `file_free_security` hook: the file's last reference is gone. A tracked write-open ends
/// here, attributed to its opener: `exit` when the opener itself is exiting, `close` otherwise.
#[lsm(hook = "file_free_security")]
fn cr_lsm_file_free(ctx: LsmContext) -> i32 {
    if files_gate() == 0 {
        return 0;
    }
    let file: u64 = ctx.arg(0);
    // SAFETY: the value is copied at once; its memory stays valid for the run.
    let Some(opener) = (unsafe { WRITE_OPEN_FILES.get(file) }).copied() else {
        return 0;
    };
    if WRITE_OPEN_FILES.remove(file).is_ok() {
        gate_add_files(u64::MAX);
    }
    let Some(ev) = blank() else { return 0 };
    let event_kind = if releaser_is_exiting_opener(opener.tgid) {
        kind::EXIT
    } else {
        kind::CLOSE
    };
    ev.kind = event_kind;
    ev.syscall_flags = 0;
    ev.cgroup_id = opener.cgroup_id;
    ev.pid = opener.pid;
    ev.tgid = opener.tgid;
    ev.uid = opener.uid;
    ev.gid = opener.gid;
    ev.comm = opener.comm;
    ev.fd = opener.fd;
    // The file the write ended on (slot 0 of a close, as the syscall hooks report it).
    ev.dir_dev[0] = opener.file_dev;
    ev.dir_ino[0] = opener.file_ino;
    ev.ret = 0;
    // SAFETY: the helper takes no argument and only reads the monotonic clock.
    ev.ts_ns = unsafe { bpf_ktime_get_ns() };
    emit(ev);
    0
}

/// True when the current task belongs to `tgid` and is exiting (`PF_EXITING`).
#[inline(always)]
fn releaser_is_exiting_opener(tgid: u32) -> bool {
    if (bpf_get_current_pid_tgid() >> 32) as u32 != tgid {
        return false;
    }
    let Some(flags_at) = offset(offsets::TASK_FLAGS) else {
        return false;
    };
    // SAFETY: the helper takes no argument and returns the current task.
    let task = unsafe { bpf_get_current_task() } as *const u8;
    // SAFETY: the checking helper, at an offset from the running kernel's BTF.
    let task_flags = unsafe { bpf_probe_read_kernel(task.wrapping_add(flags_at).cast::<u32>()) };
    task_flags.unwrap_or(0) & PF_EXITING != 0
}

#[inline(always)]
fn files_gate() -> u64 {
    WRITE_OPEN_GATE.get(0).copied().unwrap_or(0)
}

#[inline(always)]
fn gate_add_files(delta: u64) {
    if let Some(p) = WRITE_OPEN_GATE.get_ptr_mut(0) {
        // SAFETY: `p` is the u64 slot of WRITE_OPEN_GATE, valid and aligned for the program run;
        // shared by every CPU, so the add is atomic (BPF_XADD).
        unsafe {
            core::intrinsics::atomic_xadd::<u64, u64, { core::intrinsics::AtomicOrdering::Relaxed }>(
                p, delta,
            )
        };
    }
}
