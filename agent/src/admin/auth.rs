//! Who may read `/metrics` and `/status` from beyond loopback: the Kubernetes way, as
//! kube-rbac-proxy and controller-runtime's `WithAuthenticationAndAuthorization` secure metrics
//! do it, so the same RBAC that guards the kubelet's and the API server's `/metrics` guards ours.
//!
//! 1. `Authorization: Bearer TOKEN` → a `TokenReview` (authentication.k8s.io/v1): the API server
//!    says who the token belongs to (a ServiceAccount's projected token, a user's token).
//! 2. That user → a `SubjectAccessReview` (authorization.k8s.io/v1) for the non-resource URL: verb
//!    `get` on `/metrics` or `/status`, the request Prometheus' ClusterRole
//!    (`nonResourceURLs: ["/metrics"]`) grants.
//!
//! No token or an invalid one is 401, an authenticated user the authorizer denies is 403, an API
//! server that cannot be asked is 503 (fail closed, never cached). Answers are cached briefly,
//! keyed by SHA-256(path, token) in a bounded map, so a scraper every 15 s costs two reviews a
//! minute, not eight; the token itself is never stored or logged (the log names the user and the
//! first bytes of the token's hash). At most [`MAX_REVIEWS_IN_FLIGHT`] reviews run at once, so a
//! flood of random tokens cannot turn the agent into a load generator against the API server.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use k8s_openapi::api::{
    authentication::v1::{TokenReview, TokenReviewSpec},
    authorization::v1::{NonResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec},
};
use kube::{api::PostParams, Api, Client};
use sha2::{Digest, Sha256};
use tokio::sync::{OnceCell, Semaphore};

use crate::sync::LockExt;

/// How long an allowed answer is reused (kube-rbac-proxy and the kubelet's webhook authorizer
/// cache allowed answers for minutes; a revoked binding takes effect within this).
pub(crate) const ALLOWED_TTL: Duration = Duration::from_secs(60);
/// How long a 401/403 is reused: short, so a binding just granted works within seconds.
pub(crate) const DENIED_TTL: Duration = Duration::from_secs(10);
/// Cached answers kept at most (each ~100 bytes: the cache cannot grow the agent's memory).
pub(crate) const CACHE_CAPACITY: usize = 1024;
/// Reviews sent to the API server at the same time, at most.
pub(crate) const MAX_REVIEWS_IN_FLIGHT: usize = 4;
/// A review the API server has not answered in this long is a 503.
pub(crate) const REVIEW_TIMEOUT: Duration = Duration::from_secs(5);

/// The answer for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Decision {
    /// The token's user may `get` the path.
    Allowed {
        /// Who (TokenReview's username).
        user: String,
    },
    /// No bearer token, or the API server does not accept it: 401.
    Unauthenticated {
        /// Why, for the response body (never the token).
        reason: String,
    },
    /// The user is known but may not `get` the path: 403.
    Forbidden {
        /// Who.
        user: String,
        /// The authorizer's reason, when it gave one.
        reason: String,
    },
    /// The API server could not be asked (no credentials, unreachable, timed out): 503, not
    /// cached.
    Unavailable {
        /// What failed.
        reason: String,
    },
}

/// The bearer token of an `Authorization` header value, if it is one (RFC 6750: the scheme is
/// case-insensitive; an empty token is none).
pub(crate) fn bearer_token(authorization: Option<&str>) -> Option<&str> {
    let value = authorization?.trim();
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// The cache key: SHA-256 over the path and the token, so the map holds no token and a token
/// allowed `/metrics` is not thereby allowed `/status`.
pub(crate) fn cache_key(path: &str, token: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(path.as_bytes());
    h.update([0]);
    h.update(token.as_bytes());
    h.finalize().into()
}

/// A bounded map of recent decisions with per-entry expiry.
#[derive(Debug)]
pub(crate) struct DecisionCache {
    capacity: usize,
    entries: HashMap<[u8; 32], (Decision, Instant)>,
}

impl DecisionCache {
    /// At most `capacity` entries.
    pub(crate) fn new(capacity: usize) -> Self {
        DecisionCache {
            capacity,
            entries: HashMap::new(),
        }
    }

    /// The decision for `key` unless it expired by `now`.
    pub(crate) fn get(&mut self, key: &[u8; 32], now: Instant) -> Option<Decision> {
        match self.entries.get(key) {
            Some((d, until)) if *until > now => Some(d.clone()),
            Some(_) => {
                self.entries.remove(key);
                None
            }
            None => None,
        }
    }

    /// Keeps `decision` until `now + ttl`; when full, drops the expired entries, then the one
    /// closest to expiry.
    pub(crate) fn insert(
        &mut self,
        key: [u8; 32],
        decision: Decision,
        ttl: Duration,
        now: Instant,
    ) {
        if self.entries.len() >= self.capacity && !self.entries.contains_key(&key) {
            self.entries.retain(|_, (_, until)| *until > now);
            if self.entries.len() >= self.capacity {
                if let Some(soonest) = self
                    .entries
                    .iter()
                    .min_by_key(|(_, (_, until))| *until)
                    .map(|(k, _)| *k)
                {
                    self.entries.remove(&soonest);
                }
            }
        }
        self.entries.insert(key, (decision, now + ttl));
    }

    /// Entries held now.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether it holds nothing.
    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Reviews bearer tokens against the API server named by the agent's credentials (in-cluster
/// ServiceAccount, else `KUBECONFIG`), with the cache and the concurrency bound above.
pub(crate) struct Authorizer {
    client: OnceCell<Client>,
    cache: Mutex<DecisionCache>,
    in_flight: Semaphore,
}

impl Default for Authorizer {
    fn default() -> Self {
        Authorizer {
            client: OnceCell::new(),
            cache: Mutex::new(DecisionCache::new(CACHE_CAPACITY)),
            in_flight: Semaphore::new(MAX_REVIEWS_IN_FLIGHT),
        }
    }
}

impl Authorizer {
    /// Whether the request carrying `authorization` may `get` `path`.
    pub(crate) async fn decide(&self, authorization: Option<&str>, path: &str) -> Decision {
        let Some(token) = bearer_token(authorization) else {
            return Decision::Unauthenticated {
                reason: "no bearer token (Authorization: Bearer <ServiceAccount token>)".into(),
            };
        };
        let key = cache_key(path, token);
        if let Some(d) = self.cached(&key) {
            return d;
        }
        let Ok(_permit) = self.in_flight.acquire().await else {
            return Decision::Unavailable {
                reason: "authorizer closed".into(),
            };
        };
        // Another request with the same token may have filled the cache while this one waited.
        if let Some(d) = self.cached(&key) {
            return d;
        }
        let decision = match tokio::time::timeout(REVIEW_TIMEOUT, self.review(token, path)).await {
            Ok(d) => d,
            Err(_) => Decision::Unavailable {
                reason: format!("the API server did not answer within {REVIEW_TIMEOUT:?}"),
            },
        };
        let id = hex::encode(&key[..4]);
        let ttl = match &decision {
            Decision::Allowed { user } => {
                tracing::debug!(user = %user, path, token_sha256_prefix = %id, "admin: allowed");
                Some(ALLOWED_TTL)
            }
            Decision::Forbidden { user, reason } => {
                tracing::info!(user = %user, path, reason = %reason, "admin: forbidden (SubjectAccessReview denied)");
                Some(DENIED_TTL)
            }
            Decision::Unauthenticated { reason } => {
                tracing::info!(path, token_sha256_prefix = %id, reason = %reason, "admin: token not authenticated (TokenReview)");
                Some(DENIED_TTL)
            }
            Decision::Unavailable { reason } => {
                tracing::warn!(path, reason = %reason, "admin: cannot review the token; answering 503");
                None
            }
        };
        if let Some(ttl) = ttl {
            self.cache
                .lock_or_recover()
                .insert(key, decision.clone(), ttl, Instant::now());
        }
        decision
    }

    fn cached(&self, key: &[u8; 32]) -> Option<Decision> {
        self.cache.lock_or_recover().get(key, Instant::now())
    }

    async fn client(&self) -> Result<Client, String> {
        self.client
            .get_or_try_init(|| async {
                Client::try_default().await.map_err(|e| {
                    format!("no Kubernetes API credentials (in-cluster or KUBECONFIG): {e}")
                })
            })
            .await
            .cloned()
    }

    async fn review(&self, token: &str, path: &str) -> Decision {
        let client = match self.client().await {
            Ok(c) => c,
            Err(reason) => return Decision::Unavailable { reason },
        };
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_string()),
                audiences: None,
            },
            ..Default::default()
        };
        let reviewed = match Api::<TokenReview>::all(client.clone())
            .create(&PostParams::default(), &review)
            .await
        {
            Ok(r) => r,
            Err(e) => {
                return Decision::Unavailable {
                    reason: format!("TokenReview failed: {}", api_error(&e)),
                }
            }
        };
        let status = reviewed.status.unwrap_or_default();
        let (Some(true), Some(user)) = (status.authenticated, status.user) else {
            return Decision::Unauthenticated {
                reason: status
                    .error
                    .filter(|e| !e.is_empty())
                    .unwrap_or_else(|| "token not authenticated".into()),
            };
        };
        let username = user.username.clone().unwrap_or_default();
        let sar = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: user.username,
                uid: user.uid,
                groups: user.groups,
                extra: user.extra,
                non_resource_attributes: Some(NonResourceAttributes {
                    path: Some(path.to_string()),
                    verb: Some("get".into()),
                }),
                resource_attributes: None,
            },
            ..Default::default()
        };
        match Api::<SubjectAccessReview>::all(client)
            .create(&PostParams::default(), &sar)
            .await
        {
            Ok(r) => {
                let s = r.status.unwrap_or_default();
                if s.allowed && !s.denied.unwrap_or(false) {
                    Decision::Allowed { user: username }
                } else {
                    Decision::Forbidden {
                        user: username,
                        reason: s.reason.unwrap_or_default(),
                    }
                }
            }
            Err(e) => Decision::Unavailable {
                reason: format!("SubjectAccessReview failed: {}", api_error(&e)),
            },
        }
    }
}

/// A kube error in one line: `403 Forbidden: message` for an API answer (the agent's own
/// ServiceAccount lacks `create tokenreviews`, say), else the error's text.
fn api_error(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => format!("{} {}: {}", s.code, s.reason, s.message),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_scheme_is_case_insensitive_and_needs_a_token() {
        assert_eq!(bearer_token(Some("Bearer abc")), Some("abc"));
        assert_eq!(bearer_token(Some("bearer  abc ")), Some("abc"));
        assert_eq!(bearer_token(Some("Basic abc")), None);
        assert_eq!(bearer_token(Some("Bearer ")), None);
        assert_eq!(bearer_token(Some("Bearer")), None);
        assert_eq!(bearer_token(None), None);
    }

    #[test]
    fn key_depends_on_path_and_token_and_holds_neither() {
        let a = cache_key("/metrics", "secret-token");
        assert_ne!(a, cache_key("/status", "secret-token"));
        assert_ne!(a, cache_key("/metrics", "other-token"));
        assert!(!hex::encode(a).contains(&hex::encode("secret")));
    }

    #[test]
    fn cache_expires_and_stays_bounded() {
        let now = Instant::now();
        let mut c = DecisionCache::new(3);
        let allowed = Decision::Allowed { user: "u".into() };
        c.insert([1; 32], allowed.clone(), Duration::from_secs(60), now);
        assert_eq!(c.get(&[1; 32], now), Some(allowed.clone()));
        assert_eq!(c.get(&[1; 32], now + Duration::from_secs(61)), None);
        assert!(c.is_empty(), "an expired entry is dropped when read");
        for i in 0..100u8 {
            c.insert(
                [i; 32],
                allowed.clone(),
                Duration::from_secs(u64::from(i) + 1),
                now,
            );
            assert!(c.len() <= 3, "bounded at {i}");
        }
        // The entries closest to expiry made room: the last three stay.
        for i in 97..100u8 {
            assert!(c.get(&[i; 32], now).is_some(), "{i} kept");
        }
    }
}
