//! TLS configurations made from generations, and the slot each listener takes them from.

pub mod client_config;
pub mod server_config;
pub mod slot;
