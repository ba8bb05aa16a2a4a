//! `cargo xtask image`: the agent's container image, built from `deploy/Containerfile` here, where
//! no container engine or registry exists, with Debian's buildah (no daemon: `chroot` isolation,
//! `vfs` storage in a private directory under `target/image/`, removed afterwards), and written as
//! an OCI archive (`target/image/certreload.tar`, an OCI image layout in a tar) that skopeo,
//! umoci, `podman load`, `docker load` (as `oci-archive`) and `ctr images import` read.
//!
//! The Containerfile is `FROM scratch`: its build context (`target/image/context`, written here)
//! holds the agent and the shared libraries it links (as `ldd` lists them), so the image is the
//! binary the tests ran, nothing pulled from a registry. Where an engine exists the same
//! Containerfile builds from the same context (`--context-only` writes just the context):
//! `docker build -f deploy/Containerfile target/image/context`.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};

use crate::cmd;

/// `cargo xtask image` options.
#[derive(Debug, clap::Args)]
pub(crate) struct Options {
    /// Put the debug build in the image (what `cargo xtask test` does: the binary it tested).
    #[arg(long)]
    pub debug: bool,
    /// Only write the build context (target/image/context), for docker/podman/buildah elsewhere.
    #[arg(long)]
    pub context_only: bool,
}

/// Where the agent lives in the image (the Containerfile's ENTRYPOINT).
pub(crate) const AGENT_IN_IMAGE: &str = "usr/local/bin/certreload";

/// The image's name in the archive (`org.opencontainers.image.ref.name` is the tag part).
pub(crate) fn reference() -> String {
    format!("certreload:{}", env!("CARGO_PKG_VERSION"))
}

/// `target/image`.
fn image_dir() -> PathBuf {
    cmd::workspace_root().join("target/image")
}

/// Writes the build context for `agent` into `target/image/context` and returns it.
pub(crate) fn context(agent: &Path) -> Result<PathBuf> {
    let context = image_dir().join("context");
    context_at(agent, &context)?;
    Ok(context)
}

/// Writes the build context for `agent` into `context` (replacing what is there).
pub(crate) fn context_at(agent: &Path, context: &Path) -> Result<()> {
    if context.exists() {
        std::fs::remove_dir_all(context)
            .with_context(|| format!("removing the old {}", context.display()))?;
    }
    let rootfs = context.join("rootfs");
    copy_into(&rootfs, agent, Path::new(AGENT_IN_IMAGE))?;
    for lib in shared_libraries(agent)? {
        let inside = lib.strip_prefix("/").unwrap_or(&lib).to_path_buf();
        copy_into(&rootfs, &lib, &inside)?;
    }
    // Mount points a runtime expects, and a writable /tmp.
    for dir in ["proc", "sys", "dev", "etc", "tmp", "var/log/certreload"] {
        std::fs::create_dir_all(rootfs.join(dir))?;
    }
    set_mode(&rootfs.join("tmp"), 0o1777)?;
    eprintln!("xtask: image context in {}", context.display());
    Ok(())
}

/// Builds the image from `deploy/Containerfile` with the context for `agent`, checks it with
/// skopeo, and returns the OCI archive.
pub(crate) fn build(agent: &Path) -> Result<PathBuf> {
    for (tool, package) in [("buildah", "buildah"), ("skopeo", "skopeo")] {
        if !cmd::on_path(tool) {
            bail!("{tool} is needed to build the image (Debian package {package}; `cargo xtask setup` installs it)");
        }
    }
    let context = context(agent)?;
    let archive = image_dir().join("certreload.tar");
    let storage = image_dir().join("buildah");
    let built = buildah_build(&context, &storage, &archive);
    // The vfs store holds a full copy of every layer: never left behind, whatever happened.
    for dir in [&storage, &context] {
        std::fs::remove_dir_all(dir).ok();
    }
    built?;
    check(&archive)?;
    Ok(archive)
}

/// `buildah bud` then `buildah push` to an OCI archive, with a private store under `storage`.
fn buildah_build(context: &Path, storage: &Path, archive: &Path) -> Result<()> {
    let root = cmd::workspace_root();
    let tag = format!("localhost/{}", reference());
    let buildah = || {
        let mut c = Command::new("buildah");
        c.arg("--root")
            .arg(storage.join("root"))
            .arg("--runroot")
            .arg(storage.join("run"))
            .args(["--storage-driver", "vfs"]);
        c
    };
    cmd::run(
        buildah()
            .args(["bud", "--isolation", "chroot", "--layers=false"])
            // Created 1970-01-01: the same binary gives the same image digest.
            .args(["--timestamp", "0"])
            .arg("-f")
            .arg(root.join("deploy/Containerfile"))
            .args(["-t", &tag])
            .arg(context),
    )?;
    std::fs::remove_file(archive).ok();
    cmd::run(buildah().args(["push", &tag]).arg(format!(
        "oci-archive:{}:{}",
        archive.display(),
        reference()
    )))
}

/// Reads the archive back with skopeo (another implementation than the one that wrote it): the
/// entrypoint must be the agent, the platform this machine's.
fn check(archive: &Path) -> Result<()> {
    let source = format!("oci-archive:{}", archive.display());
    let config: serde_json::Value = serde_json::from_str(&cmd::output(
        Command::new("skopeo").args(["inspect", "--config", &source]),
    )?)
    .context("skopeo inspect --config: not JSON")?;
    let entrypoint = &config["config"]["Entrypoint"];
    if *entrypoint != serde_json::json!([format!("/{AGENT_IN_IMAGE}")]) {
        bail!(
            "{}: the image's entrypoint is {entrypoint}, not /{AGENT_IN_IMAGE}",
            archive.display()
        );
    }
    let manifest: serde_json::Value = serde_json::from_str(&cmd::output(
        Command::new("skopeo").args(["inspect", &source]),
    )?)
    .context("skopeo inspect: not JSON")?;
    eprintln!(
        "xtask: image {} ({}, {} layer(s), {}) in {}",
        reference(),
        manifest["Digest"].as_str().unwrap_or("?"),
        manifest["Layers"].as_array().map_or(0, Vec::len),
        config["architecture"].as_str().unwrap_or("?"),
        archive.display()
    );
    Ok(())
}

/// The shared libraries `binary` loads, the dynamic loader included, as `ldd` resolves them on
/// this machine (the image runs the binary with the libraries it was linked and tested with).
fn shared_libraries(binary: &Path) -> Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(binary)
        .output()
        .context("cannot run ldd")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        // A static binary: ldd says "not a dynamic executable" and exits 1.
        if String::from_utf8_lossy(&out.stderr).contains("not a dynamic executable")
            || text.contains("statically linked")
        {
            return Ok(Vec::new());
        }
        bail!(
            "ldd {} failed: {}",
            binary.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    if let Some(missing) = text.lines().find(|l| l.contains("not found")) {
        bail!(
            "{}: a library it needs is missing here: {}",
            binary.display(),
            missing.trim()
        );
    }
    Ok(parse_ldd(&text))
}

/// The absolute paths in `ldd` output: `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)` and
/// the loader's `/lib64/ld-linux-x86-64.so.2 (0x…)`; the vDSO has no file.
fn parse_ldd(text: &str) -> Vec<PathBuf> {
    text.lines()
        .filter_map(|line| {
            let path = match line.split_once("=>") {
                Some((_, resolved)) => resolved.split_whitespace().next()?,
                None => line.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

/// Copies `from` (following links: the file itself) to `rootfs/inside`, keeping its mode.
fn copy_into(rootfs: &Path, from: &Path, inside: &Path) -> Result<()> {
    let to = rootfs.join(inside);
    if let Some(parent) = to.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    std::fs::copy(from, &to)
        .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    Ok(())
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {mode:o} {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_output_gives_each_library_and_the_loader() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                    \tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f58)\n\
                    \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f58)\n\
                    \t/lib64/ld-linux-x86-64.so.2 (0x00007f58)\n";
        assert_eq!(
            parse_ldd(text),
            [
                "/lib/x86_64-linux-gnu/libgcc_s.so.1",
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/lib64/ld-linux-x86-64.so.2"
            ]
            .map(PathBuf::from)
        );
    }
}
