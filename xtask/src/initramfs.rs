//! The guest's whole root file system as one initramfs (cpio "newc", uncompressed): the kernel
//! unpacks it into a tmpfs and runs `/init`, so the VM needs no disk image, no kernel module and no
//! root= device. Dynamic executables bring their loader and libraries (found with `ldd`), at the
//! same absolute paths as on the host, stripped of debug info (the debug agent is ~250 MB with it).

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};

use crate::cmd;

/// An initramfs being assembled in memory, written out by [`Initramfs::write`].
#[derive(Default)]
pub(crate) struct Initramfs {
    /// Directories already emitted (the kernel needs each parent before its children).
    dirs: BTreeSet<String>,
    /// Files already emitted (libraries shared by several executables go in once).
    files: BTreeSet<String>,
    /// The cpio stream so far (without its trailer).
    bytes: Vec<u8>,
    /// Inode numbers handed out.
    next_ino: u32,
}

/// File type bits of `st_mode`, as cpio stores them.
const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;

impl Initramfs {
    /// A directory (and its parents), mode 0755.
    pub(crate) fn dir(&mut self, path: &str) {
        let path = path.trim_matches('/');
        if path.is_empty() || self.dirs.contains(path) {
            return;
        }
        if let Some((parent, _)) = path.rsplit_once('/') {
            self.dir(parent);
        }
        self.dirs.insert(path.to_owned());
        self.entry(path, S_IFDIR | 0o755, &[]);
    }

    /// A regular file with `mode` (permission bits) and `data`, parents created.
    pub(crate) fn file(&mut self, path: &str, mode: u32, data: &[u8]) {
        let path = path.trim_matches('/');
        if let Some((parent, _)) = path.rsplit_once('/') {
            self.dir(parent);
        }
        self.files.insert(path.to_owned());
        self.entry(path, S_IFREG | mode, data);
    }

    /// The host executable `host` at `guest` (stripped of debug info), with the dynamic loader and
    /// every library `ldd` names, each at its host path.
    pub(crate) fn executable(&mut self, host: &Path, guest: &str) -> Result<()> {
        let data = stripped(host)?;
        self.file(guest, 0o755, &data);
        for lib in shared_libraries(host)? {
            let at = lib.to_string_lossy().into_owned();
            if self.files.contains(at.trim_matches('/')) {
                continue;
            }
            // The file itself at the path the ELF or ldd names is all the loader needs (on Debian
            // /lib64/ld-linux-x86-64.so.2 is a link on the host; here it is the file).
            let bytes =
                std::fs::read(&lib).with_context(|| format!("reading {}", lib.display()))?;
            self.file(&at, 0o755, &bytes);
        }
        Ok(())
    }

    /// Size of the archive so far, in bytes.
    pub(crate) fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Writes the archive (with its trailer) to `out`.
    pub(crate) fn write(mut self, out: &Path) -> Result<()> {
        self.entry("TRAILER!!!", 0, &[]);
        std::fs::write(out, &self.bytes).with_context(|| format!("writing {}", out.display()))
    }

    /// One newc record: the 110-byte ASCII header, the NUL-terminated name and the data, each
    /// padded to 4 bytes (see the kernel's Documentation/driver-api/early-userspace/buffer-format.rst).
    fn entry(&mut self, name: &str, mode: u32, data: &[u8]) {
        self.next_ino += 1;
        let nlink = if mode & S_IFDIR != 0 { 2 } else { 1 };
        let fields = [
            self.next_ino,
            mode,
            0, // uid
            0, // gid
            nlink,
            0, // mtime
            u32::try_from(data.len()).expect("initramfs members are under 4 GiB"),
            0, // dev major
            0, // dev minor
            0, // rdev major
            0, // rdev minor
            u32::try_from(name.len() + 1).expect("short names"),
            0, // check
        ];
        self.bytes.extend_from_slice(b"070701");
        for field in fields {
            self.bytes
                .extend_from_slice(format!("{field:08X}").as_bytes());
        }
        self.bytes.extend_from_slice(name.as_bytes());
        self.bytes.push(0);
        self.pad();
        self.bytes.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.bytes.len().is_multiple_of(4) {
            self.bytes.push(0);
        }
    }
}

/// `host` without its debug sections (objcopy), or as is when it has none to strip.
fn stripped(host: &Path) -> Result<Vec<u8>> {
    let out = std::env::temp_dir().join(format!(
        "certreload-vm-strip-{}-{}",
        std::process::id(),
        host.file_name().unwrap_or_default().to_string_lossy()
    ));
    cmd::run(
        Command::new("objcopy")
            .arg("--strip-debug")
            .arg(host)
            .arg(&out),
    )
    .with_context(|| format!("stripping {} (binutils' objcopy)", host.display()))?;
    let data = std::fs::read(&out).with_context(|| format!("reading {}", out.display()));
    // A scratch copy; failing to remove it leaves a file in the temp dir, nothing else.
    std::fs::remove_file(&out).ok();
    data
}

/// Absolute paths of the loader and libraries `host` needs, from `ldd` (none for a static one).
fn shared_libraries(host: &Path) -> Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(host)
        .output()
        .with_context(|| format!("running ldd {}", host.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        if text.contains("not a dynamic executable")
            || String::from_utf8_lossy(&out.stderr).contains("not a dynamic executable")
        {
            return Ok(Vec::new());
        }
        bail!("ldd {} failed ({})", host.display(), out.status);
    }
    Ok(text
        .lines()
        .filter_map(|line| {
            // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)" or "/lib64/ld-linux-x86-64.so.2 (0x…)"
            let path = line.split("=>").last()?.split_whitespace().next()?;
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_newc_with_parents_first_and_a_trailer() {
        let mut archive = Initramfs::default();
        archive.file("bin/tool", 0o755, b"abc");
        archive.file("bin/sh", 0o755, b"");
        let dir = tempfile_dir();
        let out = dir.join("initramfs.cpio");
        archive.write(&out).expect("write");
        let bytes = std::fs::read(&out).expect("read");
        std::fs::remove_dir_all(&dir).ok();
        let text = String::from_utf8_lossy(&bytes);
        let bin = text.find("bin\0").expect("parent dir");
        let tool = text.find("bin/tool\0").expect("file");
        assert!(bin < tool, "the parent directory comes first");
        assert!(text.contains("bin/sh\0"));
        assert!(text.contains("TRAILER!!!\0"));
        assert!(bytes.len().is_multiple_of(4));
        assert!(bytes.starts_with(b"070701"));
        // The file's size field (7th after the magic) says 3 bytes.
        let header = &bytes[tool - 110..tool];
        assert_eq!(&header[6 + 6 * 8..6 + 7 * 8], b"00000003");
    }

    fn tempfile_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("certreload-initramfs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        dir
    }
}
