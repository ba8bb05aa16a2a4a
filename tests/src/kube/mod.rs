//! A real kubeadm control plane in a temporary host root, made by kubeadm itself, for the
//! end-to-end tests against Kubernetes components built from source (`CERTRELOAD_PEERS`: a
//! directory with kube-apiserver, kube-controller-manager, kube-scheduler, kubeadm, kubectl and
//! etcd).
//!
//! 1. kubeadm writes the node: `kubeadm --rootfs ROOT init phase certs all`, `kubeconfig all`,
//!    `control-plane all` and `etcd local`, with a kubeadm configuration (v1beta4) in the root.
//!    `--rootfs` makes kubeadm chroot into the root first, so every file it writes (the PKI under
//!    `ROOT/etc/kubernetes/pki`, the kubeconfigs, the static-pod manifests under
//!    `ROOT/etc/kubernetes/manifests`, the etcd data directory) lands there and the real
//!    `/etc/kubernetes` is never touched.
//! 2. **The harness stands in for the kubelet running static pods**: for each manifest it starts
//!    the container's command as a process (the binary from `CERTRELOAD_PEERS` instead of the
//!    image's, every path mapped into the root through the pod's hostPath volumes), waits for the
//!    manifest's own readiness/startup probe, writes `ROOT/run/<component>.pid`, and starts the
//!    component again, re-reading its manifest, whenever it exits, as the kubelet does. So a test
//!    changes a flag by editing the manifest, and a restart action is
//!    `kill $(cat ROOT/run/<component>.pid)`, as `crictl stop` is on a real node.
//! 3. The advertise address is 10.251.0.1, added as a /32 to `lo` for the run (kubeadm refuses a
//!    loopback advertise address unless one is found on `lo`); the harness removes it again if it
//!    added it.
//!
//! Tests in one binary share one control plane ([`shared`]): it starts on first use, one test at
//! a time holds it (tests change its files and restart its components), and it is stopped when
//! the test process exits (an `atexit` hook; every component also has SIGKILL as its parent-death
//! signal, so nothing outlives a killed test process).
//!
//! Needs root (kubeadm's chroot, the address on `lo`) and the standard ports of a control-plane
//! node free: 2379, 2380, 2381, 6443, 10257, 10259.

pub mod agent;
pub mod health;
mod host;
pub mod identity;
pub mod manifest;
pub mod node;
pub mod pods;
mod supervisor;

use std::{
    fs::File,
    net::TcpListener,
    path::{Path, PathBuf},
    process::Command,
    sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use host::run;
use supervisor::{Paths, Supervised};

/// etcd's component (and manifest) name.
pub const ETCD: &str = "etcd";
/// kube-apiserver.
pub const APISERVER: &str = "kube-apiserver";
/// kube-controller-manager.
pub const CONTROLLER_MANAGER: &str = "kube-controller-manager";
/// kube-scheduler.
pub const SCHEDULER: &str = "kube-scheduler";
/// Start order (stopped in reverse).
pub const COMPONENTS: [&str; 4] = [ETCD, APISERVER, CONTROLLER_MANAGER, SCHEDULER];

/// The node's advertise address (on `lo` for the run).
pub const ADVERTISE_ADDRESS: &str = "10.251.0.1";
/// The node name kubeadm registers.
pub const NODE_NAME: &str = "cr-node-1";
/// The environment variable naming the directory with the peer binaries.
pub const PEERS_ENV: &str = "CERTRELOAD_PEERS";
/// Set to keep the host root (PKI, manifests, component logs) after the tests, for debugging.
pub const KEEP_ENV: &str = "CERTRELOAD_KUBE_KEEP";
/// Where kubeadm's configuration is, as kubeadm (chrooted into the root) sees it.
pub const KUBEADM_CONFIG: &str = "/etc/kubernetes/kubeadm.yaml";

/// Ports of a kubeadm control-plane node the harness needs free.
const PORTS: [u16; 6] = [2379, 2380, 2381, 6443, 10257, 10259];
/// How long a component gets to become ready (the first API server start on a busy 2-core
/// machine takes tens of seconds).
pub const READY_DEADLINE: Duration = Duration::from_secs(180);
const BINARIES: [&str; 6] = [
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubeadm",
    "kubectl",
];

/// Wall-clock time for a harness log line.
pub(crate) fn timestamp() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// How long each step of bring-up took (printed, and reported in docs/kubernetes.md).
#[derive(Debug, Clone, Copy)]
pub struct BringUp {
    /// The four kubeadm phases.
    pub kubeadm: Duration,
    /// etcd started and ready.
    pub etcd: Duration,
    /// kube-apiserver started and `/readyz` answered 200.
    pub apiserver: Duration,
    /// kube-controller-manager and kube-scheduler started and `/healthz` 200.
    pub controllers: Duration,
    /// Everything.
    pub total: Duration,
}

/// A component's leader-election Lease, as read from the API server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leader {
    /// `spec.holderIdentity` (host name and a per-process id).
    pub holder: String,
    /// `spec.renewTime`.
    pub renewed: String,
}

/// A kubeadm control plane in a temporary host root; stopped (processes, root, address) on drop.
pub struct ControlPlane {
    root: PathBuf,
    peers: PathBuf,
    components: Vec<Arc<Supervised>>,
    added_address: bool,
    stopped: Mutex<bool>,
    /// This machine's control-plane lock, released at stop.
    host_lock: Mutex<Option<File>>,
    /// What bring-up took.
    pub bring_up: BringUp,
    /// The Kubernetes version kubeadm was configured with (see `kubernetes_version`).
    pub version: String,
}

/// The directory with the peer binaries, or why there is none.
fn peers_dir() -> std::result::Result<PathBuf, String> {
    let Some(dir) = std::env::var_os(PEERS_ENV) else {
        return Err(format!(
            "{PEERS_ENV} is not set: it names the directory with kube-apiserver, \
             kube-controller-manager, kube-scheduler, kubeadm, kubectl and etcd built from source \
             (cargo xtask test sets it)"
        ));
    };
    Ok(PathBuf::from(dir))
}

/// The shared control plane, held by one test at a time.
pub struct Shared {
    cp: &'static ControlPlane,
    _turn: MutexGuard<'static, ()>,
}

impl std::ops::Deref for Shared {
    type Target = ControlPlane;
    fn deref(&self) -> &ControlPlane {
        self.cp
    }
}

static SHARED: OnceLock<std::result::Result<ControlPlane, String>> = OnceLock::new();
static TURN: Mutex<()> = Mutex::new(());

extern "C" fn stop_shared_at_exit() {
    if let Some(Ok(cp)) = SHARED.get() {
        // Never unwind out of an atexit handler; a panic in stop() has printed its message.
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| cp.stop())).ok();
    }
}

/// The control plane every test of this binary shares, started on first use; `None` (with a
/// SKIP line) when the peers or root are missing outside CI. Under `CI=true` a missing
/// `CERTRELOAD_PEERS` or a non-root user fails the test. The returned handle holds the test's
/// turn: tests that change the control plane never overlap.
pub fn shared() -> Option<Shared> {
    let peers = match peers_dir() {
        Ok(p) => p,
        Err(why) => {
            assert!(!crate::ci(), "CI=true: cannot skip: {why}");
            eprintln!("SKIP: {why}");
            return None;
        }
    };
    if !crate::is_root() {
        assert!(
            !crate::ci(),
            "CI=true: the kubeadm control plane needs root (kubeadm --rootfs chroots; the advertise address goes on lo)"
        );
        eprintln!("SKIP: the kubeadm control plane needs root");
        return None;
    }
    let turn = TURN.lock().unwrap_or_else(PoisonError::into_inner);
    let cp = SHARED.get_or_init(|| {
        let started = ControlPlane::start(&peers).map_err(|e| format!("{e:#}"));
        if started.is_ok() {
            // SAFETY: registers a plain extern "C" function with no arguments.
            unsafe { libc::atexit(stop_shared_at_exit) };
        }
        started
    });
    match cp {
        Ok(cp) => Some(Shared { cp, _turn: turn }),
        Err(e) => panic!("the kubeadm control plane did not come up:\n{e}"),
    }
}

impl ControlPlane {
    /// Writes a kubeadm node into a new temporary root with kubeadm and starts etcd, the API
    /// server, the controller-manager and the scheduler from its static-pod manifests, each
    /// waited for until ready.
    pub fn start(peers: &Path) -> Result<ControlPlane> {
        for b in BINARIES {
            let p = peers.join(b);
            if !p.exists() {
                bail!("{PEERS_ENV}={}: {b} is missing", peers.display());
            }
        }
        let host_lock = host::lock_host()?;
        let began = Instant::now();
        for port in PORTS {
            if let Err(e) = TcpListener::bind(("0.0.0.0", port)) {
                bail!(
                    "port {port} is in use ({e}): another control plane (or a test run) holds it; \
                     see `ss -ltnp sport = :{port}`"
                );
            }
        }
        let added_address = host::add_advertise_address()?;
        let root = tempfile::Builder::new()
            .prefix("certreload-kube-")
            .tempdir()
            .context("temporary host root")?
            .keep();
        let mut cp = ControlPlane {
            root,
            peers: peers.to_path_buf(),
            components: Vec::new(),
            added_address,
            stopped: Mutex::new(false),
            host_lock: Mutex::new(Some(host_lock)),
            bring_up: BringUp {
                kubeadm: Duration::ZERO,
                etcd: Duration::ZERO,
                apiserver: Duration::ZERO,
                controllers: Duration::ZERO,
                total: Duration::ZERO,
            },
            version: String::new(),
        };
        // From here on, a failure stops what was started (Drop).
        cp.bring_up(began)?;
        Ok(cp)
    }

    fn bring_up(&mut self, began: Instant) -> Result<()> {
        for dir in ["etc/kubernetes", "run", "var/log", "var/lib/etcd"] {
            std::fs::create_dir_all(self.root.join(dir))
                .with_context(|| format!("creating {dir} in {}", self.root.display()))?;
        }
        self.version = self.kubernetes_version()?;
        std::fs::write(self.path(KUBEADM_CONFIG), self.kubeadm_config())
            .context("writing the kubeadm configuration")?;
        for phase in [
            &["certs", "all"][..],
            &["kubeconfig", "all"],
            &["control-plane", "all"],
            &["etcd", "local"],
        ] {
            let args: Vec<&str> = ["init", "phase"]
                .iter()
                .chain(phase)
                .copied()
                .chain(["--config", KUBEADM_CONFIG])
                .collect();
            self.kubeadm(&args)?;
        }
        self.bring_up.kubeadm = began.elapsed();

        let mut step = Instant::now();
        self.supervise(ETCD);
        self.wait_ready(ETCD)?;
        self.bring_up.etcd = step.elapsed();

        step = Instant::now();
        self.supervise(APISERVER);
        self.wait_ready(APISERVER)?;
        self.bring_up.apiserver = step.elapsed();
        // What `kubeadm init` does next: binds admin.conf's group (kubeadm:cluster-admins) to
        // cluster-admin and uploads the ClusterConfiguration (kube-system/kubeadm-config).
        self.kubeadm(&[
            "init",
            "phase",
            "upload-config",
            "kubeadm",
            "--config",
            KUBEADM_CONFIG,
        ])?;

        step = Instant::now();
        self.supervise(CONTROLLER_MANAGER);
        self.supervise(SCHEDULER);
        self.wait_ready(CONTROLLER_MANAGER)?;
        self.wait_ready(SCHEDULER)?;
        self.bring_up.controllers = step.elapsed();
        self.bring_up.total = began.elapsed();
        let b = self.bring_up;
        eprintln!(
            "kubeadm control plane {} up in {:.1} s (kubeadm phases {:.1} s, etcd {:.1} s, \
             kube-apiserver {:.1} s, controller-manager + scheduler {:.1} s), root {}",
            self.version,
            b.total.as_secs_f64(),
            b.kubeadm.as_secs_f64(),
            b.etcd.as_secs_f64(),
            b.apiserver.as_secs_f64(),
            b.controllers.as_secs_f64(),
            self.root.display()
        );
        Ok(())
    }

    /// The version to configure: what kubeadm reports when it is a release build, else the
    /// version the build recipe pins (a binary built without version stamping reports
    /// `v0.0.0-master`, not a version kubeadm can configure).
    fn kubernetes_version(&self) -> Result<String> {
        let reported = self
            .kubeadm(&["version", "-o", "short"])?
            .trim()
            .to_string();
        if !reported.starts_with("v0.0.0") {
            return Ok(reported);
        }
        let recipe = Path::new(env!("CARGO_MANIFEST_DIR")).join("../peers/kubernetes/go.mod");
        let text = std::fs::read_to_string(&recipe).with_context(|| {
            format!(
                "kubeadm reports {reported} (not a release) and {} is unreadable",
                recipe.display()
            )
        })?;
        text.lines()
            .find_map(|line| {
                let mut words = line.split_whitespace();
                words.find(|w| *w == "k8s.io/kubernetes")?;
                words.next().filter(|v| v.starts_with('v'))
            })
            .map(str::to_string)
            .with_context(|| format!("no k8s.io/kubernetes version in {}", recipe.display()))
    }

    /// kubeadm's configuration: the node, its advertise address, the Kubernetes version,
    /// and every directory at its default (inside the root, through `--rootfs`).
    fn kubeadm_config(&self) -> String {
        format!(
            "apiVersion: kubeadm.k8s.io/v1beta4
kind: InitConfiguration
localAPIEndpoint:
  advertiseAddress: {ADVERTISE_ADDRESS}
  bindPort: 6443
nodeRegistration:
  name: {NODE_NAME}
  criSocket: unix:///var/run/containerd/containerd.sock
  taints: []
---
apiVersion: kubeadm.k8s.io/v1beta4
kind: ClusterConfiguration
kubernetesVersion: {version}
clusterName: certreload-e2e
certificatesDir: /etc/kubernetes/pki
etcd:
  local:
    dataDir: /var/lib/etcd
networking:
  serviceSubnet: 10.96.0.0/12
  dnsDomain: cluster.local
",
            version = self.version
        )
    }

    fn supervise(&mut self, name: &str) {
        let paths = Paths {
            manifest: self.manifest(name),
            pidfile: self.pidfile(name),
            log: self.log_path(name),
            root: self.root.clone(),
            peers: self.peers.clone(),
        };
        self.components.push(Supervised::start(name, paths));
    }

    fn component(&self, name: &str) -> &Supervised {
        self.components
            .iter()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("{name} is not a supervised component"))
    }

    /// The temporary host root (what `certreload run --host-root` gets).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// A path as the node sees it (`/etc/kubernetes/...`) mapped into the root.
    pub fn path(&self, node_path: &str) -> PathBuf {
        self.root.join(node_path.trim_start_matches('/'))
    }

    /// `ROOT/etc/kubernetes/pki`.
    pub fn pki(&self) -> PathBuf {
        self.path("/etc/kubernetes/pki")
    }

    /// The admin kubeconfig (kubeadm:cluster-admins, bound to cluster-admin).
    pub fn admin_kubeconfig(&self) -> PathBuf {
        self.path("/etc/kubernetes/admin.conf")
    }

    /// A component's static-pod manifest.
    pub fn manifest(&self, component: &str) -> PathBuf {
        self.path(&format!("/etc/kubernetes/manifests/{component}.yaml"))
    }

    /// A component's pid file (present while it runs).
    pub fn pidfile(&self, component: &str) -> PathBuf {
        self.path(&format!("/run/{component}.pid"))
    }

    /// A component's output, every run appended.
    pub fn log_path(&self, component: &str) -> PathBuf {
        self.path(&format!("/var/log/{component}.log"))
    }

    /// The last `lines` lines of a component's log.
    pub fn log_tail(&self, component: &str, lines: usize) -> String {
        let text = std::fs::read_to_string(self.log_path(component)).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Every component's last `lines` log lines, for failure messages.
    pub fn logs(&self, lines: usize) -> String {
        COMPONENTS
            .iter()
            .map(|c| {
                format!(
                    "--- {c} ({}):\n{}",
                    self.log_path(c).display(),
                    self.log_tail(c, lines)
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Runs kubeadm chrooted into the root (`--rootfs`); its output, or an error with it.
    pub fn kubeadm(&self, args: &[&str]) -> Result<String> {
        self.kubeadm_in(&self.root, args)
    }

    /// Runs kubeadm chrooted into another root (e.g. a scratch root where kubeadm makes a new
    /// CA for a rotation, without touching this node's files).
    pub fn kubeadm_in(&self, rootfs: &Path, args: &[&str]) -> Result<String> {
        let mut c = Command::new(self.peers.join("kubeadm"));
        c.arg("--rootfs").arg(rootfs).args(args);
        run(&mut c)
    }

    /// A new CA made by kubeadm (`kubeadm init phase certs PHASE`) in a scratch root with this
    /// node's kubeadm configuration, as an operator makes one for a rotation: the PEM certificate
    /// and the key bytes of `pki/FILE.{crt,key}`. This node's files are not touched.
    pub fn new_ca_by_kubeadm(&self, phase: &str, file: &str) -> Result<(String, Vec<u8>)> {
        let scratch = tempfile::tempdir().context("scratch root")?;
        let pki = scratch.path().join("etc/kubernetes/pki");
        std::fs::create_dir_all(&pki).context("mkdir scratch pki")?;
        std::fs::copy(
            self.path(KUBEADM_CONFIG),
            scratch.path().join(KUBEADM_CONFIG.trim_start_matches('/')),
        )
        .context("copy the kubeadm config into the scratch root")?;
        self.kubeadm_in(
            scratch.path(),
            &["init", "phase", "certs", phase, "--config", KUBEADM_CONFIG],
        )
        .with_context(|| format!("kubeadm init phase certs {phase} (scratch root)"))?;
        Ok((
            std::fs::read_to_string(pki.join(format!("{file}.crt")))
                .with_context(|| format!("new {file}.crt"))?,
            std::fs::read(pki.join(format!("{file}.key")))
                .with_context(|| format!("new {file}.key"))?,
        ))
    }

    /// Runs kubectl with the admin kubeconfig; its stdout, or an error with its output.
    pub fn kubectl(&self, args: &[&str]) -> Result<String> {
        let mut c = Command::new(self.peers.join("kubectl"));
        c.arg("--kubeconfig")
            .arg(self.admin_kubeconfig())
            .arg("--request-timeout=30s")
            .args(args);
        run(&mut c)
    }

    /// How many times the harness restarted `component` after it exited.
    pub fn restart_count(&self, component: &str) -> u32 {
        self.component(component).starts().saturating_sub(1)
    }

    /// The running process of `component`, if it runs.
    pub fn pid(&self, component: &str) -> Option<u32> {
        self.component(component).pid()
    }

    /// Waits until `component` runs and its manifest's ready check answers 200.
    pub fn wait_ready(&self, component: &str) -> Result<()> {
        self.wait_ready_after(component, 0)
    }

    /// Waits until `component` has been restarted more than `restarts` times and the running
    /// process answers its ready check with 200 (after a restart action: pass the count read
    /// before it).
    pub fn wait_ready_after(&self, component: &str, restarts: u32) -> Result<()> {
        let c = self.component(component);
        let deadline = Instant::now() + READY_DEADLINE;
        let mut last = String::from("not started");
        loop {
            if let Some(e) = c.error() {
                bail!(
                    "{component} cannot start: {e}\n{}",
                    self.log_tail(component, 40)
                );
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!(
                    "{component} not ready within {READY_DEADLINE:?} (last check: {last}):\n{}",
                    self.log_tail(component, 60)
                );
            }
            // Wait for a process (the right generation of it) before asking it anything.
            if !c.wait_for(left, |starts, pid| starts > restarts && pid.is_some()) {
                continue;
            }
            let launch = manifest::launch(&self.manifest(component), &self.root, &self.peers)?;
            let r = &launch.ready;
            match health::get(
                &r.host,
                r.port,
                &r.path,
                r.https,
                &r.host,
                Duration::from_secs(5),
            ) {
                Ok(reply) if reply.status == 200 => return Ok(()),
                Ok(reply) => {
                    last = format!(
                        "{} {}",
                        reply.status,
                        reply.text.lines().last().unwrap_or_default()
                    )
                }
                Err(e) => last = format!("{e:#}"),
            }
            // Polling a health endpoint until a deadline: what the kubelet's probe does.
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Stops `component` (SIGTERM, as `crictl stop` does) and waits until the harness has started
    /// it again and it is ready.
    pub fn restart(&self, component: &str) -> Result<()> {
        let c = self.component(component);
        let restarts = self.restart_count(component);
        let pid = c
            .pid()
            .with_context(|| format!("{component} is not running"))?;
        supervisor::signal(pid, libc::SIGTERM);
        self.wait_ready_after(component, restarts)
    }

    /// Stops `component` and keeps it down (the harness does not start it again) until
    /// [`ControlPlane::resume`]: an outage, e.g. of the API server, in the middle of a test.
    pub fn pause(&self, component: &str) {
        self.component(component).hold();
    }

    /// Ends a [`ControlPlane::pause`]: starts `component` again and waits until it is ready.
    pub fn resume(&self, component: &str) -> Result<()> {
        let c = self.component(component);
        // wait_ready_after compares its argument with the start count: a start after this one.
        let starts = c.starts();
        c.release();
        self.wait_ready_after(component, starts)
    }

    /// Who holds `component`'s leader-election Lease (`kube-system/<component>`) and when it
    /// was last renewed; `None` while there is no such Lease.
    pub fn leader(&self, component: &str) -> Result<Option<Leader>> {
        let out = self.kubectl(&[
            "-n",
            "kube-system",
            "get",
            "lease",
            component,
            "--ignore-not-found",
            "-o",
            "jsonpath={.spec.holderIdentity} {.spec.renewTime}",
        ])?;
        let mut words = out.split_whitespace();
        Ok(match (words.next(), words.next()) {
            (Some(holder), Some(renewed)) => Some(Leader {
                holder: holder.to_string(),
                renewed: renewed.to_string(),
            }),
            _ => None,
        })
    }

    /// Waits until `component` leads: a holder other than `previous` has the Lease and has
    /// renewed it at least once while the same process kept running. A healthy `/healthz` is not
    /// enough: kube-controller-manager answers it at once, but builds its controllers only after
    /// winning the Lease, and exits then if it cannot (e.g. a CA file it cannot use).
    pub fn wait_leading(&self, component: &str, previous: Option<&str>) -> Result<Leader> {
        let deadline = Instant::now() + READY_DEADLINE;
        let mut first: Option<(Leader, u32)> = None;
        let mut last = String::from("no Lease yet");
        while Instant::now() < deadline {
            let starts = self.component(component).starts();
            match self.leader(component) {
                Ok(Some(l)) if Some(l.holder.as_str()) != previous => {
                    match &first {
                        Some((f, s)) if f.holder == l.holder && *s == starts => {
                            if f.renewed != l.renewed && self.pid(component).is_some() {
                                return Ok(l);
                            }
                        }
                        _ => first = Some((l.clone(), starts)),
                    }
                    last = format!("held by {} (renewed {})", l.holder, l.renewed);
                }
                Ok(Some(l)) => last = format!("still held by the previous holder {}", l.holder),
                Ok(None) => {}
                Err(e) => last = format!("{e:#}"),
            }
            // Lease renewals come every 2 s (--leader-elect-retry-period): look again shortly.
            std::thread::sleep(Duration::from_millis(500));
        }
        bail!(
            "{component} does not lead within {READY_DEADLINE:?} ({last}; restarted {} times):\n{}",
            self.restart_count(component),
            self.log_tail(component, 40)
        )
    }

    /// The value of `--flag` in `component`'s manifest (a path as the container sees it).
    pub fn flag(&self, component: &str, flag: &str) -> Result<Option<String>> {
        let path = self.manifest(component);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        Ok(manifest::flag(&text, flag))
    }

    /// Sets `--flag` in `component`'s manifest (takes effect at its next start, as on a node
    /// where the kubelet recreates the pod). The file is replaced by rename.
    pub fn set_flag(&self, component: &str, flag: &str, value: &str) -> Result<()> {
        let path = self.manifest(component);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let new = manifest::with_flag(&text, flag, value)
            .with_context(|| format!("editing {}", path.display()))?;
        let tmp = path.with_extension("yaml.tmp");
        std::fs::write(&tmp, new).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("replacing {}", path.display()))
    }

    /// Stops every component (reverse start order), removes the root and the address it added.
    /// Idempotent.
    pub fn stop(&self) {
        let mut stopped = self.stopped.lock().unwrap_or_else(PoisonError::into_inner);
        if *stopped {
            return;
        }
        *stopped = true;
        for c in self.components.iter().rev() {
            c.stop();
        }
        if std::env::var_os(KEEP_ENV).is_some() {
            eprintln!(
                "{KEEP_ENV} is set: keeping the host root {} (logs in var/log)",
                self.root.display()
            );
        } else {
            // Best effort: a root left behind in the temp dir costs disk space, nothing else.
            std::fs::remove_dir_all(&self.root).ok();
        }
        if self.added_address {
            host::remove_advertise_address();
        }
        // Closing the file releases the lock for the next test process.
        drop(
            self.host_lock
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take(),
        );
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.stop();
    }
}
