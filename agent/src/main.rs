//! The `certreload` binary: [`certreload::cli::run`] parses the arguments, sets up logging
//! (`--log-format`) and runs the command.

use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    certreload::cli::run().await
}
