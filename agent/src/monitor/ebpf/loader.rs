//! Loading and attaching the kernel programs, and the agent's handles on their maps.

use std::{collections::BTreeSet, ffi::OsString, os::unix::ffi::OsStrExt, path::Path};

use aya::{
    maps::{HashMap, MapData, MapError, PerCpuArray, RingBuf},
    programs::{ProgramError, RawTracePoint, TracePoint},
    Ebpf, EbpfError, EbpfLoader,
};
use certreload_common::{basename_hash, maps, stats, syscalls};
use serde::Serialize;
use thiserror::Error;

/// The eBPF object built by `cargo xtask build`; empty when the agent was built without it.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/certreload.bpf.o"));

/// How the syscall hooks are attached. Both are measured by `cargo xtask bench monitor`; see the
/// README ("Hook choice") for the figures behind the default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum HookStrategy {
    /// One classic `syscalls:sys_enter_<name>` tracepoint per hooked syscall, plus their
    /// `sys_exit_<name>`: only hooked syscalls run a program. Architecture-independent.
    Tracepoints,
    /// One raw tracepoint on `sys_enter` and one on `sys_exit` dispatching on the syscall number:
    /// cheaper dispatch, but every syscall of the host runs the program. x86_64 only.
    RawSyscalls,
}

impl HookStrategy {
    /// The default for this machine: see the README's "Hook choice".
    pub fn default_for_host() -> Self {
        HookStrategy::Tracepoints
    }
}

/// Why eBPF could not be used; the fallback announces it once.
#[derive(Debug, Error)]
pub enum EbpfUnavailable {
    /// The agent binary carries no eBPF object.
    #[error("this agent was built without the eBPF object (build it with `cargo xtask build`)")]
    NoObject,
    /// The kernel or loader refused the object.
    #[error("loading the eBPF object failed: {0}")]
    Load(#[source] Box<EbpfError>),
    /// A program failed to load or attach.
    #[error("eBPF program {program} ({target}) failed: {source}")]
    Program {
        /// Program name.
        program: String,
        /// What it was being attached to.
        target: String,
        /// The loader's error.
        #[source]
        source: Box<ProgramError>,
    },
    /// A map is missing or of the wrong type.
    #[error("eBPF map {name}: {source}")]
    Map {
        /// Map name.
        name: &'static str,
        /// The loader's error.
        #[source]
        source: Box<MapError>,
    },
    /// The ring buffer's fd cannot be registered with the async runtime.
    #[error("cannot poll the eBPF ring buffer: {0}")]
    Poll(#[source] std::io::Error),
    /// The raw strategy only knows x86_64 syscall numbers.
    #[error("the raw sys_enter strategy needs x86_64 syscall numbers; this is {0}")]
    Arch(&'static str),
}

/// Kernel-side counters, summed over CPUs.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct KernelStats {
    /// Events written to the ring buffer.
    pub emitted: u64,
    /// Events lost to a full ring buffer.
    pub dropped: u64,
    /// Path arguments examined and discarded in the kernel (unwatched basename).
    pub filtered: u64,
    /// Watched-name syscalls lost to a full pending table.
    pub pending_lost: u64,
    /// Write-opened fds not tracked because the table was full.
    pub track_lost: u64,
}

/// The loaded, attached programs and the maps the agent drives.
pub struct KernelHooks {
    // Keeps programs and links alive for as long as the monitor runs.
    _ebpf: Ebpf,
    names: HashMap<MapData, u64, u8>,
    tracked: HashMap<MapData, u64, u64>,
    stats: PerCpuArray<MapData, u64>,
    loaded_names: BTreeSet<u64>,
    strategy: HookStrategy,
}

impl KernelHooks {
    /// Loads the object, attaches the programs of `strategy`, and hands back the event ring buffer.
    pub fn load(strategy: HookStrategy) -> Result<(Self, RingBuf<MapData>), EbpfUnavailable> {
        if OBJECT.is_empty() {
            return Err(EbpfUnavailable::NoObject);
        }
        if strategy == HookStrategy::RawSyscalls && !cfg!(target_arch = "x86_64") {
            return Err(EbpfUnavailable::Arch(std::env::consts::ARCH));
        }
        raise_memlock_limit();
        if strategy == HookStrategy::Tracepoints {
            ensure_tracefs();
        }
        let mut ebpf = EbpfLoader::new()
            .load(OBJECT)
            .map_err(|e| EbpfUnavailable::Load(Box::new(e)))?;
        attach(&mut ebpf, strategy)?;
        let events = RingBuf::try_from(take(&mut ebpf, maps::EVENTS)?).map_err(|source| {
            EbpfUnavailable::Map {
                name: maps::EVENTS,
                source: Box::new(source),
            }
        })?;
        let names = HashMap::try_from(take(&mut ebpf, maps::WATCHED_NAMES)?).map_err(|source| {
            EbpfUnavailable::Map {
                name: maps::WATCHED_NAMES,
                source: Box::new(source),
            }
        })?;
        let tracked = HashMap::try_from(take(&mut ebpf, maps::TRACKED_FDS)?).map_err(|source| {
            EbpfUnavailable::Map {
                name: maps::TRACKED_FDS,
                source: Box::new(source),
            }
        })?;
        let stats = PerCpuArray::try_from(take(&mut ebpf, maps::STATS)?).map_err(|source| {
            EbpfUnavailable::Map {
                name: maps::STATS,
                source: Box::new(source),
            }
        })?;
        let hooks = KernelHooks {
            _ebpf: ebpf,
            names,
            tracked,
            stats,
            loaded_names: BTreeSet::new(),
            strategy,
        };
        Ok((hooks, events))
    }

    /// The strategy in use.
    pub fn strategy(&self) -> HookStrategy {
        self.strategy
    }

    /// Makes the kernel filter hold exactly these basenames.
    pub fn set_names(&mut self, names: &BTreeSet<OsString>) -> Result<(), MapError> {
        let wanted: BTreeSet<u64> = names
            .iter()
            .map(|n| basename_hash(Path::new(n).as_os_str().as_bytes()))
            .collect();
        for h in wanted.difference(&self.loaded_names) {
            self.names.insert(h, 1, 0)?;
        }
        for h in self.loaded_names.difference(&wanted) {
            let _ = self.names.remove(h);
        }
        self.loaded_names = wanted;
        Ok(())
    }

    /// Removes the kernel's record of `tgid`'s fds (after exit; the kernel cannot iterate them).
    pub fn forget_process(&mut self, tgid: u32) {
        let keys: Vec<u64> = self
            .tracked
            .keys()
            .filter_map(Result::ok)
            .filter(|k| (k >> 32) as u32 == tgid)
            .collect();
        for k in keys {
            let _ = self.tracked.remove(&k);
        }
    }

    /// Removes the kernel's record of one fd (vanished at exec or in a close_range).
    pub fn forget_fd(&mut self, tgid: u32, fd: i32) {
        let _ = self
            .tracked
            .remove(&(((tgid as u64) << 32) | fd as u32 as u64));
    }

    /// Reads the kernel counters.
    pub fn stats(&self) -> KernelStats {
        let read = |i: u32| {
            self.stats
                .get(&i, 0)
                .map(|v| v.iter().sum::<u64>())
                .unwrap_or(0)
        };
        KernelStats {
            emitted: read(stats::EMITTED),
            dropped: read(stats::DROPPED),
            filtered: read(stats::FILTERED),
            pending_lost: read(stats::PENDING_LOST),
            track_lost: read(stats::TRACK_LOST),
        }
    }
}

fn take(ebpf: &mut Ebpf, name: &'static str) -> Result<aya::maps::Map, EbpfUnavailable> {
    ebpf.take_map(name).ok_or_else(|| EbpfUnavailable::Map {
        name,
        source: Box::new(MapError::InvalidName {
            name: name.to_string(),
        }),
    })
}

fn program_error(program: &str, target: &str) -> impl FnOnce(ProgramError) -> EbpfUnavailable {
    let (program, target) = (program.to_string(), target.to_string());
    move |source| EbpfUnavailable::Program {
        program,
        target,
        source: Box::new(source),
    }
}

fn attach(ebpf: &mut Ebpf, strategy: HookStrategy) -> Result<(), EbpfUnavailable> {
    let raw: &[(&str, &str)] = match strategy {
        HookStrategy::RawSyscalls => &syscalls::RAW_PROGRAMS,
        // Process exit and exec are not syscall tracepoints: raw tracepoints in both strategies.
        HookStrategy::Tracepoints => &syscalls::RAW_PROGRAMS[2..],
    };
    for &(name, tp) in raw {
        let prog: &mut RawTracePoint = program(ebpf, name, tp)?;
        prog.load().map_err(program_error(name, tp))?;
        prog.attach(tp).map_err(program_error(name, tp))?;
    }
    if strategy == HookStrategy::Tracepoints {
        let mut attached = Vec::new();
        for &(name, syscall) in &syscalls::TRACEPOINT_PROGRAMS {
            let tp = format!("sys_enter_{syscall}");
            if !tracepoint_exists(&tp) {
                // e.g. no open/rename/creat on arm64: nothing to hook.
                tracing::debug!(syscall, "syscall tracepoint absent on this kernel/arch");
                continue;
            }
            let prog: &mut TracePoint = program(ebpf, name, &tp)?;
            prog.load().map_err(program_error(name, &tp))?;
            prog.attach("syscalls", &tp)
                .map_err(program_error(name, &tp))?;
            attached.push(syscall);
        }
        let exit = syscalls::TRACEPOINT_EXIT_PROGRAM;
        let prog: &mut TracePoint = program(ebpf, exit, "sys_exit_*")?;
        prog.load().map_err(program_error(exit, "sys_exit_*"))?;
        for syscall in attached {
            let tp = format!("sys_exit_{syscall}");
            prog.attach("syscalls", &tp)
                .map_err(program_error(exit, &tp))?;
        }
    }
    Ok(())
}

fn program<'a, T>(
    ebpf: &'a mut Ebpf,
    name: &str,
    target: &str,
) -> Result<&'a mut T, EbpfUnavailable>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
{
    let prog = ebpf
        .program_mut(name)
        .ok_or_else(|| EbpfUnavailable::Program {
            program: name.to_string(),
            target: target.to_string(),
            source: Box::new(ProgramError::UnexpectedProgramType),
        })?;
    prog.try_into().map_err(program_error(name, target))
}

const TRACEFS: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

fn tracepoint_exists(name: &str) -> bool {
    TRACEFS
        .iter()
        .any(|root| Path::new(root).join("events/syscalls").join(name).exists())
}

/// Classic tracepoints are found through tracefs; mount it where the kernel expects it if nobody
/// has (a bare container or minimal host). Failure is left to the attach error, which names it.
fn ensure_tracefs() {
    if TRACEFS
        .iter()
        .any(|root| Path::new(root).join("events").exists())
    {
        return;
    }
    let (src, target, fstype) = (c"nodev", c"/sys/kernel/tracing", c"tracefs");
    // SAFETY: plain mount(2) with static NUL-terminated strings and no data argument.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc == 0 {
        tracing::info!("mounted tracefs at /sys/kernel/tracing for the syscall tracepoints");
    }
}

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK; lift it (best effort, needs privilege).
fn raise_memlock_limit() {
    let limit = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit only reads the struct we pass.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &limit) } != 0 {
        tracing::debug!("could not raise RLIMIT_MEMLOCK; fine on kernels >= 5.11");
    }
}
