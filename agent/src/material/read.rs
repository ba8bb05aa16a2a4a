//! Reading certificate material from disk, with every way that can go wrong named precisely.
//!
//! A rotation can leave anything at a watched path: a directory, a symlink loop, a file the agent
//! may not read, a 50 MiB accident, a FIFO or a device. Each is a distinct, actionable error naming
//! the file; none of them blocks (the open is non-blocking: see [`crate::regular_file`]).

use std::{
    io,
    path::{Path, PathBuf},
};

use thiserror::Error;

use crate::regular_file::{self, FileKind, OpenError, ReadBoundedError};

/// Default limit on one material file (certificate chains and keys are kilobytes).
pub(crate) const DEFAULT_MAX_FILE_SIZE: u64 = 1024 * 1024;

/// A material file could not be read.
#[derive(Debug, Error)]
pub(crate) enum ReadError {
    /// Nothing at the path.
    #[error("{path}: file not found")]
    NotFound { path: PathBuf },
    /// A directory where a file is expected.
    #[error("{path}: is a directory, expected a file")]
    IsDirectory { path: PathBuf },
    /// A FIFO, socket or device where a file is expected: refused before reading (a FIFO would
    /// wait for a writer, a device could be endless).
    #[error("{path}: is a {kind}, expected a regular file")]
    NotRegular {
        path: PathBuf,
        /// What is there instead.
        kind: FileKind,
    },
    /// Symlinks that point at each other.
    #[error("{path}: symlink loop (too many levels of symbolic links)")]
    SymlinkLoop { path: PathBuf },
    /// The agent may not read it.
    #[error("{path}: permission denied")]
    PermissionDenied { path: PathBuf },
    /// Larger than the configured limit.
    #[error("{path}: {size} bytes exceeds max_file_size ({max} bytes)")]
    TooLarge {
        path: PathBuf,
        /// Its size (at least; the read stops past the limit).
        size: u64,
        max: u64,
    },
    /// Any other I/O error.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl ReadError {
    fn from_io(path: &Path, e: io::Error) -> Self {
        let path = path.to_path_buf();
        match (e.kind(), e.raw_os_error()) {
            (io::ErrorKind::NotFound, _) => ReadError::NotFound { path },
            (io::ErrorKind::PermissionDenied, _) => ReadError::PermissionDenied { path },
            (io::ErrorKind::IsADirectory, _) => ReadError::IsDirectory { path },
            (_, Some(libc::ELOOP)) => ReadError::SymlinkLoop { path },
            _ => ReadError::Io { path, source: e },
        }
    }
}

/// Reads `path` (following symlinks), refusing anything but a regular file (named by type) and
/// anything above `max` bytes without reading more than `max + 1` bytes of it. Never blocks on
/// what is at the path; still a blocking read of a disk file, so async callers run it on the
/// blocking pool.
pub(crate) fn read_material(path: &Path, max: u64) -> Result<Vec<u8>, ReadError> {
    regular_file::read_bounded(path, max).map_err(|e| match e {
        ReadBoundedError::Open(OpenError::NotRegular(FileKind::Directory)) => {
            ReadError::IsDirectory {
                path: path.to_path_buf(),
            }
        }
        ReadBoundedError::Open(OpenError::NotRegular(kind)) => ReadError::NotRegular {
            path: path.to_path_buf(),
            kind,
        },
        ReadBoundedError::Open(OpenError::Io(e)) | ReadBoundedError::Read(e) => {
            ReadError::from_io(path, e)
        }
        ReadBoundedError::TooLarge { size } => ReadError::TooLarge {
            path: path.to_path_buf(),
            size,
            max,
        },
    })
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    #[test]
    fn names_each_failure() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path();
        assert!(matches!(
            read_material(&p.join("missing"), 10),
            Err(ReadError::NotFound { .. })
        ));
        assert!(matches!(
            read_material(p, 10),
            Err(ReadError::IsDirectory { .. })
        ));
        symlink(p.join("a"), p.join("b")).expect("symlink");
        symlink(p.join("b"), p.join("a")).expect("symlink");
        assert!(matches!(
            read_material(&p.join("a"), 10),
            Err(ReadError::SymlinkLoop { .. })
        ));
        std::fs::write(p.join("big"), vec![b'x'; 11]).expect("write");
        let err = read_material(&p.join("big"), 10).expect_err("too large");
        assert!(matches!(
            err,
            ReadError::TooLarge {
                size: 11,
                max: 10,
                ..
            }
        ));
        assert!(err.to_string().contains("big"), "{err}");
        std::fs::write(p.join("ok"), b"0123456789").expect("write");
        assert_eq!(read_material(&p.join("ok"), 10).expect("read").len(), 10);
    }

    #[test]
    fn a_fifo_or_device_is_refused_with_its_type_and_file_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fifo = dir.path().join("tls.key");
        crate::sys::test_support::mkfifo(&fifo).expect("mkfifo");
        // A blocking open would wait here forever: nothing ever writes to this FIFO.
        let err = read_material(&fifo, 10).expect_err("fifo");
        assert_eq!(
            err.to_string(),
            format!("{}: is a fifo, expected a regular file", fifo.display())
        );
        let err = read_material(Path::new("/dev/zero"), 10).expect_err("device");
        assert_eq!(
            err.to_string(),
            "/dev/zero: is a character device, expected a regular file"
        );
    }

    #[test]
    fn permission_errors_are_named_as_such() {
        // As root (CI) a mode-000 file is still readable, so map the kernel's answer directly.
        let err = ReadError::from_io(
            Path::new("/x/key.pem"),
            io::Error::from_raw_os_error(libc::EACCES),
        );
        assert!(matches!(err, ReadError::PermissionDenied { .. }));
        assert_eq!(err.to_string(), "/x/key.pem: permission denied");
    }
}
