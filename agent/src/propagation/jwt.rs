//! What a projected ServiceAccount token says about itself: the JWT header's `kid` and the claims
//! the kubelet's token manager and the tracker care about (issued at, expiry, `warnafter`, the pod,
//! ServiceAccount and node it is bound to).
//!
//! Only the header and the claims are decoded. The signature is never decoded or kept, the token
//! text never printed: errors name the check that failed, never a value, so an error that reaches a
//! log or the audit cannot carry a credential. The signature is not verified either: the tracker
//! does not authenticate the token, it asks which key the API server signed it with (the `kid`) so
//! as to compare it with the published key set.

use base64::Engine as _;
use serde::Deserialize;

/// Longest `kid` taken as is: Kubernetes' are 43 characters; an external signer's may differ, but
/// a key id longer than this is not one (and would bloat every record).
const MAX_KID_LEN: usize = 128;

/// The decoded header and claims of one token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TokenClaims {
    /// The key id of the key that signed it (printable ASCII, at most 128 characters).
    pub kid: String,
    /// Issued at, Unix seconds.
    pub iat: i64,
    /// Expires at, Unix seconds (a year after `iat` for kubelet-requested tokens while the API
    /// server extends them: not when the kubelet refreshes).
    pub exp: i64,
    /// `kubernetes.io.warnafter`, Unix seconds: when the token would have expired had it not been
    /// extended (the kubelet refreshes at 80 % of the requested lifetime).
    pub warn_after: Option<i64>,
    /// `sub`: `system:serviceaccount:<namespace>:<name>`.
    pub subject: String,
    /// `kubernetes.io.namespace`.
    pub namespace: String,
    /// `kubernetes.io.pod`: the pod the token is bound to.
    pub pod: Option<BoundObject>,
    /// `kubernetes.io.serviceaccount.name`.
    pub service_account: String,
    /// `kubernetes.io.node.name`: the node of the pod (API servers ≥ 1.30).
    pub node: Option<String>,
}

/// An object a token is bound to.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub(crate) struct BoundObject {
    /// Its name.
    pub name: String,
    /// Its uid.
    #[serde(default)]
    pub uid: String,
}

/// Which check a token failed. Carries no part of the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum JwtCheck {
    /// Not `header.claims.signature`.
    #[error("not a JWT (header.claims.signature)")]
    Shape,
    /// A part is not unpadded base64url.
    #[error("the JWT {0} is not base64url")]
    Base64(Part),
    /// A part is not a JSON object of the expected shape.
    #[error("the JWT {0} is not a JSON object with the expected fields")]
    Json(Part),
    /// The header has no `kid`.
    #[error("the JWT header has no kid")]
    NoKid,
    /// The `kid` is empty, too long or not printable ASCII.
    #[error("the JWT kid is not a key id (1 to 128 printable ASCII characters)")]
    BadKid,
    /// A claim the tracker needs is absent.
    #[error("the JWT claims have no {0}")]
    Missing(&'static str),
}

/// The two decoded parts of a JWT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Part {
    /// The JOSE header.
    Header,
    /// The claims set.
    Claims,
}

impl std::fmt::Display for Part {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Part::Header => "header",
            Part::Claims => "claims",
        })
    }
}

#[derive(Deserialize)]
struct RawHeader {
    kid: Option<String>,
}

#[derive(Deserialize)]
struct RawClaims {
    iat: Option<i64>,
    exp: Option<i64>,
    sub: Option<String>,
    #[serde(rename = "kubernetes.io")]
    kubernetes: Option<RawKubernetes>,
}

#[derive(Deserialize)]
struct RawKubernetes {
    namespace: Option<String>,
    pod: Option<BoundObject>,
    serviceaccount: Option<BoundObject>,
    node: Option<BoundObject>,
    warnafter: Option<i64>,
}

/// Decodes the header and claims of `token` (surrounding whitespace ignored).
pub(crate) fn decode(token: &str) -> Result<TokenClaims, JwtCheck> {
    let mut parts = token.trim().split('.');
    let (Some(header), Some(claims), Some(_signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtCheck::Shape);
    };
    let header: RawHeader = part(header, Part::Header)?;
    let claims: RawClaims = part(claims, Part::Claims)?;
    let kid = header.kid.ok_or(JwtCheck::NoKid)?;
    let printable = kid.bytes().all(|b| b.is_ascii_graphic());
    if kid.is_empty() || kid.len() > MAX_KID_LEN || !printable {
        return Err(JwtCheck::BadKid);
    }
    let k8s = claims
        .kubernetes
        .ok_or(JwtCheck::Missing("kubernetes.io"))?;
    Ok(TokenClaims {
        kid,
        iat: claims.iat.ok_or(JwtCheck::Missing("iat"))?,
        exp: claims.exp.ok_or(JwtCheck::Missing("exp"))?,
        warn_after: k8s.warnafter,
        subject: claims.sub.ok_or(JwtCheck::Missing("sub"))?,
        namespace: k8s
            .namespace
            .ok_or(JwtCheck::Missing("kubernetes.io.namespace"))?,
        pod: k8s.pod,
        service_account: k8s
            .serviceaccount
            .ok_or(JwtCheck::Missing("kubernetes.io.serviceaccount"))?
            .name,
        node: k8s.node.map(|n| n.name),
    })
}

/// One base64url JSON part (padding tolerated). serde's message is dropped: it can quote a value.
fn part<T: serde::de::DeserializeOwned>(text: &str, which: Part) -> Result<T, JwtCheck> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text.trim_end_matches('='))
        .map_err(|_| JwtCheck::Base64(which))?;
    serde_json::from_slice(&bytes).map_err(|_| JwtCheck::Json(which))
}

#[cfg(test)]
pub(crate) mod tests {
    use proptest::prelude::*;

    use super::*;

    fn b64(json: &serde_json::Value) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json.to_string())
    }

    /// A token shaped like one the kubelet writes (claims as kube-apiserver v1.37 issues them for
    /// a pod-bound TokenRequest); the signature is 256 arbitrary bytes, as long as an RS256 one.
    pub(crate) fn kubelet_token(
        kid: &str,
        namespace: &str,
        pod: &str,
        uid: &str,
        iat: i64,
    ) -> String {
        let header = serde_json::json!({"alg": "RS256", "kid": kid});
        let claims = serde_json::json!({
            "aud": ["https://kubernetes.default.svc.cluster.local"],
            "exp": iat + 31_536_000,
            "iat": iat,
            "iss": "https://kubernetes.default.svc.cluster.local",
            "jti": "5d1f0c1e-6d2b-4b59-8c3c-2f5f3c3e9a11",
            "kubernetes.io": {
                "namespace": namespace,
                "node": {"name": "cr-node-1", "uid": "2b0c6a9e-1f0e-4d9b-9a54-7c1d9f8e0a01"},
                "pod": {"name": pod, "uid": uid},
                "serviceaccount": {"name": "default", "uid": "8e7f3a52-4c1b-4e0f-b9d4-0a6c2e1f7b33"},
                "warnafter": iat + 3607
            },
            "nbf": iat,
            "sub": format!("system:serviceaccount:{namespace}:default")
        });
        let signature = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([0x5au8; 256]);
        format!("{}.{}.{signature}", b64(&header), b64(&claims))
    }

    fn kid() -> String {
        crate::material::validate::kubernetes_key_id(b"sa.pub")
    }

    #[test]
    fn decodes_a_kubelet_token() {
        let token = kubelet_token(&kid(), "default", "web-0", "uid-1", 1_790_000_000);
        let c = decode(&format!("{token}\n")).expect("a valid token");
        assert_eq!(c.kid, kid());
        assert_eq!((c.iat, c.exp), (1_790_000_000, 1_790_000_000 + 31_536_000));
        assert_eq!(c.warn_after, Some(1_790_000_000 + 3607));
        assert_eq!(c.subject, "system:serviceaccount:default:default");
        assert_eq!(c.namespace, "default");
        assert_eq!(
            c.pod,
            Some(BoundObject {
                name: "web-0".into(),
                uid: "uid-1".into()
            })
        );
        assert_eq!(c.service_account, "default");
        assert_eq!(c.node.as_deref(), Some("cr-node-1"));
    }

    #[test]
    fn each_failed_check_is_named_without_the_token() {
        let token = kubelet_token(&kid(), "default", "web-0", "uid-1", 1_790_000_000);
        let (header, rest) = token.split_once('.').expect("three parts");
        let (claims, signature) = rest.split_once('.').expect("three parts");
        let no_kid = b64(&serde_json::json!({"alg": "RS256"}));
        let bad_kid = b64(&serde_json::json!({"alg": "RS256", "kid": "a b"}));
        let no_ns = b64(&serde_json::json!({"iat": 1, "exp": 2, "sub": "s", "kubernetes.io": {}}));
        let cases = [
            (format!("{header}.{claims}"), JwtCheck::Shape),
            (format!("{token}.x"), JwtCheck::Shape),
            (
                format!("{header}!.{claims}.{signature}"),
                JwtCheck::Base64(Part::Header),
            ),
            (
                format!("{header}.{header}.{signature}"),
                JwtCheck::Missing("kubernetes.io"),
            ),
            (
                format!("{signature}.{claims}.{signature}"),
                JwtCheck::Json(Part::Header),
            ),
            (format!("{no_kid}.{claims}.{signature}"), JwtCheck::NoKid),
            (format!("{bad_kid}.{claims}.{signature}"), JwtCheck::BadKid),
            (
                format!("{header}.{no_ns}.{signature}"),
                JwtCheck::Missing("kubernetes.io.namespace"),
            ),
        ];
        for (text, check) in cases {
            let err = decode(&text).expect_err(&check.to_string());
            assert_eq!(err, check);
            let shown = err.to_string();
            assert!(
                !shown.contains(signature) && !shown.contains(claims),
                "{shown}"
            );
        }
    }

    proptest! {
        #[test]
        fn arbitrary_text_never_panics_and_no_error_quotes_it(
            text in "[A-Za-z0-9_=.-]{0,400}",
        ) {
            // Only a panic fails: any input may be refused, but never quoted.
            if let Err(e) = decode(&text) {
                let shown = e.to_string();
                prop_assert!(text.len() < 12 || !shown.contains(&text), "{}", shown);
            }
        }

        #[test]
        fn arbitrary_json_parts_never_panic(header in ".{0,200}", claims in ".{0,400}") {
            let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
            decode(&format!("{}.{}.c2ln", b64(&header), b64(&claims))).ok();
        }
    }
}
