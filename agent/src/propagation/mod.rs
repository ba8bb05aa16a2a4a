//! The seed's ServiceAccount-key and root-CA propagation: control-plane agents publish the
//! accepted key identity ([`keys`]), every node agent follows it and finds the pods on its node
//! whose projected token or `ca.crt` is stale.

mod api;
pub(crate) mod board;
pub(crate) mod follow;
pub(crate) mod jwt;
pub(crate) mod keys;
pub(crate) mod pods;
pub(crate) mod publish;
pub(crate) mod tracker;
