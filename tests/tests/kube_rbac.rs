//! Kubernetes Events, RBAC and the deploy/ manifests against the REAL API server of the kubeadm
//! control plane (`certreload_e2e::kube`, built from source): deploy/'s Namespace,
//! ServiceAccount and RBAC applied with kubectl, the agent run with a token minted for that
//! ServiceAccount, the Events read back with kubectl, the ServiceAccount's permissions listed by
//! the API server's own authorizer, and every manifest in deploy/ admitted by a server-side dry
//! run. (tests/tests/events.rs keeps a stub API server only for failures a real one does not
//! produce on demand.)
//!
//! One control plane per test binary: real-cluster test binaries must not run at the same time
//! (the API server's port is fixed), so run them under `flock /tmp/certreload-cp.lock`.

use std::{collections::BTreeSet, fs, time::Duration};

use certreload_e2e::kube::identity::{
    apply_identity, deploy_dir, poll_json, token_kubeconfig, SERVICE_ACCOUNT,
};
use certreload_e2e::{
    kube::{self, ControlPlane},
    pki::Leaf,
    Agent,
};
use serde_json::Value;

/// The Event of `reason` about Node `node` in `default`, once the API server has it.
fn node_event(cp: &ControlPlane, node: &str, reason: &str) -> Value {
    let selector = format!("involvedObject.kind=Node,involvedObject.name={node},reason={reason}");
    poll_json(
        cp,
        &[
            "get",
            "events",
            "-n",
            "default",
            "--field-selector",
            &selector,
        ],
        &format!("{reason} Event about Node {node}"),
        Duration::from_secs(60),
        |list| list["items"].as_array().and_then(|i| i.first()).cloned(),
    )
}

#[test]
fn serviceaccount_token_posts_node_events_the_api_server_stores() {
    let Some(cp) = kube::shared() else { return };
    apply_identity(&cp);
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let kubeconfig = token_kubeconfig(&cp, d);
    // A node name of this run only: no Node object needs to exist for an Event about it.
    let node = format!("cr-events-{}", std::process::id());
    let (cert, key) = Leaf::server("localhost").self_signed();
    fs::write(d.join("tls.crt"), cert).expect("write");
    fs::write(d.join("tls.key"), key).expect("write");
    let agent = Agent::start_with_events(d, &node, &kubeconfig);

    let accepted = node_event(&cp, &node, "CertificateAccepted");
    assert_eq!(accepted["type"], "Normal", "{accepted}");
    assert_eq!(accepted["involvedObject"]["kind"], "Node", "{accepted}");
    assert_eq!(
        accepted["involvedObject"]["name"],
        node.as_str(),
        "{accepted}"
    );
    assert_eq!(accepted["source"]["component"], "certreload", "{accepted}");
    assert_eq!(accepted["reportingComponent"], "certreload", "{accepted}");
    assert!(
        accepted["message"]
            .as_str()
            .is_some_and(|m| m.contains("bundle web: generation 1 accepted")),
        "{accepted}"
    );

    fs::write(d.join("tls.crt"), "garbage\n").expect("write");
    let rejected = node_event(&cp, &node, "CertificateRejected");
    assert_eq!(rejected["type"], "Warning", "{rejected}");
    assert_eq!(rejected["involvedObject"]["kind"], "Node", "{rejected}");
    assert!(
        rejected["message"].as_str().is_some_and(
            |m| m.contains("failed check parse") && m.contains("generation 1 stays live")
        ),
        "{rejected}"
    );
    // Why deploy/rbac.yaml grants Events in "default" only: even the cluster admin cannot put an
    // Event about a Node into another namespace (core/v1 Events without eventTime).
    let elsewhere = d.join("node-event-elsewhere.yaml");
    fs::write(
        &elsewhere,
        format!(
            "apiVersion: v1\nkind: Event\nmetadata:\n  generateName: {node}.elsewhere.\n  namespace: certreload\ninvolvedObject:\n  apiVersion: v1\n  kind: Node\n  name: {node}\nreason: CertificateAccepted\nmessage: test\ntype: Normal\n"
        ),
    )
    .expect("write");
    let refused = cp.kubectl(&["create", "-f", &elsewhere.display().to_string()]);
    let refused = match refused {
        Ok(out) => panic!("the API server took a Node Event in namespace certreload: {out}"),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        refused.contains("involvedObject.namespace"),
        "refused for the namespace: {refused}"
    );

    let log = agent.log();
    assert!(
        !log.contains("cannot post a Kubernetes Event"),
        "every Event was admitted:\n{log}"
    );
    assert!(
        !log.contains("BEGIN PRIVATE KEY"),
        "no key material in logs"
    );
    agent.stop();
}

/// One row of `kubectl auth can-i --list`: resource, non-resource URLs, resource names, verbs.
type Rule = (String, String, String, String);

/// `kubectl auth can-i --list` as `user` in `namespace`, one [`Rule`] per row.
fn can_i_list(cp: &ControlPlane, user: &str, namespace: &str) -> BTreeSet<Rule> {
    let out = cp
        .kubectl(&[
            "auth",
            "can-i",
            "--list",
            &format!("--as={user}"),
            "-n",
            namespace,
        ])
        .unwrap_or_else(|e| panic!("kubectl auth can-i --list --as={user}: {e:#}"));
    let mut rules = BTreeSet::new();
    for line in out.lines().skip(1).filter(|l| !l.trim().is_empty()) {
        // `resource   [urls]   [names]   [verbs]`; the resource is blank for URL rows.
        let Some(open) = line.find('[') else {
            panic!("unexpected can-i row {line:?} in:\n{out}")
        };
        let resource = line[..open].trim().to_string();
        let groups: Vec<String> = line[open..]
            .split(']')
            .map(|g| g.trim().trim_start_matches('[').trim().to_string())
            .take(3)
            .collect();
        let [urls, names, verbs] = <[String; 3]>::try_from(groups)
            .unwrap_or_else(|g| panic!("row {line:?} has no three [..] groups: {g:?}"));
        rules.insert((resource, urls, names, verbs));
    }
    rules
}

fn rule(resource: &str, names: &str, verbs: &str) -> Rule {
    (resource.into(), String::new(), names.into(), verbs.into())
}

#[test]
fn serviceaccount_may_do_exactly_what_the_agent_uses_and_no_more() {
    let Some(cp) = kube::shared() else { return };
    apply_identity(&cp);
    // What every authenticated ServiceAccount may do (self reviews, discovery, /healthz, ...):
    // the same listing for a ServiceAccount no binding names.
    let nobody = "system:serviceaccount:certreload:certreload-test-nobody";
    // kubectl lists a rule with resourceNames once per name.
    let mut locks: BTreeSet<Rule> = [
        "etcd",
        "kube-apiserver",
        "kube-controller-manager",
        "kube-scheduler",
        "kubelet",
    ]
    .iter()
    .map(|lock| {
        rule(
            "leases.coordination.k8s.io",
            &format!("certreload-action-{lock}"),
            "get update",
        )
    })
    .collect();
    locks.insert(rule("leases.coordination.k8s.io", "", "create"));
    // The admin endpoint's TokenReviews and SubjectAccessReviews (cluster-wide, so listed in
    // every namespace).
    let reviews = [
        rule("tokenreviews.authentication.k8s.io", "", "create"),
        rule("subjectaccessreviews.authorization.k8s.io", "", "create"),
        // The root-CA probe (ClusterRole certreload-root-ca, so listed in every namespace too):
        // the namespaces, and kube-root-ca.crt by name in each.
        rule("namespaces", "", "list"),
        rule("configmaps", "kube-root-ca.crt", "get"),
    ];
    locks.extend(reviews.clone());
    let mut events: BTreeSet<Rule> = [rule("events", "", "create")].into();
    events.extend(reviews.clone());
    // [sa_keys]: the key identity ConfigMap, watched by every agent (list/watch by name: the
    // watcher's field selector), updated and first created by control-plane agents.
    let mut sa_keys: BTreeSet<Rule> = [
        rule("configmaps", "certreload-sa-keys", "get list watch update"),
        rule("configmaps", "", "create"),
    ]
    .into();
    sa_keys.extend(reviews);
    let expected: [(&str, BTreeSet<Rule>); 3] = [
        ("certreload", locks),
        ("default", events),
        ("kube-system", sa_keys),
    ];
    for (namespace, want) in expected {
        let baseline = can_i_list(&cp, nobody, namespace);
        let agent = can_i_list(&cp, SERVICE_ACCOUNT, namespace);
        assert!(
            baseline.is_subset(&agent),
            "-n {namespace}: the ServiceAccount lacks what every user has?\nbaseline {baseline:#?}\nagent {agent:#?}"
        );
        let extra: BTreeSet<Rule> = agent.difference(&baseline).cloned().collect();
        println!("-n {namespace}: beyond every user's rules, {SERVICE_ACCOUNT} may: {extra:?}");
        assert_eq!(
            extra, want,
            "-n {namespace}: exactly what the agent uses (Events about its Node in default; lock Leases in certreload; the key identity ConfigMap in kube-system)"
        );
        // What every user has (printed for the record) writes nothing but self reviews.
        println!("-n {namespace}: what every ServiceAccount may: {baseline:?}");
        for (resource, _, _, verbs) in &baseline {
            let writes = verbs
                .split_whitespace()
                .any(|v| ["create", "update", "patch", "delete", "*"].contains(&v));
            assert!(
                !writes || resource.starts_with("self"),
                "-n {namespace}: every ServiceAccount may {verbs} {resource}?"
            );
        }
    }
    // Spot checks through the authorizer's yes/no answer, for what the agent must not do.
    for (verb, resource, namespace) in [
        ("list", "leases", "certreload"),
        (
            "delete",
            "leases.coordination.k8s.io/certreload-action-etcd",
            "certreload",
        ),
        (
            "update",
            "leases.coordination.k8s.io/kube-scheduler",
            "kube-system",
        ),
        ("get", "secrets", "certreload"),
        ("create", "events", "certreload"),
        ("get", "nodes", ""),
        // The root-CA probe: no ConfigMap listed or watched anywhere, no other one read, and a
        // namespace is listed, never read, watched or changed.
        ("list", "configmaps", "default"),
        ("watch", "configmaps", "default"),
        (
            "get",
            "configmaps/extension-apiserver-authentication",
            "kube-system",
        ),
        ("update", "configmaps/kube-root-ca.crt", "default"),
        ("get", "namespaces/default", ""),
        ("watch", "namespaces", ""),
        ("delete", "namespaces/default", ""),
        // [sa_keys]: that one ConfigMap, in kube-system only, and never deleted or patched.
        ("list", "configmaps", "kube-system"),
        ("watch", "configmaps", "kube-system"),
        ("get", "configmaps/kubeadm-config", "kube-system"),
        ("update", "configmaps/kube-proxy", "kube-system"),
        ("delete", "configmaps/certreload-sa-keys", "kube-system"),
        ("patch", "configmaps/certreload-sa-keys", "kube-system"),
        ("get", "configmaps/certreload-sa-keys", "default"),
        ("create", "configmaps", "default"),
    ] {
        let mut args = vec![
            "auth".to_string(),
            "can-i".into(),
            verb.into(),
            resource.into(),
            format!("--as={SERVICE_ACCOUNT}"),
        ];
        if !namespace.is_empty() {
            args.extend(["-n".into(), namespace.into()]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        // can-i exits 1 for "no", which the harness reports as an error carrying the output.
        let answer = match cp.kubectl(&args) {
            Ok(out) => out,
            Err(e) => format!("{e:#}"),
        };
        assert!(
            answer.lines().any(|l| l.trim() == "no"),
            "{SERVICE_ACCOUNT} may {verb} {resource} -n {namespace:?}: {answer}"
        );
    }
    // And the authorizer's yes for what [sa_keys] does (the watcher lists and watches with
    // fieldSelector metadata.name, which is authorized as that resource name).
    for verb in ["get", "list", "watch", "update"] {
        let answer = cp
            .kubectl(&[
                "auth",
                "can-i",
                verb,
                "configmaps/certreload-sa-keys",
                "-n",
                "kube-system",
                &format!("--as={SERVICE_ACCOUNT}"),
            ])
            .unwrap_or_else(|e| panic!("{SERVICE_ACCOUNT} may not {verb} the key identity: {e:#}"));
        assert_eq!(answer.trim(), "yes", "{verb}: {answer}");
    }
    // And the yes for what the root-CA probe does, in a namespace the agent has nothing else in.
    for (verb, resource, namespace) in [
        ("list", "namespaces", None),
        ("get", "configmaps/kube-root-ca.crt", Some("kube-public")),
        ("get", "configmaps/kube-root-ca.crt", Some("default")),
    ] {
        let as_agent = format!("--as={SERVICE_ACCOUNT}");
        let mut args = vec!["auth", "can-i", verb, resource, as_agent.as_str()];
        if let Some(ns) = namespace {
            args.extend(["-n", ns]);
        }
        let answer = cp
            .kubectl(&args)
            .unwrap_or_else(|e| panic!("{SERVICE_ACCOUNT} may not {verb} {resource}: {e:#}"));
        assert_eq!(answer.trim(), "yes", "{verb} {resource}: {answer}");
    }
}

#[test]
fn every_deploy_manifest_passes_a_server_side_dry_run() {
    let Some(cp) = kube::shared() else { return };
    // The namespaced objects need their namespace to exist for a dry run.
    apply_identity(&cp);
    let dir = deploy_dir();
    let out = cp
        .kubectl(&[
            "apply",
            "--dry-run=server",
            "-f",
            &dir.display().to_string(),
        ])
        .unwrap_or_else(|e| panic!("kubectl apply --dry-run=server -f deploy/: {e:#}"));
    println!("{out}");
    let mut manifests = 0;
    for entry in fs::read_dir(&dir).expect("deploy/") {
        let path = entry.expect("entry").path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        let text = fs::read_to_string(&path).expect("manifest");
        for doc in text.split("\n---") {
            let field = |key: &str| {
                doc.lines()
                    .find_map(|l| l.strip_prefix(key).map(|v| v.trim().to_string()))
            };
            let (Some(kind), Some(name)) = (field("kind:"), {
                // metadata.name: the first indented `name:` after `metadata:`.
                let meta = doc.split("metadata:").nth(1).unwrap_or_default();
                meta.lines()
                    .find_map(|l| l.trim_start().strip_prefix("name:"))
                    .map(|v| v.trim().to_string())
            }) else {
                continue;
            };
            manifests += 1;
            let resource = kind.to_lowercase();
            assert!(
                out.lines().any(|l| l.starts_with(&resource)
                    && l.contains(&format!("/{name} "))
                    && l.contains("(server dry run)")),
                "{kind} {name} ({}) not admitted by the dry run:\n{out}",
                path.display()
            );
        }
    }
    assert!(
        manifests >= 8,
        "every object of deploy/ checked ({manifests})"
    );
}
