//! The API server's accepted ServiceAccount keys, from its JSON Web Key Set (`/openid/v1/jwks`).
//!
//! kube-apiserver loads `--service-account-key-file` once at start-up and publishes exactly those
//! keys in its JWKS, each with `kid` = the key id Kubernetes derives from the public key
//! (`keyIDFromPublicKey` in `pkg/serviceaccount/jwt.go`: base64url, unpadded, of the SHA-256 of the
//! DER SubjectPublicKeyInfo). The sa-keys gate computes the same ids for the files on disk
//! ([`crate::material::validate::kubernetes_key_id`]), so comparing the two sets says whether the
//! running API server verifies tokens with every key the node now holds. Key ids are public.

use std::collections::BTreeSet;

use serde::Deserialize;
use thiserror::Error;

/// The body is not a JSON Web Key Set.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("not a JSON Web Key Set: {0}")]
pub(crate) struct JwksError(String);

#[derive(Deserialize)]
struct KeySet {
    keys: Vec<Key>,
}

#[derive(Deserialize)]
struct Key {
    kid: Option<String>,
}

/// The key ids a JWKS document lists (keys without `kid` are skipped: Kubernetes always sets it).
pub(crate) fn served_key_ids(body: &[u8]) -> Result<BTreeSet<String>, JwksError> {
    let set: KeySet = serde_json::from_slice(body).map_err(|e| JwksError(e.to_string()))?;
    Ok(set.keys.into_iter().filter_map(|k| k.kid).collect())
}

/// The bundle's key ids against the served ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KeyComparison {
    /// Key ids of the bundle the server does not list: tokens signed with them are refused.
    pub missing: Vec<String>,
    /// Key ids the server lists that the bundle no longer holds: still accepted until a restart.
    pub extra: Vec<String>,
    /// How many key ids the bundle has.
    pub bundle_keys: usize,
}

impl KeyComparison {
    /// Compares `bundle` (the generation's key ids) with `served`.
    pub(crate) fn new(bundle: &[String], served: &BTreeSet<String>) -> KeyComparison {
        let ours: BTreeSet<&String> = bundle.iter().collect();
        KeyComparison {
            missing: ours
                .iter()
                .filter(|k| !served.contains(k.as_str()))
                .map(|k| k.to_string())
                .collect(),
            extra: served
                .iter()
                .filter(|k| !ours.contains(k))
                .cloned()
                .collect(),
            bundle_keys: ours.len(),
        }
    }

    /// The server accepts every key of the bundle (the probe's convergence criterion; keys it
    /// accepts beyond those are reported, not judged).
    pub(crate) fn accepts_all(&self) -> bool {
        self.missing.is_empty()
    }

    /// What was seen, in words (key ids only).
    pub(crate) fn describe(&self) -> String {
        let mut out = if self.accepts_all() {
            format!("accepts all {} key ids of the bundle", self.bundle_keys)
        } else {
            format!(
                "does not accept {} of the bundle's {} key ids: missing {}",
                self.missing.len(),
                self.bundle_keys,
                self.missing.join(", ")
            )
        };
        if !self.extra.is_empty() {
            out.push_str(&format!(
                "; also accepts key ids no longer in the bundle: {}",
                self.extra.join(", ")
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::material::validate::kubernetes_key_id;

    /// A JWKS as kube-apiserver writes it (`publicJWKSFromKeys`), for the given key ids.
    fn jwks(kids: &[&str]) -> Vec<u8> {
        let keys: Vec<String> = kids
            .iter()
            .map(|k| {
                format!(
                    r#"{{"use":"sig","kty":"RSA","kid":"{k}","alg":"RS256","n":"xGOr","e":"AQAB"}}"#
                )
            })
            .collect();
        format!(r#"{{"keys":[{}]}}"#, keys.join(",")).into_bytes()
    }

    #[test]
    fn key_ids_are_read_from_a_key_set() {
        let ids = served_key_ids(&jwks(&["a", "b"])).expect("jwks");
        assert_eq!(ids, BTreeSet::from(["a".to_string(), "b".to_string()]));
        let ids = served_key_ids(br#"{"keys":[{"kty":"EC"},{"kid":"c","kty":"EC"}]}"#)
            .expect("a key without kid is skipped");
        assert_eq!(ids, BTreeSet::from(["c".to_string()]));
        assert!(served_key_ids(br#"{"keys":[]}"#).expect("empty").is_empty());
    }

    #[test]
    fn non_key_sets_are_errors() {
        for body in [
            &b""[..],
            b"<html>Unauthorized</html>",
            br#"{"kind":"Status","code":401}"#,
            br#"{"keys":{"kid":"a"}}"#,
        ] {
            assert!(
                served_key_ids(body).is_err(),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn every_bundle_key_must_be_served_and_extras_are_only_reported() {
        let spki_old = b"old public key DER";
        let spki_new = b"new public key DER";
        let (old, new) = (kubernetes_key_id(spki_old), kubernetes_key_id(spki_new));
        let bundle = vec![old.clone(), new.clone()];

        let before_restart = served_key_ids(&jwks(&[&old])).expect("jwks");
        let c = KeyComparison::new(&bundle, &before_restart);
        assert!(!c.accepts_all());
        assert_eq!(c.missing, vec![new.clone()]);
        assert!(c.describe().contains(&new), "{}", c.describe());
        assert!(c
            .describe()
            .starts_with("does not accept 1 of the bundle's 2 key ids"));

        let after_restart = served_key_ids(&jwks(&[&new, &old])).expect("jwks");
        let c = KeyComparison::new(&bundle, &after_restart);
        assert!(c.accepts_all(), "{c:?}");
        assert_eq!(c.describe(), "accepts all 2 key ids of the bundle");

        // The old key dropped from disk, the API server not restarted yet.
        let c = KeyComparison::new(std::slice::from_ref(&new), &after_restart);
        assert!(c.accepts_all());
        assert_eq!(c.extra, vec![old.clone()]);
        assert!(c
            .describe()
            .contains(&format!("no longer in the bundle: {old}")));
    }
}
