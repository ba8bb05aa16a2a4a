//! Inputs that crashed a fuzz target (`cargo xtask fuzz`), each fed to the parser that crashed,
//! asserting the typed error it must produce now. The inputs are in `tests/fuzz_regressions/`
//! and also in `fuzz/corpus/`, so every fuzz smoke run replays them too.

use std::path::{Path, PathBuf};

use certreload::audit::{
    chain::{verify_file, ChainHead},
    AuditLog, VerifyError,
};

fn input(target: &str, name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fuzz_regressions")
        .join(target)
        .join(name)
}

/// A copy of `input` in a fresh directory, for code that writes to (or locks beside) its log.
fn scratch_copy(src: &Path) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("audit.jsonl");
    std::fs::copy(src, &path).expect("copy the input");
    (dir, path)
}

/// audit_line: `{"seq":18446744073709551615,...}` as the last record. `ChainHead::after` computed
/// `seq + 1` (a panic with overflow checks, a wrap to seq 0 without them): the agent either died
/// at start-up or continued the chain at 0. No record can follow it: not a head, and opening the
/// log is refused with an error naming the file.
#[test]
fn a_last_record_at_seq_u64_max_is_not_a_chain_head() {
    let src = input("audit_line", "last_record_at_seq_u64_max.jsonl");
    let text = std::fs::read_to_string(&src).expect("read the input");
    assert_eq!(ChainHead::after(text.trim_end()), None);

    let (_dir, path) = scratch_copy(&src);
    let err = AuditLog::open(&path, u64::MAX)
        .err()
        .expect("a log ending at seq u64::MAX cannot be continued");
    assert_eq!(err.path, path, "{err}");
    assert!(
        err.to_string().contains("not an audit record"),
        "the error says what is wrong with the last record: {err}"
    );
}

/// audit_line: a (forged) `log_replaced` record at seq u64::MAX followed by any record.
/// `verify` computed the expected next seq as `pseq + 1` and panicked; it must name the record
/// that cannot follow.
#[test]
fn verify_names_a_record_after_seq_u64_max_instead_of_overflowing() {
    let (_dir, path) = scratch_copy(&input("audit_line", "record_after_seq_u64_max.jsonl"));
    match verify_file(&path) {
        Err(VerifyError::Missing {
            expected: u64::MAX,
            found: 0,
            line: 2,
            path: at,
        }) => assert_eq!(at, path),
        other => panic!("expected the second record to be named as out of order, got {other:?}"),
    }
}
