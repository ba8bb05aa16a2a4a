//! Attaching the fentry/fexit and BPF-LSM programs (`ebpf/programs/src/vfs_hooks.rs`): hooks that
//! only the hooked kernel function pays for, where a syscall tracepoint slows every syscall of the
//! node. Many kernels refuse them (EPERM on these CI machines; BPF-LSM also needs `bpf` in the
//! `lsm=` list); the refusal is returned word for word, so the strategy choice can say why it fell
//! back to tracepoints. Debian's bookworm and backports kernels accept them (`cargo xtask vm`).

use aya::{
    maps::{Array, MapError, PerCpuArray},
    programs::{FExit, Lsm, ProgramError},
    Btf, BtfError, Ebpf,
};
use certreload_common::vfs_hooks::{self as names, offsets};
use thiserror::Error;

use super::btf_offsets::{BtfOffsetError, KernelBtf};

/// How a hook attaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HookKind {
    /// A BPF trampoline after a kernel function returns (`BPF_PROG_TYPE_TRACING`, fexit).
    Fexit,
    /// A BPF-LSM program on a security hook (`BPF_PROG_TYPE_LSM`).
    Lsm,
}

impl std::fmt::Display for HookKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            HookKind::Fexit => "fexit",
            HookKind::Lsm => "BPF-LSM",
        })
    }
}

/// One program of the object, what it attaches to, and its counter slot.
#[derive(Debug, Clone, Copy)]
pub(crate) struct VfsHook {
    /// The program's name in the object.
    pub program: &'static str,
    /// The kernel function or LSM hook.
    pub target: &'static str,
    /// How it attaches.
    pub kind: HookKind,
    /// Its slot in the hits map.
    pub slot: u32,
}

/// Every VFS hook of the object, in the order they are tried.
pub(crate) const HOOKS: [VfsHook; 2] = [
    VfsHook {
        program: names::FEXIT_VFS_RENAME,
        target: names::FEXIT_VFS_RENAME_TARGET,
        kind: HookKind::Fexit,
        slot: names::FEXIT_VFS_RENAME_SLOT,
    },
    VfsHook {
        program: names::LSM_INODE_RENAME,
        target: names::LSM_INODE_RENAME_TARGET,
        kind: HookKind::Lsm,
        slot: names::LSM_INODE_RENAME_SLOT,
    },
];

/// Why a VFS hook is not in place.
#[derive(Debug, Error)]
pub(crate) enum VfsHookError {
    /// fentry/fexit and LSM programs are typed against the running kernel's BTF.
    #[error("the running kernel's BTF (/sys/kernel/btf/vmlinux) cannot be read: {0}")]
    Btf(#[source] Box<BtfError>),
    /// The object lacks the program or map (an agent built from an older object).
    #[error("the eBPF object has no program or map {0}")]
    Missing(&'static str),
    /// The kernel refused to load or attach it.
    #[error("{kind} program {program} on {target}: {stage} failed: {detail}")]
    Refused {
        /// How it attaches.
        kind: HookKind,
        /// Program name.
        program: &'static str,
        /// Kernel function or LSM hook.
        target: &'static str,
        /// "load" or "attach".
        stage: &'static str,
        /// The loader's error with its causes (the errno is in the innermost).
        detail: String,
        /// The loader's error.
        #[source]
        source: Box<ProgramError>,
    },
    /// A map of the VFS hooks is missing, of the wrong type, or refused an update.
    #[error("eBPF map {name}: {source}")]
    Map {
        /// Map name.
        name: &'static str,
        /// The loader's error.
        #[source]
        source: Box<MapError>,
    },
    /// `/sys/kernel/btf/vmlinux` cannot be read.
    #[error("reading /sys/kernel/btf/vmlinux: {0}")]
    BtfFile(#[source] std::io::Error),
    /// A member the programs read is not where BTF can say.
    #[error("resolving the rename hook's struct offsets from the kernel's BTF: {0}")]
    Offsets(#[source] BtfOffsetError),
}

fn map_error(name: &'static str) -> impl FnOnce(MapError) -> VfsHookError {
    move |e| VfsHookError::Map {
        name,
        source: Box::new(e),
    }
}

/// The struct member offsets the rename hook reads with, resolved from the running kernel's BTF
/// (slot, byte offset), in the order of [`offsets::MEMBERS`].
pub(crate) fn resolve_offsets() -> Result<Vec<(u32, u32)>, VfsHookError> {
    let blob = std::fs::read("/sys/kernel/btf/vmlinux").map_err(VfsHookError::BtfFile)?;
    let btf = KernelBtf::parse(&blob).map_err(VfsHookError::Offsets)?;
    offsets::MEMBERS
        .iter()
        .map(|(slot, strukt, member)| {
            btf.member_offset(strukt, member)
                .map(|at| (*slot, at))
                .map_err(VfsHookError::Offsets)
        })
        .collect()
}

/// Resolves the offsets ([`resolve_offsets`]) and writes them into the object's offsets map, then
/// marks it ready: the programs read no kernel memory before.
pub(crate) fn write_offsets(ebpf: &mut Ebpf) -> Result<Vec<(u32, u32)>, VfsHookError> {
    let resolved = resolve_offsets()?;
    let map = ebpf
        .map_mut(names::OFFSETS_MAP)
        .ok_or(VfsHookError::Missing(names::OFFSETS_MAP))?;
    let mut array = Array::<_, u32>::try_from(map).map_err(map_error(names::OFFSETS_MAP))?;
    for (slot, at) in &resolved {
        array
            .set(*slot, at, 0)
            .map_err(map_error(names::OFFSETS_MAP))?;
    }
    array
        .set(offsets::READY, 1, 0)
        .map_err(map_error(names::OFFSETS_MAP))?;
    Ok(resolved)
}

/// The running kernel's BTF, needed to load any of [`HOOKS`].
pub(crate) fn kernel_btf() -> Result<Btf, VfsHookError> {
    Btf::from_sys_fs().map_err(|e| VfsHookError::Btf(Box::new(e)))
}

/// Loads and attaches `hook` from `ebpf` (the agent's object, loaded); the link lives as long as
/// `ebpf`.
pub(crate) fn attach(ebpf: &mut Ebpf, btf: &Btf, hook: &VfsHook) -> Result<(), VfsHookError> {
    let refused = |stage: &'static str| {
        move |source: ProgramError| VfsHookError::Refused {
            kind: hook.kind,
            program: hook.program,
            target: hook.target,
            stage,
            detail: error_chain(&source),
            source: Box::new(source),
        }
    };
    let program = ebpf
        .program_mut(hook.program)
        .ok_or(VfsHookError::Missing(hook.program))?;
    match hook.kind {
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

/// Writes the offsets, then attaches every hook of [`HOOKS`], stopping at the first refusal
/// (which names the program).
#[cfg_attr(
    test,
    expect(dead_code, reason = "called by the strategy choice outside tests")
)]
pub(crate) fn attach_all(ebpf: &mut Ebpf) -> Result<(), VfsHookError> {
    let btf = kernel_btf()?;
    write_offsets(ebpf)?;
    HOOKS.iter().try_for_each(|hook| attach(ebpf, &btf, hook))
}

/// How many times `hook` ran since it was attached, summed over CPUs.
pub(crate) fn runs(ebpf: &Ebpf, hook: &VfsHook) -> Result<u64, VfsHookError> {
    hits(ebpf, hook.slot)
}

/// The hits map's `slot`, summed over CPUs.
fn hits(ebpf: &Ebpf, slot: u32) -> Result<u64, VfsHookError> {
    let map = ebpf
        .map(names::HITS_MAP)
        .ok_or(VfsHookError::Missing(names::HITS_MAP))?;
    let hits = PerCpuArray::<_, u64>::try_from(map).map_err(map_error(names::HITS_MAP))?;
    let per_cpu = hits.get(&slot, 0).map_err(map_error(names::HITS_MAP))?;
    Ok(per_cpu.iter().sum())
}

/// Successful renames onto a watched basename the fexit on `vfs_rename` saw, reading the new
/// name through the BTF offsets.
pub(crate) fn watched_renames(ebpf: &Ebpf) -> Result<u64, VfsHookError> {
    hits(ebpf, names::WATCHED_RENAME_SLOT)
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
    use super::*;

    /// What `cargo xtask vm` sets in the guests, whose kernels must accept the hooks.
    const EXPECT: &str = "CERTRELOAD_EXPECT_VFS_HOOKS";

    /// On any kernel: each hook either attaches and then runs on a rename (the fexit also matching
    /// the one rename onto a watched name, read through offsets from the kernel's BTF), or is
    /// refused by the kernel with the program named (never missing from the object, never a BTF
    /// failure where the kernel has BTF). With `CERTRELOAD_EXPECT_VFS_HOOKS=1` (the Debian kernels under
    /// `cargo xtask vm`) every hook must attach and run.
    #[test]
    fn vfs_hooks_attach_and_run_or_the_kernel_refusal_is_named() {
        let ci = std::env::var("CI").is_ok_and(|v| v == "true");
        let expect = std::env::var(EXPECT).is_ok_and(|v| v == "1");
        let root = crate::sys::process::effective_uid() == 0;
        if super::super::loader::OBJECT.is_empty() || !root {
            assert!(!ci && !expect, "CI=true: needs root and the eBPF object");
            eprintln!("SKIP: needs root and an agent built with the eBPF object");
            return;
        }
        let mut ebpf = aya::EbpfLoader::new()
            .load(super::super::loader::OBJECT)
            .expect("the object loads (maps)");
        let btf = kernel_btf().expect("the kernel has BTF (/sys/kernel/btf/vmlinux)");
        let resolved = write_offsets(&mut ebpf).expect("offsets from the kernel's BTF");
        eprintln!("vfs-hook offsets (slot, bytes) from the kernel's BTF: {resolved:?}");
        let watched = format!("watched-{}.crt", std::process::id());
        let mut names_map: aya::maps::HashMap<_, u64, u8> = aya::maps::HashMap::try_from(
            ebpf.map_mut(certreload_common::maps::WATCHED_NAMES)
                .expect("WATCHED_NAMES"),
        )
        .expect("a hash map");
        names_map
            .insert(certreload_common::basename_hash(watched.as_bytes()), 1, 0)
            .expect("insert the watched name");
        let outcomes: Vec<(VfsHook, Result<(), VfsHookError>)> = HOOKS
            .iter()
            .map(|hook| (*hook, attach(&mut ebpf, &btf, hook)))
            .collect();
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("a"), "x").expect("write");
        std::fs::rename(dir.path().join("a"), dir.path().join("b")).expect("rename");
        std::fs::write(dir.path().join("c"), "y").expect("write");
        std::fs::rename(dir.path().join("c"), dir.path().join(&watched)).expect("rename");
        for (hook, outcome) in &outcomes {
            match outcome {
                Ok(()) => {
                    let runs = runs(&ebpf, hook).expect("hits map");
                    eprintln!(
                        "vfs-hook {} {} on {}: attached, {runs} run(s) after two renames",
                        hook.kind, hook.program, hook.target
                    );
                    assert!(runs >= 1, "{} attached but did not run", hook.program);
                    if hook.kind == HookKind::Fexit {
                        // Two renames, one onto the watched name: the name read through the
                        // BTF offsets matched exactly once.
                        let matched = watched_renames(&ebpf).expect("hits map");
                        eprintln!(
                            "vfs-hook {}: {matched} rename(s) onto a watched name",
                            hook.program
                        );
                        assert_eq!(
                            matched, 1,
                            "renames onto {watched} seen by {}",
                            hook.program
                        );
                    }
                }
                Err(e) => {
                    eprintln!(
                        "vfs-hook {} {} on {}: refused: {e}",
                        hook.kind, hook.program, hook.target
                    );
                    assert!(!expect, "{EXPECT}=1: {e}");
                    assert!(
                        matches!(e, VfsHookError::Refused { program, .. } if *program == hook.program),
                        "not a kernel refusal: {e}"
                    );
                }
            }
        }
    }
}
