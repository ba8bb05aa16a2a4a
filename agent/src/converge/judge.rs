//! From what an endpoint did (an [`Observation`]) to a probe's verdict: converged, stale or
//! unknown, with what was seen in words. Pure functions, so every rule is tested without a network.
//!
//! The rules, by `check`:
//! - `tls`: a server/client bundle converges when the served leaf is the generation's; a refusal
//!   of the probe's client certificate is reported beside it, not instead of it. A ca bundle
//!   converges when the endpoint asked for a client certificate and did not refuse it in (or right
//!   after) the handshake: right for etcd, which verifies there.
//! - `http`: the TLS judgement, plus the HTTP answer: 401 = the client certificate is not trusted,
//!   200/201/204/403 = trusted (authenticated), anything else = unknown. Kubernetes servers verify
//!   client certificates per request (`tls.RequestClientCert`, then the x509 authenticator answers
//!   401 and never falls back to anonymous), so only the answer tells.
//! - `jwks`: the API server's key set must list every key id of the sa-keys generation.
//!
//! Unknown is never converged: the probe retries, and at the deadline it is reported stale with the
//! reason.

use serde_json::Value;

use super::{
    http::{HttpError, Response},
    jwks::{served_key_ids, KeyComparison},
    observe::Observation,
};
use crate::{
    config::{
        converge::{ProbeCheck, ProbeRequest},
        BundleKind,
    },
    reload::generation::Generation,
};

/// What an HTTP answer says about the client certificate sent with the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HttpVerdict {
    /// 200, 201, 204 or 403: the server authenticated the request (403: and did not authorize
    /// it). `user`: who it authenticated as, when the answer says (a SelfSubjectReview's
    /// `status.userInfo.username`).
    Trusted {
        /// HTTP status.
        status: u16,
        /// The authenticated user name.
        user: Option<String>,
    },
    /// 401: the server did not accept the client certificate (unknown CA, expired, no clientAuth);
    /// or a SelfSubjectReview that says the request was anonymous although a certificate was sent.
    Untrusted {
        /// HTTP status.
        status: u16,
        /// The user the server took the request for, when it said.
        user: Option<String>,
    },
    /// No conclusion: 5xx, 429, another code, or no complete answer.
    Unknown {
        /// What happened.
        why: String,
    },
}

/// The user name the API server puts on anonymous requests.
const ANONYMOUS: &str = "system:anonymous";

impl HttpVerdict {
    /// Classifies the answer to `request`.
    pub(crate) fn of(answer: &Result<Response, HttpError>, request: &ProbeRequest) -> HttpVerdict {
        let response = match answer {
            Ok(r) => r,
            Err(e) => {
                return HttpVerdict::Unknown {
                    why: format!("{request}: {e}"),
                }
            }
        };
        let status = response.status;
        match status {
            401 => HttpVerdict::Untrusted { status, user: None },
            200 | 201 | 204 | 403 => {
                let user = (status == 201 && request.is_self_subject_review())
                    .then(|| reviewed_user(&response.body))
                    .flatten();
                if user.as_deref() == Some(ANONYMOUS) {
                    HttpVerdict::Untrusted { status, user }
                } else {
                    HttpVerdict::Trusted { status, user }
                }
            }
            _ => HttpVerdict::Unknown {
                why: format!("{request} answered {}", status_words(response)),
            },
        }
    }

    /// In words, as `observed` shows it. `with_client`: a client certificate was presented (else
    /// "trusted" would overstate an anonymous answer).
    pub(crate) fn describe(&self, with_client: bool) -> String {
        match (self, with_client) {
            (
                HttpVerdict::Trusted {
                    status,
                    user: Some(u),
                },
                _,
            ) => {
                format!("trusted: authenticated as {u} ({status})")
            }
            (HttpVerdict::Trusted { status: 403, .. }, true) => {
                "trusted: authenticated, not authorized (403)".into()
            }
            (HttpVerdict::Trusted { status, .. }, true) => {
                format!("trusted: authenticated ({status})")
            }
            (HttpVerdict::Trusted { status, .. }, false) => {
                format!("answered {status} without a client certificate")
            }
            (
                HttpVerdict::Untrusted {
                    status,
                    user: Some(u),
                },
                _,
            ) => {
                format!("not trusted: the request was taken as {u} ({status})")
            }
            (HttpVerdict::Untrusted { status, .. }, true) => {
                format!("not trusted: the client certificate was refused ({status})")
            }
            (HttpVerdict::Untrusted { status, .. }, false) => {
                format!(
                    "not trusted: a request without a client certificate was refused ({status})"
                )
            }
            (HttpVerdict::Unknown { why }, _) => format!("unknown: {why}"),
        }
    }
}

/// `503 Service Unavailable`, or `503` without a reason phrase.
fn status_words(response: &Response) -> String {
    if response.reason.is_empty() {
        response.status.to_string()
    } else {
        format!("{} {}", response.status, response.reason)
    }
}

/// `status.userInfo.username` of a SelfSubjectReview answer.
fn reviewed_user(body: &[u8]) -> Option<String> {
    let review: Value = serde_json::from_slice(body).ok()?;
    review
        .pointer("/status/userInfo/username")?
        .as_str()
        .map(str::to_string)
}

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The endpoint reflects the generation.
    Converged,
    /// It does not.
    Stale,
    /// It could not be told (retried; stale if it lasts to the deadline).
    Unknown,
}

/// The result of one check against the bundle's current generation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Verdict {
    /// Converged, stale or unknown.
    pub outcome: Outcome,
    /// What was seen, in words (`/status`, `endpoint_stale`).
    pub observed: String,
    /// SHA-256 of the leaf served.
    pub fingerprint: Option<String>,
    /// The served leaf's notAfter.
    pub not_after: Option<i64>,
    /// `check = "root-ca-configmaps"`: the namespaces counted and the stale ones.
    pub namespaces: Option<super::root_ca::NamespaceTally>,
}

impl Verdict {
    /// Whether the endpoint reflects the generation.
    pub(crate) fn converged(&self) -> bool {
        self.outcome == Outcome::Converged
    }

    /// A verdict without an observation (the endpoint was not reached, or the check could not
    /// start).
    pub(crate) fn without_observation(outcome: Outcome, observed: String) -> Verdict {
        Verdict {
            outcome,
            observed,
            fingerprint: None,
            not_after: None,
            namespaces: None,
        }
    }
}

/// Judges `observation` of an endpoint against `target`, the bundle's current generation (of
/// `kind`). `with_client`: the probe presented a client certificate.
pub(crate) fn judge(
    check: &ProbeCheck,
    kind: BundleKind,
    target: &Generation,
    with_client: bool,
    observation: Observation,
) -> Verdict {
    let Observation {
        leaf_fingerprint,
        not_after,
        client_requested,
        client_refused,
        answer,
    } = observation;
    let (outcome, observed) = match check {
        ProbeCheck::Tls => judge_tls(
            kind,
            target,
            &leaf_fingerprint,
            client_requested,
            client_refused,
        ),
        ProbeCheck::Http(request) => judge_http(
            kind,
            target,
            &leaf_fingerprint,
            request,
            with_client,
            client_requested,
            client_refused,
            answer,
        ),
        ProbeCheck::Jwks(request) => judge_jwks(target, request, client_refused, answer),
        // Read through the Kubernetes API (converge::root_ca), never from a handshake.
        ProbeCheck::RootCaConfigMaps { .. } => (
            Outcome::Unknown,
            "unknown: check = \"root-ca-configmaps\" does not judge a TLS endpoint".into(),
        ),
    };
    Verdict {
        outcome,
        observed,
        fingerprint: Some(leaf_fingerprint),
        not_after,
        namespaces: None,
    }
}

/// The served leaf against the generation's: (it is the one, in words).
fn leaf_matches(target: &Generation, served: &str) -> (bool, String) {
    if target.leaf().map(|l| l.fingerprint.as_str()) == Some(served) {
        (true, "serves the current certificate".into())
    } else {
        (
            false,
            format!("serves another certificate (sha256 {served})"),
        )
    }
}

const NOT_ASKED: &str =
    "did not ask for a client certificate: it trusts no client CA, so not this one";

fn judge_tls(
    kind: BundleKind,
    target: &Generation,
    served: &str,
    client_requested: bool,
    client_refused: Option<String>,
) -> (Outcome, String) {
    match kind {
        BundleKind::Ca => match client_refused {
            Some(alert) => (
                Outcome::Stale,
                format!("refused the client certificate: {alert}"),
            ),
            None if !client_requested => (Outcome::Stale, NOT_ASKED.into()),
            None => (Outcome::Converged, "accepted the client certificate".into()),
        },
        BundleKind::Server | BundleKind::Client | BundleKind::Kubeconfig => {
            let (same, mut observed) = leaf_matches(target, served);
            if let Some(alert) = client_refused {
                // Reported beside the leaf: a CA rotation the endpoint has not picked up is the
                // ca bundle's probe's finding, not this one's.
                observed.push_str(&format!("; refused the client certificate: {alert}"));
            }
            let outcome = if same {
                Outcome::Converged
            } else {
                Outcome::Stale
            };
            (outcome, observed)
        }
        BundleKind::SaKeys => (
            Outcome::Stale,
            "an sa-keys bundle is probed with check = \"jwks\"".into(),
        ),
    }
}

#[expect(
    clippy::too_many_arguments,
    reason = "each argument is one fact the HTTP probe gathered, from its one caller; a struct would only repeat these names there"
)]
fn judge_http(
    kind: BundleKind,
    target: &Generation,
    served: &str,
    request: &ProbeRequest,
    with_client: bool,
    client_requested: bool,
    client_refused: Option<String>,
    answer: Option<Result<Response, HttpError>>,
) -> (Outcome, String) {
    // What the request says about our credentials (the TLS level first: a server that verifies
    // in the handshake refuses there, before any HTTP).
    let (trust, trust_words) = match (client_refused, answer) {
        (Some(alert), _) => (
            Outcome::Stale,
            format!("not trusted: refused the client certificate in the TLS handshake: {alert}"),
        ),
        (None, None) => (Outcome::Unknown, format!("unknown: {request}: no answer")),
        (None, Some(answer)) => {
            let verdict = HttpVerdict::of(&answer, request);
            let outcome = match verdict {
                HttpVerdict::Trusted { .. } => Outcome::Converged,
                HttpVerdict::Untrusted { .. } => Outcome::Stale,
                HttpVerdict::Unknown { .. } => Outcome::Unknown,
            };
            (outcome, verdict.describe(with_client))
        }
    };
    match kind {
        BundleKind::Ca if !client_requested => (Outcome::Stale, NOT_ASKED.into()),
        BundleKind::Ca => (trust, trust_words),
        _ => {
            let (same, leaf_words) = leaf_matches(target, served);
            match (same, trust) {
                (false, _) => (Outcome::Stale, format!("{leaf_words}; {trust_words}")),
                (true, Outcome::Unknown) => {
                    (Outcome::Unknown, format!("{trust_words} ({leaf_words})"))
                }
                (true, outcome) => (outcome, format!("{leaf_words}; {trust_words}")),
            }
        }
    }
}

fn judge_jwks(
    target: &Generation,
    request: &ProbeRequest,
    client_refused: Option<String>,
    answer: Option<Result<Response, HttpError>>,
) -> (Outcome, String) {
    let unknown = |why: String| (Outcome::Unknown, format!("unknown: {why}"));
    let response = match (client_refused, answer) {
        (Some(alert), _) => {
            return unknown(format!(
                "cannot read the key set: the client certificate was refused in the TLS handshake: {alert}"
            ))
        }
        (None, None) => return unknown(format!("{request}: no answer")),
        (None, Some(Err(e))) => return unknown(format!("{request}: {e}")),
        (None, Some(Ok(r))) => r,
    };
    if response.status != 200 {
        let hint = match response.status {
            401 | 403 => " (the key set is not readable with these credentials)",
            404 => " (no service-account issuer discovery on this server?)",
            _ => "",
        };
        return unknown(format!(
            "{request} answered {}{hint}",
            status_words(&response)
        ));
    }
    match served_key_ids(&response.body) {
        Err(e) => unknown(format!("{request}: {e}")),
        Ok(served) => {
            let comparison = KeyComparison::new(&target.material.key_ids, &served);
            let outcome = if comparison.accepts_all() {
                Outcome::Converged
            } else {
                Outcome::Stale
            };
            (outcome, comparison.describe())
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;
    use crate::material::{inspect::CertInfo, validate::Material};

    fn generation(leaf: Option<&str>, key_ids: &[&str]) -> Generation {
        Generation {
            number: 3,
            accepted_at: SystemTime::now(),
            material: Material {
                leaf: leaf.map(CertInfo::with_fingerprint),
                chain: vec![],
                key: None,
                cas: vec![],
                ca_der: vec![],
                key_ids: key_ids.iter().map(|k| k.to_string()).collect(),
            },
        }
    }

    fn response(status: u16, body: &str) -> Result<Response, HttpError> {
        Ok(Response {
            status,
            reason: String::new(),
            headers: vec![],
            body: body.as_bytes().to_vec(),
        })
    }

    fn observation(
        leaf: &str,
        refused: Option<&str>,
        answer: Option<Result<Response, HttpError>>,
    ) -> Observation {
        Observation {
            leaf_fingerprint: leaf.into(),
            not_after: Some(1),
            client_requested: true,
            client_refused: refused.map(str::to_string),
            answer,
        }
    }

    fn request(text: &str) -> ProbeRequest {
        ProbeRequest::parse(text).expect("request")
    }

    fn ssr() -> ProbeRequest {
        request("POST /apis/authentication.k8s.io/v1/selfsubjectreviews")
    }

    const REVIEW: &str = r#"{"kind":"SelfSubjectReview","apiVersion":"authentication.k8s.io/v1","metadata":{"creationTimestamp":null},"status":{"userInfo":{"username":"kube-apiserver-kubelet-client","groups":["kubeadm:cluster-admins","system:authenticated"]}}}"#;

    #[test]
    fn http_answers_classify_by_status() {
        let healthz = request("GET /healthz");
        for status in [200, 201, 204, 403] {
            assert_eq!(
                HttpVerdict::of(&response(status, ""), &healthz),
                HttpVerdict::Trusted { status, user: None },
                "{status}"
            );
        }
        assert_eq!(
            HttpVerdict::of(&response(401, r#"{"kind":"Status","code":401}"#), &healthz),
            HttpVerdict::Untrusted {
                status: 401,
                user: None
            }
        );
        for status in [500, 502, 503, 429, 404, 301, 400] {
            let v = HttpVerdict::of(&response(status, ""), &healthz);
            assert!(
                matches!(&v, HttpVerdict::Unknown { why } if why.contains(&status.to_string())),
                "{status}: {v:?}"
            );
        }
        let dropped = HttpVerdict::of(
            &Err(HttpError::Truncated("before the status line")),
            &healthz,
        );
        assert_eq!(
            dropped.describe(true),
            "unknown: GET /healthz: the connection closed before the status line"
        );
    }

    #[test]
    fn a_self_subject_review_names_the_user_and_anonymous_is_not_trust() {
        let v = HttpVerdict::of(&response(201, REVIEW), &ssr());
        assert_eq!(
            v,
            HttpVerdict::Trusted {
                status: 201,
                user: Some("kube-apiserver-kubelet-client".into())
            }
        );
        assert_eq!(
            v.describe(true),
            "trusted: authenticated as kube-apiserver-kubelet-client (201)"
        );
        let anonymous = REVIEW.replace("kube-apiserver-kubelet-client", "system:anonymous");
        assert_eq!(
            HttpVerdict::of(&response(201, &anonymous), &ssr()),
            HttpVerdict::Untrusted {
                status: 201,
                user: Some("system:anonymous".into())
            }
        );
        // A 201 whose body says nothing is still an authenticated answer.
        assert_eq!(
            HttpVerdict::of(&response(201, "not json"), &ssr()),
            HttpVerdict::Trusted {
                status: 201,
                user: None
            }
        );
        // Only a SelfSubjectReview's body is read for a user.
        assert_eq!(
            HttpVerdict::of(&response(201, REVIEW), &request("POST /other")),
            HttpVerdict::Trusted {
                status: 201,
                user: None
            }
        );
    }

    #[test]
    fn ca_trust_over_http_follows_the_answer_not_the_handshake() {
        let ca = generation(None, &[]);
        let check = ProbeCheck::Http(ssr());
        let judged = |obs| judge(&check, BundleKind::Ca, &ca, true, obs);
        let v = judged(observation("f", None, Some(response(401, ""))));
        assert_eq!(v.outcome, Outcome::Stale);
        assert_eq!(
            v.observed,
            "not trusted: the client certificate was refused (401)"
        );
        let v = judged(observation("f", None, Some(response(201, REVIEW))));
        assert_eq!(v.outcome, Outcome::Converged);
        assert_eq!(
            v.observed,
            "trusted: authenticated as kube-apiserver-kubelet-client (201)"
        );
        let v = judged(observation("f", None, Some(response(503, ""))));
        assert_eq!(v.outcome, Outcome::Unknown);
        assert!(v.observed.starts_with("unknown: "), "{}", v.observed);
        let v = judged(observation(
            "f",
            None,
            Some(Err(HttpError::Timeout(std::time::Duration::from_secs(5)))),
        ));
        assert_eq!(v.outcome, Outcome::Unknown);
        let v = judged(observation(
            "f",
            Some("received fatal alert: BadCertificate"),
            None,
        ));
        assert_eq!(v.outcome, Outcome::Stale);
        assert!(
            v.observed.contains("in the TLS handshake"),
            "{}",
            v.observed
        );
        let mut not_asked = observation("f", None, Some(response(200, "")));
        not_asked.client_requested = false;
        assert_eq!(judged(not_asked).outcome, Outcome::Stale);
        // The same silence under check = "tls" was (and for etcd rightly is) acceptance.
        let v = judge(
            &ProbeCheck::Tls,
            BundleKind::Ca,
            &ca,
            true,
            observation("f", None, None),
        );
        assert_eq!(v.outcome, Outcome::Converged);
    }

    #[test]
    fn server_bundles_over_http_need_the_leaf_and_no_401() {
        let srv = generation(Some("current"), &[]);
        let check = ProbeCheck::Http(request("GET /healthz"));
        let judged = |obs| judge(&check, BundleKind::Server, &srv, true, obs);
        let v = judged(observation("current", None, Some(response(200, "ok"))));
        assert_eq!(v.outcome, Outcome::Converged, "{}", v.observed);
        assert_eq!(
            v.observed,
            "serves the current certificate; trusted: authenticated (200)"
        );
        let v = judged(observation("current", None, Some(response(401, ""))));
        assert_eq!(v.outcome, Outcome::Stale, "{}", v.observed);
        let v = judged(observation("old", None, Some(response(200, ""))));
        assert_eq!(v.outcome, Outcome::Stale);
        assert!(v
            .observed
            .starts_with("serves another certificate (sha256 old)"));
        let v = judged(observation("current", None, Some(response(500, ""))));
        assert_eq!(v.outcome, Outcome::Unknown);
        assert!(
            v.observed.starts_with("unknown: ")
                && v.observed.ends_with("(serves the current certificate)"),
            "{}",
            v.observed
        );
        let v = judge(
            &check,
            BundleKind::Server,
            &srv,
            false,
            observation("current", None, Some(response(200, ""))),
        );
        assert_eq!(
            v.observed,
            "serves the current certificate; answered 200 without a client certificate"
        );
    }

    #[test]
    fn tls_check_judges_the_leaf_even_when_the_client_certificate_is_refused() {
        let srv = generation(Some("current"), &[]);
        let v = judge(
            &ProbeCheck::Tls,
            BundleKind::Server,
            &srv,
            true,
            observation("current", Some("received fatal alert: UnknownCA"), None),
        );
        assert_eq!(v.outcome, Outcome::Converged);
        assert_eq!(
            v.observed,
            "serves the current certificate; refused the client certificate: received fatal alert: UnknownCA"
        );
        let v = judge(
            &ProbeCheck::Tls,
            BundleKind::Server,
            &srv,
            true,
            observation("old", Some("received fatal alert: UnknownCA"), None),
        );
        assert_eq!(v.outcome, Outcome::Stale);
        let ca = generation(None, &[]);
        let v = judge(
            &ProbeCheck::Tls,
            BundleKind::Ca,
            &ca,
            true,
            observation("f", Some("received fatal alert: UnknownCA"), None),
        );
        assert_eq!(v.outcome, Outcome::Stale);
    }

    #[test]
    fn jwks_needs_every_bundle_key_id_and_anything_unreadable_is_unknown() {
        let sa = generation(None, &["new", "old"]);
        let check = ProbeCheck::Jwks(request("GET /openid/v1/jwks"));
        let judged = |obs| judge(&check, BundleKind::SaKeys, &sa, false, obs);
        let v = judged(observation(
            "f",
            None,
            Some(response(200, r#"{"keys":[{"kid":"old"}]}"#)),
        ));
        assert_eq!(v.outcome, Outcome::Stale);
        assert_eq!(
            v.observed,
            "does not accept 1 of the bundle's 2 key ids: missing new"
        );
        let v = judged(observation(
            "f",
            None,
            Some(response(200, r#"{"keys":[{"kid":"old"},{"kid":"new"}]}"#)),
        ));
        assert_eq!(v.outcome, Outcome::Converged);
        for answer in [
            response(401, ""),
            response(404, ""),
            response(503, ""),
            response(200, "<html>"),
            Err(HttpError::Truncated("inside the body")),
        ] {
            let v = judged(observation("f", None, Some(answer)));
            assert_eq!(v.outcome, Outcome::Unknown, "{}", v.observed);
            assert!(v.observed.starts_with("unknown: "), "{}", v.observed);
        }
    }
}
