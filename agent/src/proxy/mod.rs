//! The TLS front: listeners that terminate TLS with the current generation and forward to a local
//! upstream, and the registry of live connections that knows which are stale.

pub mod idle;
pub mod listener;
pub mod registry;
pub mod upstream;
