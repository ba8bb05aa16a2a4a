//! certreload: kernel-assisted certificate hot reload for every TLS endpoint on a node.
//!
//! The binary is [`cli::run`]. The other public paths are the parsers that take untrusted
//! input, for the fuzz targets (`fuzz/`) and the regression tests beside them: the audit log
//! ([`audit::chain`], [`audit::log`]), the configuration ([`config::Config`],
//! [`config::profile`]), certificate material ([`material`]) and the kernel's ring-buffer records
//! ([`monitor::ebpf::decode`], [`monitor::ebpf::writers`]). Everything else is `pub(crate)`: a
//! module's API is what the rest of the agent may call, not a promise to other crates.
//!
//! # Layout
//!
//! In the order data flows through the agent:
//!
//! - `monitor`: kernel (eBPF) or inotify events → hints → confirmed changes (bytes changed, and who
//!   changed them); `watch` prints them (`certreload watch`).
//! - `reload`: confirmed changes → the validation gate (`gate`, over `material`) → generations,
//!   every step written to the hash-chained `audit` log.
//! - `tls` and `proxy`: the TLS front; each listener serves the current generation and the
//!   connection registry knows which connections are stale. `accept` keeps accept loops alive
//!   when descriptors run out.
//! - `converge`: after a swap, probes prove the node's other endpoints converged, and actions
//!   make the ones that cannot reload do so.
//! - `admin`: `/metrics`, `/healthz`, `/readyz`, `/status`; it only reads (`telemetry` holds the
//!   counters, `status` the `/status` schema).
//!
//! Around the data path:
//!
//! - `cli` parses the command line and dispatches; `run` is the agent (`certreload run`), `check`,
//!   `status_cmd` and `demo` the other commands, `output` their shared output format.
//! - `config` parses the TOML file and the built-in profiles into typed values.
//! - Leaves that import nothing above them: `telemetry` (counters), `shutdown` (the signal and the
//!   notice every task waits on), `clock`, `regular_file` (opening a path that cannot block),
//!   `sync` (lock and wait habits) and `sys`, the only module with libc calls.
#![deny(unsafe_code)] // Only `sys` (the libc calls) and the eBPF ring buffer's reader, each with `#[expect]`.
mod accept;
mod admin;
pub mod audit;
mod check;
pub mod cli;
mod clock;
pub mod config;
mod converge;
mod demo;
mod gate;
pub mod material;
pub mod monitor;
mod output;
mod propagation;
mod proxy;
mod regular_file;
mod reload;
mod run;
mod shutdown;
mod status;
mod status_cmd;
mod sync;
mod sys;
mod telemetry;
#[cfg(test)]
mod test_pki;
mod tls;
mod watch;
