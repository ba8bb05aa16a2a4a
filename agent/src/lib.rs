//! certreload: kernel-assisted certificate hot reload for every TLS endpoint on a node.
//!
//! The data path, in module order:
//! kernel event ([`monitor::ebpf`]) or inotify event ([`monitor::inotify`]) → hint
//! ([`monitor::hint`]) → confirmed change ([`monitor::confirm`]) → consumers such as
//! [`watch`] (the `certreload watch` command).
#![deny(unsafe_code)] // Only `sys` (the libc calls) and the eBPF ring buffer's reader, each with `#[expect]`.
pub mod accept;
pub mod admin;
pub mod audit;
pub mod check;
pub mod cli;
pub mod clock;
pub mod config;
pub mod converge;
pub mod demo;
pub mod gate;
pub mod material;
pub mod monitor;
pub mod output;
pub mod proxy;
pub mod regular_file;
pub mod reload;
pub mod run;
pub mod shutdown;
pub mod status;
pub mod status_cmd;
mod sync;
mod sys;
pub mod telemetry;
pub mod tls;
pub mod watch;
