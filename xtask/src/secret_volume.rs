//! A directory laid out the way the kubelet projects a Secret (`..ts/` dirs, `..data` symlink,
//! per-key symlinks), rotated the way the kubelet's AtomicWriter does it: benchmarks rotate
//! certificates exactly as production does.

use std::{
    fs,
    os::unix::fs::symlink,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};

/// A projected Secret volume holding `tls.crt` and `tls.key`.
pub(crate) struct SecretVolume {
    dir: PathBuf,
    version: usize,
}

impl SecretVolume {
    /// Creates the volume in `dir` (created) with its first version.
    pub(crate) fn create(dir: &Path, cert: &str, key: &str) -> Result<SecretVolume> {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut vol = SecretVolume {
            dir: dir.to_path_buf(),
            version: 0,
        };
        vol.stage(cert, key)?;
        fs::rename(vol.dir.join("..data_tmp"), vol.dir.join("..data"))?;
        symlink("..data/tls.crt", vol.cert())?;
        symlink("..data/tls.key", vol.key())?;
        Ok(vol)
    }

    /// The certificate path components read.
    pub(crate) fn cert(&self) -> PathBuf {
        self.dir.join("tls.crt")
    }

    /// The key path components read.
    pub(crate) fn key(&self) -> PathBuf {
        self.dir.join("tls.key")
    }

    /// Writes the next version beside the live one and points `..data_tmp` at it.
    fn stage(&mut self, cert: &str, key: &str) -> Result<()> {
        self.version += 1;
        let name = format!("..ts{}", self.version);
        let ts = self.dir.join(&name);
        fs::create_dir(&ts)?;
        fs::write(ts.join("tls.crt"), cert)?;
        fs::write(ts.join("tls.key"), key)?;
        symlink(&name, self.dir.join("..data_tmp"))?;
        Ok(())
    }

    /// Stages a new version, swaps `..data` with one rename(2) and removes the version before.
    pub(crate) fn rotate(&mut self, cert: &str, key: &str) -> Result<()> {
        self.stage(cert, key)?;
        fs::rename(self.dir.join("..data_tmp"), self.dir.join("..data"))?;
        // Best effort, as the kubelet's: a version left behind is never read again.
        fs::remove_dir_all(self.dir.join(format!("..ts{}", self.version - 1))).ok();
        Ok(())
    }
}
