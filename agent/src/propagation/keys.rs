//! What a control-plane agent publishes about the ServiceAccount signing keys and what every node
//! agent follows: the ConfigMap `kube-system/certreload-sa-keys` (the seed's "hash of the key as a
//! ConfigMap"). Key ids only, never a key: the object is readable by every node agent.
//!
//! `data` (all strings, so `kubectl get -o yaml` shows them as they are):
//! - `kids`: the accepted key ids (Kubernetes' `kid`: unpadded base64url of the SHA-256 of the DER
//!   public key), one per line, sorted;
//! - `signing-kid`: the kid of `sa.key`'s public half, the key new tokens are signed with;
//! - `signing-key-sha256`: the same hash in hex (what the seed calls the key hash);
//! - `generation`: the publishing agent's generation of its `sa` bundle;
//! - `published-at`: RFC 3339, when that generation was accepted (the key change on disk, as seen
//!   by the publisher);
//! - `publisher`: the node that wrote it.

use std::collections::BTreeMap;

use base64::Engine as _;

use crate::reload::generation::Generation;

/// Default namespace of the published key identity.
pub(crate) const DEFAULT_NAMESPACE: &str = "kube-system";
/// Default name of the published key identity.
pub(crate) const DEFAULT_NAME: &str = "certreload-sa-keys";

/// The key identity of one accepted `sa` generation, as published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PublishedKeys {
    /// Accepted key ids, sorted, without duplicates.
    pub kids: Vec<String>,
    /// The key id new tokens are signed with.
    pub signing_kid: String,
    /// The publisher's generation number of its `sa` bundle.
    pub generation: u64,
    /// RFC 3339: when that generation was accepted.
    pub published_at: String,
    /// The node whose agent wrote it.
    pub publisher: String,
}

/// Why a ConfigMap's data is not a key identity this agent can follow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum KeysError {
    /// A key the format requires is absent.
    #[error("data has no {0:?}")]
    Missing(&'static str),
    /// A value does not parse.
    #[error("data[{key:?}] = {value:?}: {why}")]
    Invalid {
        /// The data key.
        key: &'static str,
        /// Its value (key ids and numbers only: safe to show).
        value: String,
        /// The check that failed.
        why: &'static str,
    },
}

impl PublishedKeys {
    /// The identity of an accepted `sa` generation; `None` when it has no signing key (a bundle
    /// of public keys only cannot say which key signs).
    pub(crate) fn of(generation: &Generation, publisher: &str) -> Option<PublishedKeys> {
        let signing_kid = Generation::identity(&generation.material).signing_key_id()?;
        let mut kids = generation.material.key_ids.clone();
        kids.sort();
        kids.dedup();
        Some(PublishedKeys {
            kids,
            signing_kid,
            generation: generation.number,
            published_at: crate::clock::rfc3339(generation.accepted_at),
            publisher: publisher.to_string(),
        })
    }

    /// Whether a token with this `kid` is accepted by the keys published.
    pub(crate) fn accepts(&self, kid: &str) -> bool {
        self.kids.iter().any(|k| k == kid)
    }

    /// The hex SHA-256 of the signing key's DER public key, decoded from its kid.
    pub(crate) fn signing_key_sha256(&self) -> Option<String> {
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(&self.signing_kid)
            .ok()?;
        Some(raw.iter().map(|b| format!("{b:02x}")).collect())
    }

    /// The ConfigMap `data` that carries it.
    pub(crate) fn to_data(&self) -> BTreeMap<String, String> {
        let mut data = BTreeMap::new();
        data.insert("kids".into(), self.kids.join("\n"));
        data.insert("signing-kid".into(), self.signing_kid.clone());
        if let Some(hex) = self.signing_key_sha256() {
            data.insert("signing-key-sha256".into(), hex);
        }
        data.insert("generation".into(), self.generation.to_string());
        data.insert("published-at".into(), self.published_at.clone());
        data.insert("publisher".into(), self.publisher.clone());
        data
    }

    /// Reads it back from a ConfigMap's `data`, checking each field.
    pub(crate) fn from_data(data: &BTreeMap<String, String>) -> Result<PublishedKeys, KeysError> {
        let get = |key: &'static str| data.get(key).ok_or(KeysError::Missing(key));
        let mut kids: Vec<String> = get("kids")?
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect();
        kids.sort();
        kids.dedup();
        for kid in kids.iter().chain(std::iter::once(get("signing-kid")?)) {
            if !is_key_id(kid) {
                return Err(KeysError::Invalid {
                    key: "kids",
                    value: kid.clone(),
                    why: "not a key id (43 characters of unpadded base64url)",
                });
            }
        }
        let signing_kid = get("signing-kid")?.clone();
        if !kids.contains(&signing_kid) {
            return Err(KeysError::Invalid {
                key: "signing-kid",
                value: signing_kid,
                why: "not among the published kids",
            });
        }
        let generation = get("generation")?;
        let generation = generation.parse().map_err(|_| KeysError::Invalid {
            key: "generation",
            value: generation.clone(),
            why: "not a generation number",
        })?;
        Ok(PublishedKeys {
            kids,
            signing_kid,
            generation,
            published_at: get("published-at")?.clone(),
            publisher: get("publisher")?.clone(),
        })
    }
}

/// A Kubernetes key id: the unpadded base64url of a SHA-256 (32 bytes: 43 characters).
pub(crate) fn is_key_id(s: &str) -> bool {
    s.len() == 43
        && base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(s)
            .is_ok_and(|raw| raw.len() == 32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kid(n: u8) -> String {
        crate::material::validate::kubernetes_key_id(&[n])
    }

    fn sample() -> PublishedKeys {
        let mut kids = vec![kid(2), kid(1)];
        kids.sort();
        PublishedKeys {
            kids,
            signing_kid: kid(2),
            generation: 7,
            published_at: "2026-11-30T09:00:00Z".into(),
            publisher: "cp-1".into(),
        }
    }

    #[test]
    fn data_round_trips() {
        let keys = sample();
        let data = keys.to_data();
        assert_eq!(data["signing-key-sha256"].len(), 64);
        assert_eq!(PublishedKeys::from_data(&data), Ok(keys));
    }

    #[test]
    fn a_signing_kid_that_is_not_published_is_refused() {
        let mut data = sample().to_data();
        data.insert("kids".into(), kid(1));
        let err = PublishedKeys::from_data(&data).expect_err("signing kid not among kids");
        assert!(err.to_string().contains("signing-kid"), "{err}");
    }

    #[test]
    fn a_value_that_is_not_a_key_id_is_refused() {
        let mut data = sample().to_data();
        data.insert("kids".into(), format!("{}\nnot-a-kid", kid(2)));
        let err = PublishedKeys::from_data(&data).expect_err("bad kid");
        assert!(err.to_string().contains("not-a-kid"), "{err}");
        data.remove("generation");
        data.insert("kids".into(), kid(2));
        assert_eq!(
            PublishedKeys::from_data(&data),
            Err(KeysError::Missing("generation"))
        );
    }
}
