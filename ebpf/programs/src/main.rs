//! certreload's kernel programs: see every syscall that can change a watched certificate file, drop
//! everything else as early and cheaply as possible, and hand the rest to the agent as hints.
//!
//! Flow for one syscall:
//! 1. entry (raw `sys_enter` dispatching on the number, or one classic `sys_enter_*` program):
//!    cheapest checks first (open flags, "is any fd tracked at all"), then the path argument is read
//!    and its basename hashed in one bounded pass; unwatched names stop here (`FILTERED`).
//! 2. the matching entry is parked in `PENDING` under the thread id;
//! 3. exit (`sys_exit` / `sys_exit_*`): only if something is parked (one array load otherwise), the
//!    result is attached, fd tracking is updated and the event goes out on the ring buffer. Events are
//!    emitted at exit so the agent never re-reads a file before the syscall has taken effect.
//!
//! Exceptions that emit at entry and so need no exit hook in the tracepoint strategy: close,
//! close_range and ftruncate (the bytes written are in place already), and write-opens and fcntl
//! dups (no change is reported for them: they only start tracking, and the agent resolves the new
//! fd from `/proc/<tgid>/fd`, see `track_unresolved`).
//!
//! Every `unsafe` block says why it is sound. Three reasons recur: a map value pointer
//! (`get_ptr_mut`, `get`) points into memory the kernel keeps valid for the whole program run, even
//! if the entry is deleted meanwhile (hash-map elements are freed only after an RCU grace period
//! or reused in place, never unmapped); a `bpf_probe_read_*` helper checks the address it reads
//! and fails with an error instead of faulting; and a raw context read relies on the tracepoint's
//! record layout, described where it is used.
#![no_std]
#![no_main]
#![expect(
    internal_features,
    reason = "atomic add on map values (BPF_XADD): the BPF target exposes no `Atomic*::fetch_add`, only core::intrinsics::atomic_xadd"
)]
#![feature(core_intrinsics)]

mod vfs_hooks;

use core::intrinsics::{atomic_xadd, AtomicOrdering};

use aya_ebpf::{
    bindings::{BPF_ANY, BPF_NOEXIST},
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid,
        bpf_probe_read_kernel, bpf_probe_read_user, bpf_probe_read_user_str_bytes,
        generated::{bpf_get_current_cgroup_id, bpf_get_current_task, bpf_ktime_get_ns},
    },
    macros::{map, raw_tracepoint, tracepoint},
    maps::{Array, HashMap, PerCpuArray, RingBuf},
    programs::{RawTracePointContext, TracePointContext},
    EbpfContext,
};
use certreload_common::{
    basename_hash_step, cwd, flags, gates, kind, stats, suffix_bit, suffix_key_step,
    syscalls::{open_flags, x86_64 as nr, AT_FDCWD, F_DUPFD, F_DUPFD_CLOEXEC},
    RawEvent, COMM_LEN, FNV_OFFSET, MAX_TRACKED, MAX_WATCHED_NAMES, NAME_LEN, OPEN_WRITE_INTENT,
    RINGBUF_BYTES, SUFFIX_LEN, SUFFIX_WORDS,
};

#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(RINGBUF_BYTES, 0);
#[map]
static WATCHED_NAMES: HashMap<u64, u8> = HashMap::with_max_entries(MAX_WATCHED_NAMES, 0);
#[map]
static SUFFIX_BITS: Array<u64> = Array::with_max_entries(SUFFIX_WORDS, 0);
#[map]
static TRACKED_FDS: HashMap<u64, u64> = HashMap::with_max_entries(MAX_TRACKED, 0);
#[map]
static TRACKED_TGIDS: HashMap<u32, u32> = HashMap::with_max_entries(MAX_TRACKED, 0);
#[map]
static UNRESOLVED_TGIDS: HashMap<u32, u8> = HashMap::with_max_entries(MAX_TRACKED, 0);
#[map]
static PENDING: HashMap<u64, RawEvent> = HashMap::with_max_entries(MAX_TRACKED, 0);
#[map]
static GATES: Array<u64> = Array::with_max_entries(gates::LEN, 0);
#[map]
static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(stats::LEN, 0);
/// Struct member offsets for reading the caller's working directory ([`cwd`]), written by the
/// agent at load from the kernel's BTF.
#[map]
static CWD_OFFSETS: Array<u32> = Array::with_max_entries(cwd::LEN, 0);
/// Per-CPU scratch event: too large for the 512-byte BPF stack.
#[map]
static SCRATCH: PerCpuArray<RawEvent> = PerCpuArray::with_max_entries(1, 0);

// ---------------------------------------------------------------------------------------------
// Small helpers
// ---------------------------------------------------------------------------------------------

#[inline(always)]
fn count(stat: u32) {
    if let Some(p) = STATS.get_ptr_mut(stat) {
        // SAFETY: `p` is this CPU's slot of STATS, valid and aligned for the program run. Programs
        // run with migration disabled, so no other CPU writes this slot: a plain add is enough.
        unsafe { *p += 1 };
    }
}

#[inline(always)]
fn gate(slot: u32) -> u64 {
    match GATES.get(slot) {
        Some(v) => *v,
        None => 0,
    }
}

#[inline(always)]
fn gate_add(slot: u32, delta: u64) {
    if let Some(p) = GATES.get_ptr_mut(slot) {
        // SAFETY: `p` is a u64 slot of the GATES array, valid and 8-byte aligned for the program
        // run (array values are never freed while the map exists). The slot is shared by every
        // CPU, so the add is atomic (BPF_XADD); a negative delta is passed two's-complement.
        unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(p, delta) };
    }
}

#[inline(always)]
fn fd_key(tgid: u32, fd: i64) -> u64 {
    ((tgid as u64) << 32) | (fd as u64 & 0xffff_ffff)
}

#[inline(always)]
fn is_tracked(tgid: u32, fd: i64) -> bool {
    // SAFETY: only whether the entry exists is used; the value reference, which another CPU or
    // the agent may change or delete meanwhile, is never read.
    unsafe { TRACKED_FDS.get(fd_key(tgid, fd)).is_some() }
}

/// Reads a user path into `buf` and tells whether its basename is watched.
///
/// Two stages, because this runs for every write-open and rename on the host: first the last (up
/// to) 8 bytes of the basename, read backwards from the end, are looked up in the `SUFFIX_BITS` bitmap (a few
/// instructions; almost every unrelated name stops here); only then is the whole basename hashed
/// and looked up in `WATCHED_NAMES`, which makes the match exact.
#[inline(always)]
fn read_name(ptr: u64, buf: &mut [u8; NAME_LEN], truncated_flag: u32, ev_flags: &mut u32) -> bool {
    // SAFETY: `ptr` is the syscall's user path argument, possibly bogus: the helper checks the
    // address and returns an error instead of faulting. `buf` is a NAME_LEN-byte buffer we own.
    let len = match unsafe { bpf_probe_read_user_str_bytes(ptr as *const u8, buf) } {
        Ok(s) => s.len(),
        Err(_) => {
            buf[0] = 0;
            return false;
        }
    };
    watched_name(buf, len, truncated_flag, ev_flags)
}

/// Whether the name in `buf` (`len` bytes before its NUL) has a watched basename, by the two
/// stages [`read_name`] describes; a name cut at [`NAME_LEN`] is let through with `truncated_flag`
/// set. The fentry strategy (`vfs_hooks`) filters the dentry names it reads with it.
#[inline(always)]
fn watched_name(buf: &[u8; NAME_LEN], len: usize, truncated_flag: u32, ev_flags: &mut u32) -> bool {
    if len >= NAME_LEN - 1 {
        // The basename is beyond what we kept: let userspace decide.
        *ev_flags |= truncated_flag;
        return true;
    }
    let mut key = 0u64;
    let mut i = 0;
    while i < SUFFIX_LEN {
        if i >= len {
            break;
        }
        // The mask keeps the index provably in bounds for the verifier.
        match suffix_key_step(key, i, buf[(len - 1 - i) & (NAME_LEN - 1)]) {
            Some(next) => key = next,
            None => break,
        }
        i += 1;
    }
    let (word, bit) = suffix_bit(key);
    match SUFFIX_BITS.get(word) {
        Some(bits) if bits & (1 << bit) != 0 => {}
        _ => return false,
    }
    let mut hash = FNV_OFFSET;
    let mut i = 0;
    while i < NAME_LEN {
        let c = buf[i];
        if c == 0 {
            break;
        }
        hash = basename_hash_step(hash, c);
        i += 1;
    }
    // SAFETY: only whether the entry exists is used; the value reference, which the agent may
    // change or delete meanwhile, is never read.
    unsafe { WATCHED_NAMES.get(hash).is_some() }
}

#[inline(always)]
fn cwd_offset(slot: u32) -> u64 {
    CWD_OFFSETS.get(slot).map_or(0, |v| *v as u64)
}

/// Reads kernel memory at `addr` with the checking helper.
#[inline(always)]
fn kernel_read<T>(addr: u64) -> Option<T> {
    // SAFETY: `addr` is computed from kernel pointers and offsets from the kernel's BTF; the
    // helper checks the address and returns an error instead of faulting.
    unsafe { bpf_probe_read_kernel(addr as *const T) }.ok()
}

/// The caller's working directory as (kernel `dev_t`, inode): `current->fs->pwd.dentry->d_inode`,
/// through the offsets the agent resolved ([`cwd`]); (0, 0) before it wrote them or when a read
/// fails.
#[inline(always)]
fn cwd_identity() -> (u64, u64) {
    if cwd_offset(cwd::READY) == 0 {
        return (0, 0);
    }
    // SAFETY: the helper takes no argument and returns the current task's address.
    let task = unsafe { bpf_get_current_task() };
    let read = || -> Option<(u64, u64)> {
        let fs: u64 = kernel_read(task + cwd_offset(cwd::TASK_FS))?;
        let dentry: u64 = kernel_read(fs + cwd_offset(cwd::FS_PWD) + cwd_offset(cwd::PATH_DENTRY))?;
        let inode: u64 = kernel_read(dentry + cwd_offset(cwd::DENTRY_D_INODE))?;
        inode_identity(inode)
    };
    read().unwrap_or((0, 0))
}

/// (kernel `dev_t`, inode) of an inode pointer, (0, 0) when a read fails.
#[inline(always)]
fn inode_identity(inode: u64) -> Option<(u64, u64)> {
    let ino: u64 = kernel_read(inode + cwd_offset(cwd::INODE_I_INO))?;
    let sb: u64 = kernel_read(inode + cwd_offset(cwd::INODE_I_SB))?;
    let dev: u32 = kernel_read(sb + cwd_offset(cwd::SB_S_DEV))?;
    Some((dev as u64, ino))
}

/// The file behind the caller's `fd` when it is open for writing, as (kernel `dev_t`, inode):
/// `current->files->fdt->fd[fd]->f_inode`; (0, 0) otherwise. Read at a close's entry, while the
/// fd still refers to it: the agent then knows which file a write ended on, even when the writer
/// is gone before it reads the event.
#[inline(always)]
fn written_file(fd: i64) -> (u64, u64) {
    if cwd_offset(cwd::READY) == 0 || fd < 0 {
        return (0, 0);
    }
    // SAFETY: the helper takes no argument and returns the current task's address.
    let task = unsafe { bpf_get_current_task() };
    let read = || -> Option<(u64, u64)> {
        let files: u64 = kernel_read(task + cwd_offset(cwd::TASK_FILES))?;
        let fdt: u64 = kernel_read(files + cwd_offset(cwd::FILES_FDT))?;
        let max: u32 = kernel_read(fdt + cwd_offset(cwd::FDTABLE_MAX_FDS))?;
        if fd as u64 >= max as u64 {
            return None;
        }
        let array: u64 = kernel_read(fdt + cwd_offset(cwd::FDTABLE_FD))?;
        let file: u64 = kernel_read(array + 8 * fd as u64)?;
        let mode: u32 = kernel_read(file + cwd_offset(cwd::FILE_F_MODE))?;
        if mode & cwd::FMODE_WRITE == 0 {
            return None;
        }
        let inode: u64 = kernel_read(file + cwd_offset(cwd::FILE_F_INODE))?;
        inode_identity(inode)
    };
    read().unwrap_or((0, 0))
}

/// Records where name argument `which` starts when it is relative to the working directory (its
/// first byte is not `/` and `dirfd` is `AT_FDCWD`), so the agent places it even if the writer is
/// gone before it reads the event; clears it otherwise (the scratch event is reused).
#[inline(always)]
fn note_start(ev: &mut RawEvent, which: usize, dirfd: i64) {
    let relative = match which {
        0 => ev.name[0] != b'/',
        _ => ev.name2[0] != b'/',
    };
    let (dev, ino) = if dirfd == AT_FDCWD && relative {
        cwd_identity()
    } else {
        (0, 0)
    };
    let i = which & 1;
    ev.dir_dev[i] = dev;
    ev.dir_ino[i] = ino;
}

#[inline(always)]
fn scratch() -> Option<&'static mut RawEvent> {
    // SAFETY: `p` is this CPU's only SCRATCH slot, valid and aligned for the program run. Programs
    // run with migration disabled and do not nest on a CPU, and every program takes the reference
    // afresh and drops it before it returns, so this `&mut` is the only reference to the slot.
    SCRATCH.get_ptr_mut(0).map(|p| unsafe { &mut *p })
}

/// Fills in who is making the syscall.
#[inline(always)]
fn fill_task(ev: &mut RawEvent, event_kind: u32, syscall_flags: u64) -> u64 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let uid_gid = bpf_get_current_uid_gid();
    ev.kind = event_kind;
    ev.syscall_flags = syscall_flags;
    ev.pid = pid_tgid as u32;
    ev.tgid = (pid_tgid >> 32) as u32;
    ev.uid = uid_gid as u32;
    ev.gid = (uid_gid >> 32) as u32;
    // SAFETY: the helper takes no argument and only reads the current task's cgroup.
    ev.cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    ev.comm = bpf_get_current_comm().unwrap_or([0; COMM_LEN]);
    pid_tgid
}

/// Fills the writer's identity, then parks the event until the syscall returns.
#[inline(always)]
#[expect(
    clippy::needless_borrows_for_generic_args,
    reason = "passing `*ev` by value would copy the event (over 600 bytes) onto the 512-byte BPF stack"
)]
fn park(ev: &mut RawEvent, event_kind: u32, syscall_flags: u64) {
    let pid_tgid = fill_task(ev, event_kind, syscall_flags);
    if PENDING.insert(pid_tgid, &*ev, BPF_NOEXIST as u64).is_ok() {
        gate_add(gates::PENDING, 1);
    } else if PENDING.insert(pid_tgid, &*ev, BPF_ANY as u64).is_err() {
        count(stats::PENDING_LOST);
    }
}

/// Emits at syscall entry, for operations whose effect does not depend on the syscall completing
/// (closing an fd: the bytes written through it are already in place). Saves the exit hook.
#[inline(always)]
fn emit_now(ev: &mut RawEvent, event_kind: u32, syscall_flags: u64) {
    fill_task(ev, event_kind, syscall_flags);
    ev.ret = 0;
    // SAFETY: the helper takes no argument and only reads the monotonic clock.
    ev.ts_ns = unsafe { bpf_ktime_get_ns() };
    emit(ev);
}

#[inline(always)]
fn emit(ev: &RawEvent) {
    match EVENTS.output::<RawEvent>(ev, 0) {
        Ok(()) => count(stats::EMITTED),
        Err(_) => count(stats::DROPPED),
    }
}

#[inline(always)]
fn track(tgid: u32, fd: i64, name_hash: u64) {
    if TRACKED_FDS
        .insert(fd_key(tgid, fd), name_hash, BPF_NOEXIST as u64)
        .is_err()
    {
        // Already tracked (dup2 onto a tracked fd) or table full.
        if !is_tracked(tgid, fd) {
            count(stats::TRACK_LOST);
        }
        return;
    }
    count_tracked_fd(tgid);
}

/// Counts one more tracked fd held by `tgid`: in the global gate first (from then on, fd syscalls
/// look at the maps), then in the process's own count, inserted at 1 when it has none. Shared by
/// [`track`] (an fd the kernel knows) and [`track_unresolved`] (an fd only the agent can find).
#[inline(always)]
fn count_tracked_fd(tgid: u32) {
    gate_add(gates::TRACKED_FDS, 1);
    match TRACKED_TGIDS.get_ptr_mut(tgid) {
        Some(p) => {
            // SAFETY: `p` points at a u32 value of TRACKED_TGIDS, aligned, and valid for the
            // program run even if another CPU deletes the entry meanwhile (see the crate doc).
            // Several threads of the process may count at once, so the add is atomic (BPF_XADD).
            unsafe { atomic_xadd::<u32, u32, { AtomicOrdering::Relaxed }>(p, 1) };
        }
        None => {
            // A full table only costs this process its exit, exec and close_range events: its
            // fds stay tracked and their closes reported, and the resync sees the rest. Two
            // threads inserting at once: one insert wins and one count is lost, which only
            // over-counts the gate (the exit subtracts the map's count): never an event lost.
            TRACKED_TGIDS.insert(tgid, 1, BPF_ANY as u64).ok();
        }
    }
}

#[inline(always)]
fn untrack(tgid: u32, fd: i64) {
    if TRACKED_FDS.remove(fd_key(tgid, fd)).is_err() {
        return;
    }
    gate_add(gates::TRACKED_FDS, u64::MAX);
    if let Some(p) = TRACKED_TGIDS.get_ptr_mut(tgid) {
        // SAFETY: as in `count_tracked_fd`: an aligned u32 value of TRACKED_TGIDS, valid for the run;
        // the add is atomic. The fetched value is not used: BPF_FETCH atomics need kernel 5.12,
        // we target 5.8.
        unsafe { atomic_xadd::<u32, u32, { AtomicOrdering::Relaxed }>(p, u32::MAX) };
        // SAFETY: the same valid, aligned pointer; the volatile read sees other CPUs' adds.
        if unsafe { core::ptr::read_volatile(p) } == 0 {
            // An error means another thread's untrack or the exit removed it first.
            TRACKED_TGIDS.remove(tgid).ok();
        }
    }
}

/// A write-open (or an fcntl dup of a tracked fd) reported at syscall entry, whose fd only the agent
/// can resolve (from `/proc/<tgid>/fd`): the process is counted as holding one more tracked fd (the
/// agent's entry for the fd it finds takes that count over, and its close or the exit gives it
/// back), and it is marked in `UNRESOLVED_TGIDS`, so its fd syscalls are reported until the agent
/// has resolved the fd and removes the mark. This is what lets opens and fcntl run no exit hook.
#[inline(always)]
fn track_unresolved(tgid: u32) {
    count_tracked_fd(tgid);
    if UNRESOLVED_TGIDS.insert(tgid, 1, BPF_ANY as u64).is_err() {
        count(stats::TRACK_LOST);
    }
}

#[inline(always)]
fn is_unresolved(tgid: u32) -> bool {
    // SAFETY: only whether the entry exists is used; the value is never read.
    unsafe { UNRESOLVED_TGIDS.get(tgid) }.is_some()
}

#[inline(always)]
fn current_tgid() -> u32 {
    (bpf_get_current_pid_tgid() >> 32) as u32
}

// ---------------------------------------------------------------------------------------------
// Syscall entry logic, shared by both attachment strategies. Arguments arrive as raw u64s.
// ---------------------------------------------------------------------------------------------

/// open/openat/creat: only opens that may write are looked at. `at_entry` (the tracepoint
/// strategy, which runs no exit hook on opens): the event goes out now, without the fd, and the
/// process is marked for the agent to resolve it ([`track_unresolved`]); otherwise (the raw
/// strategy, whose exit program runs on every syscall anyway) it is parked until the fd is known.
#[inline(always)]
fn enter_open(dirfd: i64, path: u64, open_flags: u64, at_entry: bool) {
    if open_flags & OPEN_WRITE_INTENT == 0 {
        return;
    }
    let Some(ev) = scratch() else { return };
    ev.event_flags = 0;
    ev.name2[0] = 0;
    if !read_name(
        path,
        &mut ev.name,
        flags::NAME_TRUNCATED,
        &mut ev.event_flags,
    ) {
        count(stats::FILTERED);
        return;
    }
    ev.fd = -1;
    // Where a relative name starts (AT_FDCWD or a directory fd): the agent places the name.
    ev.fd2 = dirfd as i32;
    note_start(ev, 0, dirfd);
    ev.dir_dev[1] = 0;
    ev.dir_ino[1] = 0;
    if at_entry {
        track_unresolved(current_tgid());
        emit_now(ev, kind::OPEN_WRITE, open_flags);
    } else {
        park(ev, kind::OPEN_WRITE, open_flags);
    }
}

/// openat2: the flags live in user memory (`struct open_how`, `flags` first).
#[inline(always)]
fn enter_openat2(dirfd: i64, path: u64, how: u64, at_entry: bool) {
    // SAFETY: `how` is the syscall's user pointer, possibly bogus: the helper checks the address
    // and returns an error (then no flags: the open is ignored) instead of faulting.
    let open_flags = unsafe { bpf_probe_read_user(how as *const u64) }.unwrap_or(0);
    enter_open(dirfd, path, open_flags, at_entry);
}

/// unlink/truncate: one path.
#[inline(always)]
fn enter_path(event_kind: u32, dirfd: i64, path: u64, syscall_flags: u64) {
    let Some(ev) = scratch() else { return };
    ev.event_flags = 0;
    ev.name2[0] = 0;
    if !read_name(
        path,
        &mut ev.name,
        flags::NAME_TRUNCATED,
        &mut ev.event_flags,
    ) {
        count(stats::FILTERED);
        return;
    }
    // Where a relative name starts (AT_FDCWD or a directory fd): the agent places the name.
    ev.fd = dirfd as i32;
    ev.fd2 = -1;
    note_start(ev, 0, dirfd);
    ev.dir_dev[1] = 0;
    ev.dir_ino[1] = 0;
    park(ev, event_kind, syscall_flags);
}

/// A path argument and the directory fd a relative one starts from (`AT_FDCWD` for the working
/// directory).
#[derive(Clone, Copy)]
struct Arg {
    dirfd: i64,
    path: u64,
}

/// A path argument relative to the working directory (the syscalls without a directory fd).
#[inline(always)]
fn cwd(path: u64) -> Arg {
    Arg {
        dirfd: AT_FDCWD,
        path,
    }
}

/// A path argument relative to directory fd `dirfd`.
#[inline(always)]
fn at(dirfd: u64, path: u64) -> Arg {
    Arg {
        dirfd: dirfd as i32 as i64,
        path,
    }
}

/// rename/link/symlink: two paths; either one being watched is enough. For symlink the first
/// argument is the link's target text, which is kept for the agent but not matched.
#[inline(always)]
fn enter_two_paths(event_kind: u32, from: Arg, to: Arg, syscall_flags: u64, match_from: bool) {
    let Some(ev) = scratch() else { return };
    ev.event_flags = 0;
    let from_watched = read_name(
        from.path,
        &mut ev.name,
        flags::NAME_TRUNCATED,
        &mut ev.event_flags,
    );
    let to_watched = read_name(
        to.path,
        &mut ev.name2,
        flags::NAME2_TRUNCATED,
        &mut ev.event_flags,
    );
    if !(to_watched || (match_from && from_watched)) {
        count(stats::FILTERED);
        return;
    }
    // Where each relative name starts (AT_FDCWD or a directory fd): the agent places the names.
    ev.fd = from.dirfd as i32;
    ev.fd2 = to.dirfd as i32;
    note_start(ev, 0, from.dirfd);
    note_start(ev, 1, to.dirfd);
    park(ev, event_kind, syscall_flags);
}

/// close/ftruncate/dup*/fcntl: only fds that are tracked matter, and every fd of a process whose
/// write-open the agent has not resolved yet; when none is tracked anywhere (the normal state) this
/// is a single array load.
#[inline(always)]
fn enter_fd(event_kind: u32, fd: u64, fd2: i64) {
    if gate(gates::TRACKED_FDS) == 0 {
        return;
    }
    let tgid = current_tgid();
    let fd = fd as i64;
    // dup2/dup3 onto a tracked fd closes it implicitly, so either side may matter.
    if !is_tracked(tgid, fd) && !(fd2 >= 0 && is_tracked(tgid, fd2)) && !is_unresolved(tgid) {
        return;
    }
    let Some(ev) = scratch() else { return };
    ev.event_flags = 0;
    ev.name[0] = 0;
    ev.name2[0] = 0;
    ev.fd = fd as i32;
    ev.fd2 = fd2 as i32;
    ev.dir_dev[1] = 0;
    ev.dir_ino[1] = 0;
    match event_kind {
        kind::CLOSE => {
            (ev.dir_dev[0], ev.dir_ino[0]) = written_file(fd);
            // Linux releases the fd even when close reports an error.
            untrack(tgid, fd);
            emit_now(ev, event_kind, 0);
        }
        kind::FTRUNCATE => {
            (ev.dir_dev[0], ev.dir_ino[0]) = (0, 0);
            emit_now(ev, event_kind, 0);
        }
        _ => {
            (ev.dir_dev[0], ev.dir_ino[0]) = (0, 0);
            park(ev, event_kind, 0);
        }
    }
}

/// fcntl: only F_DUPFD*. `at_entry` (the tracepoint strategy, no exit hook on fcntl): a dup of a
/// tracked fd goes out now without the new fd (`fd2` = -1), which the agent resolves from
/// `/proc/<tgid>/fd` as it does for opens ([`track_unresolved`]).
#[inline(always)]
fn enter_fcntl(fd: u64, cmd: u64, at_entry: bool) {
    if cmd != F_DUPFD && cmd != F_DUPFD_CLOEXEC {
        return;
    }
    if !at_entry {
        enter_fd(kind::DUP, fd, -1);
        return;
    }
    if gate(gates::TRACKED_FDS) == 0 {
        return;
    }
    let tgid = current_tgid();
    if !is_tracked(tgid, fd as i64) {
        return;
    }
    let Some(ev) = scratch() else { return };
    ev.event_flags = 0;
    ev.name[0] = 0;
    ev.name2[0] = 0;
    ev.fd = fd as i32;
    ev.fd2 = -1;
    track_unresolved(tgid);
    emit_now(ev, kind::DUP, cmd);
}

#[inline(always)]
fn enter_close_range(first: u64, last: u64) {
    if gate(gates::TRACKED_FDS) == 0 {
        return;
    }
    let tgid = current_tgid();
    // SAFETY: only whether the entry exists is used; the value is never read.
    if unsafe { TRACKED_TGIDS.get(tgid) }.is_none() {
        return;
    }
    let Some(ev) = scratch() else { return };
    ev.event_flags = 0;
    ev.name[0] = 0;
    ev.name2[0] = 0;
    ev.fd = first.min(i32::MAX as u64) as i32;
    ev.fd2 = last.min(i32::MAX as u64) as i32;
    emit_now(ev, kind::CLOSE_RANGE, 0);
}

// ---------------------------------------------------------------------------------------------
// Syscall exit: attach the result, update fd tracking, emit.
// ---------------------------------------------------------------------------------------------

#[inline(always)]
fn exit_syscall(ret: i64) {
    if gate(gates::PENDING) == 0 {
        return;
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    let Some(ev) = PENDING.get_ptr_mut(pid_tgid) else {
        return;
    };
    // SAFETY: `ev` points at this thread's PENDING entry, aligned and valid for the program run.
    // Only this thread's entry and exit programs use its key, and the thread is inside the
    // syscall, so nothing else holds a reference to it.
    let ev = unsafe { &mut *ev };
    ev.ret = ret;
    // SAFETY: the helper takes no argument and only reads the monotonic clock.
    ev.ts_ns = unsafe { bpf_ktime_get_ns() };
    let tgid = ev.tgid;
    let send = match ev.kind {
        kind::OPEN_WRITE => {
            if ret >= 0 {
                ev.fd = ret as i32;
                let mut hash = FNV_OFFSET;
                let mut i = 0;
                while i < NAME_LEN {
                    let c = ev.name[i];
                    if c == 0 {
                        break;
                    }
                    hash = basename_hash_step(hash, c);
                    i += 1;
                }
                track(tgid, ret, hash);
            }
            ret >= 0
        }
        kind::DUP => {
            if ret >= 0 {
                let old = ev.fd as i64;
                ev.fd2 = ret as i32;
                // SAFETY: the value is copied at once; another thread of the process closing the
                // fd meanwhile can only make it stale, and its memory stays valid for the run.
                let hash = unsafe { TRACKED_FDS.get(fd_key(tgid, old)) }.copied();
                if ret != old {
                    untrack(tgid, ret);
                    if let Some(hash) = hash {
                        track(tgid, ret, hash);
                    }
                }
            }
            ret >= 0
        }
        _ => ret == 0,
    };
    if send {
        emit(ev);
    }
    if PENDING.remove(pid_tgid).is_ok() {
        gate_add(gates::PENDING, u64::MAX);
    }
}

/// A process with tracked fds is exiting: its fds are released without close. Only the thread-group
/// leader's exit is reported (the fd table is shared by the group).
#[inline(always)]
fn process_exit() {
    if gate(gates::TRACKED_FDS) == 0 {
        return;
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    if pid_tgid as u32 != tgid {
        return;
    }
    // SAFETY: the value is copied at once, and its memory stays valid for the run (the exiting
    // leader is the last thread of its group: nothing else changes this entry).
    let Some(held) = (unsafe { TRACKED_TGIDS.get(tgid) }).copied() else {
        return;
    };
    // An error means a last untrack removed it first: it is gone either way.
    TRACKED_TGIDS.remove(tgid).ok();
    // Absent unless a write-open of the process was still unresolved.
    UNRESOLVED_TGIDS.remove(tgid).ok();
    // The agent deletes this process's TRACKED_FDS entries; the gate is corrected here.
    gate_add(gates::TRACKED_FDS, (held as u64).wrapping_neg());
    emit_task_event(kind::EXIT);
}

/// A process with tracked fds called execve: close-on-exec fds vanished without a close.
#[inline(always)]
fn process_exec() {
    if gate(gates::TRACKED_FDS) == 0 {
        return;
    }
    let tgid = current_tgid();
    // SAFETY: only whether the entry exists is used; the value is never read.
    if unsafe { TRACKED_TGIDS.get(tgid) }.is_none() {
        return;
    }
    emit_task_event(kind::EXEC);
}

#[inline(always)]
fn emit_task_event(event_kind: u32) {
    let Some(ev) = scratch() else { return };
    ev.event_flags = 0;
    ev.fd = -1;
    ev.fd2 = -1;
    ev.name[0] = 0;
    ev.name2[0] = 0;
    emit_now(ev, event_kind, 0);
}

// ---------------------------------------------------------------------------------------------
// Strategy 1: one raw tracepoint on sys_enter / sys_exit, dispatching on the syscall number.
// ---------------------------------------------------------------------------------------------

/// Reads syscall argument `n` from the `struct pt_regs` a raw `sys_enter` tracepoint receives.
#[inline(always)]
fn regs_arg(regs: *const u8, n: usize) -> u64 {
    let off = nr::PT_REGS_ARG_OFFSETS[n];
    // SAFETY: `regs` is the `struct pt_regs *` the raw tracepoint passes, and every offset in
    // PT_REGS_ARG_OFFSETS lies inside that struct; the helper checks the address it reads and
    // returns an error (then 0) instead of faulting.
    unsafe { bpf_probe_read_kernel(regs.add(off) as *const u64) }.unwrap_or(0)
}

/// Every syscall entry (raw strategy): dispatches on the number to the entry logic above.
#[raw_tracepoint(tracepoint = "sys_enter")]
fn cr_sys_enter(ctx: RawTracePointContext) -> i32 {
    let id: i64 = ctx.arg(1);
    // Most syscalls are none of ours: leave after one comparison chain on a register value.
    let regs: *const u8 = ctx.arg(0);
    let a = |n| regs_arg(regs, n);
    match id {
        nr::CLOSE => enter_fd(kind::CLOSE, a(0), -1),
        nr::OPENAT => enter_open(a(0) as i32 as i64, a(1), a(2), false),
        nr::OPEN => enter_open(AT_FDCWD, a(0), a(1), false),
        nr::CREAT => enter_open(AT_FDCWD, a(0), open_flags::CREAT, false),
        nr::OPENAT2 => enter_openat2(a(0) as i32 as i64, a(1), a(2), false),
        nr::DUP => enter_fd(kind::DUP, a(0), -1),
        nr::DUP2 => enter_fd(kind::DUP, a(0), a(1) as i64),
        nr::DUP3 => enter_fd(kind::DUP, a(0), a(1) as i64),
        nr::FCNTL => enter_fcntl(a(0), a(1), false),
        nr::CLOSE_RANGE => enter_close_range(a(0), a(1)),
        nr::FTRUNCATE => enter_fd(kind::FTRUNCATE, a(0), -1),
        nr::RENAME => enter_two_paths(kind::RENAME, cwd(a(0)), cwd(a(1)), 0, true),
        nr::RENAMEAT => enter_two_paths(kind::RENAME, at(a(0), a(1)), at(a(2), a(3)), 0, true),
        nr::RENAMEAT2 => enter_two_paths(kind::RENAME, at(a(0), a(1)), at(a(2), a(3)), a(4), true),
        nr::LINK => enter_two_paths(kind::LINK, cwd(a(0)), cwd(a(1)), 0, false),
        nr::LINKAT => enter_two_paths(kind::LINK, at(a(0), a(1)), at(a(2), a(3)), a(4), false),
        nr::SYMLINK => enter_two_paths(kind::SYMLINK, cwd(a(0)), cwd(a(1)), 0, false),
        nr::SYMLINKAT => enter_two_paths(kind::SYMLINK, cwd(a(0)), at(a(1), a(2)), 0, false),
        nr::UNLINK => enter_path(kind::UNLINK, AT_FDCWD, a(0), 0),
        nr::UNLINKAT => enter_path(kind::UNLINK, a(0) as i32 as i64, a(1), a(2)),
        nr::TRUNCATE => enter_path(kind::TRUNCATE, AT_FDCWD, a(0), 0),
        _ => {}
    }
    0
}

/// Every syscall exit (raw strategy): completes a parked event, if any.
#[raw_tracepoint(tracepoint = "sys_exit")]
fn cr_sys_exit(ctx: RawTracePointContext) -> i32 {
    let ret: i64 = ctx.arg(1);
    exit_syscall(ret);
    0
}

/// A task exits: a process holding tracked fds releases them without close.
#[raw_tracepoint(tracepoint = "sched_process_exit")]
fn cr_process_exit(_ctx: RawTracePointContext) -> i32 {
    process_exit();
    0
}

/// A task calls execve: close-on-exec fds of a process holding tracked fds vanish.
#[raw_tracepoint(tracepoint = "sched_process_exec")]
fn cr_process_exec(_ctx: RawTracePointContext) -> i32 {
    process_exec();
    0
}

// ---------------------------------------------------------------------------------------------
// Strategy 2: one classic tracepoint per syscall (syscalls:sys_enter_*), one shared exit program.
// The record layout is: 8 bytes common header, `int __syscall_nr` at 8, then each argument as a
// u64 from offset 16 (see /sys/kernel/tracing/events/syscalls/sys_enter_openat/format).
// ---------------------------------------------------------------------------------------------

/// Offset of the first syscall argument (`sys_enter_*`), and of `long ret` (`sys_exit_*`), in a
/// `syscalls` tracepoint record: after the 8-byte common header and `int __syscall_nr` padded to 8.
const TP_ARGS_OFFSET: usize = 16;

#[inline(always)]
fn tp_arg(ctx: &TracePointContext, n: usize) -> u64 {
    // SAFETY: `ctx` points at the `sys_enter_*` record described above: argument `n` is the u64 at
    // TP_ARGS_OFFSET + 8n, 8-byte aligned, and every caller asks only for arguments its syscall
    // has (the record holds all of them). The verifier also bounds every context read.
    unsafe { *(ctx.as_ptr().cast::<u8>().add(TP_ARGS_OFFSET + 8 * n) as *const u64) }
}

/// One `syscalls:sys_enter_<name>` program: `a(n)` is the syscall's argument `n`, `body` the entry
/// logic it calls.
macro_rules! syscall_tracepoint {
    ($name:ident, |$a:ident| $body:expr) => {
        #[tracepoint]
        fn $name(ctx: TracePointContext) -> u32 {
            let $a = |n| tp_arg(&ctx, n);
            $body;
            0
        }
    };
}

syscall_tracepoint!(cr_tp_open, |a| enter_open(AT_FDCWD, a(0), a(1), true));
syscall_tracepoint!(cr_tp_openat, |a| enter_open(
    a(0) as i32 as i64,
    a(1),
    a(2),
    true
));
syscall_tracepoint!(cr_tp_openat2, |a| enter_openat2(
    a(0) as i32 as i64,
    a(1),
    a(2),
    true
));
syscall_tracepoint!(cr_tp_creat, |a| enter_open(
    AT_FDCWD,
    a(0),
    open_flags::CREAT,
    true
));
syscall_tracepoint!(cr_tp_close, |a| enter_fd(kind::CLOSE, a(0), -1));
syscall_tracepoint!(cr_tp_close_range, |a| enter_close_range(a(0), a(1)));
syscall_tracepoint!(cr_tp_dup, |a| enter_fd(kind::DUP, a(0), -1));
syscall_tracepoint!(cr_tp_dup2, |a| enter_fd(kind::DUP, a(0), a(1) as i64));
syscall_tracepoint!(cr_tp_dup3, |a| enter_fd(kind::DUP, a(0), a(1) as i64));
syscall_tracepoint!(cr_tp_fcntl, |a| enter_fcntl(a(0), a(1), true));
syscall_tracepoint!(cr_tp_rename, |a| enter_two_paths(
    kind::RENAME,
    cwd(a(0)),
    cwd(a(1)),
    0,
    true
));
syscall_tracepoint!(cr_tp_renameat, |a| enter_two_paths(
    kind::RENAME,
    at(a(0), a(1)),
    at(a(2), a(3)),
    0,
    true
));
syscall_tracepoint!(cr_tp_renameat2, |a| enter_two_paths(
    kind::RENAME,
    at(a(0), a(1)),
    at(a(2), a(3)),
    a(4),
    true
));
syscall_tracepoint!(cr_tp_link, |a| enter_two_paths(
    kind::LINK,
    cwd(a(0)),
    cwd(a(1)),
    0,
    false
));
syscall_tracepoint!(cr_tp_linkat, |a| enter_two_paths(
    kind::LINK,
    at(a(0), a(1)),
    at(a(2), a(3)),
    a(4),
    false
));
syscall_tracepoint!(cr_tp_symlink, |a| enter_two_paths(
    kind::SYMLINK,
    cwd(a(0)),
    cwd(a(1)),
    0,
    false
));
syscall_tracepoint!(cr_tp_symlinkat, |a| enter_two_paths(
    kind::SYMLINK,
    cwd(a(0)),
    at(a(1), a(2)),
    0,
    false
));
syscall_tracepoint!(cr_tp_unlink, |a| enter_path(
    kind::UNLINK,
    AT_FDCWD,
    a(0),
    0
));
syscall_tracepoint!(cr_tp_unlinkat, |a| enter_path(
    kind::UNLINK,
    a(0) as i32 as i64,
    a(1),
    a(2)
));
syscall_tracepoint!(cr_tp_truncate, |a| enter_path(
    kind::TRUNCATE,
    AT_FDCWD,
    a(0),
    0
));
syscall_tracepoint!(cr_tp_ftruncate, |a| enter_fd(kind::FTRUNCATE, a(0), -1));

/// Attached to every `syscalls:sys_exit_*` of the list above; `long ret` is at offset 16.
#[tracepoint]
fn cr_tp_exit(ctx: TracePointContext) -> u32 {
    // SAFETY: `ctx` points at a `sys_exit_*` record (layout above, and
    // /sys/kernel/tracing/events/syscalls/sys_exit_openat/format): `long ret` is the i64 at
    // TP_ARGS_OFFSET, 8-byte aligned. The verifier also bounds every context read.
    let ret = unsafe { *(ctx.as_ptr().cast::<u8>().add(TP_ARGS_OFFSET) as *const i64) };
    exit_syscall(ret);
    0
}

/// Does nothing. Attached to a syscall no one calls by the `noop` strategy, it measures the fixed
/// cost the kernel charges every syscall once any syscall tracepoint is in use (the floor under
/// both real strategies); `cargo xtask bench monitor` reports it.
#[tracepoint]
fn cr_tp_noop(_ctx: TracePointContext) -> u32 {
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
