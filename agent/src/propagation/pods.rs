//! The projected ServiceAccount tokens the kubelet mounted on this node, as a reader of the pod's
//! mount sees them: `<pods_dir>/<pod uid>/volumes/kubernetes.io~projected/<volume>/token` and the
//! `ca.crt` beside it.
//!
//! The kubelet writes each volume with its AtomicWriter: the files live in a timestamped directory
//! (`..2026_11_30_09_00_00.123456789`), `..data` is a symlink to it, swapped by a rename, and
//! `token` and `ca.crt` are symlinks into `..data`. Reading `<volume>/token` follows both links,
//! so a scan sees either the old or the new file, whole. Every read goes through
//! [`crate::material::read::read_material`]: non-blocking open, regular files only, size-bounded.
//! The token text lives only inside [`read_token`]; what leaves this module is its decoded header
//! and claims.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::jwt::{self, JwtCheck, TokenClaims};
use crate::material::read::{read_material, ReadError};

/// The kubelet's directory of projected volumes inside a pod's directory.
const PROJECTED: &str = "volumes/kubernetes.io~projected";

/// Largest token file read: a projected token is 1-2 KiB.
const MAX_TOKEN_SIZE: u64 = 64 * 1024;

/// Largest `ca.crt` read: a CA bundle is kilobytes, even with several CAs during a rotation.
const MAX_CA_SIZE: u64 = 1024 * 1024;

/// One projected volume that holds a token.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct TokenVolume {
    /// The pod's uid (its directory's name).
    pub pod_uid: String,
    /// The volume's name (`kube-api-access-xxxxx` for the default one).
    pub volume: String,
    /// `<pods_dir>/<uid>/volumes/kubernetes.io~projected/<volume>`.
    pub dir: PathBuf,
}

/// Why a file of a token volume gave nothing usable. Names the file and the check; never holds a
/// byte of the token.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PodFileError {
    /// Unreadable (not a regular file, too large, permissions, gone in between).
    #[error(transparent)]
    Read(#[from] ReadError),
    /// The token is not a JWT with the claims the tracker needs.
    #[error("{path}: {check}")]
    Token {
        /// The token file.
        path: PathBuf,
        /// The check it failed.
        check: JwtCheck,
    },
    /// `ca.crt` holds no PEM certificate, or one that does not parse.
    #[error("{path}: {why}")]
    Ca {
        /// The `ca.crt` file.
        path: PathBuf,
        /// What is wrong, from the PEM reader.
        why: String,
    },
}

/// What one scan found in one token volume.
#[derive(Debug)]
pub(crate) struct ScannedToken {
    /// Where.
    pub volume: TokenVolume,
    /// The token's header and claims.
    pub claims: Result<TokenClaims, PodFileError>,
    /// The SHA-256 (hex) of each certificate in the `ca.crt` beside the token; `None` when the
    /// volume has no `ca.crt` (a projected volume of a token alone).
    pub ca: Option<Result<Vec<String>, PodFileError>>,
}

/// Every token volume under `pods_dir`, sorted (an absent or unreadable directory is an empty
/// node: the kubelet creates it with its first pod).
pub(crate) fn token_volumes(pods_dir: &Path) -> Vec<TokenVolume> {
    let mut out = Vec::new();
    for pod in dir_entries(pods_dir) {
        let Some(pod_uid) = file_name(&pod) else {
            continue;
        };
        for dir in dir_entries(&pod.join(PROJECTED)) {
            let Some(volume) = file_name(&dir) else {
                continue;
            };
            // Hidden entries are the AtomicWriter's own (`..data`, `..2026_...`), not volumes.
            if volume.starts_with('.') || !dir.join("token").exists() {
                continue;
            }
            out.push(TokenVolume {
                pod_uid: pod_uid.clone(),
                volume,
                dir,
            });
        }
    }
    out.sort();
    out
}

/// Reads every token volume under `pods_dir` (blocking: call it on the blocking pool).
pub(crate) fn scan(pods_dir: &Path) -> Vec<ScannedToken> {
    token_volumes(pods_dir)
        .into_iter()
        .map(|volume| {
            let claims = read_token(&volume.dir.join("token"));
            let ca_path = volume.dir.join("ca.crt");
            let ca = ca_path.exists().then(|| ca_fingerprints(&ca_path));
            ScannedToken { volume, claims, ca }
        })
        .collect()
}

/// The header and claims of the token at `path`; the text is dropped here.
pub(crate) fn read_token(path: &Path) -> Result<TokenClaims, PodFileError> {
    let bytes = read_material(path, MAX_TOKEN_SIZE)?;
    let text = String::from_utf8_lossy(&bytes);
    jwt::decode(&text).map_err(|check| PodFileError::Token {
        path: path.to_path_buf(),
        check,
    })
}

/// The SHA-256 fingerprint (hex of the DER, as [`crate::material::inspect::CertInfo`] has it)
/// of every certificate in the PEM bundle at `path`.
pub(crate) fn ca_fingerprints(path: &Path) -> Result<Vec<String>, PodFileError> {
    let bytes = read_material(path, MAX_CA_SIZE)?;
    let certs = crate::material::pem::certificates(&bytes).map_err(|e| PodFileError::Ca {
        path: path.to_path_buf(),
        why: e.to_string(),
    })?;
    Ok(certs
        .iter()
        .map(|c| hex(&Sha256::digest(c.as_ref())))
        .collect())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The directories in `dir` (symlinks followed), or none when it cannot be listed.
fn dir_entries(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect()
}

fn file_name(path: &Path) -> Option<String> {
    path.file_name()?.to_str().map(str::to_string)
}

#[cfg(test)]
pub(crate) mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    /// Writes a token volume exactly as the kubelet's AtomicWriter lays it out:
    /// `<pods_dir>/<uid>/volumes/kubernetes.io~projected/<volume>/{..<ts>/{token,ca.crt},
    /// ..data -> ..<ts>, token -> ..data/token, ca.crt -> ..data/ca.crt}`; a second call swaps
    /// `..data` to a new timestamped directory by a rename, as the kubelet does.
    pub(crate) fn write_volume(pods_dir: &Path, uid: &str, volume: &str, token: &str, ca: &str) {
        let dir = pods_dir.join(uid).join(PROJECTED).join(volume);
        std::fs::create_dir_all(&dir).expect("volume dir");
        let stamp = format!(
            "..2026_11_30_09_00_00.{}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("clock")
                .as_nanos()
        );
        let ts = dir.join(&stamp);
        std::fs::create_dir(&ts).expect("timestamped dir");
        std::fs::write(ts.join("token"), token).expect("token");
        std::fs::write(ts.join("ca.crt"), ca).expect("ca.crt");
        let old = std::fs::read_link(dir.join("..data")).ok();
        let tmp = dir.join("..data_tmp");
        symlink(&stamp, &tmp).expect("..data_tmp");
        std::fs::rename(&tmp, dir.join("..data")).expect("swap ..data");
        for name in ["token", "ca.crt"] {
            if !dir.join(name).exists() {
                symlink(format!("..data/{name}"), dir.join(name)).expect("link");
            }
        }
        if let Some(old) = old {
            std::fs::remove_dir_all(dir.join(old)).expect("old timestamped dir");
        }
    }

    #[test]
    fn finds_each_token_volume_through_the_kubelets_links() {
        let pods = tempfile::tempdir().expect("tempdir");
        let cluster_ca = crate::test_pki::ca("cluster");
        let ca = cluster_ca.pem.clone();
        let kid = crate::material::validate::kubernetes_key_id(b"k1");
        let t1 = jwt::tests::kubelet_token(&kid, "default", "a", "uid-a", 100);
        write_volume(pods.path(), "uid-a", "kube-api-access-x", &t1, &ca);
        write_volume(pods.path(), "uid-a", "kube-api-access-x", &t1, &ca);
        // A projected volume without a token (ConfigMaps only) and a pod without volumes.
        std::fs::create_dir_all(pods.path().join("uid-a").join(PROJECTED).join("config"))
            .expect("mkdir");
        std::fs::create_dir_all(pods.path().join("uid-b/volumes")).expect("mkdir");
        let found = scan(pods.path());
        assert_eq!(found.len(), 1, "{found:?}");
        let t = &found[0];
        assert_eq!(
            (t.volume.pod_uid.as_str(), t.volume.volume.as_str()),
            ("uid-a", "kube-api-access-x")
        );
        let claims = t.claims.as_ref().expect("decoded");
        assert_eq!(claims.kid, kid);
        let fingerprints = t.ca.as_ref().expect("ca.crt").as_ref().expect("parsed");
        assert_eq!(
            fingerprints,
            &[hex(&Sha256::digest(cluster_ca.der.as_ref()))]
        );
        assert!(scan(&pods.path().join("absent")).is_empty());
    }

    #[test]
    fn a_bad_token_names_its_file_and_check_only() {
        let pods = tempfile::tempdir().expect("tempdir");
        write_volume(pods.path(), "uid-a", "v", "not.a-token", "no pem here");
        let found = scan(pods.path());
        let err = found[0].claims.as_ref().expect_err("not a JWT").to_string();
        assert!(
            err.ends_with("/v/token: not a JWT (header.claims.signature)"),
            "{err}"
        );
        assert!(!err.contains("a-token"), "{err}");
        let err = found[0]
            .ca
            .as_ref()
            .expect("ca.crt")
            .as_ref()
            .expect_err("no PEM")
            .to_string();
        assert!(err.contains("/v/ca.crt:"), "{err}");
    }
}
