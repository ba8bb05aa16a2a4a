//! TLS configurations made from generations, and the slot each listener takes them from.

pub(crate) mod client_config;
pub(crate) mod server_config;
pub(crate) mod slot;
