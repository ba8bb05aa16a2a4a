//! The kubelet stand-in: one thread per static pod that starts the component from its manifest
//! (re-read on every start, as the kubelet does), writes its pid file, waits for it to exit and
//! starts it again, with a growing pause when it keeps failing fast (the kubelet's crash-loop
//! back-off, shortened).

use std::{
    fs::OpenOptions,
    io::Write,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use super::manifest;

/// A component that ran at least this long before exiting is restarted at once; one that exits
/// sooner waits a back-off first.
const HEALTHY_RUN: Duration = Duration::from_secs(10);
/// First and longest pause before restarting a component that keeps exiting early.
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// How long a component gets to exit on SIGTERM before SIGKILL when the harness stops.
const STOP_GRACE: Duration = Duration::from_secs(15);

/// Where a supervised component's files are.
#[derive(Debug, Clone)]
pub(crate) struct Paths {
    /// Its static-pod manifest.
    pub manifest: PathBuf,
    /// Its pid file (written on every start, removed on exit).
    pub pidfile: PathBuf,
    /// stdout and stderr of every run, appended, with a harness line per start and exit.
    pub log: PathBuf,
    /// The host root (for mapping manifest paths).
    pub root: PathBuf,
    /// Peer binaries.
    pub peers: PathBuf,
}

#[derive(Debug, Default)]
struct State {
    pid: Option<u32>,
    starts: u32,
    /// Why the latest start failed (manifest unreadable, binary missing), if it did.
    error: Option<String>,
    stopping: bool,
    /// Held stopped by the test ([`Supervised::hold`]): not started again until released.
    held: bool,
}

/// One supervised static pod.
pub(crate) struct Supervised {
    /// Component name (the manifest's file stem).
    pub name: String,
    /// Its files.
    pub paths: Paths,
    state: Mutex<State>,
    changed: Condvar,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Supervised {
    /// Starts supervising `name` (the first start happens at once, on the supervisor thread, so
    /// that the process's parent-death signal is tied to a thread that lives as long as it).
    pub(crate) fn start(name: &str, paths: Paths) -> Arc<Supervised> {
        let s = Arc::new(Supervised {
            name: name.to_string(),
            paths,
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
            thread: Mutex::new(None),
        });
        let worker = s.clone();
        spawn_into(&s.thread, format!("kubelet-standin-{name}"), move || {
            worker.run()
        });
        s
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// How many times the process was started.
    pub(crate) fn starts(&self) -> u32 {
        self.state().starts
    }

    /// The running process, if any.
    pub(crate) fn pid(&self) -> Option<u32> {
        self.state().pid
    }

    /// Why the latest start failed, if it did.
    pub(crate) fn error(&self) -> Option<String> {
        self.state().error.clone()
    }

    fn log_line(&self, line: &str) {
        if let Ok(mut f) = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.paths.log)
        {
            // The harness's notes are diagnostics: a failed write must not stop the supervisor.
            writeln!(f, "[harness {}] {line}", crate::kube::timestamp()).ok();
        }
    }

    fn spawn(&self) -> Result<std::process::Child, String> {
        let launch = manifest::launch(&self.paths.manifest, &self.paths.root, &self.paths.peers)
            .map_err(|e| format!("{e:#}"))?;
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.paths.log)
            .map_err(|e| format!("{}: {e}", self.paths.log.display()))?;
        let err = log
            .try_clone()
            .map_err(|e| format!("{}: {e}", self.paths.log.display()))?;
        self.log_line(&format!(
            "start: {} {}",
            launch.program.display(),
            launch.args.join(" ")
        ));
        let mut command = Command::new(&launch.program);
        command
            .args(&launch.args)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err);
        // SAFETY: prctl is async-signal-safe; it only sets this child's parent-death signal, so
        // the component dies with the supervisor thread (the test process) even when it is
        // killed without running its exit handlers.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        command
            .spawn()
            .map_err(|e| format!("starting {}: {e}", launch.program.display()))
    }

    fn run(self: Arc<Self>) {
        let mut backoff = FIRST_BACKOFF;
        loop {
            // A held component stays down (an outage the test makes) until released or stopped.
            drop(
                self.changed
                    .wait_while(self.state(), |s| s.held && !s.stopping)
                    .unwrap_or_else(PoisonError::into_inner),
            );
            if self.state().stopping {
                return;
            }
            let started = Instant::now();
            match self.spawn() {
                Ok(mut child) => {
                    let pid = child.id();
                    if let Err(e) = write_pidfile(&self.paths.pidfile, pid) {
                        let pidfile = self.paths.pidfile.display();
                        self.log_line(&format!("cannot write {pidfile}: {e}"));
                    }
                    {
                        let mut s = self.state();
                        s.pid = Some(pid);
                        s.starts += 1;
                        s.error = None;
                    }
                    self.changed.notify_all();
                    let status = child.wait();
                    // Absent only when writing it failed (logged above).
                    std::fs::remove_file(&self.paths.pidfile).ok();
                    self.state().pid = None;
                    self.changed.notify_all();
                    self.log_line(&format!("pid {pid} exited: {status:?}"));
                }
                Err(e) => {
                    self.log_line(&format!("cannot start: {e}"));
                    self.state().error = Some(e);
                    self.changed.notify_all();
                }
            }
            // Restart at once after a healthy run; back off while it keeps failing early.
            let pause = if started.elapsed() >= HEALTHY_RUN {
                backoff = FIRST_BACKOFF;
                Duration::ZERO
            } else {
                let p = backoff;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                p
            };
            // Only the pause matters (cut short by stop()): the guard is released at once and
            // the next turn reads `stopping` again.
            let s = self.state();
            drop(
                self.changed
                    .wait_timeout_while(s, pause, |s| !s.stopping)
                    .unwrap_or_else(PoisonError::into_inner),
            );
        }
    }

    /// Waits until `pred` holds for (starts, pid) or `timeout` passes; returns whether it held.
    pub(crate) fn wait_for(
        &self,
        timeout: Duration,
        pred: impl Fn(u32, Option<u32>) -> bool,
    ) -> bool {
        let s = self.state();
        let (s, _) = self
            .changed
            .wait_timeout_while(s, timeout, |s| !pred(s.starts, s.pid))
            .unwrap_or_else(PoisonError::into_inner);
        pred(s.starts, s.pid)
    }

    /// Stops the process (SIGTERM, SIGKILL after the grace period) and keeps it down until
    /// [`Supervised::release`]: an outage of the component, e.g. the API server, in the middle
    /// of a test. Returns once no process runs.
    pub(crate) fn hold(&self) {
        let pid = {
            let mut s = self.state();
            s.held = true;
            s.pid
        };
        self.changed.notify_all();
        if let Some(pid) = pid {
            let exited = |within| self.wait_for(within, |_, p| p != Some(pid));
            if !terminate(pid, STOP_GRACE, exited) {
                exited(STOP_GRACE);
            }
        }
    }

    /// Ends a [`Supervised::hold`]: the component is started again at once.
    pub(crate) fn release(&self) {
        self.state().held = false;
        self.changed.notify_all();
    }

    /// Stops supervising: SIGTERM to the process, SIGKILL after a grace period, thread joined.
    /// Safe to call more than once.
    pub(crate) fn stop(&self) {
        let pid = {
            let mut s = self.state();
            s.stopping = true;
            s.pid
        };
        self.changed.notify_all();
        if let Some(pid) = pid {
            terminate(pid, STOP_GRACE, |within| {
                self.wait_for(within, |_, p| p != Some(pid))
            });
        }
        join_quietly(&self.thread);
    }
}

/// SIGTERM to `pid`, then SIGKILL unless `exited(grace)` (which waits up to `grace` for the
/// process to be gone) says it went; returns whether it went on SIGTERM. The stop of every
/// process the harness supervises (components, kubelet).
pub(super) fn terminate(pid: u32, grace: Duration, exited: impl Fn(Duration) -> bool) -> bool {
    signal(pid, libc::SIGTERM);
    if exited(grace) {
        return true;
    }
    signal(pid, libc::SIGKILL);
    false
}

/// Starts the supervising thread `name` running `work`, its handle kept in `slot` (for
/// [`join_quietly`]).
pub(super) fn spawn_into(
    slot: &Mutex<Option<JoinHandle<()>>>,
    name: String,
    work: impl FnOnce() + Send + 'static,
) {
    let handle = std::thread::Builder::new()
        .name(name)
        .spawn(work)
        .expect("a thread starts");
    *slot.lock().unwrap_or_else(PoisonError::into_inner) = Some(handle);
}

/// Joins the supervising thread in `slot`, if any. A panic on that thread has printed its
/// message; this runs from Drop and must not panic in turn.
pub(super) fn join_quietly(slot: &Mutex<Option<JoinHandle<()>>>) {
    let handle = slot.lock().unwrap_or_else(PoisonError::into_inner).take();
    if let Some(h) = handle {
        h.join().ok();
    }
}

/// Sends `sig` to a component process the harness started.
pub(super) fn signal(pid: u32, sig: i32) {
    if let Ok(pid) = i32::try_from(pid) {
        // SAFETY: kill(2) has no memory-safety preconditions. The pid is a child the harness
        // started, read while it was recorded as running (the supervisor clears it right after
        // reaping, a window in which the pid is not yet reused in practice).
        unsafe { libc::kill(pid, sig) };
    }
}

/// Writes the pid file atomically (a reader never sees it half-written).
fn write_pidfile(path: &Path, pid: u32) -> std::io::Result<()> {
    let tmp = path.with_extension("pid.tmp");
    std::fs::write(&tmp, format!("{pid}\n"))?;
    std::fs::rename(&tmp, path)
}
