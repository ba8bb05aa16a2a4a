//! The eBPF source: kernel events from the ring buffer, turned into hints with attribution.

mod btf_offsets;
pub mod decode;
mod fd_resolve;
pub(crate) mod loader;
pub(crate) mod vfs_hooks;
pub mod writers;

use std::{collections::HashSet, ffi::OsString, io, os::unix::fs::MetadataExt, path::Path};

use aya::maps::{MapData, RingBuf};
use tokio::io::unix::AsyncFd;

use self::{
    decode::{decode, KernelEvent, Operation},
    fd_resolve::{FdScan, Scans},
    loader::{EbpfUnavailable, HookStrategy, KernelHooks, KernelStats},
    writers::{FoundFd, OpenForWrite, OpenWriters, Reconciled},
};
use super::{
    hint::{Hint, Scope, Source},
    MonitorCounters,
};

/// The strategy [`KernelSource::choose`] started, and why: the refusal of each cheaper strategy
/// (`fentry: not built: …; tracepoints: the kernel allows it`), or that it was requested.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StrategyChoice {
    /// The strategy in use (never `auto`).
    pub strategy: HookStrategy,
    /// Why this one.
    pub reason: String,
}

/// The attached kernel programs, their ring buffer, and the write-tracking state.
pub(crate) struct KernelSource {
    hooks: KernelHooks,
    ring: AsyncFd<RingBuf<MapData>>,
    writers: OpenWriters,
    /// Searches of `/proc` for unresolved opens' fds, off the monitor's thread, and those
    /// finished but not applied yet.
    scans: Scans,
    finished_scans: Vec<FdScan>,
    counters: MonitorCounters,
}

impl KernelSource {
    /// Loads and attaches everything (must run inside a tokio runtime for the ring buffer's fd).
    /// `names`: how many basenames the kernel filter must hold (it is sized for them); `counters`:
    /// where records that cannot be decoded are counted.
    pub(crate) fn start(
        strategy: HookStrategy,
        profile: bool,
        names: usize,
        counters: MonitorCounters,
    ) -> Result<Self, EbpfUnavailable> {
        let (hooks, ring) = KernelHooks::load(strategy, profile, names)?;
        #[expect(
            unsafe_code,
            reason = "tokio cannot check that the ring buffer's descriptor stays open while registered"
        )]
        // SAFETY: the RingBuf owns its map fd and keeps it open, unchanged, until it is dropped,
        // which only happens when the AsyncFd (its owner) is dropped.
        let ring = unsafe { AsyncFd::register(ring) }
            .map_err(|e| EbpfUnavailable::Poll(e.into_parts().1))?;
        Ok(KernelSource {
            hooks,
            ring,
            writers: OpenWriters::default(),
            scans: Scans::default(),
            finished_scans: Vec::new(),
            counters,
        })
    }

    /// Starts the first strategy of `requested`'s candidates the kernel allows (`auto`: fentry,
    /// then tracepoints), and says which and why: the refusal of each cheaper one, word for word.
    pub(crate) fn choose(
        requested: HookStrategy,
        profile: bool,
        names: usize,
        counters: MonitorCounters,
    ) -> Result<(Self, StrategyChoice), EbpfUnavailable> {
        let mut refusals = Vec::new();
        let candidates = requested.candidates();
        for &strategy in candidates {
            match Self::start(strategy, profile, names, counters.clone()) {
                Ok(source) => {
                    let reason = if requested == HookStrategy::Auto {
                        refusals.push(format!("{strategy}: the kernel allows it"));
                        refusals.join("; ")
                    } else {
                        format!("requested (--hook {strategy})")
                    };
                    return Ok((source, StrategyChoice { strategy, reason }));
                }
                Err(e) if candidates.len() == 1 => return Err(e),
                Err(e) => refusals.push(format!("{strategy}: {e}")),
            }
        }
        Err(EbpfUnavailable::AllRefused(refusals.join("; ")))
    }

    /// The kernel filter and counters.
    pub(crate) fn hooks_mut(&mut self) -> &mut KernelHooks {
        &mut self.hooks
    }

    /// Kernel counters.
    pub(crate) fn stats(&self) -> KernelStats {
        self.hooks.stats()
    }

    /// Waits for the ring buffer and drains everything in it; an empty batch when a search for
    /// unresolved opens' fds finished first ([`Self::hints`] applies it).
    pub(crate) async fn next_batch(&mut self) -> io::Result<Vec<KernelEvent>> {
        loop {
            let mut guard = tokio::select! {
                ready = self.ring.readable_mut() => ready?,
                Some(scan) = self.scans.finished() => {
                    self.finished_scans.push(scan);
                    return Ok(Vec::new());
                }
            };
            let ring = guard.get_inner_mut();
            let mut batch = Vec::new();
            while let Some(item) = ring.next() {
                match decode(&item) {
                    Ok(ev) => batch.push(ev),
                    Err(e) => {
                        self.counters.count_decode_error();
                        tracing::error!(error = %e, "dropping undecodable kernel event");
                    }
                }
            }
            guard.clear_ready();
            if !batch.is_empty() {
                return Ok(batch);
            }
        }
    }

    /// Turns a batch of kernel events into hints, in order, updating write tracking: an operation
    /// on a path is a hint at once; a write through an fd is one when the writing ends (last close,
    /// the dup2 that replaced the fd, close_range, exit or exec). Opens reported without their fd
    /// are looked for in `/proc` off this thread ([`Scans`]); a finished search is applied here,
    /// after the events that came before it.
    pub(crate) fn hints(&mut self, batch: &[KernelEvent]) -> Vec<Hint> {
        let mut hints = Vec::new();
        for (i, ev) in batch.iter().enumerate() {
            self.note_fd_syscall(ev);
            let finished = self.apply(ev, &batch[i + 1..], &mut hints);
            hints.extend(finished.iter().map(|done| hint(ev, [&done.name])));
        }
        let search_again = self.apply_finished_scans(&mut hints);
        // Each batch of events is a reason to look again (the kernel reports every fd syscall
        // of a process with unresolved opens), as is a search that events overtook.
        if batch.is_empty() {
            self.start_scans(search_again);
        } else {
            self.start_scans(self.writers.unresolved_processes());
        }
        hints
    }

    /// Applies the searches of `/proc` that finished; returns the processes whose search the
    /// events overtook.
    fn apply_finished_scans(&mut self, hints: &mut Vec<Hint>) -> Vec<u32> {
        while let Some(scan) = self.scans.try_finished() {
            self.finished_scans.push(scan);
        }
        let mut search_again = Vec::new();
        for scan in std::mem::take(&mut self.finished_scans) {
            let tgid = scan.request.tgid;
            let out = self.writers.apply_scan(scan);
            if out.search_again {
                search_again.push(tgid);
            }
            self.reconciled(tgid, out, hints);
        }
        search_again
    }

    /// Starts a search for each of `tgids`' unresolved opens, unless one runs already (it is
    /// started again when it finishes, if events overtook it).
    fn start_scans(&mut self, tgids: Vec<u32>) {
        for tgid in tgids {
            if !self.scans.in_flight(tgid) {
                if let Some(request) = self.writers.scan_request(tgid) {
                    self.scans.start(request);
                }
            }
        }
    }

    /// Tells the unresolved opens of the event's process that it made an fd syscall.
    fn note_fd_syscall(&mut self, ev: &KernelEvent) {
        let (closed, made) = match ev.op {
            Operation::Close { fd } => (Some((fd, fd)), None),
            Operation::CloseRange { first, last } => (Some((first, last)), None),
            Operation::Dup { new, .. } => (None, Some(new)),
            Operation::DupUnresolved { .. } | Operation::Ftruncate { .. } | Operation::Exec => {
                (None, None)
            }
            _ => return,
        };
        let w = &ev.header.writer;
        self.writers
            .saw_fd_syscall(w.tgid, w.pid, ev.header.ts_ns, ev.op.as_str(), closed, made);
    }

    /// Applies one event to write tracking; returns the writes it finished (path operations push
    /// their hint at once).
    fn apply(
        &mut self,
        ev: &KernelEvent,
        later: &[KernelEvent],
        hints: &mut Vec<Hint>,
    ) -> Vec<OpenForWrite> {
        let tgid = ev.header.writer.tgid;
        match &ev.op {
            Operation::OpenWrite { name, fd } => {
                let still_open = !closed_later(tgid, later);
                let writer = ev.header.writer.clone();
                self.writers
                    .opened(tgid, *fd, name.clone(), writer, still_open);
                Vec::new()
            }
            Operation::OpenWriteUnresolved { name } => {
                let writer = ev.header.writer.clone();
                self.writers.opened_unresolved(tgid, name.clone(), writer);
                Vec::new()
            }
            Operation::DupUnresolved { old } => {
                let writer = ev.header.writer.clone();
                self.writers.duplicated_unresolved(tgid, *old, writer);
                Vec::new()
            }
            Operation::Close { fd } => self.writers.closed(tgid, *fd).into_iter().collect(),
            Operation::Dup { old, new } => self
                .writers
                .duplicated(tgid, *old, *new)
                .into_iter()
                .collect(),
            Operation::CloseRange { first, last } => self.closed_range(tgid, *first, *last),
            Operation::Exit => {
                self.hooks.forget_process(tgid);
                self.hooks.resolved(tgid);
                self.writers.exited(tgid)
            }
            Operation::Exec => self.executed(tgid),
            // Content changes through a still-open fd: the close will report it.
            Operation::Ftruncate { .. } => Vec::new(),
            Operation::Rename { from, to } => {
                hints.push(hint(ev, [from, to]));
                Vec::new()
            }
            Operation::Link { existing, link } => {
                hints.push(hint(ev, [existing, link]));
                Vec::new()
            }
            Operation::Symlink { target: _, link } => {
                hints.push(hint(ev, [link]));
                Vec::new()
            }
            Operation::Unlink { name } | Operation::Truncate { name } => {
                hints.push(hint(ev, [name]));
                Vec::new()
            }
        }
    }

    /// Acts on a search of `/proc` for `tgid`'s unresolved opens: the fds found are handed to the
    /// kernel (so their close is reported) and checked again afterwards, since the process may
    /// have closed them in between; finished writes become hints. The kernel stops reporting
    /// every fd syscall of the process once none is left unresolved.
    fn reconciled(&mut self, tgid: u32, out: Reconciled, hints: &mut Vec<Hint>) {
        for FoundFd {
            fd,
            name_hash,
            file,
        } in out.found
        {
            self.hooks.track_fd(tgid, fd, name_hash);
            if OpenWriters::gone_since_found(tgid, fd, file) {
                self.hooks.forget_fd(tgid, fd);
                if let Some(done) = self.writers.closed(tgid, fd) {
                    hints.push(finished_hint(done, None));
                }
            }
        }
        for (done, progressed) in out.finished {
            hints.push(finished_hint(done, progressed));
        }
        if out.still_unresolved {
            self.hooks.unresolved(tgid);
        } else {
            self.hooks.resolved(tgid);
        }
    }

    /// close_range: the writes finished in the range, and the kernel's table forgets its fds
    /// (at most 4,097 of them: a range to `i32::MAX` must not stall the monitor).
    fn closed_range(&mut self, tgid: u32, first: i32, last: i32) -> Vec<OpenForWrite> {
        let done = self.writers.closed_range(tgid, first, last);
        for fd in first..=last.min(first.saturating_add(4096)) {
            self.hooks.forget_fd(tgid, fd);
        }
        done
    }

    /// execve: the fds that vanished (close-on-exec) finished their writes; the kernel's table
    /// forgets them.
    fn executed(&mut self, tgid: u32) -> Vec<OpenForWrite> {
        let gone = self.writers.executed(tgid);
        for (fd, _) in &gone {
            self.hooks.forget_fd(tgid, *fd);
        }
        gone.into_iter().map(|(_, e)| e).collect()
    }

    /// Files still open for writing; a watched path resolving to one of them is not re-read yet.
    pub(crate) fn busy_files(&self) -> HashSet<(u64, u64)> {
        self.writers.busy_files()
    }
}

/// The hint for a write found finished while resolving opens from `/proc`: the operation that
/// showed it (the thread's next fd syscall) when known.
fn finished_hint(done: OpenForWrite, progressed: Option<(u64, &'static str)>) -> Hint {
    Hint {
        scope: Scope::Names(vec![done.name]),
        source: Source::Ebpf,
        writer: Some(done.writer),
        kernel_ts_ns: progressed.map(|(ts, _)| ts),
        operation: progressed.map_or("close", |(_, op)| op),
    }
}

/// True when `path` currently resolves to one of `busy`.
pub(crate) fn is_busy(busy: &HashSet<(u64, u64)>, path: &Path) -> bool {
    !busy.is_empty()
        && std::fs::metadata(path)
            .map(|m| busy.contains(&(m.dev(), m.ino())))
            .unwrap_or(false)
}

/// True when a later event of the batch closed fds of `tgid` (a close or its exit): a write-open
/// of the same process may already be closed, so `/proc` must not be asked about its fd.
fn closed_later(tgid: u32, later: &[KernelEvent]) -> bool {
    later.iter().any(|ev| {
        ev.header.writer.tgid == tgid && matches!(ev.op, Operation::Close { .. } | Operation::Exit)
    })
}

/// The hint for `names` (empty ones, arguments the kernel could not read, are left out), with the
/// event's writer, time and operation; every watched path when a path argument was truncated.
fn hint<'a>(ev: &KernelEvent, names: impl IntoIterator<Item = &'a OsString>) -> Hint {
    Hint {
        scope: if ev.header.path_truncated {
            Scope::All
        } else {
            Scope::Names(
                names
                    .into_iter()
                    .filter(|n| !n.is_empty())
                    .cloned()
                    .collect(),
            )
        },
        source: Source::Ebpf,
        writer: Some(ev.header.writer.clone()),
        kernel_ts_ns: Some(ev.header.ts_ns),
        operation: ev.op.as_str(),
    }
}
