//! The eBPF source: kernel events from the ring buffer, turned into hints with attribution.

pub mod decode;
pub mod loader;
pub mod writers;

use std::{collections::HashSet, io, os::unix::fs::MetadataExt, path::Path};

use aya::maps::{MapData, RingBuf};
use tokio::io::unix::AsyncFd;

use self::{
    decode::{decode, KernelEvent, KernelEventKind},
    loader::{EbpfUnavailable, HookStrategy, KernelHooks, KernelStats},
    writers::{OpenForWrite, OpenWriters},
};
use super::hint::{Hint, Scope, Source};

/// The attached kernel programs, their ring buffer, and the write-tracking state.
pub struct KernelSource {
    hooks: KernelHooks,
    ring: AsyncFd<RingBuf<MapData>>,
    writers: OpenWriters,
    decode_errors: u64,
}

impl KernelSource {
    /// Loads and attaches everything (must run inside a tokio runtime for the ring buffer's fd).
    /// `names`: how many basenames the kernel filter must hold (it is sized for them).
    pub fn start(
        strategy: HookStrategy,
        profile: bool,
        names: usize,
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
            decode_errors: 0,
        })
    }

    /// The kernel filter and counters.
    pub fn hooks_mut(&mut self) -> &mut KernelHooks {
        &mut self.hooks
    }

    /// Kernel counters.
    pub fn stats(&self) -> KernelStats {
        self.hooks.stats()
    }

    /// Records that could not be decoded (an object/agent mismatch).
    pub fn decode_errors(&self) -> u64 {
        self.decode_errors
    }

    /// Waits for the ring buffer and drains everything in it.
    pub async fn next_batch(&mut self) -> io::Result<Vec<KernelEvent>> {
        loop {
            let mut guard = self.ring.readable_mut().await?;
            let ring = guard.get_inner_mut();
            let mut batch = Vec::new();
            while let Some(item) = ring.next() {
                match decode(&item) {
                    Ok(ev) => batch.push(ev),
                    Err(e) => {
                        self.decode_errors += 1;
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

    /// Turns a batch of kernel events into hints, in order, updating write tracking.
    pub fn hints(&mut self, batch: &[KernelEvent]) -> Vec<Hint> {
        let mut hints = Vec::new();
        for (i, ev) in batch.iter().enumerate() {
            let finished: Vec<OpenForWrite> = match ev.kind {
                KernelEventKind::OpenWrite => {
                    let closed_later = batch[i + 1..].iter().any(|later| {
                        later.writer.tgid == ev.writer.tgid
                            && matches!(later.kind, KernelEventKind::Close | KernelEventKind::Exit)
                    });
                    self.writers.opened(
                        ev.writer.tgid,
                        ev.fd,
                        ev.name.clone(),
                        ev.writer.clone(),
                        !closed_later,
                    );
                    Vec::new()
                }
                KernelEventKind::Close => self
                    .writers
                    .closed(ev.writer.tgid, ev.fd)
                    .into_iter()
                    .collect(),
                KernelEventKind::Dup => self
                    .writers
                    .duplicated(ev.writer.tgid, ev.fd, ev.fd2)
                    .into_iter()
                    .collect(),
                KernelEventKind::CloseRange => {
                    let done = self.writers.closed_range(ev.writer.tgid, ev.fd, ev.fd2);
                    for fd in ev.fd..=ev.fd2.min(ev.fd.saturating_add(4096)) {
                        self.hooks.forget_fd(ev.writer.tgid, fd);
                    }
                    done
                }
                KernelEventKind::Exit => {
                    self.hooks.forget_process(ev.writer.tgid);
                    self.writers.exited(ev.writer.tgid)
                }
                KernelEventKind::Exec => {
                    let gone = self.writers.executed(ev.writer.tgid);
                    for (fd, _) in &gone {
                        self.hooks.forget_fd(ev.writer.tgid, *fd);
                    }
                    gone.into_iter().map(|(_, e)| e).collect()
                }
                // Content changes through a still-open fd: the close will report it.
                KernelEventKind::Ftruncate => Vec::new(),
                KernelEventKind::Rename
                | KernelEventKind::Link
                | KernelEventKind::Unlink
                | KernelEventKind::Truncate => {
                    hints.push(self.hint(ev, vec![ev.name.clone(), ev.name2.clone()]));
                    Vec::new()
                }
                KernelEventKind::Symlink => {
                    // `name` is the link's target text, not a path that changed.
                    hints.push(self.hint(ev, vec![ev.name2.clone()]));
                    Vec::new()
                }
            };
            for done in finished {
                hints.push(self.hint(ev, vec![done.name]));
            }
        }
        hints
    }

    fn hint(&self, ev: &KernelEvent, names: Vec<std::ffi::OsString>) -> Hint {
        let names = names.into_iter().filter(|n| !n.is_empty()).collect();
        Hint {
            scope: if ev.name_truncated {
                Scope::All
            } else {
                Scope::Names(names)
            },
            source: Source::Ebpf,
            writer: Some(ev.writer.clone()),
            kernel_ts_ns: Some(ev.ts_ns),
            operation: ev.kind.operation(),
        }
    }

    /// Files still open for writing; a watched path resolving to one of them is not re-read yet.
    pub fn busy_files(&self) -> HashSet<(u64, u64)> {
        self.writers.busy_files()
    }
}

/// True when `path` currently resolves to one of `busy`.
pub fn is_busy(busy: &HashSet<(u64, u64)>, path: &Path) -> bool {
    !busy.is_empty()
        && std::fs::metadata(path)
            .map(|m| busy.contains(&(m.dev(), m.ino())))
            .unwrap_or(false)
}
