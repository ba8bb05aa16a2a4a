//! Kubernetes Events on the Node for the records an operator must see without reading the audit
//! log: `material_rejected`, `endpoint_stale` and `material_accepted` (`[events] enabled = true`).
//! The audit log stays the source of truth; an Event that cannot be posted (refused, a 5xx, no
//! answer within [`POST_TIMEOUT`]) is logged and dropped, and the next one is tried.
//!
//! Events about a Node go to `[events] namespace`, "default" unless configured: the API server
//! accepts an Event about a cluster-scoped object only in "default" (core/v1 Events without
//! `eventTime`), and deploy/rbac.yaml grants `create` there only.

use std::time::Duration;

use k8s_openapi::{
    api::core::v1::{Event, EventSource, ObjectReference},
    apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time},
    jiff::Timestamp,
};
use kube::{api::PostParams, Api, Client};
use tokio::sync::mpsc;

use super::{AuditEvent, Observed};
use crate::shutdown::Shutdown;

/// Longest wait for the API server to take one Event: a hung API server must not hold back
/// the Events after it.
pub(crate) const POST_TIMEOUT: Duration = Duration::from_secs(10);

/// Why an Event was not posted.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PostError {
    /// The API server refused it or could not be reached.
    #[error("{reason} Event: {source}")]
    Api {
        /// The Event's reason (`CertificateAccepted`, ...).
        reason: &'static str,
        /// What kube-rs returned.
        #[source]
        source: kube::Error,
    },
    /// No answer within [`POST_TIMEOUT`].
    #[error("{reason} Event: no answer from the API server within {POST_TIMEOUT:?}")]
    Timeout {
        /// The Event's reason.
        reason: &'static str,
    },
}

/// An API error as "403 Forbidden: message" (kube-rs' own text repeats the whole Status), for
/// every writer to the API server (Events, the audit witness, action locks).
pub(crate) fn describe_api_error(error: &kube::Error) -> String {
    match error {
        kube::Error::Api(status) => {
            format!("{} {}: {}", status.code, status.reason, status.message)
        }
        other => other.to_string(),
    }
}

/// Posts Events about one Node.
pub(crate) struct NodeEvents {
    api: Api<Event>,
    node: String,
}

/// The node this agent runs on: `NODE_NAME` (the DaemonSet sets it from the downward API), else
/// the kernel's hostname.
pub(crate) fn node_name() -> String {
    std::env::var("NODE_NAME")
        .ok()
        .filter(|n| !n.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

/// The Event an audit record becomes, if it is one operators need: (type, reason, message).
pub(crate) fn describe(observed: &Observed) -> Option<(&'static str, &'static str, String)> {
    let bundle = observed.bundle.as_deref().unwrap_or("-");
    match &observed.event {
        AuditEvent::MaterialRejected {
            check,
            reason,
            current_generation,
            ..
        } => Some((
            "Warning",
            "CertificateRejected",
            format!(
                "certreload: bundle {bundle}: new material failed check {}: {reason}; generation {} stays live",
                check.name(),
                current_generation.map_or_else(|| "none".to_string(), |g| g.to_string())
            ),
        )),
        AuditEvent::EndpointStale {
            probe,
            endpoint,
            generation,
            seconds,
            observed: what,
            ..
        } => Some((
            "Warning",
            "EndpointStale",
            format!(
                "certreload: {probe} ({endpoint}) does not reflect bundle {bundle} generation {generation} after {seconds:.0}s: {what}"
            ),
        )),
        AuditEvent::MaterialAccepted {
            new_generation,
            new_serial,
            not_after,
            ..
        } => Some((
            "Normal",
            "CertificateAccepted",
            format!(
                "certreload: bundle {bundle}: generation {new_generation} accepted (serial {}, notAfter {})",
                new_serial.as_deref().unwrap_or("-"),
                not_after.map_or_else(|| "-".to_string(), |t| t.to_string())
            ),
        )),
        _ => None,
    }
}

impl NodeEvents {
    /// Events about `node`, posted in `namespace` through `client`.
    pub(crate) fn new(client: Client, namespace: &str, node: String) -> NodeEvents {
        NodeEvents {
            api: Api::namespaced(client, namespace),
            node,
        }
    }

    /// With the in-cluster (or kubeconfig) credentials.
    pub(crate) async fn from_environment(
        namespace: &str,
        node: String,
    ) -> Result<NodeEvents, kube::Error> {
        Ok(NodeEvents::new(
            Client::try_default().await?,
            namespace,
            node,
        ))
    }

    /// Posts the Event for `observed`, if it maps to one (`Ok(false)`: it maps to none).
    pub(crate) async fn publish(&self, observed: &Observed) -> Result<bool, PostError> {
        let Some((kind, reason, message)) = describe(observed) else {
            return Ok(false);
        };
        let now = Time(Timestamp::now());
        let event = Event {
            metadata: ObjectMeta {
                generate_name: Some(format!("{}.certreload.", self.node)),
                ..ObjectMeta::default()
            },
            involved_object: ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Node".into()),
                name: Some(self.node.clone()),
                ..ObjectReference::default()
            },
            reason: Some(reason.into()),
            message: Some(message),
            type_: Some(kind.into()),
            source: Some(EventSource {
                component: Some("certreload".into()),
                host: Some(self.node.clone()),
            }),
            first_timestamp: Some(now.clone()),
            last_timestamp: Some(now),
            count: Some(1),
            reporting_component: Some("certreload".into()),
            reporting_instance: Some(self.node.clone()),
            ..Event::default()
        };
        match tokio::time::timeout(
            POST_TIMEOUT,
            self.api.create(&PostParams::default(), &event),
        )
        .await
        {
            Ok(Ok(_)) => Ok(true),
            Ok(Err(source)) => Err(PostError::Api { reason, source }),
            Err(_) => Err(PostError::Timeout { reason }),
        }
    }
}

/// Publishes every observed record that maps to an Event until `shutdown`.
pub(crate) async fn run(
    sink: NodeEvents,
    mut records: mpsc::UnboundedReceiver<Observed>,
    mut shutdown: Shutdown,
) {
    loop {
        let observed = tokio::select! {
            _ = shutdown.recv() => return,
            r = records.recv() => match r { Some(r) => r, None => return },
        };
        if let Err(e) = sink.publish(&observed).await {
            tracing::warn!(error = %e, event = observed.event.name(), "cannot post a Kubernetes Event (the audit log has the record)");
        }
    }
}
