//! The output format every command takes (`--output json|text`): `watch` prints one change per
//! line in it, `check`, `status` and `audit verify` their result.

/// `--output`: JSON for programs, text for people.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Output {
    /// One JSON object per line (stable field names; see the README).
    Json,
    /// Human-readable lines.
    Text,
}
