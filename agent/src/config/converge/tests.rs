use std::path::Path;

use super::{ProbeCheck, ProbeRequest, SELF_SUBJECT_REVIEW_BODY};
use crate::config::{ActionCommand, Config, ConfigError, SignalTarget};

const BUNDLES: &str = r#"
[[bundle]]
name = "srv"
kind = "server"
cert = "/c"
key = "/k"
[[bundle]]
name = "cli"
kind = "client"
cert = "/c2"
key = "/k2"
[[bundle]]
name = "ca"
kind = "ca"
cert = "/ca"
[[bundle]]
name = "sa"
kind = "sa-keys"
private_key = "/sa.key"
public_keys = ["/sa.pub"]
[[bundle]]
name = "admin-conf"
kind = "kubeconfig"
file = "/admin.conf"
"#;

fn parse(extra: &str) -> Result<Config, ConfigError> {
    Config::parse(Path::new("t.toml"), &format!("{BUNDLES}{extra}"))
}

fn error(extra: &str) -> String {
    parse(extra).expect_err("must be refused").to_string()
}

#[test]
fn probes_and_actions_parse_with_defaults() {
    let c = parse(
        r#"
[[probe]]
name = "api"
endpoint = "127.0.0.1:6443"
bundle = "srv"
[[action]]
bundle = "ca"
on = "stale"
signal = "SIGHUP"
process = "etcd"
"#,
    )
    .expect("valid");
    assert_eq!(c.probes[0].server_name, "127.0.0.1");
    assert_eq!(c.probes[0].deadline, super::DEFAULT_DEADLINE);
    assert!(matches!(
        &c.actions[0].command,
        ActionCommand::Signal { name, target: SignalTarget::Process(p), .. } if name == "HUP" && p == "etcd"
    ));
}

#[test]
fn bad_probes_and_actions_name_the_field_and_line() {
    let e = error("[[probe]]\nname = \"x\"\nendpoint = \"nohostport\"\nbundle = \"srv\"\n");
    assert!(
        e.contains("probe[x].endpoint") && e.contains("t.toml:"),
        "{e}"
    );
    let e = error("[[probe]]\nname = \"x\"\nendpoint = \"h:1\"\nbundle = \"ca\"\n");
    assert!(e.contains("probe[x].client_bundle"), "{e}");
    let e = error(
        "[[probe]]\nname = \"x\"\nendpoint = \"h:1\"\nbundle = \"srv\"\nclient_bundle = \"srv\"\n",
    );
    assert!(e.contains("is not a client bundle"), "{e}");
    let e = error("[[probe]]\nname = \"x\"\nendpoint = \"h:1\"\nbundle = \"admin-conf\"\n");
    assert!(
        e.contains("probe[x].bundle") && e.contains("use it as client_bundle"),
        "{e}"
    );
    let e = error("[[action]]\nbundle = \"ca\"\non = \"stale\"\n");
    assert!(e.contains("action[ca].exec"), "{e}");
    let e = error(
        "[[action]]\nbundle = \"ca\"\non = \"stale\"\nsignal = \"KILLALL\"\npidfile = \"/p\"\n",
    );
    assert!(e.contains("action[ca].signal"), "{e}");
    let e = error("[[action]]\nbundle = \"ca\"\non = \"stale\"\nsignal = \"HUP\"\n");
    assert!(e.contains("pidfile or process"), "{e}");
    let e = error("[[action]]\nbundle = \"nope\"\non = \"accepted\"\nexec = [\"/bin/true\"]\n");
    assert!(e.contains("no bundle named"), "{e}");
    let e = error("[[action]]\nbundle = \"ca\"\non = \"sometimes\"\nexec = [\"/bin/true\"]\n");
    assert!(e.contains("sometimes"), "{e}");
}

#[test]
fn an_action_lock_names_its_lease_and_defaults_its_wait() {
    let c = parse(
        "[[action]]\nbundle = \"srv\"\non = \"accepted\"\nexec = [\"/bin/true\"]\nlock = \"kube-apiserver\"\n[[action]]\nbundle = \"srv\"\non = \"stale\"\nexec = [\"/bin/true\"]\nlock = \"etcd\"\nlock_wait = \"90s\"\n[[action]]\nbundle = \"srv\"\non = \"stale\"\nexec = [\"/bin/true\"]\n",
    )
    .expect("valid");
    let lock = c.actions[0].lock.as_ref().expect("lock");
    assert_eq!(lock.lease_name(), "certreload-action-kube-apiserver");
    assert_eq!(lock.wait, super::DEFAULT_LOCK_WAIT);
    let lock = c.actions[1].lock.as_ref().expect("lock");
    assert_eq!(
        (lock.name.as_str(), lock.wait),
        ("etcd", std::time::Duration::from_secs(90))
    );
    assert_eq!(c.actions[2].lock, None);
}

#[test]
fn locks_section_defaults_and_refusals() {
    let c = parse("").expect("valid");
    assert_eq!(c.locks, super::LocksSettings::default());
    assert_eq!(c.locks.namespace, "certreload");
    let c =
        parse("[locks]\nnamespace = \"kube-system\"\nlease_duration = \"15s\"\n").expect("valid");
    assert_eq!(c.locks.namespace, "kube-system");
    assert_eq!(c.locks.lease_duration, std::time::Duration::from_secs(15));
    for (extra, field) in [
        ("[locks]\nnamespace = \"Kube_System\"\n", "locks.namespace"),
        ("[locks]\nlease_duration = \"1s\"\n", "locks.lease_duration"),
        (
            "[locks]\nlease_duration = \"3500ms\"\n",
            "locks.lease_duration",
        ),
    ] {
        let e = error(extra);
        let line = line_of(extra, field.trim_start_matches("locks."));
        assert!(
            e.starts_with(&format!("t.toml:{line}: {field}: ")),
            "expected t.toml:{line}: {field}: …, got {e}"
        );
    }
}

#[test]
fn bad_locks_name_the_field_and_line() {
    let head = "[[action]]\nbundle = \"srv\"\non = \"stale\"\nexec = [\"/bin/true\"]\n";
    for (extra, at, field, message) in [
        (
            "lock = \"Kube_APIServer\"\n",
            "lock = ",
            "action[srv].lock",
            "lower-case",
        ),
        (
            "lock = \"etcd-\"\n",
            "lock = ",
            "action[srv].lock",
            "ends with",
        ),
        ("lock = \"\"\n", "lock = ", "action[srv].lock", "empty"),
        (
            "lock_wait = \"1m\"\n",
            "lock_wait = ",
            "action[srv].lock_wait",
            "goes with lock",
        ),
        (
            "lock = \"etcd\"\nlock_wait = \"soon\"\n",
            "lock_wait = ",
            "action[srv].lock_wait",
            "",
        ),
    ] {
        let text = format!("{head}{extra}");
        let e = error(&text);
        let line = line_of(&text, at);
        assert!(
            e.starts_with(&format!("t.toml:{line}: {field}: ")) && e.contains(message),
            "expected t.toml:{line}: {field}: …{message}…, got {e}"
        );
    }
    let long = "a".repeat(240);
    let e = error(&format!("{head}lock = \"{long}\"\n"));
    assert!(e.contains("too long"), "{e}");
}

/// The line of `needle` in the parsed text (BUNDLES + extra), 1-based.
fn line_of(extra: &str, needle: &str) -> usize {
    let text = format!("{BUNDLES}{extra}");
    let at = text.find(needle).expect("needle in the text");
    text[..at].matches('\n').count() + 1
}

#[test]
fn check_defaults_to_tls_and_http_and_jwks_get_their_default_requests() {
    let c = parse(
        r#"
[[probe]]
name = "plain"
endpoint = "127.0.0.1:2379"
bundle = "srv"
[[probe]]
name = "kcm"
endpoint = "127.0.0.1:10257"
bundle = "ca"
client_bundle = "cli"
check = "http"
[[probe]]
name = "api"
endpoint = "127.0.0.1:6443"
bundle = "ca"
client_bundle = "cli"
check = "http"
request = "POST /apis/authentication.k8s.io/v1/selfsubjectreviews"
[[probe]]
name = "keys"
endpoint = "127.0.0.1:6443"
bundle = "sa"
check = "jwks"
[[probe]]
name = "keys-as-admin"
endpoint = "127.0.0.1:6443"
bundle = "sa"
client_bundle = "admin-conf"
check = "jwks"
"#,
    )
    .expect("valid");
    assert_eq!(c.probes[4].client_bundle.as_deref(), Some("admin-conf"));
    assert_eq!(c.probes[0].check, ProbeCheck::Tls);
    let get = |t: &str| ProbeRequest::parse(t).expect("request");
    assert_eq!(c.probes[1].check, ProbeCheck::Http(get("GET /healthz")));
    assert_eq!(
        c.probes[2].check,
        ProbeCheck::Http(get(
            "POST /apis/authentication.k8s.io/v1/selfsubjectreviews"
        ))
    );
    assert_eq!(
        c.probes[3].check,
        ProbeCheck::Jwks(get("GET /openid/v1/jwks"))
    );
    assert_eq!(c.probes[3].client_bundle, None, "jwks may go anonymous");
}

#[test]
fn a_bearer_token_file_goes_with_an_http_request_only() {
    let c = parse(
        r#"
[[probe]]
name = "keys-as-pod"
endpoint = "127.0.0.1:6443"
bundle = "sa"
check = "jwks"
bearer_token_file = "/var/run/secrets/kubernetes.io/serviceaccount/token"
[[probe]]
name = "healthz"
endpoint = "127.0.0.1:10257"
bundle = "srv"
check = "http"
bearer_token_file = "/run/token"
[[probe]]
name = "keys"
endpoint = "127.0.0.1:6443"
bundle = "sa"
check = "jwks"
"#,
    )
    .expect("valid");
    assert_eq!(
        c.probes[0].bearer_token_file.as_deref(),
        Some(Path::new(
            "/var/run/secrets/kubernetes.io/serviceaccount/token"
        ))
    );
    assert_eq!(
        c.probes[1].bearer_token_file.as_deref(),
        Some(Path::new("/run/token"))
    );
    assert_eq!(c.probes[2].bearer_token_file, None);
    for (extra, message) in [
        (
            "[[probe]]\nname = \"x\"\nendpoint = \"h:1\"\nbundle = \"srv\"\nbearer_token_file = \"/t\"\n",
            "check = \"http\" or \"jwks\"",
        ),
        (
            "[[probe]]\nname = \"x\"\nendpoint = \"h:1\"\nbundle = \"sa\"\ncheck = \"jwks\"\nbearer_token_file = \"\"\n",
            "empty path",
        ),
    ] {
        let e = error(extra);
        let line = line_of(extra, "bearer_token_file");
        assert!(
            e.starts_with(&format!("t.toml:{line}: probe[x].bearer_token_file: "))
                && e.contains(message),
            "expected t.toml:{line}: probe[x].bearer_token_file: …{message}…, got {e}"
        );
    }
}

#[test]
fn a_post_to_selfsubjectreviews_carries_the_review_and_nothing_else_has_a_body() {
    let ssr = ProbeRequest::parse("POST /apis/authentication.k8s.io/v1/selfsubjectreviews")
        .expect("request");
    assert_eq!(
        ssr.body(),
        Some(("application/json", SELF_SUBJECT_REVIEW_BODY.as_bytes()))
    );
    let with_query =
        ProbeRequest::parse("POST /apis/authentication.k8s.io/v1beta1/selfsubjectreviews?x=1")
            .expect("request");
    assert!(with_query.is_self_subject_review());
    for plain in [
        "GET /apis/authentication.k8s.io/v1/selfsubjectreviews",
        "POST /healthz",
        "GET /healthz",
        "POST /selfsubjectreviewsx",
    ] {
        let r = ProbeRequest::parse(plain).expect("request");
        assert_eq!(r.body(), None, "{plain}");
    }
    assert_eq!(
        ssr.to_string(),
        "POST /apis/authentication.k8s.io/v1/selfsubjectreviews"
    );
}

#[test]
fn bad_check_and_request_combinations_name_field_and_line() {
    let cases: [(&str, &str, &str, &str); 8] = [
        (
            "[[probe]]\nname = \"x\"\nendpoint = \"h:1\"\nbundle = \"srv\"\ncheck = \"h2\"\n",
            "check = \"h2\"",
            "probe[x].check",
            "is not one of",
        ),
        (
            "[[probe]]\nname = \"x\"\nendpoint = \"h:1\"\nbundle = \"srv\"\ncheck = \"jwks\"\n",
            "check = \"jwks\"",
            "probe[x].check",
            "sa-keys",
        ),
        (
            "[[probe]]\nname = \"x\"\nendpoint = \"h:1\"\nbundle = \"sa\"\n",
            "[[probe]]",
            "probe[x].check",
            "with check = \"jwks\"",
        ),
        (
            "[[probe]]\nname = \"x\"\nendpoint = \"h:1\"\nbundle = \"sa\"\ncheck = \"http\"\n",
            "check = \"http\"",
            "probe[x].check",
            "not served over TLS",
        ),
        (
            "[[probe]]\nname = \"x\"\nendpoint = \"h:1\"\nbundle = \"srv\"\nrequest = \"GET /healthz\"\n",
            "request = ",
            "probe[x].request",
            "only by check",
        ),
        (
            "[[probe]]\nname = \"x\"\nendpoint = \"h:1\"\nbundle = \"srv\"\ncheck = \"http\"\nrequest = \"/healthz\"\n",
            "request = ",
            "probe[x].request",
            "METHOD /path",
        ),
        (
            "[[probe]]\nname = \"x\"\nendpoint = \"h:1\"\nbundle = \"srv\"\ncheck = \"http\"\nrequest = \"get healthz\"\n",
            "request = ",
            "probe[x].request",
            "upper case",
        ),
        (
            "[[probe]]\nname = \"x\"\nendpoint = \"h:1\"\nbundle = \"ca\"\ncheck = \"http\"\n",
            "[[probe]]",
            "probe[x].client_bundle",
            "needs a client bundle",
        ),
    ];
    for (extra, at, field, message) in cases {
        let e = error(extra);
        let line = line_of(extra, at);
        assert!(
            e.starts_with(&format!("t.toml:{line}: {field}: ")) && e.contains(message),
            "expected t.toml:{line}: {field}: …{message}…, got {e}"
        );
    }
    let e = error("[[probe]]\nname = \"x\"\nendpoint = \"h:1\"\nbundle = \"srv\"\ncheck = \"http\"\nrequest = \"GET /a b\"\n");
    assert!(e.contains("METHOD /path"), "{e}");
    let e = error("[[probe]]\nname = \"x\"\nendpoint = \"h:1\"\nbundle = \"srv\"\ncheck = \"http\"\nrequest = \"GET healthz\"\n");
    assert!(e.contains("absolute path"), "{e}");
    let e = error("[[probe]]\nname = \"x\"\nendpoint = \"h:1\"\nbundle = \"sa\"\ncheck = \"jwks\"\nclient_bundle = \"srv\"\n");
    assert!(e.contains("is not a client bundle"), "{e}");
    let e =
        error("[[probe]]\nname = \"x\"\nendpoint = \"h:1\"\nbundle = \"srv\"\nchecks = \"http\"\n");
    assert!(e.contains("checks"), "unknown keys stay refused: {e}");
}

#[test]
fn a_root_ca_probe_reads_through_the_api_and_its_concurrency_is_bounded() {
    let c = parse(
        "[[probe]]\nname = \"roots\"\nbundle = \"ca\"\ncheck = \"root-ca-configmaps\"\n\
         [[probe]]\nname = \"roots-4\"\nbundle = \"ca\"\ncheck = \"root-ca-configmaps\"\nconcurrency = 4\n",
    )
    .expect("valid");
    assert_eq!(
        c.probes[0].check,
        ProbeCheck::RootCaConfigMaps { concurrency: 8 }
    );
    assert_eq!(c.probes[0].endpoint, "*/kube-root-ca.crt");
    assert_eq!(c.probes[0].client_bundle, None);
    assert_eq!(
        c.probes[1].check,
        ProbeCheck::RootCaConfigMaps { concurrency: 4 }
    );
    let probe = |rest: &str| {
        format!("[[probe]]\nname = \"x\"\nbundle = \"ca\"\ncheck = \"root-ca-configmaps\"\n{rest}")
    };
    let cases: [(String, &str, &str, &str); 7] = [
        (
            probe("concurrency = 0\n"),
            "concurrency",
            "probe[x].concurrency",
            "outside the allowed range 1 to 64",
        ),
        (
            probe("concurrency = 65\n"),
            "concurrency",
            "probe[x].concurrency",
            "outside the allowed range",
        ),
        (
            probe("endpoint = \"h:1\"\n"),
            "endpoint",
            "probe[x].endpoint",
            "through the Kubernetes API",
        ),
        (
            probe("client_bundle = \"cli\"\n"),
            "[[probe]]",
            "probe[x].client_bundle",
            "presents no client certificate",
        ),
        (
            probe("request = \"GET /\"\n"),
            "request",
            "probe[x].request",
            "only by check",
        ),
        (
            "[[probe]]\nname = \"x\"\nbundle = \"srv\"\ncheck = \"root-ca-configmaps\"\n".into(),
            "check = ",
            "probe[x].check",
            "is not one",
        ),
        (
            "[[probe]]\nname = \"x\"\nendpoint = \"h:1\"\nbundle = \"srv\"\nconcurrency = 2\n"
                .into(),
            "concurrency",
            "probe[x].concurrency",
            "only check = \"root-ca-configmaps\"",
        ),
    ];
    for (extra, at, field, message) in cases {
        let e = error(&extra);
        let line = line_of(&extra, at);
        assert!(
            e.starts_with(&format!("t.toml:{line}: {field}: ")) && e.contains(message),
            "expected t.toml:{line}: {field}: …{message}…, got {e}"
        );
    }
    // Every other check still needs its endpoint.
    let e = error("[[probe]]\nname = \"x\"\nbundle = \"srv\"\n");
    assert!(
        e.contains("probe[x].endpoint") && e.contains("missing"),
        "{e}"
    );
}

#[test]
fn a_stale_action_may_name_the_one_probe_whose_verdicts_run_it() {
    let probes = "[[probe]]\nname = \"p-srv\"\nendpoint = \"127.0.0.1:1\"\nbundle = \"srv\"\n[[probe]]\nname = \"p-ca\"\nendpoint = \"127.0.0.1:2\"\nbundle = \"ca\"\nclient_bundle = \"cli\"\n";
    let action = |on: &str, probe: &str| {
        format!("{probes}[[action]]\nbundle = \"srv\"\non = \"{on}\"\nprobe = \"{probe}\"\nexec = [\"/bin/true\"]\n")
    };
    let config = parse(&action("stale", "p-srv")).expect("valid");
    assert_eq!(config.actions[0].probe.as_deref(), Some("p-srv"));
    let without = parse(&format!(
        "{probes}[[action]]\nbundle = \"srv\"\non = \"stale\"\nexec = [\"/bin/true\"]\n"
    ))
    .expect("valid");
    assert_eq!(without.actions[0].probe, None, "any probe of the bundle");
    let e = error(&action("stale", "nope"));
    assert!(
        e.contains("action[srv].probe") && e.contains("no probe named \"nope\""),
        "{e}"
    );
    let e = error(&action("stale", "p-ca"));
    assert!(
        e.contains("checks bundle \"ca\", not this action's \"srv\""),
        "{e}"
    );
    let e = error(&action("accepted", "p-srv"));
    assert!(e.contains("probe goes with on = \"stale\""), "{e}");
    assert!(
        e.contains(&format!(
            "t.toml:{}",
            line_of(&action("accepted", "p-srv"), "probe = ")
        )),
        "{e}"
    );
}
