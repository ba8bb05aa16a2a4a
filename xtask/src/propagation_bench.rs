//! `cargo xtask bench propagation` (issue 12): N pods on the real test node (kubelet v1.37.2,
//! Debian containerd and runc, registered to the kubeadm control plane the end-to-end tests use),
//! a careful ServiceAccount key rotation, and the time from `sa.key` switched on disk to the last
//! pod holding a token with the new key id, with certreload and with stock Kubernetes in the
//! same run. The measurement is the tests crate's bench target `propagation` (`harness = false`, so
//! `cargo test` never runs it; it reuses `certreload_e2e::kube`: control plane, node, pods,
//! rotation); this runs it (`cargo test --bench propagation`: the harness-less binary, built like the
//! tests) with the peers, the pause image and the release agent, and it prints the table.

use anyhow::{Context, Result};

use crate::{build::Built, cmd};

/// Parameters of the benchmark.
#[derive(Debug, clap::Args)]
pub(crate) struct Params {
    /// Pods on the node.
    #[arg(long, default_value_t = 20)]
    pods: usize,
    /// How long to wait for the last pod's new token, in seconds, per configuration (stock
    /// Kubernetes is reported as "> cap" when it does not refresh within it).
    #[arg(long, default_value_t = 300)]
    cap: u64,
}

/// Builds the peers and the pause image (cached after the first time) and runs the measurement.
pub(crate) fn run(built: &Built, params: &Params) -> Result<()> {
    let peers =
        crate::peers::build().context("the Kubernetes peers the node and control plane run")?;
    let pause = crate::images::pause().context("the test node's pause image")?;
    let mut test = cmd::cargo();
    built
        .cargo_env(&mut test)
        .args([
            "test",
            "--package",
            "certreload-e2e",
            "--bench",
            "propagation",
        ])
        .current_dir(cmd::workspace_root())
        .env("CI", "true")
        .env("CERTRELOAD_PEERS", peers)
        .env("CERTRELOAD_PAUSE_IMAGE", pause)
        .env("CERTRELOAD_BENCH_PODS", params.pods.to_string())
        .env("CERTRELOAD_BENCH_CAP_S", params.cap.to_string());
    cmd::run(&mut test)
}
