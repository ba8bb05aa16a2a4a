//! Container images for the test node, built here because no registry can be reached: the
//! sandbox (pause) image, a static Go program (`peers/pause/`, built with the machine's Go,
//! `GOTOOLCHAIN=local CGO_ENABLED=0`) in an OCI image layout written by this module (one
//! uncompressed layer, an image config with the entrypoint, a manifest, `index.json` naming it
//! `registry.k8s.io/pause:3.10`), packed as a tar for `ctr -n k8s.io images import`.
//!
//! **A stand-in for the upstream pause image** (same role: hold the pod's namespaces, exit on
//! SIGTERM). Cached as `<cache>/images/pause-<hash>.tar`, keyed by the source and the Go
//! version; `<cache>/images/pause.tar` links the current one (what the tests get as
//! `CERTRELOAD_PAUSE_IMAGE`).

use std::{path::PathBuf, process::Command};

use anyhow::{Context, Result};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::{cmd, setup};

/// The name the image is imported under (containerd's default sandbox image).
pub(crate) const PAUSE_NAME: &str = "registry.k8s.io/pause:3.10";

/// Builds (or reuses) the pause image tarball; returns the stable link to it.
pub(crate) fn pause() -> Result<PathBuf> {
    let src = cmd::workspace_root().join("peers/pause");
    let go = cmd::output(
        Command::new("go")
            .arg("version")
            .env("GOTOOLCHAIN", "local"),
    )
    .context("Go is needed to build the pause image for the test node")?;
    let mut key = Sha256::new();
    for part in [
        std::fs::read(src.join("go.mod")).context("peers/pause/go.mod")?,
        std::fs::read(src.join("main.go")).context("peers/pause/main.go")?,
        go.trim().as_bytes().to_vec(),
        PAUSE_NAME.as_bytes().to_vec(),
    ] {
        key.update((part.len() as u64).to_le_bytes());
        key.update(&part);
    }
    let key = hex(&key.finalize()[..8]);
    let dir = setup::cache_dir().join("images");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let tarball = dir.join(format!("pause-{key}.tar"));
    let link = dir.join("pause.tar");
    if !tarball.is_file() {
        let binary = dir.join(format!(".pause-{key}.bin"));
        cmd::run(
            Command::new("go")
                .args(["build", "-mod=readonly", "-trimpath", "-buildvcs=false"])
                .arg("-ldflags=-s -w")
                .arg("-o")
                .arg(&binary)
                .arg(".")
                .current_dir(&src)
                .env("GOTOOLCHAIN", "local")
                .env("CGO_ENABLED", "0"),
        )
        .context("building the pause program")?;
        let program = std::fs::read(&binary)?;
        std::fs::remove_file(&binary).ok();
        let partial = dir.join(format!(".pause-{key}.tar.partial"));
        std::fs::write(&partial, oci_archive(&program, "pause", PAUSE_NAME)?)
            .with_context(|| format!("writing {}", partial.display()))?;
        std::fs::rename(&partial, &tarball)?;
        eprintln!("xtask: built the pause image {}", tarball.display());
    } else {
        eprintln!("xtask: reusing the pause image {}", tarball.display());
    }
    // Absent on the first build; any other failure is reported by symlink below.
    std::fs::remove_file(&link).ok();
    std::os::unix::fs::symlink(&tarball, &link)
        .with_context(|| format!("linking {}", link.display()))?;
    Ok(link)
}

/// The OCI architecture name of this machine.
fn oci_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// An OCI image layout (as a tar) with one image: `program` at `/<file>`, its entrypoint.
fn oci_archive(program: &[u8], file: &str, name: &str) -> Result<Vec<u8>> {
    let layer = tar(&[Entry::File {
        path: file,
        mode: 0o755,
        data: program,
    }]);
    let layer_digest = digest(&layer);
    let config = serde_json::to_vec(&json!({
        "architecture": oci_arch(),
        "os": "linux",
        "config": { "Entrypoint": [format!("/{file}")] },
        "rootfs": { "type": "layers", "diff_ids": [layer_digest] },
    }))?;
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": digest(&config),
            "size": config.len(),
        },
        "layers": [{
            "mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": layer_digest,
            "size": layer.len(),
        }],
    }))?;
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": digest(&manifest),
            "size": manifest.len(),
            "platform": { "architecture": oci_arch(), "os": "linux" },
            "annotations": {
                "io.containerd.image.name": name,
                "org.opencontainers.image.ref.name": name,
            },
        }],
    }))?;
    let blob = |b: &[u8]| format!("blobs/sha256/{}", hex(&Sha256::digest(b)));
    let (layer_path, config_path, manifest_path) = (blob(&layer), blob(&config), blob(&manifest));
    Ok(tar(&[
        Entry::File {
            path: "oci-layout",
            mode: 0o644,
            data: br#"{"imageLayoutVersion":"1.0.0"}"#,
        },
        Entry::File {
            path: "index.json",
            mode: 0o644,
            data: &index,
        },
        Entry::Dir { path: "blobs/" },
        Entry::Dir {
            path: "blobs/sha256/",
        },
        Entry::File {
            path: &layer_path,
            mode: 0o644,
            data: &layer,
        },
        Entry::File {
            path: &config_path,
            mode: 0o644,
            data: &config,
        },
        Entry::File {
            path: &manifest_path,
            mode: 0o644,
            data: &manifest,
        },
    ]))
}

fn digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex(&Sha256::digest(bytes)))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// One member of a tar archive.
enum Entry<'a> {
    File {
        path: &'a str,
        mode: u32,
        data: &'a [u8],
    },
    Dir {
        path: &'a str,
    },
}

/// A ustar archive (owner root, mtime 0, so the same input gives the same bytes). Paths are
/// under 100 bytes here.
fn tar(entries: &[Entry<'_>]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in entries {
        let (path, mode, data, kind) = match e {
            Entry::File { path, mode, data } => (*path, *mode, *data, b'0'),
            Entry::Dir { path } => (*path, 0o755, &[][..], b'5'),
        };
        let mut h = [0u8; 512];
        let field = |h: &mut [u8; 512], at: usize, len: usize, value: &[u8]| {
            h[at..at + value.len().min(len)].copy_from_slice(&value[..value.len().min(len)]);
        };
        assert!(path.len() < 100, "tar path too long: {path}");
        field(&mut h, 0, 100, path.as_bytes());
        field(&mut h, 100, 8, format!("{mode:07o}\0").as_bytes());
        field(&mut h, 108, 8, b"0000000\0");
        field(&mut h, 116, 8, b"0000000\0");
        field(&mut h, 124, 12, format!("{:011o}\0", data.len()).as_bytes());
        field(&mut h, 136, 12, b"00000000000\0");
        field(&mut h, 148, 8, b"        ");
        h[156] = kind;
        field(&mut h, 257, 8, b"ustar\x0000");
        field(&mut h, 265, 32, b"root");
        field(&mut h, 297, 32, b"root");
        let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
        field(&mut h, 148, 8, format!("{sum:06o}\0 ").as_bytes());
        out.extend_from_slice(&h);
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    // Two zero blocks end the archive.
    out.resize(out.len() + 1024, 0);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tar_members_read_back_with_tar() {
        let dir = std::env::temp_dir().join(format!("xtask-tar-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let archive = oci_archive(b"#!/bin/sh\n", "pause", PAUSE_NAME).expect("archive");
        let path = dir.join("image.tar");
        std::fs::write(&path, &archive).expect("write");
        let listed = Command::new("tar")
            .arg("-tvf")
            .arg(&path)
            .output()
            .expect("tar");
        let text = String::from_utf8_lossy(&listed.stdout);
        assert!(
            listed.status.success(),
            "{}",
            String::from_utf8_lossy(&listed.stderr)
        );
        assert!(
            text.contains("index.json") && text.contains("blobs/sha256/"),
            "{text}"
        );
        std::fs::remove_dir_all(&dir).ok();
        assert_eq!(archive.len() % 512, 0);
    }
}
