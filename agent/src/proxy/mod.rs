//! The TLS front: listeners that terminate TLS with the current generation and forward to a local
//! upstream, and the registry of live connections that knows which are stale.

pub(crate) mod copy;
pub(crate) mod idle;
pub(crate) mod listener;
pub(crate) mod registry;
pub(crate) mod upstream;
