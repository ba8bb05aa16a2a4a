//! The publisher's and the follower's way to the API server: the client (in-cluster
//! ServiceAccount or KUBECONFIG, as `audit::witness` and the Lease locks take it) and one request
//! under a timeout, with errors that name the ConfigMap and the operation.

use std::{future::Future, time::Duration};

use kube::Client;
use thiserror::Error;

use crate::audit::kube_events::describe_api_error;

/// Longest wait for one API request (and for the client's set-up).
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a request about the key-identity ConfigMap did not succeed.
#[derive(Debug, Clone, Error)]
pub(crate) enum ApiError {
    /// No in-cluster ServiceAccount and no usable KUBECONFIG.
    #[error("{configmap}: no Kubernetes API credentials (in-cluster ServiceAccount or KUBECONFIG): {message}")]
    Credentials {
        /// `namespace/name`.
        configmap: String,
        /// kube-rs' reason.
        message: String,
    },
    /// The API server did not answer in time.
    #[error("{configmap}: {operation}: no answer from the API server within {REQUEST_TIMEOUT:?}")]
    Timeout {
        /// `namespace/name`.
        configmap: String,
        /// `connect`, `get`, `create`, `update`.
        operation: &'static str,
    },
    /// The API server refused the request or could not be reached.
    #[error("{configmap}: {operation}: {message}")]
    Api {
        /// `namespace/name`.
        configmap: String,
        /// `get`, `create`, `update`.
        operation: &'static str,
        /// The status (`403 Forbidden: ...`) or the transport error.
        message: String,
        /// The HTTP status, when the API server answered.
        code: Option<u16>,
    },
}

impl ApiError {
    /// The API server answered 409 Conflict (another writer since the read, or the object was
    /// created meanwhile).
    pub(crate) fn is_conflict(&self) -> bool {
        matches!(
            self,
            ApiError::Api {
                code: Some(409),
                ..
            }
        )
    }
}

/// Says, once at start, when the configured ConfigMap is not the default one: deploy/rbac.yaml's
/// Role grants the agent that one object only, so another needs the Role changed with it (else
/// every request is refused, 403).
pub(crate) fn note_rbac(namespace: &str, name: &str) {
    if (namespace, name) != (super::keys::DEFAULT_NAMESPACE, super::keys::DEFAULT_NAME) {
        tracing::warn!(
            configmap = %format!("{namespace}/{name}"),
            "[sa_keys] configmap is not {}/{}: deploy/rbac.yaml's Role certreload-sa-keys grants that one only; change it to match",
            super::keys::DEFAULT_NAMESPACE,
            super::keys::DEFAULT_NAME
        );
    }
}

/// A client with the in-cluster (or KUBECONFIG) credentials.
pub(crate) async fn client(configmap: &str) -> Result<Client, ApiError> {
    match tokio::time::timeout(REQUEST_TIMEOUT, Client::try_default()).await {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(ApiError::Credentials {
            configmap: configmap.to_string(),
            message: e.to_string(),
        }),
        Err(_) => Err(ApiError::Timeout {
            configmap: configmap.to_string(),
            operation: "connect",
        }),
    }
}

/// One request with [`REQUEST_TIMEOUT`], the ConfigMap and operation named in the error.
pub(crate) async fn call<T>(
    configmap: &str,
    operation: &'static str,
    request: impl Future<Output = Result<T, kube::Error>>,
) -> Result<T, ApiError> {
    match tokio::time::timeout(REQUEST_TIMEOUT, request).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(ApiError::Api {
            configmap: configmap.to_string(),
            operation,
            code: match &e {
                kube::Error::Api(s) => Some(s.code),
                _ => None,
            },
            message: describe_api_error(&e),
        }),
        Err(_) => Err(ApiError::Timeout {
            configmap: configmap.to_string(),
            operation,
        }),
    }
}
