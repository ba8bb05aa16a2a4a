//! Accept loops that survive descriptor exhaustion, and the descriptor reserve that keeps the
//! agent's own file reads working while clients hold connections.
//!
//! Without this, `accept()` failing with `EMFILE` returned at once, the socket stayed readable
//! (the connection waits in the kernel's backlog), and the loop spun: two full cores, millions of
//! log lines per second, and a rotation made meanwhile was rejected with "Too many open files".
//!
//! Two mechanisms, used by every accept loop (TLS listeners, admin endpoint):
//! - [`AcceptBackoff`]: on a resource error (`EMFILE`, `ENFILE`, `ENOBUFS`, `ENOMEM`) wait with an
//!   exponential delay up to [`MAX_BACKOFF`] before the next `accept()`, and log at most one line
//!   per [`LOG_EVERY`] with the count of errors it did not log. Per-connection errors
//!   (`ECONNABORTED`, `EPROTO`, …) are the client's problem: the loop continues at once.
//! - [`DescriptorBudget`]: connections may hold at most the soft `RLIMIT_NOFILE` minus what the
//!   agent had open when it started serving minus a reserve ([`reserve_for`]); a connection beyond
//!   that is accepted and closed at once, so `accept()` itself normally never meets `EMFILE` and
//!   reading new material always finds a descriptor. [`raise_nofile_limit`] first raises the soft
//!   limit to the hard one, as most daemons do (the default soft 1,024 is a select(2)-era limit).

use std::{
    io,
    net::SocketAddr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        OnceLock,
    },
    time::{Duration, Instant},
};

use tokio::net::{TcpListener, TcpStream};

use crate::sys::limits::{self, Limit, Resource};

/// The first wait after a resource error; doubled on each consecutive one.
pub(crate) const MIN_BACKOFF: Duration = Duration::from_millis(5);

/// The longest wait between two `accept()` calls while descriptors are exhausted: a freed
/// descriptor is used within a second, and the loop costs nothing meanwhile.
pub(crate) const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// At most one log line per this interval per accept loop (and per refusal kind); the next line
/// says how many it did not log.
pub(crate) const LOG_EVERY: Duration = Duration::from_secs(10);

/// Descriptors a proxied connection holds: the client's socket and the upstream's.
pub(crate) const PROXIED_CONNECTION_FDS: usize = 2;

/// Descriptors an admin connection holds.
pub(crate) const ADMIN_CONNECTION_FDS: usize = 1;

/// What an `accept()` error means for the loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AcceptErrorKind {
    /// The process or the system is out of descriptors or memory: the connection stays in the
    /// backlog and the socket stays readable, so retrying at once spins. Back off.
    Exhausted,
    /// This one connection failed (reset before it was accepted, protocol error, denied by a
    /// firewall hook): the next one is unaffected. Continue at once.
    Connection,
    /// Anything else: not expected from a bound listener; back off like [`Exhausted`](Self::Exhausted)
    /// so an unknown persistent error cannot spin either.
    Other,
}

/// Classifies an `accept()` error (see [`AcceptErrorKind`]).
pub(crate) fn classify(error: &io::Error) -> AcceptErrorKind {
    match error.raw_os_error() {
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM) => {
            AcceptErrorKind::Exhausted
        }
        Some(
            libc::ECONNABORTED
            | libc::ECONNRESET
            | libc::EPROTO
            | libc::EPERM
            | libc::EINTR
            | libc::EAGAIN
            | libc::ENETDOWN
            | libc::ENOPROTOOPT
            | libc::EHOSTDOWN
            | libc::ENONET
            | libc::EHOSTUNREACH
            | libc::EOPNOTSUPP
            | libc::ENETUNREACH
            | libc::ETIMEDOUT,
        ) => AcceptErrorKind::Connection,
        _ => match error.kind() {
            io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock => AcceptErrorKind::Connection,
            _ => AcceptErrorKind::Other,
        },
    }
}

/// The symbolic name of the errors an operator searches for (`EMFILE`), or `None`.
pub(crate) fn errno_name(error: &io::Error) -> Option<&'static str> {
    Some(match error.raw_os_error()? {
        libc::EMFILE => "EMFILE",
        libc::ENFILE => "ENFILE",
        libc::ENOBUFS => "ENOBUFS",
        libc::ENOMEM => "ENOMEM",
        libc::ECONNABORTED => "ECONNABORTED",
        _ => return None,
    })
}

/// True when `message` is the text (`io::Error`'s `Display`) of a descriptor or memory exhaustion
/// error: such a failure says nothing about the file that could not be opened, so a reader that
/// keeps only the text (the confirmer's `Unreadable`) must not take it for a change.
pub(crate) fn is_exhaustion_message(message: &str) -> bool {
    [libc::EMFILE, libc::ENFILE, libc::ENOBUFS, libc::ENOMEM]
        .into_iter()
        .any(|code| message == io::Error::from_raw_os_error(code).to_string())
}

/// Lets one line through per [`LOG_EVERY`] and counts the ones it held back, so a fault that
/// repeats a million times a second costs one line per interval, not a million.
#[derive(Debug)]
pub(crate) struct RateLimitedLog {
    every: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl RateLimitedLog {
    /// One line per `every`.
    pub(crate) fn new(every: Duration) -> Self {
        RateLimitedLog {
            every,
            last: None,
            suppressed: 0,
        }
    }

    /// `Some(n)` when a line may be written now (`n`: lines held back since the last one), else
    /// `None` (and the line is counted as held back).
    pub(crate) fn allow(&mut self) -> Option<u64> {
        let now = Instant::now();
        match self.last {
            Some(last) if now.duration_since(last) < self.every => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

impl Default for RateLimitedLog {
    fn default() -> Self {
        RateLimitedLog::new(LOG_EVERY)
    }
}

/// The state of one accept loop: the current delay and its rate-limited log.
#[derive(Debug)]
pub(crate) struct AcceptBackoff {
    what: String,
    delay: Duration,
    log: RateLimitedLog,
}

impl AcceptBackoff {
    /// `what` names the loop in the log (`listener web`, `admin endpoint`).
    pub(crate) fn new(what: impl Into<String>) -> Self {
        AcceptBackoff {
            what: what.into(),
            delay: Duration::ZERO,
            log: RateLimitedLog::default(),
        }
    }

    /// Call after a successful `accept()`: the next resource error starts again at
    /// [`MIN_BACKOFF`].
    pub(crate) fn accepted(&mut self) {
        self.delay = Duration::ZERO;
    }

    /// The wait before the next `accept()` after `error`: zero for a per-connection error, else
    /// the next step of the exponential backoff. Logs (rate-limited). Separate from
    /// [`failed`](Self::failed) so a caller with its own select loop can sleep there.
    pub(crate) fn on_error(&mut self, error: &io::Error) -> Duration {
        let kind = classify(error);
        if kind == AcceptErrorKind::Connection {
            tracing::debug!(accept_loop = %self.what, error = %error, "accept: connection failed before it was accepted; continuing");
            return Duration::ZERO;
        }
        self.delay = if self.delay.is_zero() {
            MIN_BACKOFF
        } else {
            (self.delay * 2).min(MAX_BACKOFF)
        };
        if let Some(suppressed) = self.log.allow() {
            let errno = errno_name(error).unwrap_or("error");
            tracing::warn!(
                accept_loop = %self.what,
                errno,
                error = %error,
                backoff_ms = self.delay.as_millis() as u64,
                suppressed,
                "accept failed ({errno}): backing off before the next accept; pending connections wait in the backlog (one line per {}s, suppressed counts the others)",
                LOG_EVERY.as_secs()
            );
        }
        self.delay
    }

    /// Logs `error` and waits as [`on_error`](Self::on_error) says.
    pub(crate) async fn failed(&mut self, error: &io::Error) {
        let wait = self.on_error(error);
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

/// Accepts the next connection, backing off on errors (see [`AcceptBackoff`]). Cancel-safe: a
/// `select!` branch may drop it between attempts or during a backoff wait.
pub(crate) async fn accept(
    listener: &TcpListener,
    backoff: &mut AcceptBackoff,
) -> (TcpStream, SocketAddr) {
    loop {
        match listener.accept().await {
            Ok(accepted) => {
                backoff.accepted();
                return accepted;
            }
            Err(e) => backoff.failed(&e).await,
        }
    }
}

/// The soft and hard `RLIMIT_NOFILE` after [`raise_nofile_limit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct NofileLimit {
    /// The soft limit before.
    pub was: u64,
    /// The soft limit now.
    pub soft: u64,
    /// The hard limit.
    pub hard: u64,
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit. Call once at start, before anything opens
/// descriptors in bulk. An error leaves the limit as it was (the agent still runs; the budget is
/// computed from whatever the limit is).
pub(crate) fn raise_nofile_limit() -> io::Result<NofileLimit> {
    let mut limit = limits::get(Resource::OpenFiles)?;
    let was = limit.soft;
    // Set once: a second call keeps the limit the agent was started with.
    INHERITED_SOFT_NOFILE.get_or_init(|| was);
    if limit.soft < limit.hard {
        let raised = Limit {
            soft: limit.hard,
            ..limit
        };
        limits::set(Resource::OpenFiles, raised)?;
        limit = raised;
    }
    Ok(NofileLimit {
        was,
        soft: limit.soft,
        hard: limit.hard,
    })
}

/// The soft `RLIMIT_NOFILE` the agent was started with, before [`raise_nofile_limit`].
static INHERITED_SOFT_NOFILE: OnceLock<u64> = OnceLock::new();

/// Gives a child the soft `RLIMIT_NOFILE` the agent was started with, as systemd does for the
/// services it starts: the raised limit is for the agent's own accept loops, and an action's
/// program (a `select()`-based tool among them) must not inherit descriptors above 1,024.
pub(crate) fn restore_inherited_nofile(cmd: &mut tokio::process::Command) {
    if let Some(&soft) = INHERITED_SOFT_NOFILE.get() {
        limits::lower_soft_open_files_in_child(cmd, soft);
    }
}

/// The current soft `RLIMIT_NOFILE` (`None` when it cannot be read).
pub(crate) fn soft_nofile_limit() -> Option<u64> {
    limits::get(Resource::OpenFiles)
        .ok()
        .map(|limit| limit.soft)
}

/// Descriptors this process has open now (`/proc/self/fd`), `None` without procfs.
pub(crate) fn open_descriptors() -> Option<usize> {
    // The directory's own descriptor is listed too.
    Some(
        std::fs::read_dir("/proc/self/fd")
            .ok()?
            .count()
            .saturating_sub(1),
    )
}

/// Descriptors kept back from connections for everything else the agent opens after it started
/// serving: material reads and confirmations (a few per bundle at a time), the audit log's
/// reopen, action processes' pipes, Kubernetes API connections. A sixteenth of the limit, at
/// least 64 and at most 4,096.
pub(crate) fn reserve_for(limit: usize) -> usize {
    (limit / 16).clamp(64, 4096)
}

/// The descriptors every accept loop of the process shares (one per process: the limit is).
#[derive(Debug)]
pub(crate) struct DescriptorBudget {
    capacity: usize,
    used: AtomicUsize,
}

static BUDGET: OnceLock<DescriptorBudget> = OnceLock::new();

impl DescriptorBudget {
    /// A budget of `capacity` descriptors for connections.
    pub(crate) fn with_capacity(capacity: usize) -> Self {
        DescriptorBudget {
            capacity,
            used: AtomicUsize::new(0),
        }
    }

    /// The budget the current limit leaves: soft limit − open now − [`reserve_for`] the limit.
    /// Without a readable limit (never on Linux) the budget is unbounded: the per-listener
    /// `max_connections` still applies.
    pub(crate) fn from_current_limit() -> Self {
        let Some(limit) = soft_nofile_limit() else {
            return DescriptorBudget::with_capacity(usize::MAX);
        };
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        let open = open_descriptors().unwrap_or(64);
        DescriptorBudget::with_capacity(
            limit
                .saturating_sub(open)
                .saturating_sub(reserve_for(limit)),
        )
    }

    /// The process's budget, measured the first time it is asked for. [`init`](Self::init) at
    /// the point the agent starts serving measures it with everything start-up opened.
    pub(crate) fn global() -> &'static DescriptorBudget {
        BUDGET.get_or_init(DescriptorBudget::from_current_limit)
    }

    /// Measures the process's budget now (once; later calls return the first) and logs it.
    pub(crate) fn init() -> &'static DescriptorBudget {
        let budget = DescriptorBudget::global();
        tracing::info!(
            limit = soft_nofile_limit().unwrap_or_default(),
            open = open_descriptors().unwrap_or_default(),
            connection_descriptors = budget.capacity,
            "descriptor budget for connections (the rest of the limit is kept for reading material)"
        );
        budget
    }

    /// Descriptors connections may hold in all.
    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }

    /// Descriptors connections hold now.
    #[cfg(test)]
    pub(crate) fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// Takes `fds` descriptors for one connection, or `None` when that would eat into the
    /// reserve (close the connection).
    pub(crate) fn try_acquire(&'static self, fds: usize) -> Option<DescriptorPermit> {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(fds).filter(|&n| n <= self.capacity)
            })
            .ok()
            .map(|_| DescriptorPermit { budget: self, fds })
    }
}

/// Descriptors one connection holds from the [`DescriptorBudget`]; returned on drop.
#[derive(Debug)]
pub(crate) struct DescriptorPermit {
    budget: &'static DescriptorBudget,
    fds: usize,
}

impl Drop for DescriptorPermit {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.fds, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(code: i32) -> io::Error {
        io::Error::from_raw_os_error(code)
    }

    #[test]
    fn resource_errors_back_off_connection_errors_do_not() {
        for code in [libc::EMFILE, libc::ENFILE, libc::ENOBUFS, libc::ENOMEM] {
            assert_eq!(classify(&os(code)), AcceptErrorKind::Exhausted, "{code}");
        }
        for code in [libc::ECONNABORTED, libc::EPROTO, libc::EPERM, libc::EINTR] {
            assert_eq!(classify(&os(code)), AcceptErrorKind::Connection, "{code}");
        }
        assert_eq!(classify(&os(libc::EINVAL)), AcceptErrorKind::Other);
    }

    #[test]
    fn exhaustion_is_recognised_from_the_error_text() {
        assert!(is_exhaustion_message(&os(libc::EMFILE).to_string()));
        assert!(is_exhaustion_message(&os(libc::ENFILE).to_string()));
        assert!(!is_exhaustion_message(&os(libc::EACCES).to_string()));
        assert!(!is_exhaustion_message("is a fifo"));
    }

    #[test]
    fn backoff_doubles_up_to_one_second_and_resets_after_an_accept() {
        let mut b = AcceptBackoff::new("test");
        let waits: Vec<_> = (0..12).map(|_| b.on_error(&os(libc::EMFILE))).collect();
        assert_eq!(waits[0], MIN_BACKOFF);
        assert_eq!(waits[1], MIN_BACKOFF * 2);
        assert!(waits.windows(2).all(|w| w[1] >= w[0]));
        assert_eq!(*waits.last().expect("12 waits"), MAX_BACKOFF);
        assert_eq!(b.on_error(&os(libc::ECONNABORTED)), Duration::ZERO);
        b.accepted();
        assert_eq!(b.on_error(&os(libc::ENFILE)), MIN_BACKOFF);
    }

    #[test]
    fn log_lets_one_line_through_per_interval_and_counts_the_rest() {
        let mut log = RateLimitedLog::new(Duration::from_secs(3600));
        assert_eq!(log.allow(), Some(0));
        assert_eq!((0..1000).filter_map(|_| log.allow()).count(), 0);
        let mut log = RateLimitedLog::new(Duration::ZERO);
        assert_eq!(log.allow(), Some(0));
        assert_eq!(log.allow(), Some(0));
    }

    #[test]
    fn budget_refuses_beyond_capacity_and_returns_on_drop() {
        let budget: &'static DescriptorBudget =
            Box::leak(Box::new(DescriptorBudget::with_capacity(5)));
        let a = budget.try_acquire(2).expect("2 of 5");
        let b = budget.try_acquire(2).expect("4 of 5");
        assert!(budget.try_acquire(2).is_none(), "6 of 5");
        assert_eq!(budget.used(), 4);
        drop(a);
        assert!(budget.try_acquire(2).is_some());
        drop(b);
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn reserve_is_a_sixteenth_within_bounds() {
        assert_eq!(reserve_for(256), 64);
        assert_eq!(reserve_for(65_536), 4096);
        assert_eq!(reserve_for(1_048_576), 4096);
        assert_eq!(reserve_for(16_384), 1024);
    }

    #[test]
    fn raising_the_limit_reaches_the_hard_limit() {
        let limit = raise_nofile_limit().expect("getrlimit/setrlimit");
        assert_eq!(limit.soft, limit.hard);
        assert!(limit.soft >= limit.was);
        assert_eq!(soft_nofile_limit(), Some(limit.soft));
    }

    /// An action's program gets the limit the agent started with, not the raised one.
    #[tokio::test]
    async fn a_child_gets_the_lowered_soft_limit() {
        let soft = soft_nofile_limit().expect("getrlimit");
        let want = soft.min(1024) - 1;
        let mut cmd = tokio::process::Command::new("/bin/sh");
        cmd.args(["-c", "ulimit -Sn"]);
        limits::lower_soft_open_files_in_child(&mut cmd, want);
        let out = cmd.output().await.expect("sh runs");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            want.to_string()
        );
    }
}
