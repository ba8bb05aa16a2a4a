//! The publisher (`[sa_keys] publish = "BUNDLE"`, control-plane nodes): the key identity of every
//! accepted generation of the `sa-keys` bundle goes into the ConfigMap every node agent follows
//! (the seed's "hash of the key as a ConfigMap").
//!
//! - It reads generations from the [`GenerationStore`] only: a change the gate rejects never
//!   becomes a generation, so it is never published.
//! - At start the current generation is published too, so a missing or outdated object is
//!   repaired.
//! - One writer at a time across control-plane nodes: the object is read, then created, or
//!   updated with the resourceVersion it was read with; a 409 (another writer in between) reads
//!   it again and compares. An object that already holds the same key identity (the same kids
//!   and signing kid, e.g. written by another control-plane node with the same files) is left as
//!   it is, so its `published-at` stays the time of the key change.
//! - While the API server cannot be reached, it retries with a backoff; a newer generation
//!   arriving meanwhile replaces the one being retried (the newest wins). It runs in its own task:
//!   the data path never waits for it.
//! - Every write is audited (`sa_keys_published`, with the resourceVersion the API server gave).

use std::{sync::Arc, time::Duration};

use k8s_openapi::{api::core::v1::ConfigMap, apimachinery::pkg::apis::meta::v1::ObjectMeta};
use kube::{api::PostParams, Api};
use tokio::{sync::watch, task::JoinHandle};

use super::{
    api::{self, ApiError},
    board::SaKeysBoard,
    keys::PublishedKeys,
};
use crate::{
    audit::{append_shared, kube_events, AuditEvent, SharedAudit},
    config::{sa_keys::SaKeysSettings, Config},
    reload::generation::{Generation, GenerationStore},
    shutdown::Shutdown,
    telemetry::Metrics,
};

/// First pause before retrying a publication that failed; doubled up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
/// Longest pause between retries: after an API server outage the key identity is written at
/// most this long after the server answers again.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Conflicting writers in a row before the attempt counts as failed (and is retried later).
const MAX_CONFLICTS: u32 = 5;

/// Starts the publisher task when `[sa_keys] publish` names a bundle and API credentials are
/// found; without credentials the agent runs on, unpublished (logged).
pub(crate) async fn start(
    config: &Config,
    store: &Arc<GenerationStore>,
    audit: &SharedAudit,
    metrics: &Arc<Metrics>,
    board: &SaKeysBoard,
    stop: &Shutdown,
) -> Option<JoinHandle<()>> {
    let settings = config.sa_keys.as_ref()?;
    let bundle = settings.publish.clone()?;
    let generations = store
        .subscribe(&bundle)
        .expect("[sa_keys] publish names a configured bundle (checked by the config parser)");
    let node = config
        .events
        .node
        .clone()
        .unwrap_or_else(kube_events::node_name);
    let client = match api::client(&settings.configmap()).await {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "[sa_keys] publish is set but there are no Kubernetes API credentials; the key identity is not published");
            return None;
        }
    };
    tracing::info!(configmap = %settings.configmap(), bundle = %bundle, node = %node, "publishing the ServiceAccount key identity");
    if !settings.follow {
        // The follower says it otherwise.
        api::note_rbac(&settings.namespace, &settings.name);
    }
    let publisher = Publisher {
        api: Api::namespaced(client, &settings.namespace),
        settings: settings.clone(),
        bundle,
        node,
        audit: audit.clone(),
        metrics: metrics.clone(),
        board: board.clone(),
    };
    Some(tokio::spawn(publisher.run(generations, stop.clone())))
}

/// Writes one bundle's key identity into the ConfigMap.
struct Publisher {
    api: Api<ConfigMap>,
    settings: SaKeysSettings,
    /// The `sa-keys` bundle published.
    bundle: String,
    /// This node (the `publisher` field).
    node: String,
    audit: SharedAudit,
    metrics: Arc<Metrics>,
    board: SaKeysBoard,
}

/// How one attempt to publish a generation ended.
enum Attempt {
    /// Written, or already there.
    Done,
    /// A newer generation arrived first: publish that one instead.
    Superseded,
    /// The agent stops.
    Stopped,
}

/// What a successful write did.
#[derive(Debug, PartialEq, Eq)]
enum Written {
    /// The object was created or updated; the resourceVersion the API server gave.
    Changed(String),
    /// The object already held this key identity (at this resourceVersion, with the generation,
    /// time and publisher of that first write).
    Unchanged(String, Box<PublishedKeys>),
}

impl Publisher {
    /// Publishes the current generation, then every new one, until the agent stops.
    async fn run(
        self,
        mut generations: watch::Receiver<Option<Arc<Generation>>>,
        mut stop: Shutdown,
    ) {
        loop {
            let current = generations.borrow_and_update().clone();
            let attempt = match current {
                Some(generation) => self.publish(&generation, &mut generations, &mut stop).await,
                None => Attempt::Done,
            };
            match attempt {
                Attempt::Stopped => return,
                Attempt::Superseded => continue,
                Attempt::Done => {}
            }
            tokio::select! {
                _ = stop.recv() => return,
                changed = generations.changed() => if changed.is_err() { return },
            }
        }
    }

    /// Publishes `generation`, retrying with a backoff until it is written, a newer generation
    /// arrives or the agent stops.
    async fn publish(
        &self,
        generation: &Generation,
        generations: &mut watch::Receiver<Option<Arc<Generation>>>,
        stop: &mut Shutdown,
    ) -> Attempt {
        let Some(keys) = PublishedKeys::of(generation, &self.node) else {
            tracing::warn!(bundle = %self.bundle, generation = generation.number, "the bundle has no signing key: no key identity to publish");
            return Attempt::Done;
        };
        let mut backoff = FIRST_BACKOFF;
        loop {
            let written = tokio::select! {
                _ = stop.recv() => return Attempt::Stopped,
                written = self.write(&keys) => written,
            };
            match written {
                Ok(written) => {
                    self.record(&keys, written);
                    return Attempt::Done;
                }
                Err(e) => {
                    self.metrics.sa_keys_publish_failures.inc();
                    tracing::warn!(error = %e, generation = keys.generation, retry_in = ?backoff, "cannot publish the ServiceAccount key identity; retrying");
                }
            }
            tokio::select! {
                _ = stop.recv() => return Attempt::Stopped,
                changed = generations.changed() => {
                    return if changed.is_ok() { Attempt::Superseded } else { Attempt::Stopped };
                }
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// Reads the object and writes `keys` into it: create, or update conditioned on the
    /// resourceVersion read; a conflict reads it again.
    async fn write(&self, keys: &PublishedKeys) -> Result<Written, ApiError> {
        let configmap = self.settings.configmap();
        let name = &self.settings.name;
        let mut conflicts = 0;
        loop {
            let current = api::call(&configmap, "get", self.api.get_opt(name)).await?;
            if let Some(written) = current.as_ref().and_then(|c| already_there(c, keys)) {
                return Ok(written);
            }
            let params = PostParams::default();
            let result = match current {
                Some(mut object) => {
                    // Keeps the resourceVersion read: the update is refused (409) if another
                    // writer came in between.
                    object.data = Some(keys.to_data());
                    let update = self.api.replace(name, &params, &object);
                    api::call(&configmap, "update", update).await
                }
                None => {
                    let object = self.object(keys);
                    let create = self.api.create(&params, &object);
                    api::call(&configmap, "create", create).await
                }
            };
            match result {
                Ok(object) => {
                    return Ok(Written::Changed(
                        object.metadata.resource_version.unwrap_or_default(),
                    ))
                }
                Err(e) if e.is_conflict() && conflicts < MAX_CONFLICTS => {
                    conflicts += 1;
                    tracing::info!(error = %e, "another writer changed the key identity ConfigMap since it was read; reading it again");
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// A new object holding `keys`.
    fn object(&self, keys: &PublishedKeys) -> ConfigMap {
        ConfigMap {
            metadata: ObjectMeta {
                name: Some(self.settings.name.clone()),
                namespace: Some(self.settings.namespace.clone()),
                labels: Some(
                    [(
                        "app.kubernetes.io/name".to_string(),
                        "certreload".to_string(),
                    )]
                    .into(),
                ),
                ..ObjectMeta::default()
            },
            data: Some(keys.to_data()),
            ..ConfigMap::default()
        }
    }

    /// Audits a write (an object left as it was is logged only) and shows it in `/status`.
    fn record(&self, keys: &PublishedKeys, written: Written) {
        let configmap = self.settings.configmap();
        match written {
            Written::Unchanged(resource_version, there) => {
                tracing::info!(configmap = %configmap, generation = keys.generation, published_generation = there.generation, publisher = %there.publisher, "the key identity ConfigMap already holds these keys; left as it is");
                self.board.published(&there, &resource_version);
            }
            Written::Changed(resource_version) => {
                tracing::info!(configmap = %configmap, generation = keys.generation, signing_kid = %keys.signing_kid, resource_version = %resource_version, "published the ServiceAccount key identity");
                self.board.published(keys, &resource_version);
                let event = AuditEvent::SaKeysPublished {
                    configmap,
                    kids: keys.kids.clone(),
                    signing_kid: keys.signing_kid.clone(),
                    signing_key_sha256: keys.signing_key_sha256(),
                    generation: keys.generation,
                    resource_version,
                };
                if let Err(e) = append_shared(&self.audit, Some(&self.bundle), &event) {
                    tracing::error!(error = %e, "cannot record the key identity publication in the audit log");
                }
            }
        }
    }
}

/// `Some` when `object` already holds the key identity of `keys` (the same kids and signing
/// kid, whoever wrote it and whichever generation it came from).
fn already_there(object: &ConfigMap, keys: &PublishedKeys) -> Option<Written> {
    let there = PublishedKeys::from_data(object.data.as_ref()?).ok()?;
    (there.kids == keys.kids && there.signing_kid == keys.signing_kid).then(|| {
        Written::Unchanged(
            object.metadata.resource_version.clone().unwrap_or_default(),
            Box::new(there),
        )
    })
}

#[cfg(test)]
mod tests;
