//! Debian's own kernels (and a static busybox) for the VM cases, fetched with apt-get from a private
//! apt directory under the cache: its own sources list (bookworm, its updates and security suites,
//! bookworm-backports), package lists and archive cache, so the host's apt sources and state are
//! never touched. Only `vmlinuz`, its `config` and busybox are kept; the .debs are deleted.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, SystemTime},
};

use anyhow::{bail, ensure, Context, Result};

use crate::{cmd, setup};

/// The suites the private apt directory knows: bookworm (with its point-release updates and
/// security fixes) and bookworm-backports, where Debian publishes newer kernels for bookworm.
const SOURCES: &str = "\
deb http://deb.debian.org/debian bookworm main
deb http://deb.debian.org/debian bookworm-updates main
deb http://deb.debian.org/debian-security bookworm-security main
deb http://deb.debian.org/debian bookworm-backports main
";

/// Package lists older than this are fetched again (a new kernel is a new package name).
const LISTS_MAX_AGE: Duration = Duration::from_secs(24 * 3600);

/// Which of Debian's kernels to boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Suite {
    /// bookworm's `linux-image-amd64` (the newest of bookworm, its updates and security suites).
    Bookworm,
    /// The newest `linux-image-amd64` of bookworm-backports.
    Backports,
}

impl Suite {
    /// Every suite, in the order the VM cases run.
    pub(crate) const ALL: [Suite; 2] = [Suite::Bookworm, Suite::Backports];

    /// The name printed in tables and file names.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Suite::Bookworm => "bookworm",
            Suite::Backports => "bookworm-backports",
        }
    }
}

/// A Debian kernel ready to boot.
#[derive(Debug, Clone)]
pub(crate) struct GuestKernel {
    /// Which suite it came from.
    pub suite: Suite,
    /// The image package, e.g. `linux-image-6.12.95+deb12-amd64`.
    pub package: String,
    /// Its Debian version, e.g. `6.12.95-1~bpo12+1`.
    pub version: String,
    /// The bzImage.
    pub vmlinuz: PathBuf,
}

/// The private apt directory (sources, lists, archives) under the cache.
struct PrivateApt {
    root: PathBuf,
}

impl PrivateApt {
    fn open() -> Result<Self> {
        let root = setup::cache_dir().join("vm/apt");
        for sub in ["lists/partial", "archives/partial", "sources.list.d"] {
            std::fs::create_dir_all(root.join(sub))
                .with_context(|| format!("creating {}", root.join(sub).display()))?;
        }
        std::fs::write(root.join("sources.list"), SOURCES)?;
        let apt = PrivateApt { root };
        if apt.lists_stale() {
            cmd::run(apt.command("apt-get").arg("update").arg("-qq"))
                .context("apt-get update in the VM's private apt directory")?;
        }
        Ok(apt)
    }

    /// `program` (apt-get or apt-cache) reading only this directory's sources and state.
    fn command(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        let opt = |k: &str, v: &Path| format!("{k}={}", v.display());
        for (key, value) in [
            ("Dir::Etc::SourceList", self.root.join("sources.list")),
            ("Dir::Etc::SourceParts", self.root.join("sources.list.d")),
            ("Dir::State::Lists", self.root.join("lists")),
            ("Dir::Cache", self.root.clone()),
            ("Dir::Cache::Archives", self.root.join("archives")),
            ("Dir::State::status", PathBuf::from("/dev/null")),
        ] {
            c.arg("-o").arg(opt(key, &value));
        }
        // Downloads land in a directory of ours, written as the invoking user.
        c.args(["-o", "Debug::NoLocking=1", "-o", "APT::Sandbox::User=root"]);
        c
    }

    fn lists_stale(&self) -> bool {
        let newest = std::fs::read_dir(self.root.join("lists"))
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().contains("_Packages"))
            .filter_map(|e| e.metadata().ok()?.modified().ok())
            .max();
        newest.is_none_or(|t| {
            SystemTime::now()
                .duration_since(t)
                .unwrap_or(Duration::ZERO)
                > LISTS_MAX_AGE
        })
    }

    /// The version of `package` to take from `suite`: the backports line, or the newest other.
    fn version(&self, package: &str, suite: Suite) -> Result<String> {
        let madison = cmd::output(self.command("apt-cache").args(["madison", package]))?;
        // "linux-image-amd64 | 6.1.192-3 | http://deb.debian.org/debian-security bookworm-security/main amd64 Packages"
        let mut candidates: Vec<String> = madison
            .lines()
            .filter_map(|line| {
                let mut cols = line.split('|').map(str::trim);
                let (_, version, source) = (cols.next()?, cols.next()?, cols.next()?);
                let backports = source.contains("bookworm-backports");
                (backports == (suite == Suite::Backports)).then(|| version.to_owned())
            })
            .collect();
        candidates.sort_by(|a, b| debian_version_cmp(a, b));
        candidates
            .pop()
            .with_context(|| format!("no {package} in {} (apt-cache madison)", suite.label()))
    }

    /// The image package `linux-image-amd64=version` depends on.
    fn image_package(&self, version: &str) -> Result<String> {
        let show = cmd::output(
            self.command("apt-cache")
                .args(["show", &format!("linux-image-amd64={version}")]),
        )?;
        show.lines()
            .find_map(|l| l.strip_prefix("Depends: "))
            .and_then(|deps| {
                deps.split(',')
                    .map(|d| d.split_whitespace().next().unwrap_or_default())
                    .find(|d| d.starts_with("linux-image-"))
            })
            .map(str::to_owned)
            .with_context(|| format!("linux-image-amd64 {version} names no linux-image-* package"))
    }

    /// Downloads `package=version` into a scratch folder and returns the .deb.
    fn download(&self, package: &str, version: &str, into: &Path) -> Result<PathBuf> {
        std::fs::create_dir_all(into)?;
        cmd::run(
            self.command("apt-get")
                .args(["download", "-qq", &format!("{package}={version}")])
                .current_dir(into),
        )
        .with_context(|| format!("apt-get download {package}={version}"))?;
        let deb = std::fs::read_dir(into)?
            .flatten()
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|e| e == "deb"))
            .with_context(|| format!("apt-get download left no .deb in {}", into.display()))?;
        Ok(deb)
    }
}

/// Debian's kernel of `suite`, downloaded once and kept as `vmlinuz` under the cache.
pub(crate) fn kernel(suite: Suite) -> Result<GuestKernel> {
    let apt = PrivateApt::open()?;
    let version = apt.version("linux-image-amd64", suite)?;
    let package = apt.image_package(&version)?;
    let dir = setup::cache_dir().join(format!("vm/kernels/{package}_{version}"));
    let vmlinuz = dir.join("vmlinuz");
    if !vmlinuz.is_file() {
        let scratch = dir.join("download");
        let deb = apt.download(&package, &version, &scratch)?;
        extract(&deb, &["./boot/vmlinuz-*", "./boot/config-*"], &scratch)?;
        let boot = scratch.join("boot");
        for entry in std::fs::read_dir(&boot)?.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let target = if name.starts_with("vmlinuz-") {
                "vmlinuz"
            } else {
                "config"
            };
            std::fs::rename(entry.path(), dir.join(target))?;
        }
        std::fs::remove_dir_all(&scratch).ok();
        ensure!(
            vmlinuz.is_file(),
            "{package} {version} holds no boot/vmlinuz-*"
        );
    }
    eprintln!(
        "xtask: vm: {} kernel {package} {version} ({})",
        suite.label(),
        vmlinuz.display()
    );
    Ok(GuestKernel {
        suite,
        package,
        version,
        vmlinuz,
    })
}

/// bookworm's busybox-static (one static binary: the guest's shell and every tool the cases call).
pub(crate) fn busybox() -> Result<PathBuf> {
    let dir = setup::cache_dir().join("vm/busybox");
    let binary = dir.join("busybox");
    if binary.is_file() {
        return Ok(binary);
    }
    let apt = PrivateApt::open()?;
    let version = apt.version("busybox-static", Suite::Bookworm)?;
    let scratch = dir.join("download");
    let deb = apt.download("busybox-static", &version, &scratch)?;
    extract(&deb, &["./bin/busybox"], &scratch)?;
    std::fs::rename(scratch.join("bin/busybox"), &binary)?;
    std::fs::remove_dir_all(&scratch).ok();
    Ok(binary)
}

/// `dpkg-deb --fsys-tarfile DEB | tar -x PATTERNS` into `into`.
fn extract(deb: &Path, patterns: &[&str], into: &Path) -> Result<()> {
    let mut dpkg = Command::new("dpkg-deb")
        .arg("--fsys-tarfile")
        .arg(deb)
        .stdout(Stdio::piped())
        .spawn()
        .context("running dpkg-deb")?;
    let status = Command::new("tar")
        .args(["-x", "--wildcards", "-C"])
        .arg(into)
        .args(patterns)
        .stdin(dpkg.stdout.take().context("dpkg-deb stdout")?)
        .status()
        .context("running tar")?;
    let dpkg_status = dpkg.wait()?;
    if !status.success() || !dpkg_status.success() {
        bail!(
            "extracting {patterns:?} from {} failed (dpkg-deb {dpkg_status}, tar {status})",
            deb.display()
        );
    }
    Ok(())
}

/// Orders Debian versions with `dpkg --compare-versions` (epochs, `~`, revisions).
fn debian_version_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    let lt = Command::new("dpkg")
        .args(["--compare-versions", a, "lt", b])
        .status()
        .is_ok_and(|s| s.success());
    if a == b {
        std::cmp::Ordering::Equal
    } else if lt {
        std::cmp::Ordering::Less
    } else {
        std::cmp::Ordering::Greater
    }
}
