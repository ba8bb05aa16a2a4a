//! Generations: the validated material each bundle currently serves, swapped atomically.
//!
//! Readers (the TLS front, status, probes) load the current generation lock-free from an
//! `ArcSwapOption`; subscribers are woken through a `watch` channel. A generation is immutable: a
//! new one replaces it whole, so a handshake sees the old material or the new, never a mix.

use std::{collections::BTreeMap, sync::Arc, time::SystemTime};

use arc_swap::ArcSwapOption;
use serde::Serialize;
use tokio::sync::watch;

use crate::material::{
    inspect::CertInfo,
    validate::{kubernetes_key_id, public_key_of, Material},
};

/// One accepted version of a bundle's material.
#[derive(Debug)]
pub(crate) struct Generation {
    /// 1 for the material accepted at start-up, then +1 per accepted change.
    pub number: u64,
    /// When it was accepted.
    pub accepted_at: SystemTime,
    /// The validated material (certificates, key, CAs, key ids).
    pub material: Material,
}

impl Generation {
    /// The leaf, when the bundle has one.
    pub(crate) fn leaf(&self) -> Option<&CertInfo> {
        self.material.leaf.as_ref()
    }

    /// What identifies the material: equal identities mean nothing changed that a consumer could
    /// see (the same leaf implies the same key; the same CA set; the same SA key ids and the same
    /// SA signing key: replacing `sa.key` alone, the last step of a key rotation, changes which
    /// key new tokens are signed with although the public key set stays the same).
    pub(crate) fn identity(material: &Material) -> Identity {
        Identity {
            leaf: material.leaf.as_ref().map(|l| l.fingerprint.clone()),
            cas: material.cas.iter().map(|c| c.fingerprint.clone()).collect(),
            key_ids: material.key_ids.clone(),
            // The key's public id, never the key: identities may be logged.
            signing_key_id: material
                .key
                .as_ref()
                .and_then(|k| public_key_of(k).ok())
                .map(|spki| kubernetes_key_id(spki.as_ref())),
        }
    }
}

/// See [`Generation::identity`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct Identity {
    leaf: Option<String>,
    cas: Vec<String>,
    key_ids: Vec<String>,
    signing_key_id: Option<String>,
}

impl Identity {
    /// The key id of the SA signing key's public half (`None` for other kinds).
    pub(crate) fn signing_key_id(self) -> Option<String> {
        self.signing_key_id
    }
}

/// One bundle's current generation and its subscribers.
pub(crate) struct Slot {
    current: ArcSwapOption<Generation>,
    notify: watch::Sender<Option<Arc<Generation>>>,
}

impl Slot {
    fn new() -> Self {
        Slot {
            current: ArcSwapOption::empty(),
            notify: watch::channel(None).0,
        }
    }
}

/// Every bundle's slot, by name. Built once at start-up; slots are never added or removed.
pub(crate) struct GenerationStore {
    slots: BTreeMap<String, Slot>,
}

impl GenerationStore {
    /// One empty slot per bundle name.
    pub(crate) fn new<'a>(names: impl IntoIterator<Item = &'a str>) -> Self {
        GenerationStore {
            slots: names
                .into_iter()
                .map(|n| (n.to_string(), Slot::new()))
                .collect(),
        }
    }

    /// The current generation of `bundle` (lock-free).
    pub(crate) fn current(&self, bundle: &str) -> Option<Arc<Generation>> {
        self.slots.get(bundle).and_then(|s| s.current.load_full())
    }

    /// A receiver that sees every new generation of `bundle`.
    pub(crate) fn subscribe(
        &self,
        bundle: &str,
    ) -> Option<watch::Receiver<Option<Arc<Generation>>>> {
        self.slots.get(bundle).map(|s| s.notify.subscribe())
    }

    /// Makes `generation` current for `bundle` and wakes subscribers. The caller has already
    /// made the audit record durable.
    pub(crate) fn publish(&self, bundle: &str, generation: Generation) -> Arc<Generation> {
        let generation = Arc::new(generation);
        if let Some(slot) = self.slots.get(bundle) {
            slot.current.store(Some(generation.clone()));
            slot.notify.send_replace(Some(generation.clone()));
        }
        generation
    }

    /// Bundles without a valid generation: what readiness reports.
    pub(crate) fn not_ready(&self) -> Vec<String> {
        self.slots
            .iter()
            .filter(|(_, s)| s.current.load().is_none())
            .map(|(n, _)| n.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn material(fp: &str) -> Material {
        Material {
            leaf: Some(CertInfo::with_fingerprint(fp)),
            chain: vec![],
            key: None,
            cas: vec![],
            ca_der: vec![],
            key_ids: vec![],
        }
    }

    #[test]
    fn a_new_sa_signing_key_is_a_new_identity_with_the_same_public_keys() {
        let key = |k: &rcgen::KeyPair| {
            Some(rustls_pki_types::PrivateKeyDer::from(
                rustls_pki_types::PrivatePkcs8KeyDer::from(k.serialize_der()),
            ))
        };
        let (old, new) = (
            rcgen::KeyPair::generate().expect("key"),
            rcgen::KeyPair::generate().expect("key"),
        );
        let sa = |signing: &rcgen::KeyPair| Material {
            leaf: None,
            chain: vec![],
            key: key(signing),
            cas: vec![],
            ca_der: vec![],
            // sa.pub holds both keys throughout the rotation.
            key_ids: vec!["old-id".into(), "new-id".into()],
        };
        assert_eq!(
            Generation::identity(&sa(&old)),
            Generation::identity(&sa(&old))
        );
        assert_ne!(
            Generation::identity(&sa(&old)),
            Generation::identity(&sa(&new)),
            "sa.key replaced: tokens are now signed with another key"
        );
    }

    #[tokio::test]
    async fn publish_swaps_and_notifies() {
        let store = GenerationStore::new(["a", "b"]);
        assert_eq!(store.not_ready(), vec!["a".to_string(), "b".to_string()]);
        let mut rx = store.subscribe("a").expect("slot");
        store.publish(
            "a",
            Generation {
                number: 1,
                accepted_at: SystemTime::now(),
                material: material("f1"),
            },
        );
        rx.changed().await.expect("notified");
        assert_eq!(rx.borrow().as_ref().map(|g| g.number), Some(1));
        let old = store.current("a").expect("current");
        store.publish(
            "a",
            Generation {
                number: 2,
                accepted_at: SystemTime::now(),
                material: material("f2"),
            },
        );
        assert_eq!(store.current("a").map(|g| g.number), Some(2));
        assert_eq!(
            old.number, 1,
            "holders of the old generation keep it intact"
        );
        assert_eq!(store.not_ready(), vec!["b".to_string()]);
        assert_ne!(
            Generation::identity(&old.material),
            Generation::identity(&material("f2"))
        );
    }
}
