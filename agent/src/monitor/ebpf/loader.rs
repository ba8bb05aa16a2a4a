//! Loading and attaching the kernel programs, and the agent's handles on their maps.

use std::{collections::BTreeSet, ffi::OsString, os::unix::ffi::OsStrExt, path::Path};

use aya::{
    maps::{Array, HashMap, Map, MapData, MapError, PerCpuArray, RingBuf},
    programs::{ProgramError, RawTracePoint, TracePoint},
    Ebpf, EbpfError, EbpfLoader,
};
use certreload_common::{
    basename_hash, maps, stats, suffix_bit, suffix_key, syscalls, MAX_WATCHED_NAMES, SUFFIX_WORDS,
};
use serde::Serialize;
use thiserror::Error;

/// The eBPF object built by `cargo xtask build`; empty when the agent was built without it.
pub(super) static OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/certreload.bpf.o"));

/// How the kernel hooks are attached. Each is measured by `cargo xtask bench monitor`; see the
/// README ("Hook choice") for the figures behind the order `auto` tries them in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum HookStrategy {
    /// The cheapest the kernel allows, tried in order: `fentry` (only the hooked kernel functions
    /// pay), then `tracepoints` (then, with `--mode auto`, inotify). The choice and the refusal of
    /// each cheaper one are logged and shown in `/status`.
    Auto,
    /// fentry/fexit and BPF-LSM programs on the VFS functions: no syscall tracepoint at all, so no
    /// other syscall of the node pays. Needs BTF, and a kernel that allows BPF trampolines.
    Fentry,
    /// One classic `syscalls:sys_enter_<name>` tracepoint per hooked syscall, plus their
    /// `sys_exit_<name>`: only hooked syscalls run a program. Architecture-independent.
    Tracepoints,
    /// One raw tracepoint on `sys_enter` and one on `sys_exit` dispatching on the syscall number:
    /// cheaper dispatch, but every syscall of the host runs the program. x86_64 only.
    RawSyscalls,
    /// Benchmarks only: one empty program on `sys_enter_vhangup`/`sys_exit_vhangup`. Sees nothing;
    /// measures the fixed cost every syscall pays once any syscall tracepoint is attached.
    #[value(hide = true)]
    Noop,
}

impl HookStrategy {
    /// The default: [`HookStrategy::Auto`], the cheapest strategy the kernel allows (see the
    /// README's "Hook choice").
    pub(crate) fn default_for_host() -> Self {
        HookStrategy::Auto
    }

    /// The concrete strategies to try for this request, cheapest first.
    pub(crate) fn candidates(self) -> &'static [HookStrategy] {
        match self {
            HookStrategy::Auto => &[HookStrategy::Fentry, HookStrategy::Tracepoints],
            HookStrategy::Fentry => &[HookStrategy::Fentry],
            HookStrategy::Tracepoints => &[HookStrategy::Tracepoints],
            HookStrategy::RawSyscalls => &[HookStrategy::RawSyscalls],
            HookStrategy::Noop => &[HookStrategy::Noop],
        }
    }

    /// The name as `--hook` takes it and `/status` shows it.
    pub(crate) fn name(self) -> &'static str {
        match self {
            HookStrategy::Auto => "auto",
            HookStrategy::Fentry => "fentry",
            HookStrategy::Tracepoints => "tracepoints",
            HookStrategy::RawSyscalls => "raw-syscalls",
            HookStrategy::Noop => "noop",
        }
    }
}

impl std::fmt::Display for HookStrategy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Why eBPF could not be used; the fallback announces it once.
#[derive(Debug, Error)]
pub(crate) enum EbpfUnavailable {
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
    /// The strategy has no programs feeding the monitor in this build.
    #[error("not built: {0}")]
    NotBuilt(&'static str),
    /// The kernel refused to load or attach one program of the `fentry` strategy
    /// ([`super::vfs_hooks`]).
    #[error("{kind} program {program} on {target}: {stage} failed: {detail}")]
    Refused {
        /// How it attaches (`fentry`, `fexit`, `BPF-LSM`).
        kind: &'static str,
        /// Program name.
        program: &'static str,
        /// Kernel function or LSM hook.
        target: &'static str,
        /// "find", "load" or "attach".
        stage: &'static str,
        /// The loader's error with its causes (the errno is in the innermost).
        detail: String,
        /// The loader's error.
        #[source]
        source: Box<ProgramError>,
    },
    /// fentry/fexit and LSM programs are typed against the running kernel's BTF.
    #[error("the running kernel's BTF (/sys/kernel/btf/vmlinux) cannot be read: {0}")]
    Btf(#[source] Box<aya::BtfError>),
    /// `/sys/kernel/btf/vmlinux` cannot be read for the struct offsets.
    #[error("reading /sys/kernel/btf/vmlinux: {0}")]
    BtfFile(#[source] std::io::Error),
    /// A struct member the `fentry` strategy's programs read is not where BTF can say.
    #[error("resolving the VFS hooks' struct offsets from the kernel's BTF: {0}")]
    Offsets(#[source] super::btf_offsets::BtfOffsetError),
    /// `--hook auto`: every strategy tried was refused; each refusal in order.
    #[error("no hook strategy can be used: {0}")]
    AllRefused(String),
}

/// Cost of one attached program, from the kernel's BPF run-time statistics (only counted while
/// statistics are enabled: `--profile-hooks` or `kernel.bpf_stats_enabled=1`).
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub(crate) struct ProgramCost {
    /// Program name.
    pub name: String,
    /// Invocations.
    pub runs: u64,
    /// Total run time in nanoseconds.
    pub run_ns: u64,
}

/// Kernel-side counters, summed over CPUs.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub(crate) struct KernelStats {
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
    /// Per-program cost, when run-time statistics were enabled (empty otherwise).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub programs: Vec<ProgramCost>,
}

/// Entries of the kernel's watched-name map for `names` basenames: twice the configured count
/// (names are added at run time when a symlink starts pointing somewhere new), at least the
/// object's compiled [`MAX_WATCHED_NAMES`]. A fixed 4,096 made a larger configuration fall back
/// to inotify with a message that did not name the limit.
pub(crate) fn watched_names_capacity(names: usize) -> u32 {
    u32::try_from(names.saturating_mul(2))
        .unwrap_or(u32::MAX)
        .max(MAX_WATCHED_NAMES)
}

/// The loaded, attached programs and the maps the agent drives.
pub(crate) struct KernelHooks {
    // Keeps programs and links alive for as long as the monitor runs.
    ebpf: Ebpf,
    // Keeps kernel run-time statistics on while the agent profiles its hooks.
    _profiling: Option<std::os::fd::OwnedFd>,
    names: HashMap<MapData, u64, u8>,
    suffix_bits: Array<MapData, u64>,
    tracked: HashMap<MapData, u64, u64>,
    unresolved: HashMap<MapData, u32, u8>,
    stats: PerCpuArray<MapData, u64>,
    loaded_names: BTreeSet<u64>,
    names_capacity: u32,
    loaded_bits: Vec<u64>,
}

impl KernelHooks {
    /// Loads the object, attaches the programs of `strategy`, and hands back the event ring buffer.
    /// With `profile`, kernel BPF run-time statistics are enabled while the hooks live, so
    /// [`KernelStats::programs`] reports each program's cost (this adds a little to every BPF
    /// program on the host, which is why it is opt-in).
    ///
    /// The watched-name filter is sized for `names` basenames at load time
    /// ([`watched_names_capacity`]), so no configuration is too large for eBPF mode.
    pub(crate) fn load(
        strategy: HookStrategy,
        profile: bool,
        names: usize,
    ) -> Result<(Self, RingBuf<MapData>), EbpfUnavailable> {
        if OBJECT.is_empty() {
            return Err(EbpfUnavailable::NoObject);
        }
        let profiling = if profile {
            Some(
                aya::sys::enable_stats(aya::sys::Stats::RunTime)
                    .map_err(|e| EbpfUnavailable::Poll(e.io_error))?,
            )
        } else {
            None
        };
        match strategy {
            HookStrategy::RawSyscalls if !cfg!(target_arch = "x86_64") => {
                return Err(EbpfUnavailable::Arch(std::env::consts::ARCH));
            }
            HookStrategy::Auto => {
                return Err(EbpfUnavailable::NotBuilt(
                    "`auto` is a choice among strategies, made by KernelSource::choose",
                ))
            }
            _ => {}
        }
        raise_memlock_limit();
        if matches!(strategy, HookStrategy::Tracepoints | HookStrategy::Noop) {
            ensure_tracefs();
        }
        let names_capacity = watched_names_capacity(names);
        let mut ebpf = EbpfLoader::new()
            .map_max_entries(maps::WATCHED_NAMES, names_capacity)
            .load(OBJECT)
            .map_err(|e| EbpfUnavailable::Load(Box::new(e)))?;
        attach(&mut ebpf, strategy)?;
        let events = typed_map(&mut ebpf, maps::EVENTS)?;
        let hooks = KernelHooks {
            names: typed_map(&mut ebpf, maps::WATCHED_NAMES)?,
            suffix_bits: typed_map(&mut ebpf, maps::SUFFIX_BITS)?,
            tracked: typed_map(&mut ebpf, maps::TRACKED_FDS)?,
            unresolved: typed_map(&mut ebpf, maps::UNRESOLVED_TGIDS)?,
            stats: typed_map(&mut ebpf, maps::STATS)?,
            ebpf,
            _profiling: profiling,
            loaded_names: BTreeSet::new(),
            names_capacity,
            loaded_bits: vec![0; SUFFIX_WORDS as usize],
        };
        Ok((hooks, events))
    }

    /// How many distinct basenames the kernel filter holds (sized at load).
    pub(crate) fn names_capacity(&self) -> u32 {
        self.names_capacity
    }

    /// Makes the kernel filter hold exactly these basenames.
    pub(crate) fn set_names(&mut self, names: &BTreeSet<OsString>) -> Result<(), MapError> {
        let bytes = || names.iter().map(|n| n.as_bytes());
        let mut words = vec![0u64; SUFFIX_WORDS as usize];
        for key in bytes().map(suffix_key) {
            let (word, bit) = suffix_bit(key);
            words[word as usize] |= 1 << bit;
        }
        // Set new bits before updating the exact set and clear stale ones after, so that while
        // updating, a watched name never fails the first stage.
        let union: Vec<u64> = words
            .iter()
            .zip(&self.loaded_bits)
            .map(|(w, old)| w | old)
            .collect();
        self.write_bits(union)?;
        sync_set(
            &mut self.names,
            &mut self.loaded_names,
            bytes().map(basename_hash).collect(),
        )?;
        self.write_bits(words)?;
        Ok(())
    }

    fn write_bits(&mut self, words: Vec<u64>) -> Result<(), MapError> {
        for (i, (new, old)) in words.iter().zip(&self.loaded_bits).enumerate() {
            if new != old {
                self.suffix_bits.set(i as u32, new, 0)?;
            }
        }
        self.loaded_bits = words;
        Ok(())
    }

    /// Removes the kernel's record of `tgid`'s fds (after exit; the kernel cannot iterate them).
    pub(crate) fn forget_process(&mut self, tgid: u32) {
        let keys: Vec<u64> = self
            .tracked
            .keys()
            .filter_map(Result::ok)
            .filter(|k| (k >> 32) as u32 == tgid)
            .collect();
        for k in keys {
            // Gone already if the kernel removed it at the close; nothing else can fail here.
            self.tracked.remove(&k).ok();
        }
    }

    /// Has the kernel report the close of `tgid`'s fd `fd`, found in `/proc` for an open the kernel
    /// reported at entry (it counted that fd when it saw the open: the count is not touched here).
    pub(crate) fn track_fd(&mut self, tgid: u32, fd: i32, name_hash: u64) {
        if let Err(e) = self.tracked.insert(fd_key(tgid, fd), name_hash, 0) {
            // The close is then found through the exit or the writer-hold bound instead.
            tracing::debug!(tgid, fd, error = %e, "cannot track a resolved fd in the kernel");
        }
    }

    /// Keeps the kernel reporting every fd syscall of `tgid` (an open of it is still unresolved).
    pub(crate) fn unresolved(&mut self, tgid: u32) {
        if let Err(e) = self.unresolved.insert(tgid, 1, 0) {
            tracing::debug!(tgid, error = %e, "cannot mark a process unresolved in the kernel");
        }
    }

    /// Stops the kernel reporting every fd syscall of `tgid` (none of its opens is unresolved).
    pub(crate) fn resolved(&mut self, tgid: u32) {
        // Absent when the kernel never marked it, or the exit removed it: nothing to do.
        self.unresolved.remove(&tgid).ok();
    }

    /// Removes the kernel's record of one fd (vanished at exec or in a close_range).
    pub(crate) fn forget_fd(&mut self, tgid: u32, fd: i32) {
        // Gone already if the kernel removed it at the close; nothing else can fail here.
        self.tracked.remove(&fd_key(tgid, fd)).ok();
    }

    /// The loaded object, for writing what programs read at run time (struct offsets).
    pub(crate) fn object_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }

    /// Syscalls on a watched name the kernel has seen enter and not yet leave (the `PENDING`
    /// gate): while any is in flight, an operation may have taken effect without its event being
    /// in the ring buffer yet. 0 when the gate cannot be read.
    pub(crate) fn syscalls_in_flight(&self) -> u64 {
        self.ebpf
            .map(maps::GATES)
            .and_then(|map| Array::<_, u64>::try_from(map).ok())
            .and_then(|gates| gates.get(&certreload_common::gates::PENDING, 0).ok())
            .unwrap_or(0)
    }

    /// Reads the kernel counters.
    pub(crate) fn stats(&self) -> KernelStats {
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
            programs: self
                .ebpf
                .programs()
                .filter_map(|(name, prog)| {
                    let info = prog.info().ok()?;
                    let runs = info.run_count();
                    (runs > 0).then(|| ProgramCost {
                        name: name.to_string(),
                        runs,
                        run_ns: info.run_time().as_nanos() as u64,
                    })
                })
                .collect(),
        }
    }
}

/// The kernel's `TRACKED_FDS` key of `tgid`'s fd `fd`.
fn fd_key(tgid: u32, fd: i32) -> u64 {
    ((tgid as u64) << 32) | fd as u32 as u64
}

/// Takes map `name` out of the object as the typed handle the agent uses.
fn typed_map<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, EbpfUnavailable>
where
    T: TryFrom<Map, Error = MapError>,
{
    let map = ebpf.take_map(name).ok_or_else(|| MapError::InvalidName {
        name: name.to_string(),
    });
    map.and_then(T::try_from)
        .map_err(|source| EbpfUnavailable::Map {
            name,
            source: Box::new(source),
        })
}

/// Makes a kernel set (hash map of `u64 → 1`) hold exactly `wanted`, touching only the difference.
fn sync_set(
    map: &mut HashMap<MapData, u64, u8>,
    loaded: &mut BTreeSet<u64>,
    wanted: BTreeSet<u64>,
) -> Result<(), MapError> {
    for key in wanted.difference(loaded) {
        map.insert(key, 1, 0)?;
    }
    for key in loaded.difference(&wanted) {
        // A key left behind costs only a hint the confirmer finds unchanged.
        if let Err(e) = map.remove(key) {
            tracing::debug!(key, error = %e, "cannot remove a key no longer watched from the kernel set");
        }
    }
    *loaded = wanted;
    Ok(())
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
    if strategy == HookStrategy::Fentry {
        return super::vfs_hooks::attach_all(ebpf);
    }
    let raw: &[(&str, &str)] = match strategy {
        HookStrategy::RawSyscalls => &syscalls::RAW_PROGRAMS,
        // Process exit and exec are not syscall tracepoints: raw tracepoints in both strategies.
        HookStrategy::Tracepoints => &syscalls::RAW_PROGRAMS[2..],
        HookStrategy::Noop | HookStrategy::Auto | HookStrategy::Fentry => &[],
    };
    for &(name, tp) in raw {
        let prog: &mut RawTracePoint = program(ebpf, name, tp)?;
        prog.load().map_err(program_error(name, tp))?;
        prog.attach(tp).map_err(program_error(name, tp))?;
    }
    if strategy == HookStrategy::Noop {
        let (name, syscall) = syscalls::NOOP_PROGRAM;
        let prog: &mut TracePoint = program(ebpf, name, syscall)?;
        prog.load().map_err(program_error(name, syscall))?;
        for tp in [
            format!("sys_enter_{syscall}"),
            format!("sys_exit_{syscall}"),
        ] {
            prog.attach("syscalls", &tp)
                .map_err(program_error(name, &tp))?;
        }
    }
    if strategy == HookStrategy::Tracepoints {
        let mut attached = Vec::new();
        for &(name, syscall, needs_exit) in &syscalls::TRACEPOINT_PROGRAMS {
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
            if needs_exit {
                attached.push(syscall);
            }
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
    if crate::sys::mount::mount(c"nodev", c"/sys/kernel/tracing", c"tracefs", 0).is_ok() {
        tracing::info!("mounted tracefs at /sys/kernel/tracing for the syscall tracepoints");
    }
}

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK; lift it (best effort, needs privilege).
fn raise_memlock_limit() {
    use crate::sys::limits::{self, Limit, Resource};
    if limits::set(Resource::LockedMemory, Limit::UNLIMITED).is_err() {
        tracing::debug!("could not raise RLIMIT_MEMLOCK; fine on kernels >= 5.11");
    }
}
