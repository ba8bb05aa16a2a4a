//! How the agent stops: the process signal that starts a shutdown ([`ShutdownSignal`]) and the
//! notice every task waits on ([`Shutdown`]), sent once by the task that wires them up ([`Stop`]).
//!
//! Modelled on mini-redis `src/shutdown.rs`: tasks never touch the channel, they ask
//! [`Shutdown::is_shutdown`] or await [`Shutdown::recv`] in a `select!` arm.

use tokio::sync::watch;

use crate::sync::or_pending;

/// Tells every [`Shutdown`] made from it that the agent is stopping. Dropping it without
/// [`Stop::stop`] stops them too (a task whose wiring went away has nothing left to serve).
#[derive(Debug)]
pub(crate) struct Stop(watch::Sender<bool>);

/// A task's view of the shutdown notice: cheap to clone, one per task.
#[derive(Debug, Clone)]
pub(crate) struct Shutdown {
    notice: watch::Receiver<bool>,
}

/// A [`Stop`] and the first [`Shutdown`] listening to it (clone it for each task).
pub(crate) fn channel() -> (Stop, Shutdown) {
    let (stop, notice) = watch::channel(false);
    (Stop(stop), Shutdown { notice })
}

impl Stop {
    /// Starts the shutdown: every pending and future [`Shutdown::recv`] returns.
    pub(crate) fn stop(&self) {
        // Fails only when no task holds a Shutdown any more: nobody is left to tell.
        self.0.send(true).ok();
    }
}

impl Shutdown {
    /// Whether the shutdown has been sent (a task checks it between steps it will not interrupt).
    pub(crate) fn is_shutdown(&self) -> bool {
        *self.notice.borrow()
    }

    /// Resolves once the shutdown is sent or its [`Stop`] is gone; at once if that already
    /// happened. Cancel safe: use it as a `select!` arm in a loop.
    pub(crate) async fn recv(&mut self) {
        // An error means the Stop is gone, which counts as stopped.
        self.notice.wait_for(|stopping| *stopping).await.ok();
    }
}

/// SIGINT and SIGTERM (a DaemonSet pod is stopped with SIGTERM), caught from the moment this is
/// made. Install it first thing: a handler registered lazily, when a `select!` first polls it,
/// leaves a window after start-up in which SIGTERM still has its default action and kills the agent
/// without its `agent_stopped` record (seen as "agent exited with signal 15" right after "ready").
pub(crate) struct ShutdownSignal {
    term: Option<tokio::signal::unix::Signal>,
    int: Option<tokio::signal::unix::Signal>,
}

impl ShutdownSignal {
    /// Registers both handlers now; a signal arriving before [`ShutdownSignal::recv`] is kept.
    pub(crate) fn install() -> Self {
        use tokio::signal::unix::{signal, SignalKind};
        let term = signal(SignalKind::terminate())
            .map_err(|e| tracing::warn!(error = %e, "cannot catch SIGTERM"))
            .ok();
        let int = signal(SignalKind::interrupt())
            .map_err(|e| tracing::warn!(error = %e, "cannot catch SIGINT"))
            .ok();
        ShutdownSignal { term, int }
    }

    /// Resolves on the first SIGINT or SIGTERM (never, for one that could not be caught).
    pub(crate) async fn recv(&mut self) {
        tokio::select! {
            _ = or_pending(self.term.as_mut().map(|s| s.recv())) => {}
            _ = or_pending(self.int.as_mut().map(|s| s.recv())) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{channel, ShutdownSignal};

    /// A SIGTERM that arrives after `install` but before anyone awaits `recv` is neither lost nor
    /// left to its default action (which would kill this test process).
    #[tokio::test]
    async fn a_signal_before_recv_is_kept() {
        let mut shutdown = ShutdownSignal::install();
        crate::sys::test_support::raise(libc::SIGTERM).expect("raise");
        tokio::time::timeout(Duration::from_secs(10), shutdown.recv())
            .await
            .expect("the SIGTERM raised before recv is delivered");
    }

    /// A task that starts waiting after the stop (or after its wiring went away) returns at once,
    /// and one cloned before the stop hears it.
    #[tokio::test]
    async fn recv_returns_after_stop_and_when_stop_is_dropped() {
        let (stop, mut first) = channel();
        let mut second = first.clone();
        assert!(!first.is_shutdown());
        stop.stop();
        assert!(first.is_shutdown());
        tokio::time::timeout(Duration::from_secs(5), first.recv())
            .await
            .expect("stopped");
        tokio::time::timeout(Duration::from_secs(5), first.recv())
            .await
            .expect("still stopped");
        tokio::time::timeout(Duration::from_secs(5), second.recv())
            .await
            .expect("a clone hears it");

        let (stop, mut orphan) = channel();
        drop(stop);
        tokio::time::timeout(Duration::from_secs(5), orphan.recv())
            .await
            .expect("no Stop left");
    }

    /// Without a stop, `recv` keeps waiting.
    #[tokio::test]
    async fn recv_waits_until_stopped() {
        let (_stop, mut shutdown) = channel();
        assert!(
            tokio::time::timeout(Duration::from_millis(50), shutdown.recv())
                .await
                .is_err(),
            "no stop sent"
        );
    }
}
