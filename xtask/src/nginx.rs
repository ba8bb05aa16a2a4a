//! nginx as a `bench tls` peer: TLS terminated in its stream module, configured like the agent
//! (same certificate, no session cache or tickets, one worker per CPU, same upstream), rotated
//! the way nginx is: new files, then `SIGHUP` (the master starts new workers on the new
//! configuration while the old ones finish their connections).

use std::{
    fs,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
};

use anyhow::{Context, Result};

use crate::tls_fronts::{free_port, with_children, write_atomically, Front, Rotate};

/// A running nginx master and its workers.
pub(crate) struct Nginx {
    child: Child,
    addr: SocketAddr,
    dir: PathBuf,
}

impl Nginx {
    /// Starts nginx in `dir/nginx` serving `leaf`, forwarding to `upstream`.
    pub(crate) fn start(
        dir: &Path,
        leaf: &(String, String),
        upstream: SocketAddr,
    ) -> Result<Nginx> {
        let dir = dir.join("nginx");
        fs::create_dir_all(dir.join("logs"))?;
        fs::write(dir.join("cert.pem"), &leaf.0)?;
        fs::write(dir.join("key.pem"), &leaf.1)?;
        let addr = free_port()?;
        fs::write(
            dir.join("nginx.conf"),
            format!(
                r#"load_module /usr/lib/nginx/modules/ngx_stream_module.so;
worker_processes auto;
worker_rlimit_nofile 65536;
pid {dir}/nginx.pid;
error_log {dir}/logs/error.log warn;
events {{ worker_connections 16384; }}
stream {{
    server {{
        listen {addr} ssl;
        ssl_certificate {dir}/cert.pem;
        ssl_certificate_key {dir}/key.pem;
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_session_cache off;
        ssl_session_tickets off;
        proxy_pass {upstream};
    }}
}}
"#,
                dir = dir.display()
            ),
        )?;
        let child = Command::new("/usr/sbin/nginx")
            .arg("-p")
            .arg(&dir)
            .arg("-e")
            .arg(dir.join("logs/error.log"))
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .args(["-g", "daemon off;"])
            .stdout(Stdio::null())
            .spawn()
            .context("starting nginx (installed by `cargo xtask setup`)")?;
        Ok(Nginx { child, addr, dir })
    }
}

impl Front for Nginx {
    fn name(&self) -> &'static str {
        "nginx"
    }

    fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The master and its workers.
    fn pids(&self) -> Vec<u32> {
        with_children(self.child.id())
    }

    fn rotation(&self) -> Box<dyn Rotate> {
        Box::new(NginxReload {
            dir: self.dir.clone(),
            master: self.child.id(),
        })
    }
}

/// nginx's reload: the files replaced, then SIGHUP to the master.
struct NginxReload {
    dir: PathBuf,
    master: u32,
}

impl Rotate for NginxReload {
    fn rotate(&mut self, cert_pem: &str, key_pem: &str) -> Result<()> {
        write_atomically(&self.dir.join("cert.pem"), cert_pem)?;
        write_atomically(&self.dir.join("key.pem"), key_pem)?;
        // SAFETY: kill(2) on our own child; SIGHUP is nginx's reload.
        if unsafe { libc::kill(self.master as i32, libc::SIGHUP) } != 0 {
            return Err(std::io::Error::last_os_error()).context("SIGHUP to nginx");
        }
        Ok(())
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child; SIGQUIT is nginx's graceful stop.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGQUIT) };
        // Reaps it; its exit status is not part of the measurement.
        self.child.wait().ok();
    }
}
