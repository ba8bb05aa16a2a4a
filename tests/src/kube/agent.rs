//! The agent as the DaemonSet runs it on a kubeadm node (`run --profile kubeadm --host-root
//! ROOT` with an overlay), and the helpers every kube test reads its audit log with: one copy,
//! so a fix to how a test waits or reports reaches every kube test binary.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use rustls::pki_types::{pem::PemObject, CertificateDer};
use serde_json::Value;

use super::ControlPlane;
use crate::Agent;

/// The agent on a kubeadm host root, and the temporary directory holding its overlay and audit
/// log (removed when the run is dropped, so it lives as long as the agent).
pub struct Run {
    /// The running agent.
    pub agent: Agent,
    _dir: tempfile::TempDir,
}

impl Run {
    /// Stops the agent; its audit records.
    pub fn stop(self) -> Vec<Value> {
        self.agent.stop()
    }
}

/// The agent on the control plane's root: the kubeadm profile, overlaid with `overlay` (TOML
/// appended after the `[agent]` and `[audit]` tables written here). `env` (`NAME=value`) is
/// added to its environment, e.g. `KUBECONFIG` for the profile's restart actions, which take
/// turns through a Lease; `KUBERNETES_SERVICE_HOST` is always removed, so the agent never takes
/// in-cluster credentials from the test's own environment.
pub fn start_agent(cp: &ControlPlane, overlay: &str, env: &[String]) -> Run {
    start_profile_agent(cp.root(), "", overlay, env)
}

/// Like [`start_agent`], on any kubeadm-shaped host root (a synthetic tree with no control
/// plane, too); `agent_settings` is added to the `[agent]` table (e.g. `pair_timeout = "1s"`).
pub fn start_profile_agent(
    root: &Path,
    agent_settings: &str,
    overlay: &str,
    env: &[String],
) -> Run {
    let dir = tempfile::tempdir().expect("tempdir");
    let audit = dir.path().join("audit.jsonl");
    let config = dir.path().join("overlay.toml");
    std::fs::write(
        &config,
        format!(
            "[agent]\nadmin = \"127.0.0.1:0\"\n{agent_settings}\n[audit]\npath = {:?}\n{overlay}",
            audit.display().to_string()
        ),
    )
    .expect("write overlay");
    let root = root.display().to_string();
    let mut wrapper = vec!["env", "-u", "KUBERNETES_SERVICE_HOST"];
    wrapper.extend(env.iter().map(String::as_str));
    let agent = Agent::start_wrapped(
        &wrapper,
        &config,
        &audit,
        &["--profile", "kubeadm", "--host-root", &root],
    );
    Run { agent, _dir: dir }
}

/// Waits up to `within` for an audit record of `agent` matching `pred`; on failure prints its
/// records, its log and the components' logs.
pub fn await_record(
    cp: &ControlPlane,
    agent: &Agent,
    what: &str,
    within: Duration,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    await_record_of(cp, &[("agent", agent)], 0, what, within, pred)
}

/// Waits up to `within` for an audit record of `agents[which]` matching `pred`; on failure
/// prints every agent's records and log (named as given) and the components' logs.
pub fn await_record_of(
    cp: &ControlPlane,
    agents: &[(&str, &Agent)],
    which: usize,
    what: &str,
    within: Duration,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let (name, agent) = agents[which];
    let deadline = Instant::now() + within;
    loop {
        if let Some(r) = agent.records().into_iter().find(|r| pred(r)) {
            return r;
        }
        if Instant::now() > deadline {
            let mut report = String::new();
            for (n, a) in agents {
                report.push_str(&format!(
                    "=== {n} records:\n{}\n=== {n} log:\n{}\n",
                    a.records()
                        .iter()
                        .map(Value::to_string)
                        .collect::<Vec<_>>()
                        .join("\n"),
                    a.log()
                ));
            }
            panic!(
                "{name}: no audit record {what} within {within:?}\n{report}components:\n{}",
                cp.logs(30)
            );
        }
        // The audit log is a file the agent appends to: read it again shortly.
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// An audit record's `seq` (its order in the log).
pub fn seq(r: &Value) -> u64 {
    r["seq"]
        .as_u64()
        .unwrap_or_else(|| panic!("record without seq: {r}"))
}

/// SHA-256 (hex) of the first certificate in a PEM file, as the agent fingerprints leaves.
pub fn leaf_sha256(path: &Path) -> String {
    let der = CertificateDer::pem_file_iter(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .next()
        .unwrap_or_else(|| panic!("{}: no certificate", path.display()))
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    crate::sha256_hex(der.as_ref())
}

/// Replaces `path` by rename (readers see the old or the new file, never a part).
pub fn replace(path: &Path, bytes: &[u8]) {
    let name = path.file_name().expect("a file").to_string_lossy();
    let tmp = path.with_file_name(format!(".{name}.rotating"));
    std::fs::write(&tmp, bytes).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

/// How often the harness has started each component again, for the figures tests print.
pub fn restart_counts(cp: &ControlPlane) -> String {
    super::COMPONENTS
        .iter()
        .map(|c| format!("{c} {}", cp.restart_count(c)))
        .collect::<Vec<_>>()
        .join(", ")
}
