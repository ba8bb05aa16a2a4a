//! TLS configurations made from generations, and the slot each listener takes them from.

pub mod server_config;
pub mod slot;
