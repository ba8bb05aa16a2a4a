//! The TLS fronts `bench tls` compares (certreload here; nginx and HAProxy in their own modules):
//! where each listens, which processes are its own (for RSS and CPU) and how each takes a new
//! certificate without dropping connections, so the rotating run compares like with like.

use std::{
    fs,
    io::BufRead,
    net::SocketAddr,
    path::Path,
    process::Child,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use anyhow::{anyhow, Context, Result};

use crate::secret_volume::SecretVolume;

/// A TLS front under test.
pub(crate) trait Front {
    /// Its column in the tables.
    fn name(&self) -> &'static str;
    /// Where it terminates TLS.
    fn addr(&self) -> SocketAddr;
    /// Its processes, for RSS and CPU.
    fn pids(&self) -> Vec<u32>;
    /// How it is given a new certificate while serving (its own hitless reload).
    fn rotation(&self) -> Box<dyn Rotate>;
}

/// One front's way of installing a new certificate and key.
pub(crate) trait Rotate: Send {
    /// Installs `cert_pem` / `key_pem`; returns once the front has been told (a reload signal
    /// sent, a transaction committed, a volume swapped).
    fn rotate(&mut self, cert_pem: &str, key_pem: &str) -> Result<()>;
}

/// Rotates a front every `period` on a thread until stopped, cycling through `leaves` (each
/// differs from the one before).
pub(crate) fn rotate_every(
    mut rotation: Box<dyn Rotate>,
    period: Duration,
    leaves: &[(String, String)],
) -> Rotator {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let leaves = leaves.to_vec();
    let thread = std::thread::spawn(move || -> Result<usize> {
        let mut n = 0;
        while !flag.load(Ordering::Relaxed) {
            std::thread::sleep(period);
            n += 1;
            let (cert, key) = &leaves[n % leaves.len()];
            rotation.rotate(cert, key)?;
        }
        Ok(n)
    });
    Rotator { stop, thread }
}

/// A running rotation thread.
pub(crate) struct Rotator {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Result<usize>>,
}

impl Rotator {
    /// Stops the thread; the number of rotations it made, or the first one that failed.
    pub(crate) fn stop(self) -> Result<usize> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .join()
            .map_err(|_| anyhow!("rotation thread panicked"))?
    }
}

/// certreload fronting the upstream, its certificate in a Secret-style volume.
pub(crate) struct Agent {
    child: Child,
    addr: SocketAddr,
    volume: Arc<Mutex<SecretVolume>>,
    published: Arc<AtomicU64>,
}

impl Agent {
    /// Starts `certreload run` on a fresh volume holding `leaf`, trusting `ca_pem`, forwarding
    /// to `upstream`.
    pub(crate) fn start(
        bin: &Path,
        dir: &Path,
        ca_pem: &str,
        leaf: &(String, String),
        upstream: SocketAddr,
    ) -> Result<Agent> {
        fs::write(dir.join("ca.crt"), ca_pem)?;
        let volume = SecretVolume::create(&dir.join("vol"), &leaf.0, &leaf.1)?;
        let config = dir.join("certreload.toml");
        fs::write(
            &config,
            format!(
                r#"[agent]
admin = "127.0.0.1:0"
[audit]
path = "{audit}"
[[bundle]]
name = "bench"
kind = "server"
cert = "{cert}"
key = "{key}"
ca = "{ca}"
[[listener]]
name = "bench"
listen = "127.0.0.1:0"
bundle = "bench"
upstream = "tcp://{upstream}"
max_connections = 100000
idle_timeout = "1h"
"#,
                audit = dir.join("audit.jsonl").display(),
                cert = volume.cert().display(),
                key = volume.key().display(),
                ca = dir.join("ca.crt").display(),
            ),
        )?;
        let crate::agent_proc::Started {
            child,
            stderr,
            startup,
        } = crate::agent_proc::start(
            bin,
            &[],
            &config,
            "warn,certreload::run=info,certreload::reload=info",
        )?;
        let addr = startup
            .iter()
            .filter(|l| l.contains("listening"))
            .find_map(|l| {
                l.split_whitespace()
                    .find_map(|w| w.strip_prefix("address="))
                    .and_then(|a| a.parse().ok())
            })
            .context("certreload printed no listening address")?;
        let published = Arc::new(AtomicU64::new(0));
        let counter = published.clone();
        std::thread::spawn(move || {
            for line in stderr.lines().map_while(Result::ok) {
                if line.contains("generation published") {
                    counter.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        Ok(Agent {
            child,
            addr,
            volume: Arc::new(Mutex::new(volume)),
            published,
        })
    }

    /// Generations the agent has logged as published so far.
    pub(crate) fn generations_published(&self) -> u64 {
        self.published.load(Ordering::Relaxed)
    }

    /// Stops the agent (SIGTERM) and reaps it.
    pub(crate) fn stop(mut self) {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        // Reaps it; its exit status is not part of the measurement.
        self.child.wait().ok();
    }
}

impl Front for Agent {
    fn name(&self) -> &'static str {
        "certreload"
    }

    fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn pids(&self) -> Vec<u32> {
        vec![self.child.id()]
    }

    fn rotation(&self) -> Box<dyn Rotate> {
        Box::new(VolumeRotation(self.volume.clone()))
    }
}

/// certreload's rotation: the kubelet's atomic swap of the Secret volume; the agent notices.
struct VolumeRotation(Arc<Mutex<SecretVolume>>);

impl Rotate for VolumeRotation {
    fn rotate(&mut self, cert_pem: &str, key_pem: &str) -> Result<()> {
        self.0
            .lock()
            .map_err(|_| anyhow!("volume lock poisoned"))?
            .rotate(cert_pem, key_pem)
    }
}

/// CPU time of `pids` together, in clock ticks: user + system of each, plus what each has
/// collected from reaped children (nginx's workers replaced by a reload are counted until the
/// end).
pub(crate) fn cpu_ticks(pids: &[u32]) -> u64 {
    pids.iter()
        .filter_map(|pid| fs::read_to_string(format!("/proc/{pid}/stat")).ok())
        .map(|stat| {
            // After the parenthesised comm: state is field 3 of proc(5); utime, stime, cutime,
            // cstime are fields 14-17.
            stat.rsplit_once(')')
                .map(|(_, rest)| {
                    rest.split_whitespace()
                        .skip(11)
                        .take(4)
                        .filter_map(|v| v.parse::<u64>().ok())
                        .sum::<u64>()
                })
                .unwrap_or(0)
        })
        .sum()
}

/// Clock ticks per second (`USER_HZ`), the unit of [`cpu_ticks`].
pub(crate) fn ticks_per_second() -> f64 {
    // SAFETY: sysconf has no memory effects.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 {
        hz as f64
    } else {
        100.0
    }
}

/// Resident set size of `pids` together, KiB.
pub(crate) fn rss_kib(pids: &[u32]) -> u64 {
    pids.iter()
        .filter_map(|pid| fs::read_to_string(format!("/proc/{pid}/status")).ok())
        .filter_map(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .sum()
}

/// `parent` and its children (a master process and its workers).
pub(crate) fn with_children(parent: u32) -> Vec<u32> {
    let mut pids = vec![parent];
    let Ok(entries) = fs::read_dir("/proc") else {
        return pids;
    };
    for entry in entries.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // Fields after the parenthesised comm: state, ppid, ...
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(parent) {
            pids.push(pid);
        }
    }
    pids
}

/// A loopback address nothing listens on right now, for a peer that needs its port in its
/// configuration.
pub(crate) fn free_port() -> Result<SocketAddr> {
    let probe = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(probe.local_addr()?)
}

/// Writes `contents` to `path` through a temporary file and a rename, so a reload never reads
/// half a file.
pub(crate) fn write_atomically(path: &Path, contents: &str) -> Result<()> {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, contents).with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, path).with_context(|| format!("renaming onto {}", path.display()))
}
