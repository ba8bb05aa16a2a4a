//! Opening a configured or watched path without ever blocking on what is there.
//!
//! Anyone who can write into a watched directory can leave anything at a watched name. A plain
//! `open(2)` of a FIFO with no writer blocks until one appears, and of some character devices until
//! the device answers: on an async runtime thread that froze `/healthz`, every handshake and
//! SIGTERM. Every read of a file whose path comes from the configuration or a watch goes through
//! [`open`]: `O_NONBLOCK` makes the open itself return at once whatever the file is, and `fstat` on
//! the opened descriptor (not the path, which can be swapped in between) decides whether it is a
//! regular file. Anything else is refused with its type named, before a single byte is read.
//! (`O_NONBLOCK` has no effect on reads of regular files, so the descriptor is used as is.)

use std::{
    fmt,
    fs::{File, Metadata, OpenOptions},
    io::{self, Read},
    os::unix::fs::{FileTypeExt, OpenOptionsExt},
    path::Path,
};

/// What sits at a path that is not a regular file; its `Display` is the type's name
/// (`fifo`, `socket`, `character device`, `block device`, `directory`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FileKind {
    /// A directory.
    Directory,
    /// A named pipe (`mkfifo`): reading it waits for a writer.
    Fifo,
    /// A Unix domain socket.
    Socket,
    /// A character device (`/dev/zero`, a tty): endless or blocking.
    CharDevice,
    /// A block device (a disk).
    BlockDevice,
    /// Anything the kernel reports that none of the above covers.
    Other,
}

impl FileKind {
    /// The kind of `meta`, or `None` for a regular file.
    pub(crate) fn of(meta: &Metadata) -> Option<FileKind> {
        let t = meta.file_type();
        if t.is_file() {
            None
        } else if t.is_dir() {
            Some(FileKind::Directory)
        } else if t.is_fifo() {
            Some(FileKind::Fifo)
        } else if t.is_socket() {
            Some(FileKind::Socket)
        } else if t.is_char_device() {
            Some(FileKind::CharDevice)
        } else if t.is_block_device() {
            Some(FileKind::BlockDevice)
        } else {
            Some(FileKind::Other)
        }
    }
}

impl fmt::Display for FileKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FileKind::Directory => "directory",
            FileKind::Fifo => "fifo",
            FileKind::Socket => "socket",
            FileKind::CharDevice => "character device",
            FileKind::BlockDevice => "block device",
            FileKind::Other => "special file",
        })
    }
}

/// Why [`open`] gave no regular file.
#[derive(Debug)]
pub(crate) enum OpenError {
    /// `open` or `fstat` failed (not found, permission, symlink loop, ...).
    Io(io::Error),
    /// Something other than a regular file is there.
    NotRegular(FileKind),
}

/// Opens `path` (following symlinks) without blocking, and returns it only when the opened file is
/// a regular file, with its metadata from `fstat` on the descriptor.
pub(crate) fn open(path: &Path) -> Result<(File, Metadata), OpenError> {
    let file = OpenOptions::new()
        .read(true)
        // Never wait for a FIFO's writer or a device; no controlling tty from a tty device.
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            // open(2) of a Unix socket fails with ENXIO: name what is there instead.
            Some(libc::ENXIO) => match std::fs::metadata(path).ok().as_ref().and_then(FileKind::of)
            {
                Some(kind) => OpenError::NotRegular(kind),
                None => OpenError::Io(e),
            },
            _ => OpenError::Io(e),
        })?;
    let meta = file.metadata().map_err(OpenError::Io)?;
    match FileKind::of(&meta) {
        None => Ok((file, meta)),
        Some(kind) => Err(OpenError::NotRegular(kind)),
    }
}

/// Why [`read_bounded`] returned no content.
#[derive(Debug)]
pub(crate) enum ReadBoundedError {
    /// See [`OpenError`].
    Open(OpenError),
    /// The file holds more than the limit; `size` is at least what was seen.
    TooLarge {
        /// Bytes seen (the read stops one byte past the limit).
        size: u64,
    },
    /// Reading failed after the open.
    Read(io::Error),
}

/// Reads the regular file at `path`, refusing anything above `max` bytes without reading more than
/// `max + 1` of them (the size can grow between `fstat` and the read: a writer still appending).
pub(crate) fn read_bounded(path: &Path, max: u64) -> Result<Vec<u8>, ReadBoundedError> {
    let (file, meta) = open(path).map_err(ReadBoundedError::Open)?;
    if meta.len() > max {
        return Err(ReadBoundedError::TooLarge { size: meta.len() });
    }
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    file.take(max.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(ReadBoundedError::Read)?;
    if bytes.len() as u64 > max {
        return Err(ReadBoundedError::TooLarge {
            size: bytes.len() as u64,
        });
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixListener;

    use super::*;

    fn mkfifo(path: &Path) {
        crate::sys::test_support::mkfifo(path).expect("mkfifo");
    }

    fn kind_at(path: &Path) -> Option<FileKind> {
        match open(path) {
            Ok(_) => None,
            Err(OpenError::NotRegular(k)) => Some(k),
            Err(OpenError::Io(e)) => panic!("{}: {e}", path.display()),
        }
    }

    #[test]
    fn a_fifo_without_writer_is_refused_at_once_not_waited_for() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fifo = dir.path().join("tls.crt");
        mkfifo(&fifo);
        // A blocking open would never return here: no writer ever comes.
        assert_eq!(kind_at(&fifo), Some(FileKind::Fifo));
        let err = read_bounded(&fifo, 10).expect_err("fifo");
        assert!(matches!(
            err,
            ReadBoundedError::Open(OpenError::NotRegular(FileKind::Fifo))
        ));
        // Through a symlink too: the type is that of the file opened, not of the link.
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&fifo, &link).expect("symlink");
        assert_eq!(kind_at(&link), Some(FileKind::Fifo));
    }

    #[test]
    fn names_every_kind_of_special_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(kind_at(dir.path()), Some(FileKind::Directory));
        assert_eq!(kind_at(Path::new("/dev/zero")), Some(FileKind::CharDevice));
        let sock = dir.path().join("sock");
        let _listener = UnixListener::bind(&sock).expect("bind");
        // open(2) of a socket fails (ENXIO); it is still named for what it is.
        assert_eq!(kind_at(&sock), Some(FileKind::Socket));
        for (kind, name) in [
            (FileKind::Fifo, "fifo"),
            (FileKind::Socket, "socket"),
            (FileKind::CharDevice, "character device"),
            (FileKind::BlockDevice, "block device"),
            (FileKind::Directory, "directory"),
        ] {
            assert_eq!(kind.to_string(), name);
        }
    }

    #[test]
    fn reads_a_regular_file_up_to_the_limit() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ok = dir.path().join("ok");
        std::fs::write(&ok, b"0123456789").expect("write");
        assert_eq!(read_bounded(&ok, 10).expect("read"), b"0123456789");
        assert!(matches!(
            read_bounded(&ok, 9),
            Err(ReadBoundedError::TooLarge { size: 10 })
        ));
    }
}
