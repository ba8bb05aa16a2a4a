//! The demo's state directory: the demo CA (its key kept so `certreload demo rotate` can issue the
//! next certificate), the server certificate in a Secret-style volume, the config and the audit log.

use std::{
    fs,
    net::SocketAddr,
    os::unix::fs::{symlink, DirBuilderExt},
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

use super::{write, DemoError};

/// Where the demo listener accepts TLS by default.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8443";

/// One demo state directory.
#[derive(Debug, Clone)]
pub struct DemoState {
    /// The directory.
    pub dir: PathBuf,
}

fn io_write(path: &Path) -> impl FnOnce(std::io::Error) -> DemoError + '_ {
    move |source| DemoError::Write {
        path: path.to_path_buf(),
        source,
    }
}

impl DemoState {
    /// The directory `certreload demo` and `certreload demo rotate` share by default.
    pub fn default_dir() -> PathBuf {
        std::env::temp_dir().join("certreload-demo")
    }

    /// Demo CA certificate.
    pub fn ca_cert(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    fn ca_key(&self) -> PathBuf {
        self.dir.join("ca.key")
    }

    /// The Secret-style volume holding `tls.crt` and `tls.key`.
    pub fn volume(&self) -> PathBuf {
        self.dir.join("tls")
    }

    /// The served certificate (through the volume's symlinks).
    pub fn cert(&self) -> PathBuf {
        self.volume().join("tls.crt")
    }

    /// Its key.
    pub fn key(&self) -> PathBuf {
        self.volume().join("tls.key")
    }

    /// The generated agent configuration.
    pub fn config(&self) -> PathBuf {
        self.dir.join("certreload.toml")
    }

    /// The audit log.
    pub fn audit(&self) -> PathBuf {
        self.dir.join("audit.jsonl")
    }

    /// Opens `dir`, creating the CA and the first certificate when missing (an existing demo
    /// keeps its CA, so clients that trust it keep working across runs).
    pub fn init(dir: &Path) -> Result<DemoState, DemoError> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io_write(dir))?;
        let state = DemoState {
            dir: dir.to_path_buf(),
        };
        if !state.ca_key().exists() || !state.ca_cert().exists() {
            let key = KeyPair::generate()?;
            let params = ca_params()?;
            let cert = params.self_signed(&key)?;
            write(&state.ca_key(), key.serialize_pem().as_bytes(), 0o600)?;
            write(&state.ca_cert(), cert.pem().as_bytes(), 0o644)?;
        }
        if !state.volume().join("..data").exists() {
            let volume = state.volume();
            let _ = fs::remove_dir_all(&volume);
            fs::create_dir_all(&volume).map_err(io_write(&volume))?;
            state.swap_in_next()?;
            for name in ["tls.crt", "tls.key"] {
                let link = volume.join(name);
                symlink(format!("..data/{name}"), &link).map_err(io_write(&link))?;
            }
        }
        Ok(state)
    }

    /// Issues the next server certificate from the demo CA and swaps it in like the kubelet's
    /// AtomicWriter: a new timestamped directory, `..data_tmp` pointing at it, one rename(2)
    /// over `..data`, then the old directory removed. Returns the new leaf's serial (hex).
    pub fn rotate(&self) -> Result<String, DemoError> {
        if !self.volume().join("..data").exists() {
            return Err(DemoError::Read {
                path: self.volume().join("..data"),
                source: std::io::Error::from(std::io::ErrorKind::NotFound),
            });
        }
        self.swap_in_next()
    }

    fn issuer(&self) -> Result<Issuer<'static, KeyPair>, DemoError> {
        let read = |p: PathBuf| {
            fs::read_to_string(&p).map_err(|source| DemoError::Read { path: p, source })
        };
        let key = KeyPair::from_pem(&read(self.ca_key())?)?;
        Ok(Issuer::from_ca_cert_pem(&read(self.ca_cert())?, key)?)
    }

    fn swap_in_next(&self) -> Result<String, DemoError> {
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

        let volume = self.volume();
        let stamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        let name = format!("..{stamp}");
        let ts = volume.join(&name);
        fs::DirBuilder::new()
            .mode(0o755)
            .create(&ts)
            .map_err(io_write(&ts))?;
        write(&ts.join("tls.crt"), cert.pem().as_bytes(), 0o644)?;
        write(&ts.join("tls.key"), key.serialize_pem().as_bytes(), 0o600)?;
        let old = fs::read_link(volume.join("..data")).ok();
        let tmp = volume.join("..data_tmp");
        let _ = fs::remove_file(&tmp);
        symlink(&name, &tmp).map_err(io_write(&tmp))?;
        fs::rename(&tmp, volume.join("..data")).map_err(io_write(&volume.join("..data")))?;
        if let Some(old) = old {
            let _ = fs::remove_dir_all(volume.join(old));
        }
        Ok(serial)
    }

    /// Writes the agent configuration for this demo and returns its path.
    pub fn write_config(
        &self,
        listen: SocketAddr,
        admin: SocketAddr,
        upstream: SocketAddr,
    ) -> Result<PathBuf, DemoError> {
        let d = self.dir.display();
        let text = format!(
            r#"# Written by `certreload demo`; regenerated on every start.
[agent]
admin = "{admin}"

[audit]
path = "{d}/audit.jsonl"

[[bundle]]
name = "demo"
kind = "server"
cert = "{d}/tls/tls.crt"
key = "{d}/tls/tls.key"
ca = "{d}/ca.crt"
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
        let path = self.config();
        write(&path, text.as_bytes(), 0o644)?;
        Ok(path)
    }

    /// Commands to try from another shell.
    pub fn cheat_sheet(&self, listen: SocketAddr, admin: SocketAddr) -> String {
        let d = self.dir.display();
        let port = listen.port();
        let admin_flag = if admin.to_string() == crate::config::DEFAULT_ADMIN {
            String::new()
        } else {
            format!(" --admin {admin}")
        };
        format!(
            "certreload demo: TLS on https://localhost:{port}/ in front of a built-in upstream; admin on http://{admin}/ ; state in {d}\n\
             In another shell:\n\
             \x20 curl --cacert {d}/ca.crt https://localhost:{port}/          # through the listener\n\
             \x20 certreload status{admin_flag}                                   # bundles, expiry, listeners, stale connections\n\
             \x20 certreload demo rotate{dir_flag}            # new certificate from the demo CA, swapped in like a Secret volume\n\
             \x20 openssl s_client -connect 127.0.0.1:{port} </dev/null 2>/dev/null | openssl x509 -noout -serial   # the served serial\n\
             \x20 echo garbage > {d}/tls/..data/tls.crt      # rejected: the last good certificate stays served\n\
             \x20 tail -n 4 {d}/audit.jsonl                  # change_detected, material_rejected / material_accepted, endpoint_converged\n\
             \x20 certreload audit verify {d}/audit.jsonl    # the tamper-evident chain\n\
             \x20 curl -s http://{admin}/metrics | grep -E '^(x509_cert_not_after|certreload_bundle_generation)'\n\
             Stop with Ctrl-C.\n",
            dir_flag = if self.dir == DemoState::default_dir() {
                String::new()
            } else {
                format!(" --dir {d}")
            },
        )
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
    use super::*;

    #[test]
    fn init_then_rotate_swaps_the_volume_and_keeps_the_ca() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = DemoState::init(dir.path()).expect("init");
        let ca = fs::read(state.ca_cert()).expect("ca");
        let first = fs::read(state.cert()).expect("cert");
        let target = fs::read_link(state.volume().join("..data")).expect("..data");
        let serial = state.rotate().expect("rotate");
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
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(state.key()).expect("key").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
}
