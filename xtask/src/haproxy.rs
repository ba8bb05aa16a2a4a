//! HAProxy (Debian's) as a second `bench tls` peer: TCP mode with TLS termination, configured
//! like the agent and nginx (same certificate, same upstream, no session cache or tickets, one
//! thread per CPU), rotated with its hitless runtime API: `set ssl cert` then `commit ssl cert`
//! on the admin socket swaps the certificate in place, no reload, no new process.
//! <https://docs.haproxy.org/2.6/management.html#9.3-set%20ssl%20cert>

use std::{
    fs,
    io::{Read, Write},
    net::SocketAddr,
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::tls_fronts::{free_port, Front, Rotate};

/// The binary `cargo xtask setup` installs (Debian's haproxy package).
pub(crate) const HAPROXY: &str = "/usr/sbin/haproxy";

/// Connections HAProxy is configured for: it refuses to start unless the file-descriptor limit
/// covers two per connection (client and server side), and machines commonly cap that at 20,000.
const MAXCONN: u32 = 8192;

/// A running HAProxy (one process, one thread per CPU).
pub(crate) struct Haproxy {
    child: Child,
    addr: SocketAddr,
    /// The admin socket of the runtime API.
    socket: PathBuf,
    /// The certificate file as the configuration names it: the runtime API's key for it.
    crt: PathBuf,
}

impl Haproxy {
    /// Starts HAProxy in `dir/haproxy` serving `leaf`, forwarding to `upstream`; returns once
    /// its admin socket answers.
    pub(crate) fn start(
        dir: &Path,
        leaf: &(String, String),
        upstream: SocketAddr,
    ) -> Result<Haproxy> {
        let dir = dir.join("haproxy");
        fs::create_dir_all(&dir)?;
        let crt = dir.join("site.pem");
        fs::write(&crt, bundle(&leaf.0, &leaf.1))?;
        let socket = dir.join("admin.sock");
        let addr = free_port()?;
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let config = dir.join("haproxy.cfg");
        fs::write(
            &config,
            format!(
                r#"global
    nbthread {threads}
    maxconn {maxconn}
    stats socket {socket} mode 600 level admin
    tune.ssl.cachesize 0
    ssl-default-bind-options ssl-min-ver TLSv1.2 no-tls-tickets

defaults
    mode tcp
    timeout connect 5s
    timeout client 1h
    timeout server 1h

frontend bench
    bind {addr} ssl crt {crt}
    default_backend upstream

backend upstream
    server upstream {upstream}
"#,
                socket = socket.display(),
                crt = crt.display(),
                maxconn = MAXCONN,
            ),
        )?;
        let log = fs::File::create(dir.join("haproxy.log"))?;
        // -db: foreground, no master process (the runtime API needs no reload).
        let child = Command::new(HAPROXY)
            .arg("-db")
            .arg("-f")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting haproxy (installed by `cargo xtask setup`)")?;
        let mut haproxy = Haproxy {
            child,
            addr,
            socket,
            crt,
        };
        haproxy.wait_for_socket(&dir.join("haproxy.log"))?;
        Ok(haproxy)
    }

    /// Waits until the admin socket answers `show info`, or fails with HAProxy's own log if it
    /// exits first.
    fn wait_for_socket(&mut self, log: &Path) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                let text = fs::read_to_string(log).unwrap_or_default();
                bail!("haproxy exited ({status}) at start:\n{text}");
            }
            if command(&self.socket, "show info\n").is_ok_and(|r| r.contains("Name: HAProxy")) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        bail!(
            "haproxy's admin socket {} never answered",
            self.socket.display()
        )
    }
}

impl Front for Haproxy {
    fn name(&self) -> &'static str {
        "haproxy"
    }

    fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn pids(&self) -> Vec<u32> {
        vec![self.child.id()]
    }

    fn rotation(&self) -> Box<dyn Rotate> {
        Box::new(RuntimeApiRotation {
            socket: self.socket.clone(),
            crt: self.crt.display().to_string(),
        })
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child; SIGTERM is HAProxy's immediate stop (the bench's
        // connections are closed by now).
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        // Reaps it; its exit status is not part of the measurement.
        self.child.wait().ok();
    }
}

/// HAProxy's hitless certificate update: a transaction with the new PEM, then its commit.
struct RuntimeApiRotation {
    socket: PathBuf,
    crt: String,
}

impl Rotate for RuntimeApiRotation {
    fn rotate(&mut self, cert_pem: &str, key_pem: &str) -> Result<()> {
        let pem = bundle(cert_pem, key_pem);
        // The payload follows `<<` and ends at the first empty line (PEM has none).
        let set = command(
            &self.socket,
            &format!("set ssl cert {} <<\n{}\n\n", self.crt, pem.trim_end()),
        )?;
        if !set.contains("Transaction created") && !set.contains("Transaction updated") {
            bail!("haproxy set ssl cert {}: {}", self.crt, set.trim());
        }
        let commit = command(&self.socket, &format!("commit ssl cert {}\n", self.crt))?;
        if !commit.contains("Success") {
            bail!("haproxy commit ssl cert {}: {}", self.crt, commit.trim());
        }
        Ok(())
    }
}

/// One command on the admin socket (non-interactive: HAProxy answers and closes); the answer.
fn command(socket: &Path, line: &str) -> Result<String> {
    let mut stream = UnixStream::connect(socket)
        .with_context(|| format!("connecting to haproxy's {}", socket.display()))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.write_all(line.as_bytes())?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    Ok(answer)
}

/// HAProxy's `crt` file: the certificate followed by its key.
fn bundle(cert_pem: &str, key_pem: &str) -> String {
    format!("{}\n{}", cert_pem.trim_end(), key_pem)
}
