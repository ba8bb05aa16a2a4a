//! The `openssl` command line as the tests' independent TLS client: what certificate a listener
//! serves, seen from outside the agent's own code.

use std::{
    io::Write,
    path::Path,
    process::{Command, Stdio},
};

/// Whether `openssl` runs here (tests that need it skip without it, or fail under CI=true).
pub fn available() -> bool {
    Command::new("openssl")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// SHA-256 fingerprint of the certificate served at `addr` (SNI `localhost`), as
/// `openssl x509 -fingerprint -sha256` prints it; empty when no handshake completes within 10 s.
pub fn served_fingerprint(addr: &str) -> String {
    let s_client = Command::new("timeout")
        .args(["10", "openssl", "s_client", "-connect", addr])
        .args(["-servername", "localhost"])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .expect("s_client runs");
    fingerprint_of(&s_client.stdout)
}

/// SHA-256 fingerprint of the first certificate in `pem`, in openssl's format; empty when none.
pub fn fingerprint_of(pem: &[u8]) -> String {
    let mut x509 = Command::new("openssl")
        .args(["x509", "-noout", "-fingerprint", "-sha256"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("x509 runs");
    // A pipe closed early (no certificate in the input) is the empty answer, not a test failure.
    x509.stdin.take().expect("stdin").write_all(pem).ok();
    let out = x509.wait_with_output().expect("x509");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// SHA-256 fingerprint of the first certificate in the file at `path`, in openssl's format.
pub fn file_fingerprint(path: &Path) -> String {
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-fingerprint", "-sha256", "-in"])
        .arg(path)
        .output()
        .expect("x509");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Runs `openssl ARGS` (in `dir` when given, so relative file names in ARGS are under it). The
/// error carries the arguments and openssl's stderr, which never holds key material.
pub fn try_run(dir: Option<&Path>, args: &[&str]) -> anyhow::Result<()> {
    let mut openssl = Command::new("openssl");
    openssl.args(args);
    if let Some(dir) = dir {
        openssl.current_dir(dir);
    }
    let out = openssl
        .output()
        .map_err(|e| anyhow::anyhow!("openssl runs: {e}"))?;
    anyhow::ensure!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// [`try_run`] in the current directory, as a test step: a failure fails the test.
pub fn run(args: &[&str]) {
    try_run(None, args).unwrap_or_else(|e| panic!("{e:#}"));
}

/// [`try_run`] in `dir`, as a test step: a failure fails the test.
pub fn run_in(dir: &Path, args: &[&str]) {
    try_run(Some(dir), args).unwrap_or_else(|e| panic!("{e:#}"));
}

/// Writes the public half of the private key file `key` to `public` (PEM SubjectPublicKeyInfo,
/// the form of kubeadm's `sa.pub`).
pub fn write_public_key(key: &Path, public: &Path) -> anyhow::Result<()> {
    try_run(
        None,
        &[
            "pkey",
            "-in",
            &key.display().to_string(),
            "-pubout",
            "-out",
            &public.display().to_string(),
        ],
    )
}

/// A new RSA 2048 key pair, as kubeadm makes `sa.key`/`sa.pub`: the private key to `key`
/// (PKCS#8 PEM) and its public half to `public`.
pub fn new_rsa_key_pair(key: &Path, public: &Path) -> anyhow::Result<()> {
    try_run(
        None,
        &[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            &key.display().to_string(),
        ],
    )?;
    write_public_key(key, public)
}
