//! Certificate and key files as the agent reads them from disk: the PEM/DER decoders, the X.509
//! inspection, kubeconfig embedded credentials, and the whole validation gate (pair, kubeconfig,
//! CA bundle with key, ServiceAccount keys) over one file holding the input. Any panic is a crash;
//! every outcome must be a value (`Ok`, a typed error, or a report with a failed check).
#![no_main]

use std::{path::PathBuf, sync::OnceLock, time::SystemTime};

use certreload::material::{inspect, kubeconfig, pem, validate};
use libfuzzer_sys::fuzz_target;

/// One scratch file per fuzzing process, on tmpfs when there is one.
fn scratch() -> &'static PathBuf {
    static FILE: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    &FILE
        .get_or_init(|| {
            let dir = tempfile::Builder::new()
                .prefix("certreload-fuzz-pem")
                .tempdir_in("/dev/shm")
                .or_else(|_| tempfile::tempdir())
                .expect("a scratch directory for the fuzz input");
            let file = dir.path().join("material.pem");
            (dir, file)
        })
        .1
}

fuzz_target!(|data: &[u8]| {
    if let Ok(certs) = pem::certificates(data) {
        for cert in &certs {
            if let Ok(info) = inspect::inspect(cert) {
                let _ = validate::kubernetes_key_id(&info.spki);
            }
        }
    }
    if let Ok(key) = pem::private_key(data) {
        validate::public_key_of(&key).ok();
    }
    // Only a panic (or a hang) is a finding: any input may be refused.
    pem::public_keys(data).ok();
    kubeconfig::embedded_client(data).ok();

    let file = scratch();
    std::fs::write(file, data).expect("write the fuzz input to the scratch file");
    let max = 1 << 20;
    let pair = validate::PairPolicy {
        usage: validate::Usage::Server,
        expect_sans: vec!["localhost".into()],
        min_validity: Some(std::time::Duration::from_secs(3600)),
        allow_san_removal: false,
        max_file_size: max,
    };
    let now = SystemTime::now();
    let report = validate::validate_pair(file, file, Some(file), &pair, None, now);
    // A previous generation's leaf exercises the SAN-removal comparison too.
    let previous = report.material.as_ref().and_then(|m| m.leaf.clone());
    let _ = validate::validate_pair(file, file, Some(file), &pair, previous.as_ref(), now);
    let client = validate::PairPolicy {
        usage: validate::Usage::Client,
        ..pair
    };
    let _ = validate::validate_kubeconfig(file, &client, None, now);
    let ca = validate::CaPolicy {
        max_file_size: max,
        allow_ca_removal: false,
        key: Some(file.clone()),
        signing: true,
    };
    let cas = report.material.map(|m| m.cas).unwrap_or_default();
    let _ = validate::validate_ca_bundle(file, &ca, &[], &cas);
    let _ = validate::validate_sa_keys(file, std::slice::from_ref(file), max);
});
