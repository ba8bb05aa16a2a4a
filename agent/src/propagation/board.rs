//! What the publisher and the follower last did, for `/status` (`sa_keys`): each task writes its
//! half, the admin endpoint only reads (data flows one way, as with `converge::ProbeBoard`).

use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use super::keys::PublishedKeys;
use crate::sync::LockExt;

/// `/status` `sa_keys` (a section of `crate::status::Status`): what this agent published to the
/// key-identity ConfigMap and what it follows.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct SaKeysStatus {
    /// `namespace/name` of the ConfigMap.
    pub configmap: String,
    /// The identity this agent last wrote (or found already there), if it publishes.
    pub published: Option<SaKeysObject>,
    /// The identity this agent last took from the ConfigMap, if it follows.
    pub followed: Option<SaKeysObject>,
    /// Whether the follower's watch is connected now (`null`: not following).
    pub watch_connected: Option<bool>,
}

/// One key identity as the ConfigMap holds it (key ids only, never a key).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct SaKeysObject {
    /// Accepted key ids, sorted.
    pub kids: Vec<String>,
    /// The key id new tokens are signed with.
    pub signing_kid: String,
    /// The publisher's generation of its sa-keys bundle.
    pub generation: u64,
    /// The node that published it.
    pub publisher: String,
    /// When that generation was accepted (RFC 3339).
    pub published_at: String,
    /// The ConfigMap's resourceVersion it was read or written at.
    pub resource_version: String,
}

/// The published and followed key identity of this agent, shared between the tasks and `/status`.
#[derive(Debug, Clone, Default)]
pub(crate) struct SaKeysBoard {
    inner: Arc<Mutex<SaKeysStatus>>,
}

impl SaKeysBoard {
    /// A board for `configmap` (`namespace/name`), with whether this agent follows it.
    pub(crate) fn new(configmap: &str, following: bool) -> SaKeysBoard {
        SaKeysBoard {
            inner: Arc::new(Mutex::new(SaKeysStatus {
                configmap: configmap.to_string(),
                published: None,
                followed: None,
                watch_connected: following.then_some(false),
            })),
        }
    }

    /// The publisher wrote (or found already there) `keys`, at `resource_version`.
    pub(crate) fn published(&self, keys: &PublishedKeys, resource_version: &str) {
        self.inner.lock_or_recover().published = Some(object(keys, resource_version));
    }

    /// The follower took `keys` from the object at `resource_version`.
    pub(crate) fn followed(&self, keys: &PublishedKeys, resource_version: &str) {
        self.inner.lock_or_recover().followed = Some(object(keys, resource_version));
    }

    /// The follower's watch is connected (listed and watching) or lost.
    pub(crate) fn connected(&self, connected: bool) {
        self.inner.lock_or_recover().watch_connected = Some(connected);
    }

    /// The `/status` section now.
    pub(crate) fn status(&self) -> SaKeysStatus {
        self.inner.lock_or_recover().clone()
    }
}

fn object(keys: &PublishedKeys, resource_version: &str) -> SaKeysObject {
    SaKeysObject {
        kids: keys.kids.clone(),
        signing_kid: keys.signing_kid.clone(),
        generation: keys.generation,
        publisher: keys.publisher.clone(),
        published_at: keys.published_at.clone(),
        resource_version: resource_version.to_string(),
    }
}
