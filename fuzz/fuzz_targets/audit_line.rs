//! Audit log lines as the agent finds them after a crash, a full disk or tampering: the chain head
//! read from the last line at start-up (`ChainHead::after`), `certreload audit verify` over the
//! whole file, and `AuditLog::open` continuing (and cutting the torn tail of) an existing log.
//! Any panic is a crash; a damaged log must be a typed error or a fresh, verifiable chain.
#![no_main]

use std::{path::PathBuf, sync::OnceLock};

use certreload::audit::{
    chain::{self, ChainHead},
    log::AuditLog,
};
use libfuzzer_sys::fuzz_target;

fn scratch() -> &'static tempfile::TempDir {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        tempfile::Builder::new()
            .prefix("certreload-fuzz-audit")
            .tempdir_in("/dev/shm")
            .or_else(|_| tempfile::tempdir())
            .expect("a scratch directory for the fuzz input")
    })
}

fuzz_target!(|data: &[u8]| {
    for line in String::from_utf8_lossy(data).lines() {
        let _ = ChainHead::after(line);
    }
    let path: PathBuf = scratch().path().join("audit.jsonl");
    std::fs::write(&path, data).expect("write the fuzz input");
    // Only a panic (or a hang) is a finding: any input may be refused.
    chain::verify_file(&path).ok();
    // Opening continues the chain: whatever it does to a damaged tail, the result is a log.
    if let Ok(log) = AuditLog::open(&path, u64::MAX) {
        drop(log);
    }
    // The next input overwrites it anyway.
    std::fs::remove_file(&path).ok();
});
