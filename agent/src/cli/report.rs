//! What `check` and `audit verify` print, and the exit status their finding stands for.

use std::path::PathBuf;

use crate::{
    audit,
    check::{self, CheckTarget},
    output::Output,
};

/// Prints `check`'s verdicts; exit 0 when every bundle is valid, 1 when one is not, 2 when the
/// configuration cannot be read.
pub(super) fn check(target: &CheckTarget, output: Output) -> u8 {
    match check::run(target) {
        Ok(verdicts) => {
            match output {
                Output::Json => println!("{}", serde_json::json!({ "bundles": verdicts })),
                Output::Text => print!("{}", check::render_text(&verdicts)),
            }
            if verdicts.iter().all(|v| v.valid) {
                0
            } else {
                1
            }
        }
        Err(e) => {
            eprintln!("certreload check: {e}");
            2
        }
    }
}

/// Prints `audit verify`'s finding; exit 0 intact, 1 broken or not matching the witness, 2 when a
/// file or the witness cannot be read.
pub(super) fn audit_verify(
    files: &[PathBuf],
    witness: Option<&audit::witness::Witnessed>,
    output: Output,
) -> u8 {
    let chain = match audit::verify_files(files) {
        Ok(summary) => summary,
        Err(e) => {
            match output {
                Output::Json => println!(
                    "{}",
                    serde_json::json!({ "intact": false, "error": e.to_string() })
                ),
                Output::Text => println!("BROKEN: {e}"),
            }
            return match e {
                audit::VerifyError::Io { .. } => 2,
                _ => 1,
            };
        }
    };
    let witnessed = witness.map(|w| audit::witness::check_files(files, chain.last_seq, w));
    let (code, error) = match &witnessed {
        Some(Err(audit::witness::WitnessCheckError::Witness(e))) => (2, Some(e.to_string())),
        Some(Err(audit::witness::WitnessCheckError::Mismatch(e))) => (1, Some(e.to_string())),
        None | Some(Ok(_)) => (u8::from(!chain.intact()), None),
    };
    match output {
        Output::Json => {
            let mut doc = serde_json::json!({ "intact": code == 0, "summary": chain });
            if let Some(Ok(w)) = &witnessed {
                doc["witness"] = serde_json::json!(w);
            }
            if let Some(e) = &error {
                doc["error"] = e.clone().into();
            }
            println!("{doc}");
        }
        Output::Text => match (&witnessed, &error) {
            (_, Some(e)) => println!("BROKEN: {e}"),
            (Some(Ok(w)), None) => {
                let skipped = if w.not_in_files > 0 {
                    format!(", {} in records not in these files", w.not_in_files)
                } else {
                    String::new()
                };
                println!(
                    "{chain}; witness {}: {} head(s) match{skipped}, highest seq {} ({} record(s) after it not yet witnessed)",
                    w.witness, w.heads, w.highest_seq, w.unwitnessed
                )
            }
            _ => println!("{chain}"),
        },
    }
    code
}
