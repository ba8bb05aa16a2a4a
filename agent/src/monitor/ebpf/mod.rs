//! The eBPF source: kernel events from the ring buffer, turned into hints with attribution.

mod btf_offsets;
mod cwd_offsets;
pub mod decode;
mod fd_resolve;
pub(crate) mod loader;
mod placement;
pub(crate) mod vfs_hooks;
pub mod writers;

use std::{
    collections::{HashMap, HashSet},
    ffi::OsString,
    io,
    os::unix::fs::MetadataExt,
    path::Path,
};

use aya::maps::{MapData, RingBuf};
use tokio::io::unix::AsyncFd;

use self::{
    decode::{decode, KernelEvent, Operation},
    fd_resolve::{FdScan, Scans},
    loader::{EbpfUnavailable, HookStrategy, KernelHooks, KernelStats},
    writers::{FoundFd, OpenForWrite, OpenWriters, Reconciled},
};
use super::{
    hint::{Hint, Scope, Source, Touched},
    MonitorCounters,
};
use decode::NameBase;

/// Files kept per process in `KernelSource::closed_files` until a finished write uses them: a
/// long-lived writer's list stays bounded.
const CLOSED_FILES_KEPT: usize = 16;

/// Longest the monitor waits, around a read, for syscalls in flight on a watched name to finish
/// ([`KernelSource::settle`]): a rename takes microseconds; one stuck longer (a hung network file
/// system) leaves the change it may have made ambiguous rather than holding the monitor.
pub(crate) const SETTLE_LIMIT: std::time::Duration = std::time::Duration::from_millis(50);

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
    /// Where each write-open's name is, placed when its event was read, keyed by process and path
    /// argument: the entry its writes touch ([`Self::place_writes`]).
    open_places: HashMap<(u32, OsString), Touched>,
    /// The files each process was seen to close while open for writing (the kernel reads them at
    /// the close), the last [`CLOSED_FILES_KEPT`]: what its finished writes ended on.
    closed_files: HashMap<u32, Vec<(u64, u64)>>,
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
        let (mut hooks, ring) = KernelHooks::load(strategy, profile, names)?;
        if let Err(e) = cwd_offsets::write(hooks.object_mut()) {
            tracing::info!(error = %e, "relative names are placed from /proc only: a writer gone before its event is read is not placed");
        }
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
            open_places: HashMap::new(),
            closed_files: HashMap::new(),
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
        let mut hints = self.place_opens(batch);
        for (i, ev) in batch.iter().enumerate() {
            self.note_fd_syscall(ev);
            let finished = self.apply(ev, &batch[i + 1..], &mut hints);
            hints.extend(finished.iter().map(|done| hint(ev, [&done.name])));
        }
        let search_again = self.apply_finished_scans(&mut hints);
        self.place_writes(&mut hints, batch);
        // Each batch of events is a reason to look again (the kernel reports every fd syscall
        // of a process with unresolved opens), as is a search that events overtook.
        if batch.is_empty() {
            self.start_scans(search_again);
        } else {
            self.start_scans(self.writers.unresolved_processes());
        }
        hints
    }

    /// Places the name of every write-open of `batch` as its writer sees it, now, while it most
    /// likely still runs: the entry its writes will have touched when they finish. Returns an
    /// `open` hint for each: it triggers no read (the writing has not finished), but a change
    /// read while the file is open is judged with its writer among those that may have made it.
    fn place_opens(&mut self, batch: &[KernelEvent]) -> Vec<Hint> {
        let mut opens = Vec::new();
        for ev in batch {
            if let Operation::OpenWrite { name, .. } | Operation::OpenWriteUnresolved { name } =
                &ev.op
            {
                let tgid = ev.header.writer.tgid;
                let mut open = hint(ev, [name]);
                if let Some(t) = placement::place(tgid, name, ev.header.bases[0]) {
                    self.open_places.insert((tgid, name.clone()), t.clone());
                    open.touched = vec![t];
                }
                opens.push(open);
            }
        }
        opens
    }

    /// Gives every finished write among `hints` what it touched: the entry its open named
    /// (placed by [`Self::place_opens`]), and the files the kernel saw its process close while
    /// open for writing since its last finished write (a name never placed and no file known:
    /// its basename only); then forgets the opens and
    /// closes of the processes that exited in `batch`.
    fn place_writes(&mut self, hints: &mut [Hint], batch: &[KernelEvent]) {
        for ev in batch {
            if let (Operation::Close { .. }, Some(file)) = (&ev.op, ev.header.file) {
                let closed = self.closed_files.entry(ev.header.writer.tgid).or_default();
                closed.retain(|f| *f != file);
                if closed.len() >= CLOSED_FILES_KEPT {
                    closed.remove(0);
                }
                closed.push(file);
            }
        }
        for h in hints.iter_mut().filter(|h| h.touched.is_empty()) {
            let (Some(w), Scope::Names(names)) = (&h.writer, &h.scope) else {
                continue;
            };
            // Used once: a later write of the process is judged on the files it closes then.
            let closed = self.closed_files.remove(&w.tgid).unwrap_or_default();
            for name in names {
                let basename = Path::new(name).file_name().unwrap_or(name).to_os_string();
                let placed = self.open_places.get(&(w.tgid, name.clone())).cloned();
                h.touched.extend(closed.iter().map(|&file| Touched {
                    name: basename.clone(),
                    dir: None,
                    file: Some(file),
                }));
                match placed {
                    Some(t) if t.dir.is_some() || closed.is_empty() => h.touched.push(t),
                    Some(_) => {}
                    None if closed.is_empty() => h.touched.push(Touched {
                        name: basename,
                        dir: None,
                        file: None,
                    }),
                    None => {}
                }
            }
        }
        for ev in batch.iter().filter(|ev| matches!(ev.op, Operation::Exit)) {
            let tgid = ev.header.writer.tgid;
            self.open_places.retain(|(t, _), _| *t != tgid);
            self.closed_files.remove(&tgid);
        }
    }

    /// Waits until no syscall on a watched name is in flight in the kernel (at most
    /// [`SETTLE_LIMIT`]), then takes every event already in the ring buffer as hints. The monitor
    /// calls it before a read (so an operation that finished before it is judged with it) and
    /// after (an operation that may have finished during it makes the change ambiguous). Returns
    /// the hints and whether the kernel settled in time.
    pub(crate) async fn settle(&mut self) -> (Vec<Hint>, bool) {
        let deadline = tokio::time::Instant::now() + SETTLE_LIMIT;
        let mut settled = true;
        while self.hooks.syscalls_in_flight() > 0 {
            if tokio::time::Instant::now() >= deadline {
                settled = false;
                break;
            }
            tokio::time::sleep(std::time::Duration::from_micros(200)).await;
        }
        let ring = self.ring.get_mut();
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
        let hints = if batch.is_empty() {
            Vec::new()
        } else {
            self.hints(&batch)
        };
        (hints, settled)
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
        // Placed from the open by `KernelSource::place_writes`.
        touched: Vec::new(),
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
        touched: touched_by(ev),
    }
}

/// The entries a path operation touched, placed as the writer saw them: a rename's both sides,
/// a link's, symlink's, unlink's or truncate's name (an fd operation touches what its open named:
/// `KernelSource::place_writes`).
fn touched_by(ev: &KernelEvent) -> Vec<Touched> {
    if ev.header.path_truncated {
        return vec![placement::anything()];
    }
    let tgid = ev.header.writer.tgid;
    let [first, second] = ev.header.bases;
    let names: Vec<(&OsString, NameBase)> = match &ev.op {
        Operation::Rename { from, to } => vec![(from, first), (to, second)],
        Operation::Link { link, .. } | Operation::Symlink { link, .. } => vec![(link, second)],
        Operation::Unlink { name } | Operation::Truncate { name } => vec![(name, first)],
        Operation::OpenWrite { name, .. } | Operation::OpenWriteUnresolved { name } => {
            vec![(name, first)]
        }
        _ => Vec::new(),
    };
    names
        .into_iter()
        .filter_map(|(name, base)| placement::place(tgid, name, base))
        .collect()
}
