//! What refreshes a pod's projected ServiceAccount token in place on an unmodified kubelet, after
//! the API server's signing key changed (issue 12's investigation), on the REAL node
//! (`certreload_e2e::kube::node`: kubelet v1.37.2, Debian containerd and runc).
//!
//! The kubelet's token manager (pkg/kubelet/token/token_manager.go) caches each TokenRequest in
//! memory, keyed by account, namespace, audiences, expirationSeconds and the bound pod; it asks
//! the API server again only when the cached token is past 80 % of its requested lifetime (plus
//! up to 10 s of jitter) or 24 h old. The projected volume (pkg/volume/projected) is remounted on
//! every pod sync and writes whatever the cache returns. So:
//!
//! 1. **No restart** (capped wait): no pod's token changes its key id.
//! 2. **Deleting a token file**: the kubelet writes it back on its next remount, with the
//!    cached token (the old key id).
//! 3. **Touching the pod** (an annotation: a pod sync, hence an immediate remount): the cached
//!    token again.
//! 4. **Restarting the kubelet** (as `systemctl restart kubelet`; here the harness's service
//!    loop): the cache is gone, the first remount asks the API server, and every token file
//!    carries the new key id, while every sandbox and container keeps running (containerd's
//!    task ids and pids unchanged, no container restart in the pod status).
//!
//! Then the old public key is retired (`sa.pub` = the new key only, API server restarted) and
//! every pod's token still authenticates (`kubectl auth whoami` reading the token file itself).
//! The figures printed go to docs/kubernetes.md; tokens are never printed (key ids only).
//!
//! One control plane per test binary (the API server's port is fixed); the machine-wide kube
//! lock orders it with other kube test binaries.

use std::time::{Duration, Instant};

use certreload_e2e::kube::{
    self, node,
    pods::{
        self, minted_kid, p50_max, publish_alongside, retire_others, switch_signing, whoami, SaKey,
        Tasks, Workload,
    },
};

/// Pods on the node (`CERTRELOAD_REFRESH_PODS` overrides).
const PODS: usize = 5;
/// How long the test waits for the kubelet to refresh by itself (and to write a deleted token
/// file back): longer than the kubelet's pod sync period (1 min + jitter).
const NO_RESTART_WAIT: Duration = Duration::from_secs(100);
/// The longest a kubelet restart may take to refresh every token.
const RESTART_CAP: Duration = Duration::from_secs(120);

fn pods_wanted() -> usize {
    std::env::var("CERTRELOAD_REFRESH_PODS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(PODS)
}

fn fmt_s(d: Option<f64>) -> String {
    d.map_or_else(|| "never".to_string(), |s| format!("{s:.1} s"))
}

#[test]
fn a_kubelet_restart_refreshes_every_token_in_place_and_nothing_else_does() {
    let Some((cp, node)) = node::shared_with_node() else {
        return;
    };
    let n = pods_wanted();
    let work = Workload::start(&node, "token-refresh", n)
        .unwrap_or_else(|e| panic!("the workload did not start: {e:#}"));
    let old_kids = pods::key_ids(&cp.pki().join("sa.pub")).expect("sa.pub");
    assert_eq!(old_kids.len(), 1, "kubeadm writes one SA key");
    let before = work.tokens();
    for (p, t) in work.pods.iter().zip(&before) {
        let t = t
            .as_ref()
            .unwrap_or_else(|| panic!("{} has no token", p.name));
        assert_eq!(t.kid, old_kids[0], "{} before the rotation: {t:?}", p.name);
        assert_eq!(t.pod_uid, p.uid, "{t:?}");
    }
    let tasks = Tasks::list(&node).expect("ctr tasks ls");
    assert_eq!(
        tasks.0.len(),
        2 * n,
        "a sandbox and a container per pod: {tasks:?}"
    );

    // The careful rotation: both public keys, then the new signing key.
    let dir = tempfile::tempdir().expect("tempdir");
    let key = SaKey::generate(dir.path()).expect("a new SA key");
    publish_alongside(&cp, &key).expect("sa.pub = old + new");
    let changed = switch_signing(&cp, &key);
    cp.restart(kube::APISERVER)
        .expect("the API server restarts with the new signing key");
    let signing_after = changed.elapsed();
    assert_eq!(
        minted_kid(&cp, &work.namespace, &work.account).expect("a token minted now"),
        key.kid,
        "the API server signs with the new key"
    );

    // Alternatives without a restart, watched together for NO_RESTART_WAIT: pod 0's token file
    // deleted, pod 1 annotated (a pod sync), the others left alone.
    let first = &work.pods[0];
    let deleted = before[0].as_ref().expect("token").path.clone();
    std::fs::remove_file(&deleted).expect("delete pod 0's token file");
    let deleted_at = Instant::now();
    node.kubectl(&[
        "-n",
        &work.namespace,
        "annotate",
        "pod",
        &work.pods[1].name,
        "certreload.io/touched=1",
    ])
    .expect("annotate pod 1");
    let mut back: Option<(Duration, String)> = None;
    let watch_began = Instant::now();
    while watch_began.elapsed() < NO_RESTART_WAIT {
        if back.is_none() {
            if let Some(t) = pods::token_files(&node.kubelet_root(), &first.uid)
                .first()
                .and_then(|f| pods::Token::read(f).ok())
            {
                back = Some((deleted_at.elapsed(), t.kid));
            }
        }
        for (p, t) in work.pods.iter().zip(work.tokens()).skip(1) {
            let t = t.unwrap_or_else(|| panic!("{}'s token file went away", p.name));
            assert_eq!(
                t.kid, old_kids[0],
                "{} got a token with another key id without a kubelet restart: {t:?}",
                p.name
            );
        }
        // Watching files the kubelet rewrites on its own schedule.
        std::thread::sleep(Duration::from_millis(200));
    }
    let (back_after, back_kid) = back.unwrap_or_else(|| {
        panic!(
            "the deleted token file of {} was not written back within {NO_RESTART_WAIT:?}",
            first.name
        )
    });
    assert_eq!(
        back_kid, old_kids[0],
        "the kubelet writes a deleted token file back from its cache (the old key id)"
    );
    let annotated = work.tokens()[1].clone().expect("pod 1's token");
    assert_eq!(
        annotated.kid, old_kids[0],
        "a pod sync serves the cached token"
    );
    assert_eq!(
        Tasks::list(&node).expect("ctr tasks ls"),
        tasks,
        "nothing restarted"
    );

    // The kubelet restart.
    let restarted = node.restart_kubelet().expect("the kubelet restarts");
    let healthy = restarted.elapsed();
    let refreshed = work.await_kid(&key.kid, restarted, RESTART_CAP);
    let (p50, max) = p50_max(&refreshed);
    assert!(
        refreshed.iter().all(Option::is_some),
        "every token carries the new key id within {RESTART_CAP:?} of the kubelet restart: \
         {refreshed:?}\n{}",
        node.logs(40)
    );
    let after = work.tokens();
    for (p, t) in work.pods.iter().zip(&after) {
        let t = t.as_ref().expect("token");
        assert_eq!(t.kid, key.kid, "{}: {t:?}", p.name);
        assert_eq!(t.pod_uid, p.uid, "still bound to the same pod: {t:?}");
    }
    assert_eq!(
        Tasks::list(&node).expect("ctr tasks ls"),
        tasks,
        "a kubelet restart restarts no sandbox and no container"
    );
    let restarts = node
        .kubectl(&[
            "-n",
            &work.namespace,
            "get",
            "pods",
            "-o",
            "jsonpath={range .items[*]}{.status.containerStatuses[0].restartCount} {end}",
        ])
        .expect("restart counts");
    assert!(
        restarts.split_whitespace().all(|c| c == "0"),
        "no container restarted: {restarts}"
    );

    // The careful operator's last step, then every refreshed token still authenticates.
    retire_others(&cp, &key).expect("sa.pub = the new key only");
    let user = format!("system:serviceaccount:{}:{}", work.namespace, work.account);
    for (p, t) in work.pods.iter().zip(&after) {
        let t = t.as_ref().expect("token");
        assert_eq!(
            whoami(&cp, &t.path).unwrap_or_else(|e| panic!("{}'s token: {e:#}", p.name)),
            user
        );
    }

    eprintln!(
        "token refresh on the real kubelet, {n} pods: the API server signed with the new key \
         {:.1} s after sa.key changed; without a restart no token changed in {} s; a deleted \
         token file came back after {:.1} s with the OLD key id (the kubelet's cache); an \
         annotated pod kept the old key id; after a kubelet restart (healthy {:.1} s after \
         SIGTERM) every token carried the new key id: p50 {}, max {} after SIGTERM; no sandbox \
         or container restarted ({} tasks, same pids); after the old key was retired every \
         token authenticated as {user}",
        signing_after.as_secs_f64(),
        NO_RESTART_WAIT.as_secs(),
        back_after.as_secs_f64(),
        healthy.as_secs_f64(),
        fmt_s(p50),
        fmt_s(max),
        tasks.0.len(),
    );
    work.delete(&node).expect("the workload is deleted");
    drop(node);
}
