//! A real node registered to the test control plane: **Debian's containerd and runc** and the
//! **kubelet built from the same Kubernetes release** (`CERTRELOAD_PEERS/kubelet`), with
//! kubeadm's own `kubelet.conf` (the `system:node:<name>` client certificate that
//! `kubeadm init phase kubeconfig all` signs with the cluster CA).
//!
//! What this machine needs, found while bringing it up (see the issue-12 note):
//! - cgroup v1: the kubelet runs with `cgroupDriver: cgroupfs` and `failCgroupV1: false`;
//! - the sandbox's bounding set lacks `CAP_SYS_RESOURCE`, so runc cannot lower
//!   `oom_score_adj` to the sandbox's -998: containerd's CRI runs with
//!   `restrict_oom_score_adj = true` (it clamps the value instead);
//! - a nearly full disk: `evictionHard` is lowered to 1 % / 1 Mi, or the kubelet refuses pods;
//! - no registry: the sandbox (pause) image is a static Go program in an OCI layout built by
//!   `cargo xtask setup` (`CERTRELOAD_PAUSE_IMAGE`, tagged `registry.k8s.io/pause:3.10`),
//!   imported with `ctr images import`; pods use `imagePullPolicy: Never`;
//! - no CNI plugin is configured: the runtime's network stays NotReady, so the Node stays
//!   NotReady, and only **hostNetwork pods** run (the kubelet admits them without a network).
//!
//! Everything lives under the control plane's root (`ROOT/var/lib/kubelet`,
//! `ROOT/var/lib/containerd`, `ROOT/run/containerd`, `ROOT/run/runc`, `ROOT/opt/containerd`,
//! pod logs in `ROOT/var/log/pods`), logs in `ROOT/var/log/{containerd,kubelet}.log`. Outside
//! the root, only what the components hard-code: the kubelet's links in `/var/log/containers`
//! (removed at stop), containerd 1.6's shim sockets in `/run/containerd/s` (gone with the shims)
//! and the kubelet's cgroups (`kubepods` under the cgroupfs hierarchies, left for the next run).
//! The kubelet runs under a service loop (systemd's `Restart=always`): stopping its process
//! (`ROOT/run/kubelet.pid`) restarts it, so [`Node::restart_kubelet`] and the script
//! [`Node::restart_script`] (for an agent's action) stand in for `systemctl restart kubelet`.
//! On drop: the kubelet stops, every container task is killed and deleted (so no shim outlives
//! the test), containerd stops, and the kubelet's volume mounts under the root are unmounted.

use std::{
    fs::File,
    os::unix::{fs::PermissionsExt, process::CommandExt},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use super::{
    host::run,
    supervisor::{join_quietly, signal, spawn_into, terminate},
    ControlPlane, ADVERTISE_ADDRESS, NODE_NAME, PEERS_ENV,
};

/// The image file (an OCI layout in a tar) with the sandbox image, set by `cargo xtask test`.
pub const PAUSE_IMAGE_ENV: &str = "CERTRELOAD_PAUSE_IMAGE";
/// The name the pause image is imported under (containerd's default sandbox image name).
pub const PAUSE_IMAGE: &str = "registry.k8s.io/pause:3.10";
/// containerd's namespace for the CRI.
const CRI_NAMESPACE: &str = "k8s.io";
/// How long the node gets to register and report its runtime ready.
pub const NODE_DEADLINE: Duration = Duration::from_secs(180);
/// Where the kubelet links container logs (hard-coded in the kubelet).
const CONTAINER_LOG_LINKS: &str = "/var/log/containers";
/// The host tools the node needs (Debian's containerd and runc packages).
const TOOLS: [&str; 4] = [
    "/usr/bin/containerd",
    "/usr/bin/ctr",
    "/usr/bin/containerd-shim-runc-v2",
    "/usr/sbin/runc",
];

/// The shared control plane ([`super::shared`]) with the real node started on it, for a test:
/// `None`, with a SKIP line, when the node's tools or the control plane's prerequisites are
/// missing outside CI; under `CI=true` a missing piece fails the test, as does a node that does
/// not come up. Bind both (`let Some((cp, node)) = ...`): the node stops before the turn ends.
pub fn shared_with_node() -> Option<(super::Shared, Node)> {
    if let Some(why) = missing() {
        assert!(!crate::ci(), "CI=true: cannot skip: {why}");
        eprintln!("SKIP: {why}");
        return None;
    }
    let cp = super::shared()?;
    let node = Node::start(&cp).unwrap_or_else(|e| panic!("the node did not come up: {e:#}"));
    Some((cp, node))
}

/// What is missing for a node on this machine, if anything (the caller fails under CI, else skips).
pub fn missing() -> Option<String> {
    for tool in TOOLS {
        if !Path::new(tool).exists() {
            return Some(format!(
                "{tool} is missing: the node needs Debian's containerd and runc (cargo xtask setup installs them)"
            ));
        }
    }
    match std::env::var_os(PAUSE_IMAGE_ENV) {
        None => Some(format!(
            "{PAUSE_IMAGE_ENV} is not set: it names the pause image tarball (cargo xtask test sets it)"
        )),
        Some(p) if !Path::new(&p).is_file() => Some(format!(
            "{PAUSE_IMAGE_ENV}={}: no such file",
            Path::new(&p).display()
        )),
        Some(_) => None,
    }
}

/// A started kubelet + containerd, registered to the control plane as [`NODE_NAME`].
pub struct Node {
    root: PathBuf,
    kubectl: PathBuf,
    admin: PathBuf,
    containerd: Option<Child>,
    kubelet: Option<Arc<KubeletService>>,
}

/// How long the kubelet gets to be healthy again after a restart.
pub const KUBELET_RESTART_DEADLINE: Duration = Duration::from_secs(60);
/// A kubelet that exits sooner than this after its start is started again after a pause (the
/// back-off a service manager applies to a unit that keeps failing); one that ran longer (stopped
/// by a restart) is started again at once, as `systemctl restart kubelet` does.
const KUBELET_HEALTHY_RUN: Duration = Duration::from_secs(10);
const KUBELET_BACKOFF: Duration = Duration::from_secs(2);

#[derive(Debug, Default)]
struct ServiceState {
    pid: Option<u32>,
    starts: u32,
    /// Why the latest start failed, or how the latest run ended.
    last_exit: Option<String>,
    stopping: bool,
}

/// The kubelet as systemd runs it on a node (`Restart=always`): a thread starts it, writes
/// `ROOT/run/kubelet.pid`, waits for it to exit and starts it again (re-reading nothing: the
/// same command line). So stopping the process is a kubelet restart, as `systemctl restart
/// kubelet` is on a node; [`Node::restart_script`] is that, for an agent's action.
struct KubeletService {
    command: Box<dyn Fn() -> Command + Send + Sync>,
    log: PathBuf,
    pidfile: PathBuf,
    state: Mutex<ServiceState>,
    changed: Condvar,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl KubeletService {
    fn start(
        command: Box<dyn Fn() -> Command + Send + Sync>,
        log: PathBuf,
        pidfile: PathBuf,
    ) -> Arc<KubeletService> {
        let s = Arc::new(KubeletService {
            command,
            log,
            pidfile,
            state: Mutex::new(ServiceState::default()),
            changed: Condvar::new(),
            thread: Mutex::new(None),
        });
        let worker = s.clone();
        // The kubelet's parent-death signal is tied to the thread that starts it: this one,
        // which lives as long as the service.
        spawn_into(&s.thread, "kubelet-service".to_string(), move || {
            worker.run()
        });
        s
    }

    fn state(&self) -> MutexGuard<'_, ServiceState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn note(&self, line: &str) {
        use std::io::Write;
        if let Ok(mut f) = File::options().create(true).append(true).open(&self.log) {
            // A diagnostic line in the kubelet's log: a failed write must not stop the service.
            writeln!(f, "[harness {}] {line}", super::timestamp()).ok();
        }
    }

    fn run(self: Arc<Self>) {
        loop {
            if self.state().stopping {
                return;
            }
            let began = Instant::now();
            match spawn_logged(&mut (self.command)(), &self.log) {
                Ok(mut child) => self.supervise(&mut child),
                Err(e) => {
                    self.note(&format!("cannot start the kubelet: {e:#}"));
                    self.state().last_exit = Some(format!("cannot start: {e:#}"));
                    self.changed.notify_all();
                }
            }
            let pause = if began.elapsed() >= KUBELET_HEALTHY_RUN {
                Duration::ZERO
            } else {
                KUBELET_BACKOFF
            };
            // Only the pause matters (cut short by stop()); `stopping` is read again above.
            let s = self.state();
            drop(
                self.changed
                    .wait_timeout_while(s, pause, |s| !s.stopping)
                    .unwrap_or_else(PoisonError::into_inner),
            );
        }
    }

    /// Records the running kubelet (pid file, state), waits for it to exit, records that.
    fn supervise(&self, child: &mut Child) {
        let pid = child.id();
        if let Err(e) = std::fs::write(&self.pidfile, format!("{pid}\n")) {
            self.note(&format!("cannot write {}: {e}", self.pidfile.display()));
        }
        {
            let mut s = self.state();
            s.pid = Some(pid);
            s.starts += 1;
        }
        self.changed.notify_all();
        self.note(&format!("kubelet started, pid {pid}"));
        let status = child.wait();
        // Absent only when writing it failed (noted above).
        std::fs::remove_file(&self.pidfile).ok();
        {
            let mut s = self.state();
            s.pid = None;
            s.last_exit = Some(format!("pid {pid} exited: {status:?}"));
        }
        self.changed.notify_all();
        self.note(&format!("kubelet pid {pid} exited: {status:?}"));
    }

    fn wait_for(&self, timeout: Duration, pred: impl Fn(&ServiceState) -> bool) -> bool {
        let s = self.state();
        let (s, _) = self
            .changed
            .wait_timeout_while(s, timeout, |s| !pred(s))
            .unwrap_or_else(PoisonError::into_inner);
        pred(&s)
    }

    /// SIGTERM to the kubelet, SIGKILL after 10 s, the thread joined. Idempotent.
    fn stop(&self) {
        let pid = {
            let mut s = self.state();
            s.stopping = true;
            s.pid
        };
        self.changed.notify_all();
        if let Some(pid) = pid {
            terminate(pid, Duration::from_secs(10), |within| {
                self.wait_for(within, |s| s.pid != Some(pid))
            });
        }
        join_quietly(&self.thread);
    }
}

/// Runs `cmd` with its output appended to `log`, SIGKILLed when the test process dies.
fn spawn_logged(cmd: &mut Command, log: &Path) -> Result<Child> {
    let out = File::options()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("opening {}", log.display()))?;
    let err = out.try_clone().context("log handle")?;
    cmd.stdin(Stdio::null()).stdout(out).stderr(err);
    // SAFETY: prctl is async-signal-safe; it only sets this child's parent-death signal.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn()
        .with_context(|| format!("starting {:?}", cmd.get_program()))
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

impl Node {
    /// Starts containerd, imports the pause image, starts the kubelet and waits until the Node
    /// is registered and its container runtime is ready.
    pub fn start(cp: &ControlPlane) -> Result<Node> {
        let peers = PathBuf::from(std::env::var_os(PEERS_ENV).context("CERTRELOAD_PEERS")?);
        let image = PathBuf::from(std::env::var_os(PAUSE_IMAGE_ENV).context(PAUSE_IMAGE_ENV)?);
        for (host, port) in [(ADVERTISE_ADDRESS, 10250), ("127.0.0.1", 10248)] {
            if let Err(e) = std::net::TcpListener::bind((host, port)) {
                bail!("{host}:{port} is in use ({e}): the kubelet needs it (another kubelet?)");
            }
        }
        let mut node = Node {
            root: cp.root().to_path_buf(),
            kubectl: peers.join("kubectl"),
            admin: cp.admin_kubeconfig(),
            containerd: None,
            kubelet: None,
        };
        for dir in [
            "var/lib/containerd",
            "run/containerd",
            "etc/cni/net.d",
            "var/lib/kubelet",
            "var/log",
        ] {
            std::fs::create_dir_all(node.root.join(dir))
                .with_context(|| format!("creating {dir}"))?;
        }
        std::fs::write(node.containerd_config(), node.containerd_toml())
            .context("writing containerd's config")?;
        let mut c = Command::new("/usr/bin/containerd");
        c.arg("--config").arg(node.containerd_config());
        node.containerd = Some(spawn_logged(&mut c, &node.log("containerd"))?);
        node.wait_containerd()?;
        node.ctr(&["images", "import", "--all-platforms"], &[&image])
            .context("importing the pause image")?;

        std::fs::write(node.kubelet_config(), node.kubelet_yaml(cp))
            .context("writing the KubeletConfiguration")?;
        let args = node.kubelet_args(cp);
        let program = peers.join("kubelet");
        let command = move || {
            let mut k = Command::new(&program);
            k.args(&args);
            k
        };
        node.kubelet = Some(KubeletService::start(
            Box::new(command),
            node.log("kubelet"),
            node.kubelet_pidfile(),
        ));
        node.write_restart_script()?;
        node.wait_registered()?;
        Ok(node)
    }

    /// The kubelet's command line (after the program).
    fn kubelet_args(&self, cp: &ControlPlane) -> Vec<String> {
        let root = |p: &str| self.root.join(p).display().to_string();
        vec![
            "--config".into(),
            self.kubelet_config().display().to_string(),
            "--kubeconfig".into(),
            cp.path("/etc/kubernetes/kubelet.conf")
                .display()
                .to_string(),
            format!(
                "--container-runtime-endpoint=unix://{}",
                self.socket().display()
            ),
            "--root-dir".into(),
            self.kubelet_root().display().to_string(),
            "--cert-dir".into(),
            self.kubelet_root().join("pki").display().to_string(),
            "--volume-plugin-dir".into(),
            root("usr/libexec/kubernetes/kubelet-plugins/volume/exec"),
            format!("--hostname-override={NODE_NAME}"),
            format!("--node-ip={ADVERTISE_ADDRESS}"),
            "--v=2".into(),
        ]
    }

    /// `ROOT/run/kubelet.pid`: the running kubelet's pid (written by the harness's service loop).
    pub fn kubelet_pidfile(&self) -> PathBuf {
        self.root.join("run/kubelet.pid")
    }

    /// A script that restarts the kubelet and returns once a new kubelet process runs: **the
    /// stand-in for `systemctl restart kubelet`** in an agent's action (`exec = [script]`). It
    /// stops the kubelet through its pid file; the harness's service loop (systemd's
    /// `Restart=always` here) starts it again at once.
    pub fn restart_script(&self) -> PathBuf {
        self.root.join("usr/local/bin/restart-kubelet")
    }

    fn write_restart_script(&self) -> Result<()> {
        let path = self.restart_script();
        let dir = path.parent().context("the script's directory")?;
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let pidfile = self.kubelet_pidfile();
        std::fs::write(
            &path,
            format!(
                r#"#!/bin/sh
# Stands in for `systemctl restart kubelet` on the test node (tests/src/kube/node.rs): stop the
# running kubelet; the harness's service loop starts it again at once. Returns once it has.
pidfile={pidfile}
old=$(cat "$pidfile") || exit 1
kill -TERM "$old" || exit 1
i=0
while [ $i -lt 600 ]; do
  new=$(cat "$pidfile" 2>/dev/null || true)
  if [ -n "$new" ] && [ "$new" != "$old" ]; then
    echo "kubelet restarted: pid $old -> $new"
    exit 0
  fi
  sleep 0.1
  i=$((i + 1))
done
echo "the kubelet did not start again within 60 s" >&2
exit 1
"#,
                pidfile = pidfile.display()
            ),
        )
        .with_context(|| format!("writing {}", path.display()))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
            .with_context(|| format!("chmod {}", path.display()))
    }

    /// The running kubelet's pid, if one runs.
    pub fn kubelet_pid(&self) -> Option<u32> {
        self.kubelet.as_ref().and_then(|k| k.state().pid)
    }

    /// How many times the kubelet was started (1 before any restart).
    pub fn kubelet_starts(&self) -> u32 {
        self.kubelet.as_ref().map_or(0, |k| k.state().starts)
    }

    /// Restarts the kubelet as `systemctl restart kubelet` does (SIGTERM; the service loop starts
    /// it again at once) and waits until the new process answers `/healthz` with 200. Returns
    /// when SIGTERM was sent (the instant a measurement starts from).
    pub fn restart_kubelet(&self) -> Result<Instant> {
        let service = self
            .kubelet
            .as_ref()
            .context("the kubelet is not started")?;
        let (pid, starts) = {
            let s = service.state();
            (s.pid.context("the kubelet is not running")?, s.starts)
        };
        let sent = Instant::now();
        signal(pid, libc::SIGTERM);
        self.wait_kubelet_after(starts)?;
        Ok(sent)
    }

    /// Waits until the kubelet has been started more than `starts` times and the running
    /// process answers `/healthz` (127.0.0.1:10248) with 200.
    pub fn wait_kubelet_after(&self, starts: u32) -> Result<()> {
        let service = self
            .kubelet
            .as_ref()
            .context("the kubelet is not started")?;
        let deadline = Instant::now() + KUBELET_RESTART_DEADLINE;
        let mut last = String::from("not started again");
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!(
                    "the kubelet is not healthy within {KUBELET_RESTART_DEADLINE:?} of its restart                      ({last}):\n{}",
                    self.logs(40)
                );
            }
            if service.wait_for(left, |s| s.starts > starts && s.pid.is_some()) {
                match super::health::get(
                    "127.0.0.1",
                    10248,
                    "/healthz",
                    false,
                    "localhost",
                    Duration::from_secs(2),
                ) {
                    Ok(r) if r.status == 200 => return Ok(()),
                    Ok(r) => last = format!("/healthz {}", r.status),
                    Err(e) => last = format!("/healthz: {e:#}"),
                }
            }
            // Polling the health endpoint until the deadline, as a service manager's check does.
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The kubelet's root directory (`/var/lib/kubelet` on a node).
    pub fn kubelet_root(&self) -> PathBuf {
        self.root.join("var/lib/kubelet")
    }

    /// containerd's socket.
    pub fn socket(&self) -> PathBuf {
        self.root.join("run/containerd/containerd.sock")
    }

    fn containerd_config(&self) -> PathBuf {
        self.root.join("etc/containerd-config.toml")
    }

    fn kubelet_config(&self) -> PathBuf {
        self.root.join("var/lib/kubelet-config.yaml")
    }

    /// A node component's log file.
    pub fn log(&self, what: &str) -> PathBuf {
        self.root.join(format!("var/log/{what}.log"))
    }

    /// The last lines of containerd's and the kubelet's logs, for failure messages.
    pub fn logs(&self, lines: usize) -> String {
        ["containerd", "kubelet"]
            .iter()
            .map(|w| format!("--- {w}:\n{}", tail(&self.log(w), lines)))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// containerd 1.6's configuration (version 2), everything under the root, no CNI config.
    fn containerd_toml(&self) -> String {
        let r = self.root.display();
        format!(
            r#"version = 2
root = "{r}/var/lib/containerd"
state = "{r}/run/containerd/state"
[grpc]
  address = "{sock}"
[ttrpc]
  address = "{sock}.ttrpc"
[plugins."io.containerd.grpc.v1.cri"]
  # The sandbox cannot set oom_score_adj below its own (no CAP_SYS_RESOURCE): clamp instead.
  restrict_oom_score_adj = true
  sandbox_image = "{PAUSE_IMAGE}"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "native"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{r}/etc/cni/net.d"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
      Root = "{r}/run/runc"
[plugins."io.containerd.internal.v1.opt"]
  path = "{r}/opt/containerd"
"#,
            sock = self.socket().display()
        )
    }

    /// The KubeletConfiguration: cgroupfs on cgroup v1, x509 client auth against the cluster CA
    /// plus webhook authorization (as kubeadm configures it), lowered eviction thresholds.
    fn kubelet_yaml(&self, cp: &ControlPlane) -> String {
        format!(
            r#"apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
cgroupDriver: cgroupfs
failSwapOn: false
failCgroupV1: false
address: {ADVERTISE_ADDRESS}
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
clusterDNS: [10.96.0.10]
clusterDomain: cluster.local
podLogsDir: {logs}
authentication:
  anonymous:
    enabled: false
  webhook:
    enabled: true
  x509:
    clientCAFile: {ca}
authorization:
  mode: Webhook
evictionHard:
  memory.available: "1Mi"
  nodefs.available: "1%"
  imagefs.available: "1%"
  nodefs.inodesFree: "1%"
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
"#,
            ca = cp.pki().join("ca.crt").display(),
            logs = self.root.join("var/log/pods").display(),
        )
    }

    /// Runs `ctr` against this node's containerd in the CRI namespace.
    pub fn ctr(&self, args: &[&str], paths: &[&Path]) -> Result<String> {
        let mut c = Command::new("/usr/bin/ctr");
        c.arg("--address")
            .arg(self.socket())
            .args(["-n", CRI_NAMESPACE])
            .args(args)
            .args(paths);
        run(&mut c)
    }

    /// Runs kubectl with the admin kubeconfig.
    pub fn kubectl(&self, args: &[&str]) -> Result<String> {
        let mut c = Command::new(&self.kubectl);
        c.arg("--kubeconfig")
            .arg(&self.admin)
            .arg("--request-timeout=30s")
            .args(args);
        run(&mut c)
    }

    fn check_alive(&mut self) -> Result<()> {
        if let Some(c) = &mut self.containerd {
            if let Ok(Some(status)) = c.try_wait() {
                bail!(
                    "containerd exited ({status}):\n{}",
                    tail(&self.log("containerd"), 40)
                );
            }
        }
        if let Some(k) = &self.kubelet {
            if let Some(exit) = k.state().last_exit.clone() {
                bail!(
                    "the kubelet {exit} while the node came up:\n{}",
                    tail(&self.log("kubelet"), 40)
                );
            }
        }
        Ok(())
    }

    fn wait_containerd(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            self.check_alive()?;
            match self.ctr(&["version"], &[]) {
                Ok(_) => return Ok(()),
                Err(e) if Instant::now() > deadline => {
                    bail!("containerd does not answer: {e:#}\n{}", self.logs(40))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(250)),
            }
        }
    }

    /// Waits until the Node object exists and reports a `Ready` condition (whatever its status:
    /// without CNI it stays False with "network plugin not ready") and the kubelet has synced.
    fn wait_registered(&mut self) -> Result<()> {
        let deadline = Instant::now() + NODE_DEADLINE;
        loop {
            self.check_alive()?;
            let last = match self.kubectl(&[
                "get",
                "node",
                NODE_NAME,
                "--ignore-not-found",
                "-o",
                r#"jsonpath={.status.conditions[?(@.type=="Ready")].status} {.status.conditions[?(@.type=="Ready")].message}"#,
            ]) {
                Ok(out) if !out.trim().is_empty() => {
                    eprintln!("node {NODE_NAME} registered: Ready={}", out.trim());
                    return Ok(());
                }
                Ok(_) => "not registered".to_string(),
                Err(e) => format!("{e:#}"),
            };
            if Instant::now() > deadline {
                bail!(
                    "node {NODE_NAME} not registered within {NODE_DEADLINE:?} ({last}):\n{}",
                    self.logs(60)
                );
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    fn stop_child(child: &mut Option<Child>) {
        if let Some(mut c) = child.take() {
            // SAFETY: kill(2) on our own child, not yet reaped.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            crate::kill_and_reap(&mut c);
        }
    }

    /// Stops the kubelet, kills and deletes every container task, stops containerd, and
    /// unmounts what the kubelet mounted under the root. Idempotent.
    pub fn stop(&mut self) {
        if let Some(k) = self.kubelet.take() {
            k.stop();
        }
        if self.containerd.is_some() {
            if let Ok(tasks) = self.ctr(&["tasks", "ls", "-q"], &[]) {
                for id in tasks.split_whitespace() {
                    // Best effort: a task may have exited already.
                    self.ctr(&["tasks", "kill", "-s", "SIGKILL", id], &[]).ok();
                }
                std::thread::sleep(Duration::from_millis(500));
                for id in tasks.split_whitespace() {
                    self.ctr(&["tasks", "delete", "-f", id], &[]).ok();
                }
            }
            if let Ok(cs) = self.ctr(&["containers", "ls", "-q"], &[]) {
                for id in cs.split_whitespace() {
                    self.ctr(&["containers", "delete", id], &[]).ok();
                }
            }
        }
        Self::stop_child(&mut self.containerd);
        unmount_under(&self.root);
        self.remove_container_log_links();
    }

    /// The kubelet links every container's log into `/var/log/containers` (a path it does not let
    /// be configured): removes the links that lead into this node's `podLogsDir`.
    fn remove_container_log_links(&self) {
        let ours = self.root.join("var/log/pods");
        let Ok(entries) = std::fs::read_dir(CONTAINER_LOG_LINKS) else {
            return;
        };
        for e in entries.flatten() {
            if std::fs::read_link(e.path()).is_ok_and(|t| t.starts_with(&ours)) {
                // Best effort: a link left behind is a dangling symlink, nothing else.
                std::fs::remove_file(e.path()).ok();
            }
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Unmounts (lazily, deepest first) every mount point under `root` (the kubelet's tmpfs for
/// projected volumes, containerd's rootfs mounts), so the root can be removed.
fn unmount_under(root: &Path) {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let prefix = root.to_string_lossy().to_string();
    let mut points: Vec<String> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
        .filter(|p| p.starts_with(&prefix))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in points {
        // mountinfo escapes spaces as \040; the paths here have none.
        if let Ok(c) = std::ffi::CString::new(p) {
            // SAFETY: umount2 with a valid C string; failure leaves the mount (reported by the
            // root's removal, best effort anyway).
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
    }
}
