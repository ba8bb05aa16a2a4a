//! The demo's state directory as a directory only this user controls, and every file operation in
//! it relative to one open descriptor of it.
//!
//! `certreload demo` runs as root on a node, in a temporary directory by default. A directory
//! another user created (or can write to, or can replace from a writable parent) lets that user
//! plant links and FIFOs at the names the demo writes and reads, and root then overwrites the
//! link's target or loads the attacker's configuration. So, like OpenSSH's `StrictModes` for
//! `~/.ssh`, [`StateDir::create`] and [`StateDir::open`] accept the directory only when it is a
//! real directory (not a symlink) owned by this process's effective uid and not writable by group
//! or others, and every directory above it is owned by root or this user and not writable by
//! others unless sticky (`/tmp`), so nobody else can swap it out from under the checks. After the
//! checks every operation goes through the directory's descriptor (`openat`, `mkdirat`,
//! `renameat`, ...) with `O_NOFOLLOW`: a link inside is never followed, new content is written to
//! a fresh temporary file and renamed into place (a rename replaces a link or FIFO, it never
//! writes through it), and a file is only read when `fstat` on the opened descriptor says it is a
//! regular file this user owns, of bounded size.

use std::{
    ffi::CString,
    fs::{File, Metadata},
    io::{self, Read, Write},
    os::{
        fd::{AsFd, AsRawFd, OwnedFd},
        unix::{
            ffi::OsStrExt,
            fs::{DirBuilderExt, FileTypeExt, MetadataExt, OpenOptionsExt},
        },
    },
    path::{Component, Path, PathBuf},
};

use super::DemoError;
use crate::sys::{fs as at, process};

/// The largest file the demo reads back (its CA key and certificate are a few hundred bytes).
pub(crate) const MAX_READ: u64 = 64 * 1024;

/// The effective uid of this process: the owner every entry of the state directory must have.
pub(crate) fn euid() -> u32 {
    process::effective_uid()
}

/// What a file type is called in messages.
pub(crate) fn kind_name(meta: &Metadata) -> &'static str {
    let t = meta.file_type();
    if t.is_symlink() {
        "a symbolic link"
    } else if t.is_file() {
        "a regular file"
    } else if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else {
        "a special file"
    }
}

/// A checked directory this user controls, held open; names passed to its methods are single
/// path components (no `/`), resolved relative to the descriptor, never following a link.
#[derive(Debug)]
pub(crate) struct StateDir {
    fd: OwnedFd,
    path: PathBuf,
}

fn unsafe_dir(path: &Path, check: &'static str, found: String) -> DemoError {
    DemoError::UnsafeDir {
        path: path.to_path_buf(),
        check,
        found,
    }
}

fn cname(name: &str) -> io::Result<CString> {
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{name:?} is not a single file name"),
        ));
    }
    CString::new(name).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in name"))
}

/// Refuses a path with a NUL byte (the system calls would see it cut short) before anything is
/// created or opened.
fn check_no_nul(path: &Path) -> io::Result<()> {
    if path.as_os_str().as_bytes().contains(&0) {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"));
    }
    Ok(())
}

/// Every directory above `dir` (already canonical) must be one that only root or this user can
/// change: owned by one of them, and not writable by others unless sticky (`/tmp`, where nobody
/// may rename or remove another user's entry).
fn check_ancestors(dir: &Path, canonical_parent: &Path, euid: u32) -> Result<(), DemoError> {
    for ancestor in canonical_parent.ancestors() {
        let meta = std::fs::symlink_metadata(ancestor).map_err(|source| DemoError::Read {
            path: ancestor.to_path_buf(),
            source,
        })?;
        let (uid, mode) = (meta.uid(), meta.mode());
        if uid != 0 && uid != euid {
            return Err(unsafe_dir(
                dir,
                "ancestor owner",
                format!(
                    "{} is owned by uid {uid} (neither root nor this user, uid {euid}), who could replace the directory",
                    ancestor.display()
                ),
            ));
        }
        let sticky = mode & libc::S_ISVTX != 0;
        if mode & 0o022 != 0 && !sticky {
            return Err(unsafe_dir(
                dir,
                "ancestor permissions",
                format!(
                    "{} has mode {:04o}: writable by group or others without the sticky bit, so they could replace the directory",
                    ancestor.display(),
                    mode & 0o7777
                ),
            ));
        }
    }
    Ok(())
}

/// The checks on the directory itself, from `lstat` of its path or `fstat` of its descriptor.
fn check_dir_meta(dir: &Path, meta: &Metadata, euid: u32) -> Result<(), DemoError> {
    if meta.file_type().is_symlink() {
        let target = std::fs::read_link(dir)
            .map(|t| t.display().to_string())
            .unwrap_or_else(|_| "?".into());
        return Err(unsafe_dir(
            dir,
            "symlink",
            format!("it is a symbolic link (to {target}), not a directory"),
        ));
    }
    if !meta.is_dir() {
        return Err(unsafe_dir(
            dir,
            "type",
            format!("it is {}, not a directory", kind_name(meta)),
        ));
    }
    if meta.uid() != euid {
        return Err(unsafe_dir(
            dir,
            "owner",
            format!("owned by uid {}, not by this user (uid {euid})", meta.uid()),
        ));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(unsafe_dir(
            dir,
            "permissions",
            format!(
                "mode {:04o} is writable by group or others",
                meta.mode() & 0o7777
            ),
        ));
    }
    Ok(())
}

impl StateDir {
    /// Creates `dir` with mode 0700 (its missing parents too), or opens it when it exists; in
    /// both cases only after the checks in the module comment.
    pub(crate) fn create(dir: &Path) -> Result<StateDir, DemoError> {
        StateDir::open_checked(dir, true)
    }

    /// Opens an existing state directory (`certreload demo rotate`), with the same checks.
    pub(crate) fn open(dir: &Path) -> Result<StateDir, DemoError> {
        StateDir::open_checked(dir, false)
    }

    /// The directory's canonical path (for messages, the cheat-sheet and the agent's config).
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// `dir` as the path the checks hold for: absolute, without `.` or `..`, its missing parents
    /// created 0700 (`create`), the parent chain canonical and checked by [`check_ancestors`].
    fn checked_path(dir: &Path, create: bool, euid: u32) -> Result<PathBuf, DemoError> {
        let absolute = if dir.is_absolute() {
            dir.to_path_buf()
        } else {
            std::env::current_dir()
                .map_err(|source| DemoError::Read {
                    path: dir.to_path_buf(),
                    source,
                })?
                .join(dir)
        };
        // Only normal components: `a/../b` would make the checked chain differ from the path.
        if absolute
            .components()
            .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
        {
            return Err(unsafe_dir(
                dir,
                "path",
                "give it without `.` or `..` components".into(),
            ));
        }
        let (Some(parent), Some(name)) = (absolute.parent(), absolute.file_name()) else {
            return Err(unsafe_dir(dir, "path", "it has no parent directory".into()));
        };
        if create {
            // Missing parents are created 0700 as well: nobody else can write into them.
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(parent)
                .map_err(|source| DemoError::Write {
                    path: parent.to_path_buf(),
                    source,
                })?;
        }
        // The parent chain as it resolves now; once every directory in it is one only root or this
        // user can change, nobody else can make it resolve elsewhere later.
        let parent = parent.canonicalize().map_err(|source| DemoError::Read {
            path: parent.to_path_buf(),
            source,
        })?;
        check_ancestors(dir, &parent, euid)?;
        Ok(parent.join(name))
    }

    fn open_checked(dir: &Path, create: bool) -> Result<StateDir, DemoError> {
        let euid = euid();
        let path = StateDir::checked_path(dir, create, euid)?;
        check_no_nul(&path).map_err(|source| DemoError::Read {
            path: path.clone(),
            source,
        })?;
        if create {
            // mkdir(2) of this one directory, mode 0700. EEXIST is handled by the checks below.
            if let Err(e) = std::fs::DirBuilder::new().mode(0o700).create(&path) {
                if e.kind() != io::ErrorKind::AlreadyExists {
                    return Err(DemoError::Write { path, source: e });
                }
            }
        }
        // lstat first: a symlink or a non-directory is named precisely.
        let meta = std::fs::symlink_metadata(&path).map_err(|source| DemoError::Read {
            path: path.clone(),
            source,
        })?;
        check_dir_meta(&path, &meta, euid)?;
        // open(2) with O_RDONLY | O_DIRECTORY | O_NOFOLLOW (and std's O_CLOEXEC).
        let fd = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
            .open(&path)
            .map(OwnedFd::from)
            .map_err(|source| DemoError::Read {
                path: path.clone(),
                source,
            })?;
        let opened = StateDir { fd, path };
        // The descriptor is what every later operation uses: check what it actually is.
        let fmeta = opened.fd_meta()?;
        check_dir_meta(&opened.path, &fmeta, euid)?;
        if (fmeta.dev(), fmeta.ino()) != (meta.dev(), meta.ino()) {
            return Err(unsafe_dir(
                &opened.path,
                "replaced",
                "it was replaced while being checked".into(),
            ));
        }
        Ok(opened)
    }

    fn fd_meta(&self) -> Result<Metadata, DemoError> {
        let dup = self.fd.try_clone().map_err(|source| DemoError::Read {
            path: self.path.clone(),
            source,
        })?;
        File::from(dup)
            .metadata()
            .map_err(|source| DemoError::Read {
                path: self.path.clone(),
                source,
            })
    }

    /// The path of `name` in this directory (messages, config text).
    pub(crate) fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    fn read_err(&self, name: &str) -> impl FnOnce(io::Error) -> DemoError {
        let path = self.join(name);
        move |source| DemoError::Read { path, source }
    }

    fn write_err(&self, name: &str) -> impl FnOnce(io::Error) -> DemoError {
        let path = self.join(name);
        move |source| DemoError::Write { path, source }
    }

    /// `lstat` of `name`: what is there, without following a link; `None` when nothing is.
    pub(crate) fn entry(&self, name: &str) -> Result<Option<Metadata>, DemoError> {
        let c = cname(name).map_err(self.read_err(name))?;
        // O_PATH | O_NOFOLLOW opens the link itself (or a FIFO without waiting for a writer);
        // fstat of that descriptor is lstat of the name.
        match at::openat(self.fd.as_fd(), &c, libc::O_PATH | libc::O_NOFOLLOW, 0) {
            Ok(fd) => File::from(fd)
                .metadata()
                .map(Some)
                .map_err(self.read_err(name)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.read_err(name)(e)),
        }
    }

    /// Refuses `name` unless it is absent or something this user made of the expected type
    /// (`want_dir`: a directory, else a regular file): never a link, FIFO, socket or device.
    pub(crate) fn expect_own(
        &self,
        name: &str,
        want_dir: bool,
    ) -> Result<Option<Metadata>, DemoError> {
        let Some(meta) = self.entry(name)? else {
            return Ok(None);
        };
        let ok_type = if want_dir {
            meta.is_dir()
        } else {
            meta.file_type().is_file()
        };
        if !ok_type {
            return Err(self.foreign(name, format!("it is {}", kind_name(&meta))));
        }
        if meta.uid() != euid() {
            return Err(self.foreign(name, format!("it is owned by uid {}", meta.uid())));
        }
        Ok(Some(meta))
    }

    /// The error for something at `name` the demo did not put there.
    pub(crate) fn foreign(&self, name: &str, found: String) -> DemoError {
        DemoError::Foreign {
            path: self.join(name),
            found,
        }
    }

    /// Every name in the directory, `.` and `..` left out.
    pub(crate) fn names(&self) -> Result<Vec<String>, DemoError> {
        // Listed through the descriptor (/proc/self/fd), not the path.
        let fd_path = format!("/proc/self/fd/{}", self.fd.as_raw_fd());
        let entries = std::fs::read_dir(&fd_path).map_err(|source| DemoError::Read {
            path: self.path.clone(),
            source,
        })?;
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|source| DemoError::Read {
                path: self.path.clone(),
                source,
            })?;
            names.push(entry.file_name().to_string_lossy().into_owned());
        }
        names.sort();
        Ok(names)
    }

    /// Reads `name` only if it is a regular file this user owns, at most [`MAX_READ`] bytes:
    /// opened with `O_NOFOLLOW | O_NONBLOCK` (a link is refused, a FIFO does not block), then
    /// judged by `fstat` of the descriptor.
    pub(crate) fn read(&self, name: &str) -> Result<Vec<u8>, DemoError> {
        let c = cname(name).map_err(self.read_err(name))?;
        let fd = at::openat(
            self.fd.as_fd(),
            &c,
            libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY,
            0,
        )
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::ELOOP) {
                self.foreign(name, "it is a symbolic link".into())
            } else {
                self.read_err(name)(e)
            }
        })?;
        let file = File::from(fd);
        let meta = file.metadata().map_err(self.read_err(name))?;
        if !meta.file_type().is_file() {
            return Err(self.foreign(name, format!("it is {}", kind_name(&meta))));
        }
        if meta.uid() != euid() {
            return Err(self.foreign(name, format!("it is owned by uid {}", meta.uid())));
        }
        let mut bytes = Vec::new();
        file.take(MAX_READ + 1)
            .read_to_end(&mut bytes)
            .map_err(self.read_err(name))?;
        if bytes.len() as u64 > MAX_READ {
            return Err(self.foreign(name, format!("it is larger than {MAX_READ} bytes")));
        }
        Ok(bytes)
    }

    /// Writes `bytes` to `name` atomically: a new temporary file (`O_CREAT | O_EXCL |
    /// O_NOFOLLOW`, created with `mode`), fsync'd, then renamed over `name`, so whatever was at
    /// `name` (a link, a FIFO) is replaced, never written through.
    pub(crate) fn write(&self, name: &str, bytes: &[u8], mode: u32) -> Result<(), DemoError> {
        let target = cname(name).map_err(self.write_err(name))?;
        let tmp_name = format!(".{name}.tmp-{}", std::process::id());
        let tmp = cname(&tmp_name).map_err(self.write_err(name))?;
        let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW;
        let fd = match at::openat(self.fd.as_fd(), &tmp, flags, mode) {
            // Left by a run of this process id that died mid-write: ours to replace.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                self.unlink(&tmp_name, false)
                    .map_err(self.write_err(&tmp_name))?;
                at::openat(self.fd.as_fd(), &tmp, flags, mode)
            }
            other => other,
        }
        .map_err(self.write_err(&tmp_name))?;
        let mut file = File::from(fd);
        let written = file
            .write_all(bytes)
            .and_then(|()| file.sync_all())
            .and_then(|()| self.renameat(&tmp, &target));
        if let Err(e) = written {
            // Best effort: the write's error is the one to report.
            self.unlink(&tmp_name, false).ok();
            return Err(self.write_err(name)(e));
        }
        Ok(())
    }

    fn renameat(&self, from: &CString, to: &CString) -> io::Result<()> {
        at::renameat(self.fd.as_fd(), from, self.fd.as_fd(), to)
    }

    /// Renames `from` over `to` inside this directory (the atomic `..data` swap).
    pub(crate) fn rename(&self, from: &str, to: &str) -> Result<(), DemoError> {
        let f = cname(from).map_err(self.write_err(from))?;
        let t = cname(to).map_err(self.write_err(to))?;
        self.renameat(&f, &t).map_err(self.write_err(to))
    }

    /// Removes `name` (a directory when `dir`, which must be empty); absent is not an error.
    pub(crate) fn unlink(&self, name: &str, dir: bool) -> io::Result<()> {
        let c = cname(name)?;
        let flags = if dir { libc::AT_REMOVEDIR } else { 0 };
        match at::unlinkat(self.fd.as_fd(), &c, flags) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
    }

    /// Creates the directory `name` with `mode` (it must not exist).
    pub(crate) fn mkdir(&self, name: &str, mode: u32) -> Result<(), DemoError> {
        let c = cname(name).map_err(self.write_err(name))?;
        at::mkdirat(self.fd.as_fd(), &c, mode).map_err(self.write_err(name))
    }

    /// Creates the symbolic link `name` → `target` (it must not exist).
    pub(crate) fn symlink(&self, target: &str, name: &str) -> Result<(), DemoError> {
        let c = cname(name).map_err(self.write_err(name))?;
        let t = CString::new(target).map_err(|_| {
            self.write_err(name)(io::Error::new(io::ErrorKind::InvalidInput, "NUL in target"))
        })?;
        at::symlinkat(&t, self.fd.as_fd(), &c).map_err(self.write_err(name))
    }

    /// The target of the link `name`; `None` when `name` is absent.
    pub(crate) fn read_link(&self, name: &str) -> Result<Option<String>, DemoError> {
        let c = cname(name).map_err(self.read_err(name))?;
        let mut buf = vec![0u8; 4096];
        let n = match at::readlinkat(self.fd.as_fd(), &c, &mut buf) {
            Ok(n) => n,
            Err(e) => {
                return match e.kind() {
                    io::ErrorKind::NotFound => Ok(None),
                    _ if e.raw_os_error() == Some(libc::EINVAL) => {
                        Err(self.foreign(name, "it is not a symbolic link".into()))
                    }
                    _ => Err(self.read_err(name)(e)),
                };
            }
        };
        buf.truncate(n);
        String::from_utf8(buf)
            .map(Some)
            .map_err(|_| self.foreign(name, "its target is not UTF-8".into()))
    }

    /// Opens the subdirectory `name` (never through a link) after the same owner and permission
    /// checks as the state directory itself.
    pub(crate) fn subdir(&self, name: &str) -> Result<StateDir, DemoError> {
        let c = cname(name).map_err(self.read_err(name))?;
        let path = self.join(name);
        let fd = at::openat(
            self.fd.as_fd(),
            &c,
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
            0,
        )
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) | Some(libc::ENOTDIR) => match self.entry(name) {
                Ok(Some(meta)) => {
                    self.foreign(name, format!("it is {}, not a directory", kind_name(&meta)))
                }
                _ => self.read_err(name)(e),
            },
            _ => self.read_err(name)(e),
        })?;
        let sub = StateDir { fd, path };
        let meta = sub.fd_meta()?;
        if meta.uid() != euid() {
            return Err(self.foreign(name, format!("it is owned by uid {}", meta.uid())));
        }
        if meta.mode() & 0o022 != 0 {
            return Err(self.foreign(
                name,
                format!(
                    "its mode {:04o} is writable by group or others",
                    meta.mode() & 0o7777
                ),
            ));
        }
        Ok(sub)
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{symlink, PermissionsExt};

    use super::*;

    #[test]
    fn creates_the_directory_0700_and_reopens_it() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let d = tmp.path().join("a/demo");
        let dir = StateDir::create(&d).expect("create");
        let mode = std::fs::metadata(&d).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        dir.write("x", b"1", 0o600).expect("write");
        let again = StateDir::open(&d).expect("open");
        assert_eq!(again.read("x").expect("read"), b"1");
    }

    #[test]
    fn refuses_a_symlink_and_a_group_writable_directory() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let real = tmp.path().join("real");
        std::fs::create_dir(&real).expect("mkdir");
        let link = tmp.path().join("link");
        symlink(&real, &link).expect("symlink");
        let e = StateDir::create(&link).expect_err("symlink");
        assert!(
            matches!(
                &e,
                DemoError::UnsafeDir {
                    check: "symlink",
                    ..
                }
            ),
            "{e}"
        );
        std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o770)).expect("chmod");
        let e = StateDir::open(&real).expect_err("group-writable");
        assert!(e.to_string().contains("mode 0770"), "{e}");
        assert!(
            matches!(
                &e,
                DemoError::UnsafeDir {
                    check: "permissions",
                    ..
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn refuses_an_ancestor_writable_by_others_without_the_sticky_bit() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let open = tmp.path().join("open");
        std::fs::create_dir(&open).expect("mkdir");
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).expect("chmod");
        let e = StateDir::create(&open.join("demo")).expect_err("ancestor");
        assert!(
            matches!(
                &e,
                DemoError::UnsafeDir {
                    check: "ancestor permissions",
                    ..
                }
            ),
            "{e}"
        );
        // Sticky, like /tmp: nobody can replace another user's entry; accepted.
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o1777)).expect("chmod");
        StateDir::create(&open.join("demo")).expect("sticky parent");
    }

    #[test]
    fn writes_replace_links_and_fifos_instead_of_following_them() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let victim = tmp.path().join("victim");
        std::fs::write(&victim, "precious").expect("write");
        let dir = StateDir::create(&tmp.path().join("demo")).expect("create");
        symlink(&victim, dir.join("a")).expect("symlink");
        crate::sys::test_support::mkfifo(&dir.join("b")).expect("mkfifo");
        // Reading refuses both without blocking.
        assert!(matches!(dir.read("a"), Err(DemoError::Foreign { .. })));
        let e = dir.read("b").expect_err("fifo");
        assert!(e.to_string().contains("a FIFO"), "{e}");
        dir.write("a", b"new", 0o644).expect("write a");
        dir.write("b", b"new", 0o644).expect("write b");
        assert_eq!(
            std::fs::read_to_string(&victim).expect("victim"),
            "precious"
        );
        assert_eq!(dir.read("a").expect("a"), b"new");
        assert_eq!(dir.read("b").expect("b"), b"new");
        assert_eq!(dir.names().expect("names"), ["a", "b"], "no temporary left");
        assert!(dir.expect_own("a", false).expect("own").is_some());
        assert!(matches!(
            dir.expect_own("a", true),
            Err(DemoError::Foreign { .. })
        ));
    }
}
