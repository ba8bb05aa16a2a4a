//! What `/proc` tells about a writer's fds: the file an fd holds, the fds holding a file, whether
//! the process is exiting, and the file an open's path argument names for that process.
//!
//! Write tracking ([`super::writers`]) asks these questions for opens the kernel reported at their
//! entry, without the new fd. They stat files under `/proc/<tgid>`, so their cost grows with the
//! writer's fd table; they are kept here, apart from the bookkeeping, so that cost has one place.

use std::{
    ffi::OsStr,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

/// Device and inode of `/proc/<tgid>/fd/<fd>` (the magic link follows to the open file, even in
/// another mount namespace).
pub(super) fn fd_identity(tgid: u32, fd: i32) -> Option<(u64, u64)> {
    std::fs::metadata(format!("/proc/{tgid}/fd/{fd}"))
        .ok()
        .map(|m| (m.dev(), m.ino()))
}

/// True while `fd` of `tgid` is open (the link itself exists, whatever it points to).
pub(super) fn fd_is_open(tgid: u32, fd: i32) -> bool {
    std::fs::symlink_metadata(format!("/proc/{tgid}/fd/{fd}")).is_ok()
}

/// Every fd of `tgid` with the identity of its file (`None`: the process is gone or exiting). Fds
/// that are not files (sockets, pipes) have identities no watched file has.
pub(super) fn open_fds(tgid: u32) -> Option<Vec<(i32, (u64, u64))>> {
    if exiting(tgid) {
        // Its fd table is already released, so /proc lists none: that is not "closed by its last
        // fd syscall"; the exit event, still on its way, ends the write.
        return None;
    }
    let dir = std::fs::read_dir(format!("/proc/{tgid}/fd")).ok()?;
    Some(
        dir.filter_map(Result::ok)
            .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
            .filter_map(|fd| Some((fd, fd_identity(tgid, fd)?)))
            .collect(),
    )
}

/// True when `tgid` is a zombie or dead (state `Z` or `X` in `/proc/<tgid>/stat`, the field after
/// the command name's closing parenthesis), or its stat cannot be read.
pub(super) fn exiting(tgid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{tgid}/stat")) else {
        return true;
    };
    let state = stat
        .rfind(')')
        .and_then(|end| stat[end + 1..].split_whitespace().next());
    matches!(state, Some("Z" | "X" | "x"))
}

/// Device and inode of the file `name` (an open's path argument) names for process `tgid`: looked
/// up in its root (absolute) or working directory (relative), so in its own mount namespace. An
/// `openat` relative to a directory fd other than the working directory is not resolved (its
/// close is then still found through the exit, or the writer-hold bound).
pub(super) fn name_identity(tgid: u32, name: &OsStr) -> Option<(u64, u64)> {
    let path = Path::new(name);
    let full: PathBuf = match path.strip_prefix("/") {
        Ok(rest) => Path::new(&format!("/proc/{tgid}/root")).join(rest),
        Err(_) => Path::new(&format!("/proc/{tgid}/cwd")).join(path),
    };
    std::fs::metadata(full).ok().map(|m| (m.dev(), m.ino()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A zombie lists no fds in /proc; it must read as exiting (its exit event ends the write), not
    /// as a live process that closed the file (CI saw a shell's write ended by "close").
    #[test]
    fn a_zombie_is_exiting_and_lists_no_fds() {
        assert!(!exiting(std::process::id()));
        let mut child = std::process::Command::new("true")
            .spawn()
            .expect("spawn true");
        let pid = child.id();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !exiting(pid) {
            assert!(
                std::time::Instant::now() < deadline,
                "{pid} never became a zombie"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(
            open_fds(pid),
            None,
            "an exiting process is left to its exit event"
        );
        child.wait().expect("reap");
        assert!(exiting(pid), "a reaped process is gone");
    }
}
