//! Real peers for the end-to-end tests, built from pinned Go modules: the Kubernetes control plane
//! (kube-apiserver, kube-controller-manager, kube-scheduler, kubeadm, kubectl, kubelet), etcd, and
//! Helm (the chart's `helm lint`, `helm template` and `helm install --dry-run=server`).
//!
//! The recipes are `peers/*/go.mod` (+ `go.sum`) in the repository; the binaries go to
//! `<cache>/peers/<recipe>-<hash>/bin`, keyed by the recipe's bytes and the Go version, and are reused
//! while that directory is complete. `<cache>/peers/bin` links every binary of the current recipes:
//! that is the directory the tests get as `CERTRELOAD_PEERS`.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

use crate::{cmd, setup};

/// One Go module that builds some peers.
struct Recipe {
    /// Folder under `peers/` holding go.mod and go.sum.
    dir: &'static str,
    /// (package, binary name) pairs.
    binaries: &'static [(&'static str, &'static str)],
    /// The module whose version names what is built (and, for Kubernetes, is stamped into it).
    versioned: &'static str,
}

const KUBERNETES: Recipe = Recipe {
    dir: "kubernetes",
    binaries: &[
        ("k8s.io/kubernetes/cmd/kube-apiserver", "kube-apiserver"),
        (
            "k8s.io/kubernetes/cmd/kube-controller-manager",
            "kube-controller-manager",
        ),
        ("k8s.io/kubernetes/cmd/kube-scheduler", "kube-scheduler"),
        ("k8s.io/kubernetes/cmd/kubeadm", "kubeadm"),
        ("k8s.io/kubernetes/cmd/kubectl", "kubectl"),
        ("k8s.io/kubernetes/cmd/kubelet", "kubelet"),
    ],
    versioned: "k8s.io/kubernetes",
};

const ETCD: Recipe = Recipe {
    dir: "etcd",
    // The etcd server's main package is the module root; `go build` would name it "server".
    binaries: &[("go.etcd.io/etcd/server/v3", "etcd")],
    versioned: "go.etcd.io/etcd/server/v3",
};

const HELM: Recipe = Recipe {
    dir: "helm",
    binaries: &[("helm.sh/helm/v3/cmd/helm", "helm")],
    versioned: "helm.sh/helm/v3",
};

/// Where the tests find every peer binary.
pub(crate) fn bin_dir() -> PathBuf {
    setup::cache_dir().join("peers/bin")
}

/// Builds (or reuses) every recipe, then points [`bin_dir`] at the results.
pub(crate) fn build() -> Result<PathBuf> {
    let root = cmd::workspace_root();
    let go = go_version()?;
    let links = bin_dir();
    std::fs::create_dir_all(&links).with_context(|| format!("creating {}", links.display()))?;
    for recipe in [&KUBERNETES, &ETCD, &HELM] {
        let built = build_recipe(&root.join("peers").join(recipe.dir), recipe, &go)?;
        for (_, name) in recipe.binaries {
            let link = links.join(name);
            // Absent on the first build; any other failure is reported by symlink below.
            std::fs::remove_file(&link).ok();
            std::os::unix::fs::symlink(built.join(name), &link)
                .with_context(|| format!("linking {}", link.display()))?;
        }
    }
    Ok(links)
}

/// `go version` (part of the cache key: another compiler means another binary).
fn go_version() -> Result<String> {
    let out = cmd::output(
        Command::new("go")
            .arg("version")
            .env("GOTOOLCHAIN", "local"),
    )
    .context("Go is needed to build the real Kubernetes components and etcd for the tests")?;
    Ok(out.trim().to_string())
}

/// The version `module` is required at in `go.mod`.
fn required_version(go_mod: &str, module: &str) -> Option<String> {
    go_mod.lines().find_map(|l| {
        let mut words = l.trim().trim_start_matches("require").split_whitespace();
        (words.next() == Some(module))
            .then(|| words.next().map(str::to_string))
            .flatten()
    })
}

fn build_recipe(dir: &Path, recipe: &Recipe, go: &str) -> Result<PathBuf> {
    let go_mod = std::fs::read_to_string(dir.join("go.mod"))
        .with_context(|| format!("reading {}/go.mod", dir.display()))?;
    let go_sum = std::fs::read(dir.join("go.sum"))
        .with_context(|| format!("reading {}/go.sum", dir.display()))?;
    let version = required_version(&go_mod, recipe.versioned)
        .with_context(|| format!("{}/go.mod requires no {}", dir.display(), recipe.versioned))?;
    let ldflags = ldflags(recipe, &version, &go_mod)?;
    let mut key = Sha256::new();
    for part in [
        go_mod.as_bytes(),
        &go_sum,
        go.as_bytes(),
        ldflags.as_bytes(),
    ] {
        key.update((part.len() as u64).to_le_bytes());
        key.update(part);
    }
    let key = hex(&key.finalize()[..8]);
    let out = setup::cache_dir()
        .join("peers")
        .join(format!("{}-{key}", recipe.dir))
        .join("bin");
    let names: Vec<&str> = recipe.binaries.iter().map(|(_, n)| *n).collect();
    if names.iter().all(|n| out.join(n).is_file()) {
        eprintln!(
            "xtask: reusing {} {version} ({}) in {}",
            recipe.versioned,
            names.join(", "),
            out.display()
        );
        return Ok(out);
    }
    eprintln!(
        "xtask: building {} {version} from source: {} (first time on this machine: minutes)",
        recipe.versioned,
        names.join(", ")
    );
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let started = Instant::now();
    for (package, name) in recipe.binaries {
        let one = Instant::now();
        // Written beside the final name and renamed: an interrupted build never looks complete.
        let partial = out.join(format!(".{name}.partial"));
        cmd::run(
            Command::new("go")
                .args(["build", "-mod=readonly", "-trimpath", "-buildvcs=false"])
                .arg(format!("-ldflags={ldflags}"))
                .arg("-o")
                .arg(&partial)
                .arg(package)
                .current_dir(dir)
                // The machine's own Go: never download a toolchain behind the build's back.
                .env("GOTOOLCHAIN", "local")
                .env("CGO_ENABLED", "0"),
        )
        .with_context(|| format!("building {name} from {}", dir.display()))?;
        std::fs::rename(&partial, out.join(name))?;
        eprintln!(
            "xtask: built {name} in {:.0} s",
            one.elapsed().as_secs_f64()
        );
    }
    eprintln!(
        "xtask: built {} {version} ({}) in {:.0} s",
        recipe.versioned,
        names.join(", "),
        started.elapsed().as_secs_f64()
    );
    Ok(out)
}

/// Linker flags: stripped binaries, and for Kubernetes the version stamp its release build sets
/// (hack/lib/version.sh), since kubeadm compares its own version with the control plane's.
fn ldflags(recipe: &Recipe, version: &str, go_mod: &str) -> Result<String> {
    let mut flags = String::from("-s -w");
    if recipe.versioned == HELM.versioned {
        flags.push_str(&helm_ldflags(version, go_mod)?);
    }
    if recipe.versioned == "k8s.io/kubernetes" {
        let Some((major, minor)) = version
            .strip_prefix('v')
            .and_then(|v| v.split_once('.'))
            .map(|(major, rest)| (major, rest.split('.').next().unwrap_or_default()))
        else {
            bail!("cannot read major.minor from {version}");
        };
        for package in [
            "k8s.io/component-base/version",
            "k8s.io/client-go/pkg/version",
        ] {
            for (var, value) in [
                ("gitVersion", version),
                ("gitMajor", major),
                ("gitMinor", minor),
                ("gitTreeState", "clean"),
            ] {
                flags.push_str(&format!(" -X {package}.{var}={value}"));
            }
        }
    }
    Ok(flags)
}

/// What Helm's Makefile stamps: its version, and the Kubernetes version `helm template` and
/// `helm lint` assume (client-go v0.N is Kubernetes 1.N; unstamped, Helm assumes 1.20 and refuses
/// a chart that requires a newer one).
fn helm_ldflags(version: &str, go_mod: &str) -> Result<String> {
    let client_go = required_version(go_mod, "k8s.io/client-go")
        .context("peers/helm/go.mod requires no k8s.io/client-go")?;
    let Some(minor) = client_go
        .strip_prefix("v0.")
        .and_then(|rest| rest.split('.').next())
    else {
        bail!("cannot read the Kubernetes minor version from k8s.io/client-go {client_go}");
    };
    let mut flags = format!(" -X helm.sh/helm/v3/internal/version.version={version}");
    for package in [
        "helm.sh/helm/v3/pkg/lint/rules",
        "helm.sh/helm/v3/pkg/chartutil",
    ] {
        flags.push_str(&format!(
            " -X {package}.k8sVersionMajor=1 -X {package}.k8sVersionMinor={minor}"
        ));
    }
    Ok(flags)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_required_versions_from_both_forms() {
        let go_mod = "module x\n\nrequire k8s.io/kubernetes v1.37.2 // indirect\n\nrequire (\n\tgo.etcd.io/etcd/server/v3 v3.7.0 // indirect\n)\n";
        assert_eq!(
            required_version(go_mod, "k8s.io/kubernetes").as_deref(),
            Some("v1.37.2")
        );
        assert_eq!(
            required_version(go_mod, "go.etcd.io/etcd/server/v3").as_deref(),
            Some("v3.7.0")
        );
        assert_eq!(required_version(go_mod, "k8s.io/api"), None);
    }

    #[test]
    fn kubernetes_binaries_are_stamped_with_their_version() {
        let flags = ldflags(&KUBERNETES, "v1.37.2", "").expect("valid version");
        assert!(flags.contains("-X k8s.io/component-base/version.gitVersion=v1.37.2"));
        assert!(flags.contains("-X k8s.io/client-go/pkg/version.gitMinor=37"));
        assert_eq!(ldflags(&ETCD, "v3.7.0", "").expect("etcd"), "-s -w");
    }

    #[test]
    fn helm_is_stamped_with_the_kubernetes_version_of_its_client_go() {
        let go_mod = "module x\n\nrequire (\n\tk8s.io/client-go v0.37.0 // indirect\n)\n";
        let flags = ldflags(&HELM, "v3.22.0", go_mod).expect("helm");
        assert!(flags.contains("-X helm.sh/helm/v3/internal/version.version=v3.22.0"));
        assert!(flags.contains("-X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=37"));
        assert!(flags.contains("-X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1"));
        assert!(ldflags(&HELM, "v3.22.0", "module x\n").is_err());
    }
}
