//! The admin endpoint's authentication and authorization against the REAL API server of the
//! kubeadm control plane (`certreload_e2e::kube`): the agent runs with a token of its
//! ServiceAccount (deploy/rbac.yaml: create tokenreviews and subjectaccessreviews), its admin
//! endpoint bound to the node's address 10.251.0.1 (not loopback: HTTPS, tokens required), and
//! curl scrapes it as Prometheus would with deploy/prometheus-scrape.yaml's ClusterRole:
//! no token → 401, a ServiceAccount without the ClusterRole → 403, one bound to it → 200 and a
//! well-formed OpenMetrics body; /healthz needs no token; plain HTTP from the network is refused.
//! Tokens are written to files this test owns, passed to curl as a header file, never printed.
//!
//! One control plane per test binary, under the machine-wide lock (see kube_rbac.rs).

use std::{
    fs,
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use certreload_e2e::kube::identity::{apply_identity, deploy_dir, token_kubeconfig};
use certreload_e2e::{
    kube::{self, ControlPlane, ADVERTISE_ADDRESS},
    pki::Leaf,
    Agent,
};

/// Test ServiceAccounts: one bound to deploy/prometheus-scrape.yaml's ClusterRole, one not.
const SCRAPER: &str = "certreload-test-scraper";
const NOBODY: &str = "certreload-test-nobody";

fn apply(cp: &ControlPlane, file: &Path) {
    cp.kubectl(&["apply", "-f", &file.display().to_string()])
        .unwrap_or_else(|e| panic!("kubectl apply -f {}: {e:#}", file.display()));
}

/// A token of ServiceAccount `sa` in certreload, written as an `Authorization` header file.
fn token_header(cp: &ControlPlane, sa: &str, dir: &Path) -> std::path::PathBuf {
    let token = cp
        .kubectl(&["create", "token", sa, "-n", "certreload", "--duration=1h"])
        .unwrap_or_else(|e| panic!("kubectl create token {sa}: {e:#}"));
    let path = dir.join(format!("{sa}.header"));
    fs::write(&path, format!("Authorization: Bearer {}\n", token.trim())).expect("write");
    path
}

/// `curl -k` of `url` (the agent's self-signed certificate) with an optional header file: the
/// status code and the body.
fn curl(url: &str, header: Option<&Path>, dir: &Path) -> (u16, String) {
    let body = dir.join("body");
    // Absent before the first call: only a stale body from the last call must not be read.
    fs::remove_file(&body).ok();
    let mut c = Command::new("curl");
    c.args(["-sk", "--max-time", "15", "-o"])
        .arg(&body)
        .args(["-w", "%{http_code}"]);
    if let Some(h) = header {
        c.arg("-H").arg(format!("@{}", h.display()));
    }
    let out = c.arg(url).output().expect("curl runs");
    let code = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0);
    (code, fs::read_to_string(&body).unwrap_or_default())
}

/// Polls until `url` answers `want` (RBAC reaches the API server's authorizer through its cache,
/// and the agent keeps a denial 10 s).
fn await_code(url: &str, header: Option<&Path>, dir: &Path, want: u16) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (code, body) = curl(url, header, dir);
        if code == want {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "{url}: {code} (not {want}) within 60s: {body}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Checks the OpenMetrics text structurally: `# TYPE/HELP/UNIT` comments, `name{labels} value`
/// samples with a numeric value, and the `# EOF` terminator. (metrics.rs' test parses with a
/// real Prometheus parser; this one checks the authorized scrape carries the real document.)
fn assert_openmetrics(body: &str) {
    let lines: Vec<&str> = body.lines().collect();
    assert_eq!(lines.last(), Some(&"# EOF"), "ends with # EOF:\n{body}");
    let mut samples = 0;
    for l in &lines[..lines.len() - 1] {
        if let Some(c) = l.strip_prefix("# ") {
            assert!(
                ["TYPE ", "HELP ", "UNIT "].iter().any(|k| c.starts_with(k)),
                "comment line {l:?}"
            );
            continue;
        }
        let value = l.rsplit(' ').next().unwrap_or_default();
        assert!(
            value.parse::<f64>().is_ok(),
            "sample {l:?} ends in a number"
        );
        let name_end = l.find(['{', ' ']).unwrap_or(0);
        assert!(
            name_end > 0
                && l[..name_end]
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "sample {l:?} starts with a metric name"
        );
        samples += 1;
    }
    assert!(samples > 0, "samples in:\n{body}");
    assert!(
        body.contains("certreload_"),
        "certreload's metrics:\n{body}"
    );
}

#[test]
fn metrics_beyond_loopback_need_a_token_the_api_server_allows() {
    let Some(cp) = kube::shared() else { return };
    apply_identity(&cp);
    apply(&cp, &deploy_dir().join("prometheus-scrape.yaml"));
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let accounts = d.join("accounts.yaml");
    fs::write(
        &accounts,
        format!(
            "apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: {SCRAPER}\n  namespace: certreload\n---\napiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: {NOBODY}\n  namespace: certreload\n---\napiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata:\n  name: {SCRAPER}\nroleRef:\n  apiGroup: rbac.authorization.k8s.io\n  kind: ClusterRole\n  name: certreload-metrics-reader\nsubjects:\n  - kind: ServiceAccount\n    name: {SCRAPER}\n    namespace: certreload\n"
        ),
    )
    .expect("write");
    apply(&cp, &accounts);
    let scraper = token_header(&cp, SCRAPER, d);
    let nobody = token_header(&cp, NOBODY, d);
    let garbage = d.join("garbage.header");
    fs::write(&garbage, "Authorization: Bearer not-a-token\n").expect("write");

    let kubeconfig = token_kubeconfig(&cp, d);
    let (cert, key) = Leaf::server("localhost").self_signed();
    fs::write(d.join("tls.crt"), cert).expect("write");
    fs::write(d.join("tls.key"), key).expect("write");
    let audit = d.join("audit.jsonl");
    let config = d.join("certreload.toml");
    fs::write(
        &config,
        format!(
            "[agent]\nadmin = \"{ADVERTISE_ADDRESS}:0\"\n[audit]\npath = \"{}\"\n[[bundle]]\nname = \"web\"\nkind = \"server\"\ncert = \"{}\"\nkey = \"{}\"\n",
            audit.display(),
            d.join("tls.crt").display(),
            d.join("tls.key").display()
        ),
    )
    .expect("write");
    let env = format!("KUBECONFIG={}", kubeconfig.display());
    let agent = Agent::start_wrapped(
        &["env", "-u", "KUBERNETES_SERVICE_HOST", &env],
        &config,
        &audit,
        &["--mode", "inotify"],
    );
    let addr = agent.log_field("agent ready", "admin");
    assert!(
        addr.starts_with(ADVERTISE_ADDRESS),
        "bound beyond loopback: {addr}"
    );
    let url = |path: &str| format!("https://{addr}{path}");

    // The probes need nothing.
    assert_eq!(curl(&url("/healthz"), None, d).0, 200, "/healthz is open");
    assert_eq!(curl(&url("/readyz"), None, d).0, 200, "/readyz is open");
    // No token, or one the API server does not know: 401.
    let (code, body) = curl(&url("/metrics"), None, d);
    assert_eq!(code, 401, "/metrics without a token: {body}");
    assert!(!body.contains("certreload_"), "no metrics leak: {body}");
    assert_eq!(
        curl(&url("/status"), None, d).0,
        401,
        "/status without a token"
    );
    let (code, body) = curl(&url("/metrics"), Some(&garbage), d);
    assert_eq!(code, 401, "/metrics with an invalid token: {body}");
    // A valid token whose user has no ClusterRole for the URL: 403.
    let (code, body) = curl(&url("/metrics"), Some(&nobody), d);
    assert_eq!(code, 403, "/metrics as {NOBODY}: {body}");
    assert!(
        body.contains(&format!("system:serviceaccount:certreload:{NOBODY}")),
        "the 403 names the user: {body}"
    );
    // The scraper's ClusterRole allows get /metrics, and only that.
    let metrics = await_code(&url("/metrics"), Some(&scraper), d, 200);
    assert_openmetrics(&metrics);
    assert!(
        metrics.contains("certreload_"),
        "the authorized scrape is the real document"
    );
    let (code, body) = curl(&url("/status"), Some(&scraper), d);
    assert_eq!(code, 403, "/status is not /metrics: {body}");

    // Plain HTTP from the network is refused (a token must not cross in clear).
    let plain = Command::new("curl")
        .args([
            "-s",
            "--max-time",
            "10",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
        ])
        .arg(format!("http://{addr}/healthz"))
        .output()
        .expect("curl");
    assert_eq!(
        String::from_utf8_lossy(&plain.stdout).trim(),
        "400",
        "plain HTTP from beyond loopback"
    );

    let log = agent.log();
    for header in [&scraper, &nobody] {
        let text = fs::read_to_string(header).expect("header");
        let token = text.trim().trim_start_matches("Authorization: Bearer ");
        assert!(
            !log.contains(token),
            "a bearer token appears in the agent's log"
        );
    }
    assert!(
        log.contains("certificate=\"self-signed\"") || log.contains("certificate=self-signed"),
        "the serving certificate is logged with its fingerprint:\n{log}"
    );
    agent.stop();
}
