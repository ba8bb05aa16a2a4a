//! Attaching the `fentry` strategy's programs (`ebpf/programs/src/vfs_hooks.rs`): fentry/fexit
//! trampolines on the VFS functions and BPF-LSM programs, which only the hooked kernel function
//! pays for, where a syscall tracepoint slows every syscall of the node. They feed the same ring
//! buffer with the same records as the syscall programs. Many kernels refuse them (EPERM on these
//! CI machines; BPF-LSM also needs `bpf` in the `lsm=` list); the refusal is returned word for
//! word, so the strategy choice can say why it fell back to tracepoints. Debian's bookworm and
//! backports kernels accept them (`cargo xtask vm`).

use aya::{
    maps::Array,
    programs::{FEntry, FExit, Lsm, ProgramError},
    Btf, Ebpf,
};
use certreload_common::vfs_hooks::{offsets, Hook, HookKind, HOOKS, OFFSETS_MAP};

use super::{btf_offsets::KernelBtf, loader::EbpfUnavailable};

/// How `kind` is named in logs and refusals.
pub(crate) fn kind_name(kind: HookKind) -> &'static str {
    match kind {
        HookKind::Fentry => "fentry",
        HookKind::Fexit => "fexit",
        HookKind::Lsm => "BPF-LSM",
    }
}

fn map_error(name: &'static str) -> impl FnOnce(aya::maps::MapError) -> EbpfUnavailable {
    move |e| EbpfUnavailable::Map {
        name,
        source: Box::new(e),
    }
}

/// The struct member offsets the programs read with, resolved from the running kernel's BTF
/// (slot, byte offset), in the order of [`offsets::MEMBERS`].
pub(crate) fn resolve_offsets() -> Result<Vec<(u32, u32)>, EbpfUnavailable> {
    let blob = std::fs::read("/sys/kernel/btf/vmlinux").map_err(EbpfUnavailable::BtfFile)?;
    let btf = KernelBtf::parse(&blob).map_err(EbpfUnavailable::Offsets)?;
    offsets::MEMBERS
        .iter()
        .map(|(slot, strukt, member)| {
            btf.member_offset(strukt, member)
                .map(|at| (*slot, at))
                .map_err(EbpfUnavailable::Offsets)
        })
        .collect()
}

/// Resolves the offsets ([`resolve_offsets`]) and writes them into the object's offsets map, then
/// marks it ready: the programs read no kernel memory before.
pub(crate) fn write_offsets(ebpf: &mut Ebpf) -> Result<Vec<(u32, u32)>, EbpfUnavailable> {
    let resolved = resolve_offsets()?;
    let map = ebpf
        .map_mut(OFFSETS_MAP)
        .ok_or_else(|| EbpfUnavailable::Map {
            name: OFFSETS_MAP,
            source: Box::new(aya::maps::MapError::InvalidName {
                name: OFFSETS_MAP.to_owned(),
            }),
        })?;
    let mut array = Array::<_, u32>::try_from(map).map_err(map_error(OFFSETS_MAP))?;
    for (slot, at) in &resolved {
        array.set(*slot, at, 0).map_err(map_error(OFFSETS_MAP))?;
    }
    array
        .set(offsets::READY, 1, 0)
        .map_err(map_error(OFFSETS_MAP))?;
    Ok(resolved)
}

/// The running kernel's BTF, which every program of [`HOOKS`] is typed against.
pub(crate) fn kernel_btf() -> Result<Btf, EbpfUnavailable> {
    Btf::from_sys_fs().map_err(|e| EbpfUnavailable::Btf(Box::new(e)))
}

/// Loads and attaches `hook` from `ebpf` (the agent's object, loaded); the link lives as long as
/// `ebpf`.
pub(crate) fn attach(ebpf: &mut Ebpf, btf: &Btf, hook: &Hook) -> Result<(), EbpfUnavailable> {
    let refused = |stage: &'static str| {
        move |source: ProgramError| EbpfUnavailable::Refused {
            kind: kind_name(hook.kind),
            program: hook.program,
            target: hook.target,
            stage,
            detail: error_chain(&source),
            source: Box::new(source),
        }
    };
    let program = ebpf
        .program_mut(hook.program)
        .ok_or(ProgramError::UnexpectedProgramType)
        .map_err(refused("find"))?;
    match hook.kind {
        HookKind::Fentry => {
            let fentry: &mut FEntry = program.try_into().map_err(refused("load"))?;
            fentry.load(hook.target, btf).map_err(refused("load"))?;
            fentry.attach().map_err(refused("attach"))?;
        }
        HookKind::Fexit => {
            let fexit: &mut FExit = program.try_into().map_err(refused("load"))?;
            fexit.load(hook.target, btf).map_err(refused("load"))?;
            fexit.attach().map_err(refused("attach"))?;
        }
        HookKind::Lsm => {
            let lsm: &mut Lsm = program.try_into().map_err(refused("load"))?;
            lsm.load(hook.target, btf).map_err(refused("load"))?;
            lsm.attach().map_err(refused("attach"))?;
        }
    }
    Ok(())
}

/// Writes the offsets, then attaches every hook of [`HOOKS`] in order, stopping at the first
/// refusal (which names the program and the kernel's answer).
pub(crate) fn attach_all(ebpf: &mut Ebpf) -> Result<(), EbpfUnavailable> {
    let btf = kernel_btf()?;
    write_offsets(ebpf)?;
    HOOKS.iter().try_for_each(|hook| attach(ebpf, &btf, hook))
}

/// `error: cause: cause`, so the errno the kernel returned is in the message.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    #![expect(
        unsafe_code,
        reason = "truncate(2) by path has no std equivalent (File::set_len is ftruncate)"
    )]

    use std::{
        collections::BTreeSet,
        ffi::{CString, OsString},
        os::unix::{ffi::OsStrExt, fs::MetadataExt},
        path::Path,
    };

    use super::super::{
        decode::{decode, KernelEvent, NameBase, Operation},
        loader::{EbpfUnavailable, HookStrategy, KernelHooks},
    };

    /// What `cargo xtask vm` sets in the guests, whose kernels must accept the hooks.
    const EXPECT: &str = "CERTRELOAD_EXPECT_VFS_HOOKS";

    fn truncate_by_path(path: &Path) {
        let c = CString::new(path.as_os_str().as_bytes()).expect("no NUL in a temp path");
        // SAFETY: `c` is a NUL-terminated path that lives across the call; truncate only reads it.
        let rc = unsafe { libc::truncate(c.as_ptr(), 0) };
        assert_eq!(rc, 0, "truncate {}", path.display());
    }

    /// Every operation the strategy reports, on watched names, plus the same on unwatched ones
    /// (which must be filtered in the kernel); returns the operations expected, in order, and the
    /// identity (device, inode) of the file written.
    fn operate(dir: &Path, watched: &[String; 3]) -> (Vec<Operation>, (u64, u64)) {
        let [w, link, sym] = watched;
        let p = |name: &str| dir.join(name);
        std::fs::write(p("unwatched"), "x").expect("write");
        std::fs::rename(p("unwatched"), p("unwatched.2")).expect("rename");
        std::fs::write(p("incoming"), "y").expect("write");
        std::fs::rename(p("incoming"), p(w)).expect("rename");
        std::fs::write(p(w), "z").expect("write");
        let written = identity(&p(w));
        std::fs::hard_link(p(w), p(link)).expect("link");
        truncate_by_path(&p(link));
        std::os::unix::fs::symlink("target-text", p(sym)).expect("symlink");
        std::fs::remove_file(p(w)).expect("unlink");
        std::fs::remove_file(p("unwatched.2")).expect("unlink");
        let name = |n: &str| OsString::from(n);
        let ops = vec![
            Operation::Rename {
                from: name("incoming"),
                to: name(w),
            },
            // The fd is checked apart (whatever the runtime got).
            Operation::OpenWrite {
                name: name(w),
                fd: -1,
            },
            Operation::Close { fd: -1 },
            Operation::Link {
                existing: name(w),
                link: name(link),
            },
            Operation::Truncate { name: name(link) },
            Operation::Symlink {
                target: name("target-text"),
                link: name(sym),
            },
            Operation::Unlink { name: name(w) },
        ];
        (ops, written)
    }

    fn identity(path: &Path) -> (u64, u64) {
        let m = std::fs::metadata(path).expect("stat");
        (m.dev(), m.ino())
    }

    /// Each name is placed in the directory it is an entry of (the dentry's parent), and the close
    /// names the file the write ended on: what attribution judges by.
    fn assert_placed(ev: &KernelEvent, dir: (u64, u64), written: (u64, u64)) {
        let here = NameBase::Dir {
            dev: dir.0,
            ino: dir.1,
        };
        let placed: &[usize] = match ev.op {
            Operation::Rename { .. } | Operation::Link { .. } => &[0, 1],
            Operation::Symlink { .. } => &[1],
            Operation::Close { .. } => {
                assert_eq!(ev.header.file, Some(written), "{ev:?}");
                &[]
            }
            _ => &[0],
        };
        for &which in placed {
            assert_eq!(ev.header.bases[which], here, "name {which} of {ev:?}");
        }
    }

    /// On any kernel: the `fentry` strategy either loads, attaches, and reports each watched
    /// operation once, in order, as the syscall strategies' records (names from dentries through
    /// offsets from the kernel's BTF; unwatched names filtered in the kernel), or is refused by
    /// the kernel with the program named. With `CERTRELOAD_EXPECT_VFS_HOOKS=1` (the Debian
    /// kernels under `cargo xtask vm`) it must attach and report.
    #[test]
    fn fentry_strategy_reports_watched_operations_or_the_kernel_refusal_is_named() {
        let ci = std::env::var("CI").is_ok_and(|v| v == "true");
        let expect = std::env::var(EXPECT).is_ok_and(|v| v == "1");
        let root = crate::sys::process::effective_uid() == 0;
        if super::super::loader::OBJECT.is_empty() || !root {
            assert!(!ci && !expect, "CI=true: needs root and the eBPF object");
            eprintln!("SKIP: needs root and an agent built with the eBPF object");
            return;
        }
        let (mut hooks, mut ring) = match KernelHooks::load(HookStrategy::Fentry, false, 4) {
            Ok(loaded) => loaded,
            Err(e) => {
                eprintln!("fentry strategy refused: {e}");
                assert!(!expect, "{EXPECT}=1: {e}");
                assert!(
                    matches!(e, EbpfUnavailable::Refused { .. }),
                    "not a kernel refusal: {e}"
                );
                return;
            }
        };
        eprintln!("offsets (slot, bytes): {:?}", super::resolve_offsets());
        let id = std::process::id();
        let watched = [
            format!("w-{id}.crt"),
            format!("w-{id}.link"),
            format!("w-{id}.sym"),
        ];
        let names: BTreeSet<OsString> = watched.iter().map(OsString::from).collect();
        hooks.set_names(&names).expect("load the watched names");
        let dir = tempfile::tempdir().expect("tempdir");
        let (expected, written) = operate(dir.path(), &watched);
        let mut seen = Vec::new();
        while let Some(item) = ring.next() {
            let ev = decode(&item).expect("a record the agent decodes");
            if ev.header.writer.tgid == id {
                seen.push(ev);
            }
        }
        for ev in &seen {
            eprintln!("{:?} by {:?}", ev.op, ev.header.writer.comm);
            assert_placed(ev, identity(dir.path()), written);
        }
        let ops: Vec<Operation> = seen
            .iter()
            .map(|ev| match &ev.op {
                Operation::OpenWrite { name, .. } => Operation::OpenWrite {
                    name: name.clone(),
                    fd: -1,
                },
                Operation::Close { .. } => Operation::Close { fd: -1 },
                other => other.clone(),
            })
            .collect();
        assert_eq!(ops, expected, "the watched operations, once each, in order");
        let fds: Vec<i32> = seen
            .iter()
            .filter_map(|ev| match ev.op {
                Operation::OpenWrite { fd, .. } | Operation::Close { fd } => Some(fd),
                _ => None,
            })
            .collect();
        assert!(
            fds.len() == 2 && fds[0] >= 0 && fds[0] == fds[1],
            "the close names the fd the open got: {fds:?}"
        );
        let stats = hooks.stats();
        assert_eq!(stats.dropped, 0, "{stats:?}");
        assert!(
            stats.filtered >= 4,
            "unwatched writes, renames and unlinks are filtered in the kernel: {stats:?}"
        );
    }
}
