//! Confirmed changes: the monitor's only output, one per real change of a watched path.

use std::path::PathBuf;

use serde::Serialize;

use super::hint::{Source, Writer};

/// How a watched path changed between two observations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ChangeKind {
    /// Same file (device and inode), new content.
    Modified,
    /// The path now leads to another file (rename over it, symlink swap, hard link) with other
    /// content or another target.
    Replaced,
    /// The path exists again (or for the first time).
    Created,
    /// The path no longer leads to a file.
    Removed,
}

/// A change the agent has verified by re-reading the file, with the kernel's attribution.
#[derive(Debug, Clone, Serialize)]
pub struct ConfirmedChange {
    /// RFC 3339 UTC time of confirmation.
    pub ts: String,
    /// The watched path, exactly as configured.
    pub path: PathBuf,
    /// What happened to it.
    pub kind: ChangeKind,
    /// Which monitor saw it.
    pub source: Source,
    /// Who did it; `null` when unknown (inotify, resync).
    pub writer: Option<Writer>,
    /// SHA-256 (hex) of the new content; `null` when removed or unreadable.
    pub sha256: Option<String>,
    /// Why the path cannot be read (a directory, a symlink loop, no permission); absent when it
    /// can.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Microseconds from the syscall's return (kernel clock) to confirmation; `null` when unknown.
    pub latency_us: Option<u64>,
    /// The file the path resolves to now (through symlinks such as `..data`); `null` when removed.
    pub resolved: Option<PathBuf>,
    /// The operation that revealed the change (`close`, `rename`, `IN_MOVED_TO`, `resync`, ...).
    pub operation: &'static str,
}

impl ConfirmedChange {
    /// One human-readable line for `--output text`.
    pub fn to_text(&self) -> String {
        let kind = match self.kind {
            ChangeKind::Modified => "modified",
            ChangeKind::Replaced => "replaced",
            ChangeKind::Created => "created",
            ChangeKind::Removed => "removed",
        };
        let who = match &self.writer {
            Some(w) => format!(
                "by {}[{}] uid={} cgroup={}",
                w.comm, w.tgid, w.uid, w.cgroup_id
            ),
            None => "by unknown writer".to_string(),
        };
        let sha = self
            .sha256
            .as_deref()
            .map(|s| &s[..16.min(s.len())])
            .unwrap_or("-");
        let latency = self
            .latency_us
            .map(|l| format!(", {l}us"))
            .unwrap_or_default();
        let source = serde_json::to_value(self.source)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        format!(
            "{} {kind} {} {who} via {} ({source}{latency}) sha256={sha}",
            self.ts,
            self.path.display(),
            self.operation
        )
    }
}
