//! Confirmed changes: the monitor's only output, one per real change of a watched path.

use std::{fmt, path::PathBuf};

use serde::{Deserialize, Serialize, Serializer};

use super::{
    attribution::Attribution,
    hint::{Source, Writer},
};

/// How a watched path changed between two observations. The name ([`ChangeKind::as_str`]) is what
/// audit records and `--output text` show, so `Serialize` and `Display` are built on it;
/// `Deserialize` reads the same names back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum ChangeKind {
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

impl ChangeKind {
    /// The stable name (`modified`, `replaced`, `created`, `removed`).
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            ChangeKind::Modified => "modified",
            ChangeKind::Replaced => "replaced",
            ChangeKind::Created => "created",
            ChangeKind::Removed => "removed",
        }
    }
}

impl fmt::Display for ChangeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for ChangeKind {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// A change the agent has verified by re-reading the file, with the kernel's attribution.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ConfirmedChange {
    /// RFC 3339 UTC time of confirmation.
    pub ts: String,
    /// The watched path, exactly as configured.
    pub path: PathBuf,
    /// What happened to it.
    pub kind: ChangeKind,
    /// Which monitor saw it.
    pub source: Source,
    /// Who did it: only when the kernel's events prove it (see `monitor::attribution`); `null`
    /// otherwise, and `attribution` says why.
    pub writer: Option<Writer>,
    /// `proven` (`writer` names who), `unseen` (no operation seen touched the path's chain:
    /// inotify, resync, mmap, a same-named file elsewhere) or `ambiguous` (`writers` names who
    /// may have).
    pub attribution: Attribution,
    /// The writers that may have made it, when `attribution` is `ambiguous`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub writers: Vec<Writer>,
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
    /// The operation that revealed the change (`close`, `rename`, `IN_MOVED_TO`, `resync`, ...):
    /// the proven writer's last operation on the path's chain, when there is one.
    pub operation: &'static str,
    /// The path's resolution chain before and after the change, for judging operations seen
    /// after the read (not printed).
    #[serde(skip)]
    pub hops: Vec<PathBuf>,
}

impl ConfirmedChange {
    /// One human-readable line for `--output text`.
    pub(crate) fn to_text(&self) -> String {
        let kind = self.kind;
        let who = match &self.writer {
            Some(w) => format!(
                "by {}[{}] uid={} cgroup={}",
                w.comm, w.tgid, w.uid, w.cgroup_id
            ),
            None if self.writers.is_empty() => {
                format!("by unknown writer ({})", self.attribution.as_str())
            }
            None => format!(
                "by one of {} (ambiguous)",
                self.writers
                    .iter()
                    .map(|w| format!("{}[{}]", w.comm, w.tgid))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
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
        let source = self.source;
        format!(
            "{} {kind} {} {who} via {} ({source}{latency}) sha256={sha}",
            self.ts,
            self.path.display(),
            self.operation
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn change_kind_name_is_its_json_and_reads_back() {
        for kind in [
            ChangeKind::Modified,
            ChangeKind::Replaced,
            ChangeKind::Created,
            ChangeKind::Removed,
        ] {
            let json = serde_json::to_string(&kind).expect("serialise");
            assert_eq!(json, format!("\"{}\"", kind.as_str()));
            assert_eq!(kind.to_string(), kind.as_str());
            let back: ChangeKind = serde_json::from_str(&json).expect("deserialise");
            assert_eq!(back, kind);
        }
    }
}
