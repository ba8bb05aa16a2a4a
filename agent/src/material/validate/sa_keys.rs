//! The check of a ServiceAccount key set: the signing key's public half is among the public
//! keys the API server verifies tokens with.

use std::path::{Path, PathBuf};

use super::{kubernetes_key_id, load_key, public_key_of, Check, Checks, Material, Report};
use crate::material::{pem, read::read_material};

/// Validates a ServiceAccount key set: the signing key's public half must be among the public keys
/// the API server verifies with, or every token it signs is rejected.
pub fn validate_sa_keys(private_key: &Path, public_keys: &[PathBuf], max_file_size: u64) -> Report {
    let mut c = Checks::new();
    let key = load_key(&mut c, private_key, max_file_size);
    let mut publics = Vec::new();
    for path in public_keys {
        match read_material(path, max_file_size) {
            Ok(bytes) => match pem::public_keys(&bytes) {
                Ok(keys) => publics.extend(keys),
                Err(e) => c.fail(
                    Check::Parse,
                    format!("{}: public keys: {e}", path.display()),
                    Some(path),
                ),
            },
            Err(e) => c.fail(Check::Read, e.to_string(), Some(path)),
        }
    }
    let Some(key) = key else {
        c.skip(Check::SaKeyPair, "private key could not be loaded");
        return c.report(None);
    };
    let key_ids: Vec<String> = publics
        .iter()
        .map(|k| kubernetes_key_id(k.as_ref()))
        .collect();
    match public_key_of(&key) {
        Ok(spki) if publics.iter().any(|p| p.as_ref() == spki.as_ref()) => c.pass(
            Check::SaKeyPair,
            format!("signing key id {} is among the public keys ({})", kubernetes_key_id(spki.as_ref()), key_ids.join(", ")),
            Some(private_key),
        ),
        Ok(spki) => c.fail(
            Check::SaKeyPair,
            format!(
                "the public half of {} (key id {}) is not among the public keys ({}): tokens it signs would be rejected",
                private_key.display(),
                kubernetes_key_id(spki.as_ref()),
                key_ids.join(", ")
            ),
            Some(private_key),
        ),
        Err(e) => c.fail(Check::Parse, format!("{}: {e}", private_key.display()), Some(private_key)),
    }
    let material = Material {
        leaf: None,
        chain: Vec::new(),
        key: Some(key),
        cas: Vec::new(),
        ca_der: Vec::new(),
        key_ids,
    };
    c.report(Some(material))
}
