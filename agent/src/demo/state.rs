//! The demo's state directory: the demo CA (its key kept so `certreload demo rotate` can issue the
//! next certificate), the server certificate in a Secret-style volume, the config and the audit log.

use std::{
    net::SocketAddr,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

use super::{
    dir::{euid, kind_name, StateDir},
    DemoError,
};

/// Where the demo listener accepts TLS by default.
pub(crate) const DEFAULT_LISTEN: &str = "127.0.0.1:8443";

/// The Secret-style volume's directory in the state directory.
const VOLUME: &str = "tls";
const CA_CERT: &str = "ca.crt";
const CA_KEY: &str = "ca.key";
const CONFIG: &str = "certreload.toml";
const AUDIT: &str = "audit.jsonl";
/// The files of one certificate version in the volume.
const VOLUME_FILES: [&str; 2] = ["tls.crt", "tls.key"];

/// One demo state directory, checked and held open (see [`StateDir`]).
#[derive(Debug)]
pub(crate) struct DemoState {
    dir: StateDir,
}

/// A version directory of the volume is `..` followed by the nanosecond timestamp that named it.
fn is_version_name(name: &str) -> bool {
    name.strip_prefix("..")
        .is_some_and(|rest| !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_digit()))
}

impl DemoState {
    /// The directory `certreload demo` and `certreload demo rotate` share by default: one per
    /// user, so no other user's directory is ever picked up. `$XDG_RUNTIME_DIR/certreload-demo`
    /// when that is set and is this user's own private directory (a per-user tmpfs nobody else
    /// can enter; not taken when `sudo -E` carries another user's into a root shell), else
    /// `certreload-demo-<euid>` in the temp dir (`/tmp` is sticky: nobody else can replace our
    /// entry, and another user's stale directory under the old shared name is never reused).
    pub(crate) fn default_dir() -> PathBuf {
        let euid = euid();
        if let Some(runtime) = std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from) {
            let private = runtime.is_absolute()
                && std::fs::symlink_metadata(&runtime)
                    .is_ok_and(|m| m.is_dir() && m.uid() == euid && m.mode() & 0o077 == 0);
            if private {
                return runtime.join("certreload-demo");
            }
        }
        std::env::temp_dir().join(format!("certreload-demo-{euid}"))
    }

    /// The state directory (canonical path).
    pub(crate) fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Demo CA certificate.
    pub(crate) fn ca_cert(&self) -> PathBuf {
        self.dir.join(CA_CERT)
    }

    /// The Secret-style volume holding `tls.crt` and `tls.key`.
    pub(crate) fn volume(&self) -> PathBuf {
        self.dir.join(VOLUME)
    }

    /// The served certificate (through the volume's symlinks).
    pub(crate) fn cert(&self) -> PathBuf {
        self.volume().join("tls.crt")
    }

    /// Its key.
    pub(crate) fn key(&self) -> PathBuf {
        self.volume().join("tls.key")
    }

    /// The generated agent configuration (written for the user to read; the agent is handed the
    /// text itself, see [`super::run`]).
    pub(crate) fn config(&self) -> PathBuf {
        self.dir.join(CONFIG)
    }

    /// The audit log.
    pub(crate) fn audit(&self) -> PathBuf {
        self.dir.join(AUDIT)
    }

    /// Creates (0700) or opens `dir` after the ownership checks, refuses it if anything in it
    /// is not what the demo writes, and creates the CA and the first certificate when missing
    /// (an existing demo keeps its CA, so clients that trust it keep working across runs).
    pub(crate) fn init(dir: &Path) -> Result<DemoState, DemoError> {
        let state = DemoState {
            dir: StateDir::create(dir)?,
        };
        state.check_contents()?;
        let have_key = state.dir.expect_own(CA_KEY, false)?.is_some();
        let have_cert = state.dir.expect_own(CA_CERT, false)?.is_some();
        if !have_key || !have_cert {
            let key = KeyPair::generate()?;
            let params = ca_params()?;
            let cert = params.self_signed(&key)?;
            state
                .dir
                .write(CA_KEY, key.serialize_pem().as_bytes(), 0o600)?;
            state.dir.write(CA_CERT, cert.pem().as_bytes(), 0o644)?;
        }
        if state.checked_volume()?.is_none() {
            // A volume without `..data` is a first run or one interrupted in the middle: start it
            // again. remove_dir_all never follows a symlink, at the top or inside.
            if state.dir.entry(VOLUME)?.is_some() {
                std::fs::remove_dir_all(state.volume()).map_err(|source| DemoError::Write {
                    path: state.volume(),
                    source,
                })?;
            }
            state.dir.mkdir(VOLUME, 0o755)?;
            let volume = state.dir.subdir(VOLUME)?;
            state.swap_in_next(&volume)?;
            for name in VOLUME_FILES {
                volume.symlink(&format!("..data/{name}"), name)?;
            }
        }
        Ok(state)
    }

    /// Opens an existing demo state directory (`certreload demo rotate`), with the same checks.
    pub(crate) fn open(dir: &Path) -> Result<DemoState, DemoError> {
        let state = DemoState {
            dir: StateDir::open(dir)?,
        };
        state.check_contents()?;
        Ok(state)
    }

    /// Issues the next server certificate from the demo CA and swaps it in like the kubelet's
    /// AtomicWriter: a new timestamped directory, `..data_tmp` pointing at it, one rename(2)
    /// over `..data`, then the old directory removed. Returns the new leaf's serial (hex).
    pub(crate) fn rotate(&self) -> Result<String, DemoError> {
        let Some(volume) = self.checked_volume()? else {
            return Err(DemoError::Read {
                path: self.volume().join("..data"),
                source: std::io::Error::from(std::io::ErrorKind::NotFound),
            });
        };
        self.swap_in_next(&volume)
    }

    /// Everything at the top of the state directory must be a regular file or a directory this
    /// user owns, with one link: never a symlink, FIFO, socket or device, which only root or this
    /// user could have put in a directory that passed [`StateDir`]'s checks, and which the agent
    /// (it opens the audit log and the volume by path) could be steered through.
    fn check_contents(&self) -> Result<(), DemoError> {
        let euid = euid();
        for name in self.dir.names()? {
            let Some(meta) = self.dir.entry(&name)? else {
                continue;
            };
            let t = meta.file_type();
            if !(t.is_file() || t.is_dir()) {
                return Err(self.dir.foreign(
                    &name,
                    format!(
                        "it is {}, which certreload demo never creates",
                        kind_name(&meta)
                    ),
                ));
            }
            if meta.uid() != euid {
                return Err(self.dir.foreign(
                    &name,
                    format!(
                        "it is owned by uid {}, not by this user (uid {euid})",
                        meta.uid()
                    ),
                ));
            }
            if t.is_file() && meta.nlink() != 1 {
                return Err(self.dir.foreign(
                    &name,
                    format!(
                        "it has {} hard links (another name for another file)",
                        meta.nlink()
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The volume, when it is complete and exactly what [`DemoState::swap_in_next`] builds:
    /// `tls.crt`/`tls.key` links to `..data/…`, `..data` a link to one `..<timestamp>` directory
    /// of this user holding the two files. `None` when there is no volume or no `..data` yet.
    fn checked_volume(&self) -> Result<Option<StateDir>, DemoError> {
        if self.dir.entry(VOLUME)?.is_none() {
            return Ok(None);
        }
        let volume = self.dir.subdir(VOLUME)?;
        let Some(target) = volume.read_link("..data")? else {
            return Ok(None);
        };
        if !is_version_name(&target) {
            return Err(volume.foreign(
                "..data",
                format!("it points to {target:?}, not to a version directory of the volume"),
            ));
        }
        for name in volume.names()? {
            match name.as_str() {
                "..data" => {}
                "..data_tmp" => {
                    // Left by an interrupted rotation; replaced by the next one.
                    if !volume
                        .entry(&name)?
                        .is_some_and(|m| m.file_type().is_symlink())
                    {
                        return Err(volume.foreign(&name, "it is not a symbolic link".into()));
                    }
                }
                "tls.crt" | "tls.key" => {
                    let want = format!("..data/{name}");
                    let got = volume.read_link(&name)?;
                    if got.as_deref() != Some(want.as_str()) {
                        return Err(
                            volume.foreign(&name, format!("it points to {got:?}, not to {want:?}"))
                        );
                    }
                }
                n if is_version_name(n) => {
                    let version = volume.subdir(n)?;
                    for file in VOLUME_FILES {
                        version.expect_own(file, false)?;
                    }
                }
                _ => {
                    return Err(volume.foreign(
                        &name,
                        "certreload demo never creates it in the volume".into(),
                    ))
                }
            }
        }
        Ok(Some(volume))
    }

    fn issuer(&self) -> Result<Issuer<'static, KeyPair>, DemoError> {
        let read = |name: &str| -> Result<String, DemoError> {
            String::from_utf8(self.dir.read(name)?)
                .map_err(|_| self.dir.foreign(name, "it is not PEM text".into()))
        };
        let key = KeyPair::from_pem(&read(CA_KEY)?)?;
        Ok(Issuer::from_ca_cert_pem(&read(CA_CERT)?, key)?)
    }

    fn swap_in_next(&self, volume: &StateDir) -> Result<String, DemoError> {
        let issuer = self.issuer()?;
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])?;
        params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::hours(1);
        params.not_after = now + time::Duration::days(90);
        let cert = params.signed_by(&key, &issuer)?;
        let serial = crate::material::inspect::inspect(cert.der())
            .map(|i| i.serial)
            .unwrap_or_default();

        let stamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        let name = format!("..{stamp}");
        volume.mkdir(&name, 0o755)?;
        let version = volume.subdir(&name)?;
        version.write("tls.crt", cert.pem().as_bytes(), 0o644)?;
        version.write("tls.key", key.serialize_pem().as_bytes(), 0o600)?;
        let old = volume.read_link("..data")?;
        volume
            .unlink("..data_tmp", false)
            .map_err(|source| DemoError::Write {
                path: volume.join("..data_tmp"),
                source,
            })?;
        volume.symlink(&name, "..data_tmp")?;
        volume.rename("..data_tmp", "..data")?;
        if let Some(old) = old.filter(|o| is_version_name(o) && *o != name) {
            // Best effort, as the kubelet: a leftover version directory is harmless.
            if let Ok(dir) = volume.subdir(&old) {
                for file in VOLUME_FILES {
                    dir.unlink(file, false).ok();
                }
            }
            volume.unlink(&old, true).ok();
        }
        Ok(serial)
    }

    /// The agent configuration for this demo, written to `certreload.toml` (atomically, for the
    /// user to read) and returned as text: the agent is handed this text, never the file, so
    /// nothing put at that name can become the configuration root runs with.
    pub(crate) fn write_config(
        &self,
        listen: SocketAddr,
        admin: SocketAddr,
        upstream: SocketAddr,
    ) -> Result<(PathBuf, String), DemoError> {
        // TOML strings, quoted and escaped: a directory name may hold `"` or `\`.
        let quote = |p: PathBuf| toml::Value::String(p.display().to_string()).to_string();
        let (audit, cert, key, ca) = (
            quote(self.audit()),
            quote(self.cert()),
            quote(self.key()),
            quote(self.ca_cert()),
        );
        let text = format!(
            r#"# Written by `certreload demo`; regenerated on every start.
[agent]
admin = "{admin}"

[audit]
path = {audit}

[[bundle]]
name = "demo"
kind = "server"
cert = {cert}
key = {key}
ca = {ca}
expect_sans = ["localhost"]

[[listener]]
name = "demo"
listen = "{listen}"
bundle = "demo"
upstream = "tcp://{upstream}"
stale_grace = "1m"

# The demo probes its own listener: after each rotation, endpoint_converged in the audit log.
[[probe]]
name = "demo-listener"
endpoint = "{listen}"
server_name = "localhost"
bundle = "demo"
deadline = "10s"
interval = "30s"
"#
        );
        self.dir.write(CONFIG, text.as_bytes(), 0o644)?;
        Ok((self.config(), text))
    }

    /// Commands to try from another shell, each naming this binary by its path.
    pub(crate) fn cheat_sheet(&self, listen: SocketAddr, admin: SocketAddr) -> String {
        super::cheat_sheet::CheatSheet {
            dir: self.dir(),
            default_dir: self.dir() == DemoState::default_dir(),
            listen,
            admin,
            program: &super::cheat_sheet::program(),
        }
        .render()
    }
}

fn ca_params() -> Result<CertificateParams, DemoError> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params
        .distinguished_name
        .push(DnType::CommonName, "certreload demo CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    Ok(params)
}

#[cfg(test)]
mod tests {
    use std::{
        fs,
        os::unix::fs::{symlink, PermissionsExt},
    };

    use super::*;

    #[test]
    fn init_then_rotate_swaps_the_volume_and_keeps_the_ca() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = DemoState::init(dir.path()).expect("init");
        let ca = fs::read(state.ca_cert()).expect("ca");
        let first = fs::read(state.cert()).expect("cert");
        let target = fs::read_link(state.volume().join("..data")).expect("..data");
        let serial = DemoState::open(dir.path())
            .expect("open")
            .rotate()
            .expect("rotate");
        assert!(!serial.is_empty());
        assert_ne!(
            fs::read(state.cert()).expect("cert"),
            first,
            "new certificate"
        );
        assert_ne!(
            fs::read_link(state.volume().join("..data")).expect("..data"),
            target
        );
        assert!(!state.volume().join(target).exists(), "old version removed");
        let again = DemoState::init(dir.path()).expect("re-init");
        assert_eq!(fs::read(again.ca_cert()).expect("ca"), ca, "CA kept");
        let mode = fs::metadata(state.key()).expect("key").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn the_config_handed_to_the_agent_parses_and_quotes_the_directory() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let d = tmp.path().join("quote\"dir");
        let state = DemoState::init(&d).expect("init");
        let addr: SocketAddr = "127.0.0.1:1".parse().expect("addr");
        let (path, text) = state.write_config(addr, addr, addr).expect("config");
        assert_eq!(fs::read_to_string(&path).expect("file"), text);
        let config = crate::config::Config::parse(&path, &text).expect("parses");
        assert_eq!(config.audit.path, state.audit());
    }

    #[test]
    fn a_volume_link_pointing_elsewhere_is_refused() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let elsewhere = tempfile::tempdir().expect("tempdir");
        let state = DemoState::init(tmp.path()).expect("init");
        let data = state.volume().join("..data");
        fs::remove_file(&data).expect("rm");
        symlink(elsewhere.path(), &data).expect("symlink");
        let e = DemoState::init(tmp.path()).expect_err("planted ..data");
        assert!(matches!(e, DemoError::Foreign { .. }), "{e}");
        assert!(e.to_string().contains("..data"), "{e}");
        let e = DemoState::open(tmp.path())
            .and_then(|s| s.rotate())
            .expect_err("rotate");
        assert!(matches!(e, DemoError::Foreign { .. }), "{e}");
    }

    #[test]
    fn the_default_directory_is_per_user() {
        let dir = DemoState::default_dir();
        let name = dir
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        assert!(
            name == "certreload-demo" || name == format!("certreload-demo-{}", euid()),
            "{}",
            dir.display()
        );
    }
}
