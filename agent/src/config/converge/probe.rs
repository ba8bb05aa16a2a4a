//! `[[probe]]`: an endpoint that must serve (or, for a ca bundle, trust) a bundle's current
//! generation, and how it is asked.

use std::{path::PathBuf, time::Duration};

use serde::Deserialize;
use toml::Spanned;

use super::kind_of;
use crate::config::{bounds, BundleConfig, BundleKind, ConfigError, Source};

/// Default time an endpoint gets to serve a new generation.
pub(crate) const DEFAULT_DEADLINE: Duration = Duration::from_secs(60);
/// Default steady-state check period.
pub(crate) const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);

/// One endpoint that must serve (or, for a ca bundle, trust) a bundle's current generation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ProbeConfig {
    /// Unique name (records, metrics).
    pub name: String,
    /// `host:port` to handshake with; for `check = "root-ca-configmaps"`, which reads through the
    /// Kubernetes API instead, [`ROOT_CA_ENDPOINT`] (what records and `/status` show).
    pub endpoint: String,
    /// SNI sent in the handshake.
    pub server_name: String,
    /// The bundle whose current generation the endpoint must reflect. A server/client bundle: the
    /// endpoint serves its leaf. A ca bundle: the endpoint accepts a client certificate issued by
    /// it (from `client_bundle`).
    pub bundle: String,
    /// A client bundle presented in the handshake (endpoints that demand a client certificate),
    /// or a kubeconfig bundle, whose embedded client certificate is presented (kubeadm's
    /// `admin.conf` identity may read what `apiserver-kubelet-client` may not, such as the JWKS).
    pub client_bundle: Option<String>,
    /// After a new generation: how long the endpoint has before it is reported stale.
    pub deadline: Duration,
    /// Steady-state check period (catches "renewed on disk, never reloaded").
    pub interval: Duration,
    /// What the probe does after the handshake (`check = "tls" | "http" | "jwks"`), or instead of
    /// one (`check = "root-ca-configmaps"`).
    pub check: ProbeCheck,
    /// `bearer_token_file`: a file whose content is sent as `Authorization: Bearer …` with the
    /// probe's HTTP request (`check = "http"` or `"jwks"`). Read again at every check, because a
    /// kubelet-projected ServiceAccount token is rotated in place: a pod's own token is the
    /// least-privileged identity that may read the API server's JWKS. Only the path is kept here;
    /// the token is never logged, recorded or shown.
    pub bearer_token_file: Option<PathBuf>,
}

/// How a probe judges an endpoint. The TLS handshake alone is right for servers that verify a
/// client certificate in the handshake (etcd: `tls.RequireAndVerifyClientCert`); Kubernetes
/// servers (kube-apiserver, kube-controller-manager, kube-scheduler, the kubelet) accept any client
/// certificate there (`tls.RequestClientCert`) and refuse it per HTTP request with 401, so their
/// trust can only be seen in an HTTP answer.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) enum ProbeCheck {
    /// `check = "tls"` (default): the served leaf, and a client certificate refused in (or right
    /// after) the handshake.
    #[default]
    Tls,
    /// `check = "http"`: the TLS judgement of the leaf, then one HTTP/1.1 request over the same
    /// mTLS connection. 401 = the client certificate is not trusted; 200/201/204/403 = trusted;
    /// anything else, or no answer = unknown (retried, never converged).
    Http(ProbeRequest),
    /// `check = "jwks"` (sa-keys bundles only): read the API server's JSON Web Key Set and require
    /// every key id of the bundle's current generation in it.
    Jwks(ProbeRequest),
    /// `check = "root-ca-configmaps"` (ca bundles only): through the Kubernetes API, list the
    /// namespaces and read `kube-root-ca.crt` in each; converged when every namespace's `ca.crt`
    /// holds every certificate of the bundle's current generation. kube-controller-manager's
    /// root-CA publisher writes those ConfigMaps from the `--root-ca-file` it read at start, so
    /// this is how a CA added on disk is seen to have reached the pods' trust, or not.
    RootCaConfigMaps {
        /// How many ConfigMap reads are in flight at once (`concurrency`).
        concurrency: usize,
    },
}

/// The `endpoint` a `root-ca-configmaps` probe shows in records and `/status`: every namespace's
/// `kube-root-ca.crt`, read through the API server the agent's credentials name.
pub(crate) const ROOT_CA_ENDPOINT: &str = "*/kube-root-ca.crt";
/// Default `concurrency` of a `root-ca-configmaps` probe.
pub(crate) const DEFAULT_ROOT_CA_CONCURRENCY: usize = 8;

impl ProbeCheck {
    /// The configured word (`tls`, `http`, `jwks`), for messages.
    #[cfg(test)]
    pub(crate) fn name(&self) -> &'static str {
        match self {
            ProbeCheck::Tls => "tls",
            ProbeCheck::Http(_) => "http",
            ProbeCheck::Jwks(_) => "jwks",
            ProbeCheck::RootCaConfigMaps { .. } => "root-ca-configmaps",
        }
    }

    /// The HTTP request the check sends, if any.
    pub(crate) fn request(&self) -> Option<&ProbeRequest> {
        match self {
            ProbeCheck::Tls | ProbeCheck::RootCaConfigMaps { .. } => None,
            ProbeCheck::Http(r) | ProbeCheck::Jwks(r) => Some(r),
        }
    }
}

/// Default `request` of `check = "http"`: every Kubernetes server answers it, and
/// controller-manager and scheduler authenticate it without an authorization step (it is in their
/// `AlwaysAllowPaths`).
pub(crate) const DEFAULT_HTTP_REQUEST: &str = "GET /healthz";
/// Default `request` of `check = "jwks"`: kube-apiserver's service-account issuer key set.
pub(crate) const DEFAULT_JWKS_REQUEST: &str = "GET /openid/v1/jwks";
/// The path suffix that makes a POST a SelfSubjectReview (body added automatically).
const SELF_SUBJECT_REVIEWS: &str = "/selfsubjectreviews";
/// The body of a SelfSubjectReview: the API server answers 201 with the user the client
/// certificate authenticated as.
pub(crate) const SELF_SUBJECT_REVIEW_BODY: &str =
    r#"{"apiVersion":"authentication.k8s.io/v1","kind":"SelfSubjectReview"}"#;

/// `request = "METHOD /path"`: what an `http` or `jwks` probe sends. A `POST` to a path ending in
/// `/selfsubjectreviews` (e.g. `/apis/authentication.k8s.io/v1/selfsubjectreviews`) is sent with
/// a SelfSubjectReview body and `Content-Type: application/json`; every other request has no body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ProbeRequest {
    /// Upper-case method token (`GET`, `POST`).
    pub method: String,
    /// Absolute path with an optional query (`/healthz`, `/livez?verbose`).
    pub path: String,
}

impl ProbeRequest {
    /// Parses `"METHOD /path"`; the error says what is wrong.
    pub(crate) fn parse(text: &str) -> Result<ProbeRequest, String> {
        let mut words = text.split_whitespace();
        let (Some(method), Some(path), None) = (words.next(), words.next(), words.next()) else {
            return Err(format!(
                "{text:?} is not \"METHOD /path\" (e.g. \"GET /healthz\")"
            ));
        };
        if !method.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(format!(
                "{method:?} is not an HTTP method in upper case (GET, POST, ...)"
            ));
        }
        if !path.starts_with('/') || path.bytes().any(|b| b.is_ascii_control() || b == b'#') {
            return Err(format!(
                "{path:?} is not an absolute path (it starts with /, no fragment)"
            ));
        }
        Ok(ProbeRequest {
            method: method.to_string(),
            path: path.to_string(),
        })
    }

    /// Whether this is a SelfSubjectReview (its answer names the authenticated user).
    pub(crate) fn is_self_subject_review(&self) -> bool {
        self.method == "POST"
            && self
                .path
                .split(['?', '#'])
                .next()
                .is_some_and(|p| p.trim_end_matches('/').ends_with(SELF_SUBJECT_REVIEWS))
    }

    /// The body sent with the request and its content type: a SelfSubjectReview for a POST to
    /// `…/selfsubjectreviews`, else none.
    pub(crate) fn body(&self) -> Option<(&'static str, &'static [u8])> {
        self.is_self_subject_review()
            .then_some(("application/json", SELF_SUBJECT_REVIEW_BODY.as_bytes()))
    }
}

impl std::fmt::Display for ProbeRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.method, self.path)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawProbe {
    name: String,
    endpoint: Option<Spanned<String>>,
    server_name: Option<String>,
    bundle: String,
    client_bundle: Option<String>,
    deadline: Option<Spanned<String>>,
    interval: Option<Spanned<String>>,
    check: Option<Spanned<String>>,
    request: Option<Spanned<String>>,
    bearer_token_file: Option<Spanned<PathBuf>>,
    concurrency: Option<Spanned<i64>>,
}

pub(crate) fn parse_probes(
    src: &Source<'_>,
    raw: &[Spanned<RawProbe>],
    bundles: &[BundleConfig],
) -> Result<Vec<ProbeConfig>, ConfigError> {
    let mut out: Vec<ProbeConfig> = Vec::new();
    for spanned in raw {
        let offset = spanned.span().start;
        let p = spanned.get_ref();
        let field = |f: &str| format!("probe[{}].{f}", p.name);
        if out.iter().any(|o| o.name == p.name) {
            return Err(src.invalid(offset, field("name"), "duplicate probe name"));
        }
        out.push(parse_probe(src, offset, p, bundles, &field)?);
    }
    Ok(out)
}

/// One probe at `offset`: its endpoint, bundles, check, timing and token.
fn parse_probe(
    src: &Source<'_>,
    offset: usize,
    p: &RawProbe,
    bundles: &[BundleConfig],
    field: &dyn Fn(&str) -> String,
) -> Result<ProbeConfig, ConfigError> {
    let kind = kind_of(bundles, &p.bundle).ok_or_else(|| {
        src.invalid(
            offset,
            field("bundle"),
            format!("no bundle named {:?}", p.bundle),
        )
    })?;
    let check = parse_check(src, offset, p, kind, field)?;
    let (endpoint, server_name) = parse_endpoint(src, offset, p, &check, field)?;
    check_client_bundle(p, kind, &check, bundles)
        .map_err(|m| src.invalid(offset, field("client_bundle"), m))?;
    let duration = |v: &Option<Spanned<String>>, name: &str, default, range| {
        src.duration_or(v.as_ref(), &field(name), default, range)
    };
    let interval = duration(
        &p.interval,
        "interval",
        DEFAULT_INTERVAL,
        &bounds::PROBE_INTERVAL,
    )?;
    let bearer_token_file = parse_bearer(src, p, &check, field)?;
    Ok(ProbeConfig {
        name: p.name.clone(),
        endpoint,
        server_name,
        bundle: p.bundle.clone(),
        client_bundle: p.client_bundle.clone(),
        deadline: duration(
            &p.deadline,
            "deadline",
            DEFAULT_DEADLINE,
            &bounds::PROBE_DEADLINE,
        )?,
        interval,
        check,
        bearer_token_file,
    })
}

/// `endpoint` and `server_name`: required `host:port` (SNI defaulting to its host) for a check over
/// TLS; absent for `root-ca-configmaps`, which reads through the Kubernetes API.
fn parse_endpoint(
    src: &Source<'_>,
    offset: usize,
    p: &RawProbe,
    check: &ProbeCheck,
    field: &dyn Fn(&str) -> String,
) -> Result<(String, String), ConfigError> {
    if let ProbeCheck::RootCaConfigMaps { .. } = check {
        let why = "check = \"root-ca-configmaps\" reads the ConfigMaps through the Kubernetes API (in-cluster credentials or KUBECONFIG), not from an endpoint";
        if let Some(e) = &p.endpoint {
            return Err(src.invalid(e.span().start, field("endpoint"), why));
        }
        if p.server_name.is_some() {
            return Err(src.invalid(offset, field("server_name"), why));
        }
        return Ok((ROOT_CA_ENDPOINT.to_string(), String::new()));
    }
    let Some(endpoint) = &p.endpoint else {
        return Err(src.invalid(offset, field("endpoint"), "missing: the host:port to probe"));
    };
    let host = endpoint_host(endpoint.get_ref())
        .map_err(|m| src.invalid(endpoint.span().start, field("endpoint"), m))?;
    let server_name = p
        .server_name
        .clone()
        .unwrap_or_else(|| host.trim_matches(['[', ']']).to_string());
    Ok((endpoint.get_ref().clone(), server_name))
}

/// The host of a `host:port` endpoint, or what is wrong with it.
fn endpoint_host(endpoint: &str) -> Result<&str, String> {
    let Some((host, port)) = endpoint.rsplit_once(':') else {
        return Err("expected host:port".into());
    };
    if host.is_empty() || port.parse::<u16>().is_err() {
        return Err(format!("{endpoint:?} is not host:port"));
    }
    Ok(host)
}

/// `client_bundle`: a client (or kubeconfig) bundle, required when the probed bundle is a CA
/// (except by `root-ca-configmaps`, which presents none).
fn check_client_bundle(
    p: &RawProbe,
    kind: BundleKind,
    check: &ProbeCheck,
    bundles: &[BundleConfig],
) -> Result<(), String> {
    if let ProbeCheck::RootCaConfigMaps { .. } = check {
        return match p.client_bundle {
            Some(_) => Err("check = \"root-ca-configmaps\" presents no client certificate: it reads the ConfigMaps with the agent's Kubernetes credentials".into()),
            None => Ok(()),
        };
    }
    if let Some(c) = &p.client_bundle {
        if !matches!(
            kind_of(bundles, c),
            Some(BundleKind::Client | BundleKind::Kubeconfig)
        ) {
            return Err(format!(
                "{c:?} is not a client bundle (kind = \"client\" or \"kubeconfig\")"
            ));
        }
    }
    if kind == BundleKind::Ca && p.client_bundle.is_none() {
        return Err("a probe of a ca bundle checks that the endpoint trusts it: it needs a client bundle issued by that CA".into());
    }
    Ok(())
}

/// `bearer_token_file`: only with a check that sends a request, and not empty.
fn parse_bearer(
    src: &Source<'_>,
    p: &RawProbe,
    check: &ProbeCheck,
    field: &dyn Fn(&str) -> String,
) -> Result<Option<PathBuf>, ConfigError> {
    match &p.bearer_token_file {
        None => Ok(None),
        Some(f) if check.request().is_none() => Err(src.invalid(
            f.span().start,
            field("bearer_token_file"),
            "a bearer token is sent with an HTTP request: check = \"http\" or \"jwks\"",
        )),
        Some(f) if f.get_ref().as_os_str().is_empty() => {
            Err(src.invalid(f.span().start, field("bearer_token_file"), "empty path"))
        }
        Some(f) => Ok(Some(f.get_ref().clone())),
    }
}

/// `check` and `request` of one probe, checked against its bundle's kind.
fn parse_check(
    src: &Source<'_>,
    offset: usize,
    p: &RawProbe,
    kind: BundleKind,
    field: &dyn Fn(&str) -> String,
) -> Result<ProbeCheck, ConfigError> {
    let (word, word_at) = match &p.check {
        Some(c) => (c.get_ref().as_str(), c.span().start),
        None => ("tls", offset),
    };
    let request = |default: &str| match &p.request {
        Some(r) => ProbeRequest::parse(r.get_ref())
            .map_err(|m| src.invalid(r.span().start, field("request"), m)),
        None => Ok(ProbeRequest::parse(default).expect("the default request parses")),
    };
    let no_request = || match &p.request {
        Some(r) => Err(src.invalid(
            r.span().start,
            field("request"),
            "a request is sent only by check = \"http\" or \"jwks\"",
        )),
        None => Ok(()),
    };
    let check = match word {
        "tls" => no_request().map(|()| ProbeCheck::Tls)?,
        "http" => ProbeCheck::Http(request(DEFAULT_HTTP_REQUEST)?),
        "jwks" => ProbeCheck::Jwks(request(DEFAULT_JWKS_REQUEST)?),
        "root-ca-configmaps" => {
            no_request()?;
            let concurrency = match &p.concurrency {
                Some(c) => src.count_in(c, &field("concurrency"), &bounds::ROOT_CA_CONCURRENCY)?,
                None => DEFAULT_ROOT_CA_CONCURRENCY as u64,
            };
            ProbeCheck::RootCaConfigMaps {
                concurrency: usize::try_from(concurrency).expect("bounded far below usize::MAX"),
            }
        }
        other => {
            return Err(src.invalid(
                word_at,
                field("check"),
                format!(
                    "{other:?} is not one of \"tls\", \"http\", \"jwks\", \"root-ca-configmaps\""
                ),
            ))
        }
    };
    if let (Some(c), false) = (
        &p.concurrency,
        matches!(check, ProbeCheck::RootCaConfigMaps { .. }),
    ) {
        return Err(src.invalid(
            c.span().start,
            field("concurrency"),
            "only check = \"root-ca-configmaps\" makes concurrent requests",
        ));
    }
    match (&check, kind) {
        (ProbeCheck::RootCaConfigMaps { .. }, BundleKind::Ca) => {}
        (ProbeCheck::RootCaConfigMaps { .. }, _) => {
            return Err(src.invalid(
                word_at,
                field("check"),
                format!(
                    "check = \"root-ca-configmaps\" compares the namespaces' kube-root-ca.crt with a ca bundle; {:?} is not one",
                    p.bundle
                ),
            ))
        }
        (ProbeCheck::Jwks(_), BundleKind::SaKeys) => {}
        (ProbeCheck::Jwks(_), _) => {
            return Err(src.invalid(
                word_at,
                field("check"),
                format!(
                    "check = \"jwks\" compares an API server's key ids with an sa-keys bundle; {:?} is not one",
                    p.bundle
                ),
            ))
        }
        (_, BundleKind::SaKeys) => {
            return Err(src.invalid(
                word_at,
                field("check"),
                "an sa-keys bundle is not served over TLS: probe the API server's accepted keys with check = \"jwks\"",
            ))
        }
        // A kubeconfig's embedded client certificate is presented, never served: as the probed
        // bundle every check would compare it with a server's leaf and report stale forever.
        (_, BundleKind::Kubeconfig) => {
            return Err(src.invalid(
                word_at,
                field("bundle"),
                format!(
                    "{:?} is a kubeconfig bundle: its client certificate is not served by an endpoint; use it as client_bundle",
                    p.bundle
                ),
            ))
        }
        _ => {}
    }
    Ok(check)
}
