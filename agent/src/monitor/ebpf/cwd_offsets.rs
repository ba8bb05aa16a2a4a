//! The struct member offsets the syscall programs read the caller's working directory with
//! (`certreload_common::cwd`), resolved from the running kernel's BTF and written into the
//! object's map at start. With them, a relative path argument is placed even when its writer is
//! gone before the agent reads the event; without them (no BTF), names are placed from
//! `/proc/<tgid>/cwd` while the writer runs, and a relative name of a writer already gone can only
//! make a change ambiguous (`monitor::attribution`).

use aya::{
    maps::{Array, MapError},
    Ebpf,
};
use certreload_common::cwd;
use thiserror::Error;

use super::btf_offsets::{BtfOffsetError, KernelBtf};

/// Why the working-directory offsets were not written (the agent runs on without them).
#[derive(Debug, Error)]
pub(crate) enum CwdOffsetsError {
    /// `/sys/kernel/btf/vmlinux` cannot be read.
    #[error("reading /sys/kernel/btf/vmlinux: {0}")]
    Btf(#[from] std::io::Error),
    /// A member is not where BTF can say.
    #[error("resolving {what} from the kernel's BTF: {source}")]
    Offset {
        /// `struct.member`.
        what: String,
        /// Why.
        source: BtfOffsetError,
    },
    /// The object has no such map, or it cannot be written.
    #[error("writing the {map} map: {source}")]
    Map {
        /// Map name.
        map: &'static str,
        /// Why.
        source: MapError,
    },
}

/// Resolves every slot of [`cwd::MEMBERS`] from the running kernel's BTF and writes them into the
/// object's [`cwd::MAP`], then marks it ready.
pub(crate) fn write(ebpf: &mut Ebpf) -> Result<(), CwdOffsetsError> {
    let blob = std::fs::read("/sys/kernel/btf/vmlinux")?;
    let btf = KernelBtf::parse(&blob).map_err(|source| CwdOffsetsError::Offset {
        what: "the BTF blob".into(),
        source,
    })?;
    let resolved = cwd::MEMBERS
        .iter()
        .map(|(slot, strukt, member)| {
            btf.member_offset(strukt, member)
                .map(|at| (*slot, at))
                .map_err(|source| CwdOffsetsError::Offset {
                    what: format!("{strukt}.{member}"),
                    source,
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let map_error = |source| CwdOffsetsError::Map {
        map: cwd::MAP,
        source,
    };
    let map = ebpf.map_mut(cwd::MAP).ok_or_else(|| {
        map_error(MapError::InvalidName {
            name: cwd::MAP.to_owned(),
        })
    })?;
    let mut array = Array::<_, u32>::try_from(map).map_err(map_error)?;
    for (slot, at) in resolved {
        array.set(slot, at, 0).map_err(map_error)?;
    }
    array.set(cwd::READY, 1, 0).map_err(map_error)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every member the programs read exists in this kernel's BTF (the VM runs this on Debian's
    /// kernels too).
    #[test]
    fn every_member_resolves_on_the_running_kernel() {
        let Ok(blob) = std::fs::read("/sys/kernel/btf/vmlinux") else {
            eprintln!("SKIP: no kernel BTF here");
            return;
        };
        let btf = KernelBtf::parse(&blob).expect("parses");
        for (_, strukt, member) in cwd::MEMBERS {
            btf.member_offset(strukt, member)
                .unwrap_or_else(|e| panic!("{strukt}.{member}: {e}"));
        }
    }
}
